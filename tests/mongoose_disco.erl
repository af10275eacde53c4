%% Test stand-in for MongooseIM's mongoose_disco, src/mongoose_disco.erl at
%% MongooseIM 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6).
%% Written for this project from the behaviour of that file; no code copied
%% (MongooseIM is GPLv2).
%%
%% The service discovery hooks fold a plain map (not a mongoose_acc):
%%   #{host_type, from_jid, to_jid, node, lang, result := empty | [Elem]}
%% add_items/2, add_features/2, add_identities/2 and add_info/2 put the new
%% elements IN FRONT of those already there (result := New ++ Old; New
%% alone while the result is `empty'). An item is #{jid := binary(),
%% name => binary(), node => binary()}; items_to_xml/1 keeps, for each jid,
%% the item that was added first (the last one in the list); features_to_xml/1
%% sorts and removes duplicates. get_local_items/5, get_local_features/5 and
%% get_local_identity/5 run their hook for the host type as mongoose_hooks
%% does (gen_hook:run_fold/4, whichever of ok/stop it returns). mod_disco's
%% own handlers are not modelled; neither are the sm/muc/info wrappers.
-module(mongoose_disco).

-export([get_local_identity/5, get_local_items/5, get_local_features/5]).
-export([add_identities/2, add_items/2, add_features/2, add_info/2]).
-export([identities_to_xml/1, items_to_xml/1, features_to_xml/1]).

-include("jid.hrl").

%% exml 4.2.1
-record(xmlel, {name :: binary(),
                attrs = #{} :: #{binary() => binary()},
                children = [] :: [term()]}).

-type acc(Elem) :: #{host_type := binary(), from_jid := #jid{}, to_jid := #jid{},
                     node := binary(), lang := binary(), result := empty | [Elem]}.
-type item() :: #{jid := binary(), name => binary(), node => binary()}.
-type feature() :: binary().
-type identity() :: #{category := binary(), type := binary(), name => binary()}.
-type info() :: #{xmlns := binary(), fields := [map()]}.
-type item_acc() :: acc(item()).
-type feature_acc() :: acc(feature()).
-type identity_acc() :: acc(identity()).
-type info_acc() :: #{host_type := binary(), module := module(), node := binary(),
                      lang := binary(), result := empty | [info()]}.

-export_type([item_acc/0, feature_acc/0, identity_acc/0, item/0, feature/0,
              identity/0, info/0, info_acc/0]).

%%--------------------------------------------------------------------
%% Hook runs

-spec get_local_identity(binary(), #jid{}, #jid{}, binary(), binary()) -> [#xmlel{}].
get_local_identity(HostType, From, To, Node, Lang) ->
    Found = case fold(disco_local_identity, HostType, From, To, Node, Lang) of
                empty -> [];
                List -> List
            end,
    identities_to_xml(Found).

-spec get_local_items(binary(), #jid{}, #jid{}, binary(), binary()) ->
          {result, [#xmlel{}]} | empty.
get_local_items(HostType, From, To, Node, Lang) ->
    as_result(fold(disco_local_items, HostType, From, To, Node, Lang), fun items_to_xml/1).

-spec get_local_features(binary(), #jid{}, #jid{}, binary(), binary()) ->
          {result, [#xmlel{}]} | empty.
get_local_features(HostType, From, To, Node, Lang) ->
    as_result(fold(disco_local_features, HostType, From, To, Node, Lang),
              fun features_to_xml/1).

as_result(empty, _ToXml) -> empty;
as_result(List, ToXml) -> {result, ToXml(List)}.

%% The hook's final `result'.
fold(Hook, HostType, From, To, Node, Lang) when is_binary(HostType) ->
    Start = #{host_type => HostType, from_jid => From, to_jid => To,
              node => Node, lang => Lang, result => empty},
    {_OkOrStop, #{result := Result}} = gen_hook:run_fold(Hook, HostType, Start, #{}),
    Result.

%%--------------------------------------------------------------------
%% Adding to the accumulator

-spec add_identities([identity()], identity_acc()) -> identity_acc().
add_identities(New, Acc) -> prepend(New, Acc).

-spec add_items([item()], item_acc()) -> item_acc().
add_items(New, Acc) -> prepend(New, Acc).

-spec add_features([feature()], feature_acc()) -> feature_acc().
add_features(New, Acc) -> prepend(New, Acc).

-spec add_info([info()], info_acc()) -> info_acc().
add_info(New, Acc) -> prepend(New, Acc).

prepend(New, #{result := empty} = Acc) -> Acc#{result := New};
prepend(New, #{result := Old} = Acc) -> Acc#{result := New ++ Old}.

%%--------------------------------------------------------------------
%% XML

-spec identities_to_xml([identity()]) -> [#xmlel{}].
identities_to_xml(Identities) ->
    [attrs_el(<<"identity">>, I) || I <- Identities].

-spec items_to_xml([item()]) -> [#xmlel{}].
items_to_xml(Items) ->
    ByJid = lists:foldl(fun(#{jid := Jid} = Item, Seen) ->
                                Seen#{Jid => attrs_el(<<"item">>, Item)};
                           (_NoJid, Seen) ->
                                Seen
                        end, #{}, Items),
    maps:values(ByJid).

-spec features_to_xml([feature()]) -> [#xmlel{}].
features_to_xml(Features) ->
    lists:map(fun feature_el/1, lists:usort(Features)).

feature_el(Var) when is_binary(Var) ->
    #xmlel{name = <<"feature">>, attrs = #{<<"var">> => Var}}.

%% an element whose attributes are the map's (atom keys as binaries)
attrs_el(Name, Map) ->
    Attrs = maps:from_list([{atom_to_binary(K, utf8), V} || {K, V} <- maps:to_list(Map)]),
    #xmlel{name = Name, attrs = Attrs}.
