%% Test stand-in for MongooseIM's mongoose_acc, src/mongoose_acc.erl at
%% MongooseIM 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6).
%% Written for this project from the behaviour of that file; no code copied
%% (MongooseIM is GPLv2).
%%
%% An accumulator is a map marked `mongoose_acc => true' with the built-in
%% fields ref, timestamp (microseconds), origin_pid, origin_location,
%% stanza, lserver, host_type, statem_acc, origin and non_strippable (the
%% keys strip/1 keeps besides the built-in ones), plus namespaced fields
%% stored under {Namespace, Key}. Every function wants the marker (a map
%% without it: function_clause). Facts kept:
%%   * new/1 needs `location' and `lserver' (function_clause otherwise); no
%%     element -> stanza = undefined; new/4 (6.7+) takes lserver from From;
%%   * stanza metadata: #{element, from_jid, to_jid, name, type, ref}; a JID
%%     not given is parsed from the element's attribute and must be valid
%%     (badmatch otherwise);
%%   * get/3 crashes with {badkey, {NS, Key}}; get/4 has a default;
%%   * append/4 concatenates a list to the old list, or puts a single value
%%     in front of it;
%%   * set_permanent* add keys to non_strippable; strip/1 keeps only those
%%     and the built-in fields and resets statem_acc; strip/2 also puts a new
%%     lserver, host_type (undefined if not given) and stanza;
%%   * update/3 gives {error, badarg} for an unknown field.
%% Two things MongooseIM takes from other modules are done here: the `type'
%% attribute of an exml 4.2.1 element (attributes in a map, absent ->
%% undefined) and the empty c2s accumulator of mongoose_c2s_acc:new/0.
%% Nothing in this module calls new/4 or update/3,4: mim_standin removes
%% them to play MongooseIM 6.6.
-module(mongoose_acc).

-include("jid.hrl").

%% exml 4.2.1's element record
-record(xmlel, {name :: binary(),
                attrs = #{} :: #{binary() => binary()},
                children = [] :: [term()]}).

-export([new/1, new/4]).
-export([ref/1, timestamp/1, lserver/1, host_type/1, element/1,
         to_jid/1, from_jid/1, packet/1,
         stanza_name/1, stanza_type/1, stanza_ref/1]).
-export([update_stanza/2, update/3, update/4]).
-export([get_statem_acc/1, set_statem_acc/2]).
-export([set/3, set/4,
         set_permanent/2, set_permanent/3, set_permanent/4,
         append/4,
         get_permanent_keys/1, get_permanent_fields/1,
         get/2, get/3, get/4,
         delete/2, delete/3, delete_many/3]).
-export([strip/1, strip/2]).

-type origin() :: xmpp_c2s | xmpp_s2s | xmpp_component | server | admin_api | client_api.
-type location() :: #{mfa := mfa(), line := non_neg_integer(), file := string()}.
-type stanza_metadata() :: #{element := #xmlel{},
                             from_jid := #jid{} | undefined,
                             to_jid := #jid{} | undefined,
                             name := binary(),
                             type := binary() | undefined,
                             ref := reference()}.
-type ns_key() :: {NS :: any(), Key :: any()}.
-type ns_key_value() :: {NS :: any(), Key :: any(), Value :: any()}.
-type t() :: #{mongoose_acc := true,
               ref := reference(),
               timestamp := integer(),
               origin_pid := pid(),
               origin_location := location(),
               stanza := stanza_metadata() | undefined,
               lserver := binary(),
               host_type := binary() | undefined,
               non_strippable := [ns_key()],
               statem_acc := map(),
               origin := origin() | undefined,
               ns_key() => any()}.
-type new_acc_params() :: #{location := location(),
                            lserver => binary(),
                            element => #xmlel{} | undefined,
                            host_type => binary() | undefined,
                            from_jid => #jid{} | undefined,
                            to_jid => #jid{} | binary() | undefined,
                            statem_acc => map(),
                            origin => origin() | undefined}.
-type strip_params() :: #{lserver := binary(),
                          element := #xmlel{},
                          host_type => binary() | undefined,
                          from_jid => #jid{} | undefined,
                          to_jid => #jid{} | undefined}.
-type stanza_params() :: #{element := #xmlel{},
                           from_jid => #jid{} | undefined,
                           to_jid => #jid{} | undefined,
                           _ => _}.

-export_type([t/0, stanza_metadata/0, new_acc_params/0, strip_params/0,
              stanza_params/0, ns_key/0, ns_key_value/0]).

%% Built-in keys: always kept by strip/1
-define(BUILT_IN, [mongoose_acc, ref, timestamp, origin_pid, origin_location, stanza,
                   lserver, host_type, statem_acc, non_strippable, origin]).

%%--------------------------------------------------------------------
%% Creation

-spec new(new_acc_params()) -> t().
new(#{location := Location, lserver := LServer} = Params) ->
    Stanza = case Params of
                 #{element := El} when El =/= undefined -> metadata(Params);
                 #{} -> undefined
             end,
    #{mongoose_acc => true,
      ref => make_ref(),
      timestamp => erlang:system_time(microsecond),
      origin_pid => self(),
      origin_location => Location,
      stanza => Stanza,
      lserver => LServer,
      host_type => maps:get(host_type, Params, undefined),
      statem_acc => maps:get(statem_acc, Params, empty_statem_acc()),
      origin => maps:get(origin, Params, undefined),
      non_strippable => []}.

-spec new(#jid{}, #jid{} | binary(), #xmlel{}, location()) -> t().
new(From, To, Element, Location) ->
    new(#{location => Location, lserver => From#jid.lserver,
          element => Element, from_jid => From, to_jid => To}).

%%--------------------------------------------------------------------
%% Built-in fields

-spec ref(t()) -> reference().
ref(#{mongoose_acc := true, ref := Ref}) -> Ref.

-spec timestamp(t()) -> integer().
timestamp(#{mongoose_acc := true, timestamp := Micros}) -> Micros.

-spec lserver(t()) -> binary().
lserver(#{mongoose_acc := true, lserver := LServer}) -> LServer.

-spec host_type(t()) -> binary() | undefined.
host_type(#{mongoose_acc := true, host_type := HostType}) -> HostType.

-spec element(t()) -> #xmlel{} | undefined.
element(Acc) -> stanza_field(element, Acc).

-spec from_jid(t()) -> #jid{} | undefined.
from_jid(Acc) -> stanza_field(from_jid, Acc).

-spec to_jid(t()) -> #jid{} | undefined.
to_jid(Acc) -> stanza_field(to_jid, Acc).

-spec stanza_name(t()) -> binary() | undefined.
stanza_name(Acc) -> stanza_field(name, Acc).

-spec stanza_type(t()) -> binary() | undefined.
stanza_type(Acc) -> stanza_field(type, Acc).

-spec stanza_ref(t()) -> reference() | undefined.
stanza_ref(Acc) -> stanza_field(ref, Acc).

-spec packet(t()) -> {#jid{}, #jid{}, #xmlel{}} | undefined.
packet(#{mongoose_acc := true, stanza := #{from_jid := F, to_jid := T, element := El}}) ->
    {F, T, El};
packet(#{mongoose_acc := true}) ->
    undefined.

%% A field of the stanza metadata; undefined without a stanza.
stanza_field(Field, #{mongoose_acc := true} = Acc) ->
    case maps:get(stanza, Acc, undefined) of
        #{Field := Value} -> Value;
        _ -> undefined
    end.

-spec get_statem_acc(t()) -> map().
get_statem_acc(#{mongoose_acc := true, statem_acc := StatemAcc}) -> StatemAcc.

-spec set_statem_acc(map(), t()) -> t().
set_statem_acc(StatemAcc, #{mongoose_acc := true} = Acc) ->
    Acc#{statem_acc := StatemAcc}.

%%--------------------------------------------------------------------
%% Stanza changes

-spec update_stanza(stanza_params(), t()) -> t().
update_stanza(Params, #{mongoose_acc := true} = Acc) ->
    Acc#{stanza := metadata(Params)}.

-spec update(element | from_jid | to_jid, #xmlel{} | #jid{}, t()) -> t() | {error, badarg}.
update(Field, Value, #{mongoose_acc := true, stanza := Old} = Acc)
  when Field =:= element; Field =:= from_jid; Field =:= to_jid ->
    New = case Field of
              element -> Old#{element := Value, name => Value#xmlel.name,
                              type => type_attr(Value), ref => make_ref()};
              _ -> Old#{Field := Value}
          end,
    Acc#{stanza := New};
update(_, _, _) ->
    {error, badarg}.

-spec update(#jid{}, #jid{}, #xmlel{}, t()) -> t().
update(From, To, Element, Acc) ->
    update_stanza(#{from_jid => From, to_jid => To, element => Element}, Acc).

%%--------------------------------------------------------------------
%% Namespaced fields

-spec set(any(), any(), any(), t()) -> t().
set(NS, Key, Value, #{mongoose_acc := true} = Acc) ->
    Acc#{{NS, Key} => Value}.

-spec set(any(), [{any(), any()}], t()) -> t().
set(NS, Pairs, #{mongoose_acc := true} = Acc) ->
    put_triples([{NS, K, V} || {K, V} <- Pairs], Acc).

-spec set_permanent(any(), any(), any(), t()) -> t().
set_permanent(NS, Key, Value, #{mongoose_acc := true, non_strippable := Kept} = Acc) ->
    Acc#{{NS, Key} => Value, non_strippable := [{NS, Key} | lists:delete({NS, Key}, Kept)]}.

-spec set_permanent(any(), [{any(), any()}], t()) -> t().
set_permanent(NS, Pairs, #{mongoose_acc := true} = Acc) ->
    set_permanent([{NS, K, V} || {K, V} <- Pairs], Acc).

-spec set_permanent([ns_key_value()], t()) -> t().
set_permanent(Triples, #{mongoose_acc := true, non_strippable := Kept} = Acc) ->
    Added = [{NS, K} || {NS, K, _} <- Triples, not lists:member({NS, K}, Kept)],
    put_triples(Triples, Acc#{non_strippable := Added ++ Kept}).

put_triples(Triples, Acc) ->
    lists:foldl(fun({NS, K, V}, A) -> A#{{NS, K} => V} end, Acc, Triples).

-spec append(any(), any(), any(), t()) -> t().
append(NS, Key, Value, Acc) ->
    set(NS, Key, grow(get(NS, Key, [], Acc), Value), Acc).

%% a list is concatenated, anything else goes in front
grow(Old, More) when is_list(Old), is_list(More) -> Old ++ More;
grow(Old, One) when is_list(Old) -> [One | Old].

-spec get_permanent_keys(t()) -> [ns_key()].
get_permanent_keys(#{mongoose_acc := true, non_strippable := Kept}) ->
    Kept.

-spec get_permanent_fields(t()) -> [ns_key_value()].
get_permanent_fields(Acc) ->
    [{NS, K, get(NS, K, Acc)} || {NS, K} <- get_permanent_keys(Acc)].

%% @doc All {Key, Value} of a namespace.
-spec get(any(), t()) -> [{any(), any()}].
get(NS, #{mongoose_acc := true} = Acc) ->
    lists:reverse([{K, V} || {{N, K}, V} <- maps:to_list(Acc), N =:= NS]).

-spec get(any(), any(), t()) -> any().
get(NS, Key, #{mongoose_acc := true} = Acc) ->
    maps:get({NS, Key}, Acc).

-spec get(any(), any(), any(), t()) -> any().
get(NS, Key, Default, #{mongoose_acc := true} = Acc) ->
    maps:get({NS, Key}, Acc, Default).

-spec delete(any(), any(), t()) -> t().
delete(NS, Key, Acc) ->
    delete_many(NS, [Key], Acc).

-spec delete_many(any(), [any()], t()) -> t().
delete_many(NS, Keys, #{mongoose_acc := true, non_strippable := Kept} = Acc) ->
    Gone = [{NS, K} || K <- Keys],
    (maps:without(Gone, Acc))#{non_strippable := Kept -- Gone}.

-spec delete(any(), t()) -> t().
delete(NS, Acc) ->
    delete_many(NS, [K || {K, _} <- get(NS, Acc)], Acc).

%%--------------------------------------------------------------------
%% Stripping

-spec strip(t()) -> t().
strip(#{mongoose_acc := true, non_strippable := Kept} = Acc) ->
    (maps:with(Kept ++ ?BUILT_IN, Acc))#{statem_acc := empty_statem_acc()}.

-spec strip(strip_params(), t()) -> t().
strip(#{lserver := LServer} = Params, Acc) ->
    (strip(Acc))#{lserver := LServer,
                  host_type := maps:get(host_type, Params, undefined),
                  stanza := metadata(Params)}.

%%--------------------------------------------------------------------
%% Helpers

-spec metadata(stanza_params() | new_acc_params() | strip_params()) -> stanza_metadata().
metadata(#{element := El} = Params) ->
    #{element => El,
      from_jid => given_or_parsed(from_jid, <<"from">>, Params),
      to_jid => given_or_parsed(to_jid, <<"to">>, Params),
      name => El#xmlel.name,
      type => type_attr(El),
      ref => make_ref()}.

given_or_parsed(Key, Attr, Params) ->
    case maps:find(Key, Params) of
        {ok, Given} -> Given;
        error -> #jid{} = jid:from_binary(attr_of(maps:get(element, Params), Attr))
    end.

type_attr(El) ->
    attr_of(El, <<"type">>).

%% an attribute of an exml 4.2.1 element, undefined when absent
attr_of(#xmlel{attrs = Attrs}, Name) ->
    maps:get(Name, Attrs, undefined).

%% the accumulator of a fresh mongoose_c2s_acc (6.8.0)
empty_statem_acc() ->
    #{state_mod => #{}, actions => [], c2s_state => undefined,
      c2s_data => undefined, hard_stop => undefined, socket_send => []}.
