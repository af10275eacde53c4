%% @doc MongooseIM facade of global_distrib: a gen_mod whose hooks hand
%% stanzas to the Rust runtime. It calls MongooseIM only through public
%% modules: `gen_hook', `jid', `mongoose_acc', `ejabberd_router', `jlib',
%% `mongoose_xmpp_errors' and `mongoose_disco'.
%%
%% Hooks (SPEC 9.1): `filter_packet' (global routing: local stanzas go on,
%% remote ones are forwarded or held by bounce and dropped here, given-up
%% ones are answered with `service-unavailable'), `sm_register_connection'
%% and `sm_remove_connection' (session table), `register_subhost' and
%% `unregister_subhost' (component/MUC domains, hidden or public),
%% `packet_to_component' (the sender becomes known here so a remote
%% component can answer) and `disco_local_items' (public domains of every
%% datacenter).
%%
%% Stanzas travel as `term_to_binary({FromBin, ToBin, Packet})' and are
%% decoded on arrival with `binary_to_term(Bin, [safe])' only.
-module(mod_global_distrib).
%% A gen_mod (start/2, stop/1, deps/2, supported_features/0). The
%% -behaviour(gen_mod) attribute is left out: gen_mod is MongooseIM's and is
%% not on the code path when this application is built on its own.

%% gen_mod
-export([start/2, stop/1, deps/2, supported_features/0, validate_opts/1, hook_handlers/1]).
%% hooks
-export([filter_packet/3, sm_register_connection/3, sm_remove_connection/3,
         register_subhost/3, unregister_subhost/3, packet_to_component/3,
         disco_local_items/3]).
%% delivery callback (run by global_distrib_worker)
-export([deliver/4, runtime/1]).

-ignore_xref([{gen_hook, add_handlers, 1}, {gen_hook, delete_handlers, 1},
              {jid, to_binary, 1}, {jid, from_binary, 1},
              {mongoose_acc, new, 1}, {mongoose_acc, get, 4}, {mongoose_acc, set, 4},
              {mongoose_acc, host_type, 1},
              {ejabberd_router, route, 4}, {jlib, make_error_reply, 3},
              {mongoose_xmpp_errors, service_unavailable, 0},
              {mongoose_disco, add_items, 2}]).

-type host_type() :: binary().
-type hook_acc() :: term().
-type hook_result() :: {ok, hook_acc()} | {stop, hook_acc()}.
-type jid() :: term().
-type packet() :: tuple().

%%--------------------------------------------------------------------
%% gen_mod

%% @doc Starts the runtime of `HostType' from the module options (a map or
%% proplist of the SPEC 2 options: global_host, local_host, connections,
%% redis, cache, bounce, ...) and registers the hooks. Options the core
%% refuses fail the start with `{error, {config, <<"path: message">>}}'.
-spec start(host_type(), map() | list()) -> ok | {error, term()}.
start(HostType, Opts) ->
    Callback = fun(Event, Meta, Payload) -> deliver(HostType, Event, Meta, Payload) end,
    StartOpts0 = #{callback => Callback, workers => get_opt(workers, Opts, 8)},
    StartOpts = case get_opt(store, Opts, undefined) of
                    undefined -> StartOpts0;
                    Store -> StartOpts0#{store => Store}
                end,
    case global_distrib:start(without([workers, store], Opts), StartOpts) of
        {ok, Rt} ->
            persistent_term:put({?MODULE, HostType}, Rt),
            ok = gen_hook:add_handlers(hook_handlers(HostType)),
            logger:notice(#{what => mod_global_distrib_started, host_type => HostType,
                            local_host => global_distrib:local_host(Rt)}),
            ok;
        {error, Reason} = E ->
            logger:error(#{what => mod_global_distrib_start_failed, host_type => HostType,
                           reason => Reason}),
            E
    end.

-spec stop(host_type()) -> ok.
stop(HostType) ->
    ok = gen_hook:delete_handlers(hook_handlers(HostType)),
    case persistent_term:get({?MODULE, HostType}, undefined) of
        undefined ->
            ok;
        Rt ->
            _ = persistent_term:erase({?MODULE, HostType}),
            {ok, N} = global_distrib:stop(Rt),
            logger:notice(#{what => mod_global_distrib_stopped, host_type => HostType,
                            undeliverable => N}),
            ok
    end.

-spec deps(host_type(), map() | list()) -> [].
deps(_HostType, _Opts) ->
    [].

-spec supported_features() -> [atom()].
supported_features() ->
    [].

%% @doc The configuration check of the module: the core's own reader, so
%% the errors are the same as at start (`{error, <<"path: message">>}').
%% Used in place of a `config_spec/0' (which needs MongooseIM's headers).
-spec validate_opts(map() | list()) -> ok | {error, binary()}.
validate_opts(Opts) ->
    case global_distrib:check_config(without([workers, store], Opts)) of
        ok -> ok;
        {error, {config, Msg}} -> {error, Msg}
    end.

%% @doc The gen_hook handlers registered by start/2.
-spec hook_handlers(host_type()) -> [{atom(), host_type() | global, fun(), map(), integer()}].
hook_handlers(HostType) ->
    Extra = #{host_type => HostType},
    [{filter_packet, global, fun ?MODULE:filter_packet/3, Extra, 99},
     {sm_register_connection, HostType, fun ?MODULE:sm_register_connection/3, Extra, 90},
     {sm_remove_connection, HostType, fun ?MODULE:sm_remove_connection/3, Extra, 90},
     {register_subhost, global, fun ?MODULE:register_subhost/3, Extra, 90},
     {unregister_subhost, global, fun ?MODULE:unregister_subhost/3, Extra, 90},
     {packet_to_component, global, fun ?MODULE:packet_to_component/3, Extra, 90},
     {disco_local_items, HostType, fun ?MODULE:disco_local_items/3, Extra, 99}].

-spec runtime(host_type()) -> global_distrib:runtime() | undefined.
runtime(HostType) ->
    persistent_term:get({?MODULE, HostType}, undefined).

%%--------------------------------------------------------------------
%% Hooks

%% @doc Global routing of every stanza, as MongooseIM's filter_packet does:
%% `drop' when forwarded, held or given up (answered with an error);
%% unchanged when the recipient is here, or when the stanza came from
%% another DC (it was routed globally there already).
-spec filter_packet(drop | {jid(), jid(), hook_acc(), packet()}, map(), map()) -> hook_result().
filter_packet(drop, _Params, _Extra) ->
    {ok, drop};
filter_packet({From, To, Acc, Packet} = FPacket, _Params, #{host_type := HostType}) ->
    case {runtime(HostType), mongoose_acc:get(global_distrib, delivered, false, Acc)} of
        {undefined, _} ->
            {ok, FPacket};
        {_, true} ->
            {ok, FPacket};
        {Rt, false} ->
            FromB = jid:to_binary(From),
            ToB = jid:to_binary(To),
            Payload = term_to_binary({FromB, ToB, Packet}),
            case global_distrib:route(Rt, FromB, ToB, kind(Packet), Payload) of
                local ->
                    {ok, FPacket};
                {forwarded, Host} ->
                    logger:debug(#{what => gd_forwarded, from => FromB, to => ToB, dc => Host}),
                    {ok, drop};
                stored ->
                    {ok, drop};
                {undeliverable, Reason} ->
                    bounce_error(Acc, From, To, Packet, Reason),
                    {ok, drop};
                {error, Reason} ->
                    %% Not routable globally (e.g. a JID the core refuses):
                    %% leave it to MongooseIM.
                    logger:warning(#{what => gd_route_error, from => FromB, to => ToB,
                                     reason => Reason}),
                    {ok, FPacket}
            end
    end.

-spec sm_register_connection(hook_acc(), map(), map()) -> hook_result().
sm_register_connection(Acc, #{jid := Jid}, #{host_type := HostType}) ->
    with_rt(HostType, fun(Rt) -> global_distrib:session_opened(Rt, jid:to_binary(Jid)) end),
    {ok, Acc}.

-spec sm_remove_connection(hook_acc(), map(), map()) -> hook_result().
sm_remove_connection(Acc, #{jid := Jid}, #{host_type := HostType}) ->
    with_rt(HostType, fun(Rt) -> global_distrib:session_closed(Rt, jid:to_binary(Jid)) end),
    {ok, Acc}.

-spec register_subhost(hook_acc(), map(), map()) -> hook_result().
register_subhost(Acc, #{ldomain := Domain} = Params, #{host_type := HostType}) ->
    Public = not maps:get(is_hidden, Params, false),
    with_rt(HostType, fun(Rt) -> global_distrib:register_subhost(Rt, Domain, Public) end),
    {ok, Acc}.

-spec unregister_subhost(hook_acc(), map(), map()) -> hook_result().
unregister_subhost(Acc, #{ldomain := Domain}, #{host_type := HostType}) ->
    with_rt(HostType, fun(Rt) -> global_distrib:unregister_subhost(Rt, Domain) end),
    {ok, Acc}.

%% @doc A local user writes to a component: record the user's session
%% here so that a component at another DC can answer before replication.
-spec packet_to_component(hook_acc(), map(), map()) -> hook_result().
packet_to_component(Acc, #{from := From}, #{host_type := HostType}) ->
    with_rt(HostType,
            fun(Rt) ->
                    case mongoose_acc:get(global_distrib, delivered, false, Acc) of
                        true -> ok;
                        false -> global_distrib:session_opened(Rt, jid:to_binary(From))
                    end
            end),
    {ok, Acc}.

%% @doc Adds the public subdomains of every datacenter to disco#items.
-spec disco_local_items(hook_acc(), map(), map()) -> hook_result().
disco_local_items(Acc, _Params, #{host_type := HostType}) ->
    case runtime(HostType) of
        undefined ->
            {ok, Acc};
        Rt ->
            case global_distrib:public_domains(Rt) of
                {ok, Domains} ->
                    {ok, mongoose_disco:add_items([#{jid => D} || D <- Domains], Acc)};
                {error, Reason} ->
                    logger:warning(#{what => gd_disco_failed, reason => Reason}),
                    {ok, Acc}
            end
    end.

%%--------------------------------------------------------------------
%% Stanzas handed over by the runtime

%% @doc Delivery callback: a stanza from another DC (or one held by bounce)
%% for a local recipient is routed locally, marked so that filter_packet
%% does not route it globally again; a given-up stanza is answered with
%% `service-unavailable'.
-spec deliver(host_type(), global_distrib_worker:event(), global_distrib:meta(), binary()) -> ok.
deliver(HostType, Event, Meta, Payload) ->
    try binary_to_term(Payload, [safe]) of
        {FromB, ToB, Packet} when is_binary(FromB), is_binary(ToB), is_tuple(Packet) ->
            From = jid:from_binary(FromB),
            To = jid:from_binary(ToB),
            Acc0 = mongoose_acc:new(#{location => #{mfa => {?MODULE, deliver, 4}},
                                      host_type => HostType,
                                      lserver => maps:get(to, Meta),
                                      from_jid => From, to_jid => To, element => Packet}),
            Acc = mongoose_acc:set(global_distrib, delivered, true, Acc0),
            case Event of
                deliver ->
                    _ = ejabberd_router:route(From, To, Acc, Packet),
                    ok;
                undeliverable ->
                    bounce_error(Acc, From, To, Packet, maps:get(reason, Meta)),
                    ok
            end;
        _ ->
            logger:warning(#{what => gd_bad_payload, meta => Meta})
    catch
        error:badarg ->
            logger:warning(#{what => gd_unsafe_or_bad_payload, meta => Meta})
    end.

%%--------------------------------------------------------------------

-spec bounce_error(hook_acc(), jid(), jid(), packet(), atom()) -> ok.
bounce_error(Acc, From, To, Packet, Reason) ->
    case is_error(Packet) of
        true ->
            %% Never answer an error with an error.
            ok;
        false ->
            logger:info(#{what => gd_undeliverable, to => jid:to_binary(To), reason => Reason}),
            {Acc1, Err} = jlib:make_error_reply(Acc, Packet,
                                                mongoose_xmpp_errors:service_unavailable()),
            _ = ejabberd_router:route(To, From, Acc1, Err),
            ok
    end.

-spec with_rt(host_type(), fun((global_distrib:runtime()) -> term())) -> ok.
with_rt(HostType, Fun) ->
    case runtime(HostType) of
        undefined -> ok;
        Rt ->
            case Fun(Rt) of
                ok -> ok;
                Other -> logger:warning(#{what => gd_call_failed, result => Other})
            end
    end.

-spec kind(packet()) -> global_distrib:kind().
kind({xmlel, <<"message">>, _, _}) -> message;
kind({xmlel, <<"iq">>, _, _}) -> iq;
kind({xmlel, <<"presence">>, Attrs, _} = P) ->
    case attr(P, <<"type">>, Attrs) of
        <<"unavailable">> -> presence_unavailable;
        _ -> presence
    end;
kind(_) -> other.

-spec is_error(packet()) -> boolean().
is_error({xmlel, _, Attrs, _} = P) ->
    attr(P, <<"type">>, Attrs) =:= <<"error">>;
is_error(_) ->
    false.

%% exml 3 keeps attributes in a map, older exml in a list.
-spec attr(packet(), binary(), map() | list()) -> binary() | undefined.
attr(_P, Name, Attrs) when is_map(Attrs) -> maps:get(Name, Attrs, undefined);
attr(_P, Name, Attrs) when is_list(Attrs) -> proplists:get_value(Name, Attrs, undefined).

-spec get_opt(atom(), map() | list(), term()) -> term().
get_opt(Key, Opts, Default) when is_map(Opts) -> maps:get(Key, Opts, Default);
get_opt(Key, Opts, Default) when is_list(Opts) -> proplists:get_value(Key, Opts, Default).

-spec without([atom()], map() | list()) -> map() | list().
without(Keys, Opts) when is_map(Opts) -> maps:without(Keys, Opts);
without(Keys, Opts) when is_list(Opts) ->
    [O || O <- Opts, not lists:member(proplists_key(O), Keys)].

-spec proplists_key(term()) -> term().
proplists_key({K, _}) -> K;
proplists_key(K) -> K.
