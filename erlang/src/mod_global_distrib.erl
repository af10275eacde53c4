%% @doc MongooseIM 6.x facade of global_distrib: a gen_mod with the name,
%% options and hooks of MongooseIM's own `mod_global_distrib', whose work
%% is done by the Rust runtime (see {@link global_distrib}).
%%
%% Mirrors MongooseIM 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6):
%% `src/global_distrib/mod_global_distrib.erl' (config_spec/0, process_opts/1,
%% start/2 and stop/1 acting for `global_host' only, filter_packet/3),
%% `mod_global_distrib_mapping.erl' (session and subhost hooks),
%% `mod_global_distrib_utils.erl' (maybe_update_mapping/2, resolve_endpoints/1),
%% `mod_global_distrib_disco.erl' (disco_local_items/3),
%% `mod_global_distrib_worker.erl' (delivery of received stanzas) and
%% `mod_global_distrib_bounce.erl' (a recipient found nowhere continues
%% local routing once bounce gives up). docs/MONGOOSEIM.md says what differs.
%%
%% MongooseIM calls it as gen_mod does: `config_spec/0' while parsing the
%% configuration (whether the module is enabled or not), then
%% `start(HostType, ProcessedOpts)' for every host type; only the host type
%% equal to `global_host' starts a runtime. A start that cannot start
%% raises, which aborts the node's start (gen_mod re-raises), never a silent
%% half-start.
%%
%% Stanzas travel between DCs as `term_to_binary({FromBin, ToBin, Packet})'
%% and are decoded on arrival with `binary_to_term(Bin, [safe])' only.
-module(mod_global_distrib).
%% A gen_mod (deps/2, start/2, stop/1, config_spec/0, supported_features/0,
%% instrumentation/0). The -behaviour(gen_mod) attribute is left out: gen_mod
%% is MongooseIM's and is not on the code path when this application is
%% built on its own.

-include("mongoose_config_spec.hrl").

%% gen_mod
-export([deps/2, start/2, stop/1, config_spec/0, supported_features/0, instrumentation/0]).
%% config processing (referenced by config_spec/0)
-export([process_opts/1, process_endpoint/1]).
%% hooks
-export([filter_packet/3, sm_register_connection/3, sm_remove_connection/3,
         register_subhost/3, unregister_subhost/3, packet_to_component/3,
         disco_local_items/3]).
%% metadata of a stanza's acc, as MongooseIM's module exports it
-export([find_metadata/2, get_metadata/3, put_metadata/3, remove_metadata/2]).
%% mongoose_instrument probe, delivery callback, introspection
-export([probe/3, deliver/4, runtime/0, hook_handlers/1, router/0, pool_opts/1]).

%% Calls into MongooseIM are covered by rebar.config's xref_ignores (the
%% modules exist in a MongooseIM release; the suite checks them against the
%% stand-ins). Exported for MongooseIM, the instrumentation and tests:
-ignore_xref([probe/3, process_opts/1, process_endpoint/1, router/0, pool_opts/1,
              find_metadata/2, get_metadata/3, put_metadata/3, remove_metadata/2,
              runtime/0, hook_handlers/1, deliver/4]).

-type host_type() :: binary().
-type opts() :: #{atom() => term()}.
-type jid() :: tuple().
-type acc() :: map().
-type packet() :: tuple().
-type fpacket() :: {jid(), jid(), acc(), packet()}.
-type endpoint() :: {inet:hostname() | inet:ip_address(), inet:port_number()}.

-define(STATE, {?MODULE, state}).
%% Options of ours that are not MongooseIM's and never reach the core's
%% reader: the delivery pool size and, for tests, a shared embedded store.
-define(LOCAL_KEYS, [workers, store]).

%%--------------------------------------------------------------------
%% gen_mod

%% @doc No other module is needed: the runtime does the work of
%% MongooseIM's mapping, disco, receiver, bounce and refresher modules.
-spec deps(host_type(), opts()) -> [].
deps(_HostType, _Opts) ->
    [].

-spec supported_features() -> [atom()].
supported_features() ->
    [].

%% @doc Starts the runtime when `HostType' is the `global_host' (the module
%% is enabled for every host type but acts once, as MongooseIM's does).
%% Raises `{mod_global_distrib, start_failed, Reason}' when the runtime
%% cannot start: a bad option (`{config, <<"path: message">>}'), an
%% endpoint that cannot be bound, a store that cannot be reached.
-spec start(host_type(), opts()) -> ok.
start(HostType, #{global_host := HostType} = Opts) ->
    ok = ensure_not_running(HostType),
    ok = ensure_exml_atoms(),
    Router = select_router(),
    Local = maps:with(?LOCAL_KEYS, Opts),
    Config = core_config(maps:without(?LOCAL_KEYS, Opts)),
    Callback = fun(Event, Meta, Payload) -> deliver(HostType, Event, Meta, Payload) end,
    StartOpts0 = #{callback => Callback, workers => maps:get(workers, Local, 8)},
    StartOpts = maps:merge(StartOpts0, maps:with([store], Local)),
    case global_distrib:start(Config, StartOpts) of
        {ok, Rt} ->
            persistent_term:put(?STATE, #{rt => Rt, host_type => HostType, router => Router,
                                          global_host => HostType,
                                          local_host => global_distrib:local_host(Rt)}),
            try
                mongoose_instrument:set_up(instrumentation()),
                {ok, _} = global_distrib_sup:start_child(
                            mod_global_distrib_instrument:child_spec(Rt)),
                gen_hook:add_handlers(hook_handlers(HostType))
            catch
                Class:Reason:Stacktrace ->
                    %% Nothing half-started stays behind a failed start.
                    _ = persistent_term:erase(?STATE),
                    ok = global_distrib_sup:stop_child(mod_global_distrib_instrument),
                    _ = global_distrib:stop(Rt),
                    erlang:raise(Class, Reason, Stacktrace)
            end,
            logger:notice(#{what => mod_global_distrib_started, host_type => HostType,
                            local_host => global_distrib:local_host(Rt), router => Router}),
            ok;
        {error, Reason} ->
            logger:critical(#{what => mod_global_distrib_start_failed, host_type => HostType,
                              reason => Reason}),
            erlang:error({?MODULE, start_failed, Reason})
    end;
start(_HostType, #{}) ->
    ok.

-spec stop(host_type()) -> ok.
stop(HostType) ->
    case persistent_term:get(?STATE, undefined) of
        #{host_type := HostType, rt := Rt} ->
            gen_hook:delete_handlers(hook_handlers(HostType)),
            ok = global_distrib_sup:stop_child(mod_global_distrib_instrument),
            mongoose_instrument:tear_down(instrumentation()),
            _ = persistent_term:erase(?STATE),
            {ok, N} = global_distrib:stop(Rt),
            logger:notice(#{what => mod_global_distrib_stopped, host_type => HostType,
                            undeliverable => N}),
            ok;
        _ ->
            ok
    end.

-spec ensure_not_running(host_type()) -> ok.
ensure_not_running(HostType) ->
    case persistent_term:get(?STATE, undefined) of
        undefined -> ok;
        #{host_type := Other} ->
            erlang:error({?MODULE, start_failed, {already_started, Other, HostType}})
    end.

%% @doc The events of MongooseIM 6.8's global distribution modules, with
%% their labels (none: the host is a measurement) and metric types. The
%% runtime's metrics are executed as these events by
%% {@link mod_global_distrib_instrument}; the bounce queue size is a probe.
-spec instrumentation() -> [{atom(), map(), map()}].
instrumentation() ->
    Count = #{metrics => #{count => spiral}},
    Time = #{metrics => #{time => histogram}},
    [{mod_global_distrib_delivered_with_ttl, #{}, #{metrics => #{value => histogram}}},
     {mod_global_distrib_stop_ttl_zero, #{}, Count},
     {mod_global_distrib_mapping_fetches, #{}, #{metrics => #{count => spiral, time => histogram}}},
     {mod_global_distrib_mapping_cache_misses, #{}, Count},
     {mod_global_distrib_outgoing_messages, #{}, Count},
     {mod_global_distrib_outgoing_queue, #{}, Time},
     {mod_global_distrib_outgoing_established, #{}, Count},
     {mod_global_distrib_outgoing_errored, #{}, Count},
     {mod_global_distrib_outgoing_closed, #{}, Count},
     {mod_global_distrib_incoming_queue, #{}, Time},
     {mod_global_distrib_incoming_established, #{}, Count},
     {mod_global_distrib_incoming_errored, #{}, Count},
     {mod_global_distrib_incoming_closed, #{}, Count},
     {mod_global_distrib_incoming_transfer, #{}, Time},
     {mod_global_distrib_incoming_messages, #{}, Count},
     {mod_global_distrib_incoming_first_packet, #{}, Count},
     {mod_global_distrib_bounce_queue, #{},
      #{probe => #{module => ?MODULE}, metrics => #{size => gauge}}}].

%% @doc mongoose_instrument probe of `mod_global_distrib_bounce_queue'.
-spec probe(atom(), map(), map()) -> #{size := non_neg_integer()}.
probe(mod_global_distrib_bounce_queue, #{}, _Extra) ->
    case runtime() of
        undefined -> #{size => 0};
        Rt -> #{size => maps:get(bounce_queue_size, global_distrib:info(Rt), 0)}
    end.

%%--------------------------------------------------------------------
%% Configuration (MongooseIM's option tree, plus the options of ours that
%% have no MongooseIM counterpart, all optional)

-spec config_spec() -> #section{}.
config_spec() ->
    #section{
       items = #{<<"global_host">> => #option{type = binary, validate = domain},
                 <<"local_host">> => #option{type = binary, validate = domain},
                 <<"message_ttl">> => #option{type = integer, validate = non_negative},
                 <<"hosts_refresh_interval">> => #option{type = integer,
                                                         validate = non_negative},
                 <<"route_timeout_ms">> => #option{type = integer, validate = positive},
                 <<"connections">> => connections_spec(),
                 <<"redis">> => redis_spec(),
                 <<"cache">> => cache_spec(),
                 <<"bounce">> => bounce_spec()},
       required = [<<"global_host">>, <<"local_host">>],
       defaults = #{<<"message_ttl">> => 4,
                    <<"hosts_refresh_interval">> => 3000},
       process = fun ?MODULE:process_opts/1}.

-spec connections_spec() -> #section{}.
connections_spec() ->
    #section{
       items = #{<<"endpoints">> => #list{items = endpoint_spec()},
                 <<"advertised_endpoints">> => #list{items = endpoint_spec()},
                 <<"connections_per_endpoint">> => #option{type = integer,
                                                           validate = non_negative},
                 <<"endpoint_refresh_interval">> => #option{type = integer,
                                                            validate = positive},
                 <<"endpoint_refresh_interval_when_empty">> => #option{type = integer,
                                                                       validate = positive},
                 <<"disabled_gc_interval">> => #option{type = integer, validate = positive},
                 <<"tls">> => mongoose_config_spec:tls([client, server]),
                 %% Ours: bounds of the queue towards one DC and of one frame.
                 <<"outgoing_queue_size">> => #option{type = integer, validate = positive},
                 <<"max_frame_size">> => #option{type = integer, validate = positive},
                 %% Ours: what remote peers may hold (docs/CONFIG.md).
                 <<"max_incoming_connections">> => #option{type = integer, validate = positive},
                 <<"max_incoming_per_host">> => #option{type = integer, validate = positive},
                 <<"handshake_timeout">> => #option{type = integer, validate = positive},
                 <<"idle_timeout">> => #option{type = integer, validate = positive},
                 <<"max_incoming_buffer">> => #option{type = integer, validate = positive},
                 <<"max_metric_hosts">> => #option{type = integer, validate = positive},
                 <<"max_unconfirmed_deliveries">> => #option{type = integer, validate = positive},
                 <<"max_unconfirmed_delivery_bytes">> => #option{type = integer, validate = positive},
                 <<"delivery_threads">> => #option{type = integer, validate = positive}},
       defaults = #{<<"connections_per_endpoint">> => 1,
                    <<"endpoint_refresh_interval">> => 60,
                    <<"endpoint_refresh_interval_when_empty">> => 3,
                    <<"disabled_gc_interval">> => 60},
       include = always}.

-spec endpoint_spec() -> #section{}.
endpoint_spec() ->
    #section{
       items = #{<<"host">> => #option{type = string, validate = network_address},
                 <<"port">> => #option{type = integer, validate = port}},
       required = all,
       process = fun ?MODULE:process_endpoint/1}.

-spec redis_spec() -> #section{}.
redis_spec() ->
    #section{
       items = #{<<"pool">> => #option{type = atom, validate = pool_name},
                 <<"expire_after">> => #option{type = integer, validate = positive},
                 <<"refresh_after">> => #option{type = integer, validate = non_negative},
                 %% Ours: Redis Cluster seed nodes, <<"redis://host:port">>
                 %% (docs/REDIS.md); the core checks them and their conflicts.
                 <<"cluster">> => #list{items = #option{type = binary, validate = url},
                                        validate = unique_non_empty},
                 %% Ours: lease mode (docs/REDIS.md, "Lease mode"); the core
                 %% checks the lease options against the periods.
                 <<"ownership">> => #option{type = binary,
                                            validate = {enum, [<<"per_key">>, <<"lease">>]}},
                 <<"lease_safety_ttl">> => #option{type = integer, validate = positive},
                 <<"lease_check_interval_ms">> => #option{type = integer, validate = positive}},
       defaults = #{<<"pool">> => global_distrib,
                    <<"expire_after">> => 120,
                    <<"refresh_after">> => 60},
       include = always}.

-spec cache_spec() -> #section{}.
cache_spec() ->
    #section{
       items = #{<<"cache_missed">> => #option{type = boolean},
                 <<"domain_lifetime_seconds">> => #option{type = integer,
                                                          validate = non_negative},
                 <<"jid_lifetime_seconds">> => #option{type = integer, validate = non_negative},
                 <<"max_jids">> => #option{type = integer, validate = non_negative}},
       defaults = #{<<"cache_missed">> => true,
                    <<"domain_lifetime_seconds">> => 600,
                    <<"jid_lifetime_seconds">> => 5,
                    <<"max_jids">> => 10000},
       include = always}.

-spec bounce_spec() -> #section{}.
bounce_spec() ->
    #section{
       items = #{<<"enabled">> => #option{type = boolean},
                 <<"resend_after_ms">> => #option{type = integer, validate = non_negative},
                 <<"max_retries">> => #option{type = integer, validate = non_negative},
                 %% Ours: how many stanzas one node holds at most.
                 <<"max_stored">> => #option{type = integer, validate = positive}},
       defaults = #{<<"enabled">> => true,
                    <<"resend_after_ms">> => 200,
                    <<"max_retries">> => 4},
       include = always}.

%% @doc As MongooseIM's process_opts/1: the listen endpoints default to
%% `{local_host, 5555}', the advertised ones to the listen ones, and the
%% listen ones are resolved to IP addresses (`resolved_endpoints').
-spec process_opts(opts()) -> opts().
process_opts(#{local_host := LocalHost, connections := Connections} = Opts) ->
    Listen = maps:get(endpoints, Connections, [{binary_to_list(LocalHost), 5555}]),
    Advertised = maps:get(advertised_endpoints, Connections, Listen),
    Opts#{connections := Connections#{endpoints => Listen,
                                      advertised_endpoints => Advertised,
                                      resolved_endpoints => resolve_endpoints(Listen)}}.

-spec process_endpoint(#{host := string(), port := inet:port_number()}) -> endpoint().
process_endpoint(#{host := Host, port := Port}) ->
    {Host, Port}.

%% MongooseIM's mod_global_distrib_utils:resolve_endpoints/1: addresses
%% stay, names become every IPv6 and IPv4 address they resolve to, a name
%% that resolves to nothing fails the configuration.
-spec resolve_endpoints([endpoint()]) -> [{inet:ip_address(), inet:port_number()}].
resolve_endpoints(Endpoints) ->
    lists:flatmap(fun resolve_endpoint/1, Endpoints).

-spec resolve_endpoint(endpoint()) -> [{inet:ip_address(), inet:port_number()}].
resolve_endpoint({Addr, _Port} = E) when is_tuple(Addr) ->
    [E];
resolve_endpoint({Addr, Port}) ->
    case inet:parse_address(Addr) of
        {ok, Ip} ->
            [{Ip, Port}];
        {error, einval} ->
            V6 = inet:getaddrs(Addr, inet6),
            V4 = inet:getaddrs(Addr, inet),
            case [{Ip, Port} || {ok, Ips} <- [V6, V4], Ip <- Ips] of
                [] -> erlang:error({domain_not_resolved, Addr, {V6, V4}});
                Resolved -> Resolved
            end
    end.

%% The document the core reads: the processed module options, the Redis
%% pool they name (MongooseIM keeps the Redis address there) and this
%% Erlang node's name as the node name inside the DC.
-spec core_config(opts()) -> map().
core_config(Opts) ->
    ModOpts = case maps:is_key(node_name, Opts) of
                  true -> Opts;
                  false -> Opts#{node_name => atom_to_binary(node(), utf8)}
              end,
    Doc = #{modules => #{mod_global_distrib => ModOpts}},
    Pool = maps:get(pool, maps:get(redis, Opts, #{}), global_distrib),
    case pool_opts(Pool) of
        undefined -> Doc;
        PoolOpts -> Doc#{outgoing_pools => #{redis => #{Pool => PoolOpts}}}
    end.

%% @doc The processed `[outgoing_pools.redis.Tag]' of MongooseIM's
%% configuration (the global one first), `undefined' when there is none.
-spec pool_opts(atom()) -> map() | undefined.
pool_opts(Tag) ->
    Pools = [P || #{type := redis, tag := T} = P <- mongoose_config:get_opt(outgoing_pools, []),
                  T =:= Tag],
    case lists:partition(fun(P) -> maps:get(scope, P, global) =:= global end, Pools) of
        {[Global | _], _} -> Global;
        {[], [Other | _]} -> Other;
        {[], []} -> undefined
    end.

%% @doc The router of this MongooseIM version: `mongoose_router:route/1'
%% since 6.7, `ejabberd_router:route/4' before. Chosen once at start.
-spec select_router() -> mongoose_router | ejabberd_router.
select_router() ->
    case exported(mongoose_router, route, 1) of
        true -> mongoose_router;
        false ->
            case exported(ejabberd_router, route, 4) of
                true -> ejabberd_router;
                false -> erlang:error({?MODULE, start_failed, no_router})
            end
    end.

-spec exported(module(), atom(), arity()) -> boolean().
exported(M, F, A) ->
    _ = code:ensure_loaded(M),
    erlang:function_exported(M, F, A).

%% @doc The router chosen at start (`undefined' when not started).
-spec router() -> mongoose_router | ejabberd_router | undefined.
router() ->
    maps:get(router, persistent_term:get(?STATE, #{}), undefined).

%%--------------------------------------------------------------------
%% Hooks

%% @doc The gen_hook handlers registered by start/2: filter_packet and the
%% subhost and component hooks are global, the session and disco hooks
%% belong to the global host's host type (as in MongooseIM, where the
%% mapping and disco modules are started for `global_host' only).
-spec hook_handlers(host_type()) -> [{atom(), host_type() | global, fun(), map(), integer()}].
hook_handlers(HostType) ->
    [{filter_packet, global, fun ?MODULE:filter_packet/3, #{}, 99},
     {register_subhost, global, fun ?MODULE:register_subhost/3, #{}, 90},
     {unregister_subhost, global, fun ?MODULE:unregister_subhost/3, #{}, 90},
     {packet_to_component, global, fun ?MODULE:packet_to_component/3, #{}, 90},
     {sm_register_connection, HostType, fun ?MODULE:sm_register_connection/3, #{}, 90},
     {sm_remove_connection, HostType, fun ?MODULE:sm_remove_connection/3, #{}, 90},
     {disco_local_items, HostType, fun ?MODULE:disco_local_items/3, #{}, 99}].

-spec runtime() -> global_distrib:runtime() | undefined.
runtime() ->
    maps:get(rt, persistent_term:get(?STATE, #{}), undefined).

%% @doc Global routing of every stanza, first in MongooseIM's routing
%% chain: `{ok, FPacket}' lets local routing go on (the recipient is here,
%% was found nowhere, or the stanza came from another DC and was routed
%% globally there already); `{stop, drop}' when it was forwarded, held by
%% bounce, or given up on (answered with `service-unavailable').
-spec filter_packet(drop | fpacket(), map(), map()) -> {ok, drop | fpacket()} | {stop, drop}.
filter_packet(drop, _Params, _Extra) ->
    {ok, drop};
filter_packet({From, To, Acc, _Packet} = FPacket, _Params, _Extra) ->
    case same_user(From, To) orelse get_metadata(Acc, delivered, false) of
        true ->
            %% MongooseIM never routes between two sessions of one user, and
            %% a stanza handed over by the runtime was routed globally already.
            {ok, FPacket};
        false ->
            case runtime() of
                undefined -> {ok, FPacket};
                Rt -> route_globally(Rt, FPacket)
            end
    end.

-spec route_globally(global_distrib:runtime(), fpacket()) -> {ok, fpacket()} | {stop, drop}.
route_globally(Rt, {From, To, Acc, Packet} = FPacket) ->
    FromB = jid:to_binary(From),
    ToB = jid:to_binary(To),
    Payload = term_to_binary({FromB, ToB, Packet}),
    case global_distrib:route(Rt, FromB, ToB, kind(Packet), Payload) of
        local ->
            {ok, FPacket};
        {forwarded, _Host} ->
            {stop, drop};
        stored ->
            {stop, drop};
        {undeliverable, Reason} ->
            route_error(Acc, From, To, Packet, Reason),
            {stop, drop};
        {error, Reason} ->
            %% Not routable globally (a JID the core refuses, a stopped
            %% runtime): MongooseIM's own routing decides.
            logger:warning(#{what => gd_route_error, from => FromB, to => ToB,
                             reason => Reason}),
            {ok, FPacket}
    end.

-spec sm_register_connection(term(), #{jid := jid()}, map()) -> {ok, term()}.
sm_register_connection(Acc, #{jid := Jid}, _Extra) ->
    with_rt(fun(Rt) -> global_distrib:session_opened(Rt, jid:to_binary(Jid)) end),
    {ok, Acc}.

-spec sm_remove_connection(term(), #{jid := jid()}, map()) -> {ok, term()}.
sm_remove_connection(Acc, #{jid := Jid}, _Extra) ->
    with_rt(fun(Rt) -> global_distrib:session_closed(Rt, jid:to_binary(Jid)) end),
    {ok, Acc}.

%% @doc A component or MUC domain served here. As MongooseIM's mapping
%% module: recorded only when `global_host' is the one configured host it is
%% a subdomain of (a subdomain of `local_host' stays this DC's own).
-spec register_subhost(term(), #{ldomain := binary(), is_hidden := boolean()}, map()) ->
          {ok, term()}.
register_subhost(Acc, #{ldomain := SubHost} = Params, _Extra) ->
    case persistent_term:get(?STATE, undefined) of
        #{rt := Rt, global_host := GlobalHost} ->
            Hosts = mongoose_config:get_opt(hosts, []),
            case [H || H <- Hosts, is_subhost_of(SubHost, H)] of
                [GlobalHost] ->
                    Public = not maps:get(is_hidden, Params, false),
                    with_rt(fun(_) -> global_distrib:register_subhost(Rt, SubHost, Public) end);
                _ ->
                    ok
            end;
        undefined ->
            ok
    end,
    {ok, Acc}.

%% The first occurrence of `Host' in `SubHost' ends it (MongooseIM's test).
-spec is_subhost_of(binary(), binary()) -> boolean().
is_subhost_of(SubHost, Host) ->
    case binary:match(SubHost, Host) of
        {Start, Length} -> Start + Length == byte_size(SubHost);
        nomatch -> false
    end.

-spec unregister_subhost(term(), #{ldomain := binary()}, map()) -> {ok, term()}.
unregister_subhost(Acc, #{ldomain := SubHost}, _Extra) ->
    with_rt(fun(Rt) -> global_distrib:unregister_subhost(Rt, SubHost) end),
    {ok, Acc}.

%% @doc A stanza reaches a component on this node: when its sender is not
%% known to the runtime, the sender's DC (the stanza's origin, or this DC)
%% is cached here, never written to the store, so the component can answer
%% before the sender's entry replicates (MongooseIM's maybe_update_mapping).
-spec packet_to_component(acc(), #{from := jid()}, map()) -> {ok, acc()}.
packet_to_component(Acc, #{from := From}, _Extra) ->
    case is_unavailable_presence(Acc) of
        true ->
            ok;
        false ->
            case persistent_term:get(?STATE, undefined) of
                #{rt := Rt, local_host := LocalHost} ->
                    Origin = get_metadata(Acc, origin, LocalHost),
                    with_rt(fun(_) -> global_distrib:cache_origin(Rt, jid:to_binary(From),
                                                                  Origin)
                            end);
                undefined ->
                    ok
            end
    end,
    {ok, Acc}.

-spec is_unavailable_presence(acc()) -> boolean().
is_unavailable_presence(Acc) ->
    try
        {mongoose_acc:stanza_name(Acc), mongoose_acc:stanza_type(Acc)} =:=
            {<<"presence">>, <<"unavailable">>}
    catch
        error:_ -> false
    end.

%% @doc The domains of every DC in disco#items of the empty node: all of
%% them for a server or component asking, and for users when mod_disco's
%% `users_can_see_hidden_services' is true; the public ones otherwise.
-spec disco_local_items(map(), map(), map()) -> {ok, map()}.
disco_local_items(#{host_type := HostType, from_jid := From, node := <<>>} = Acc, _, _) ->
    case runtime() of
        undefined ->
            {ok, Acc};
        Rt ->
            PublicOnly = case jid:to_lus(From) of
                             {<<>>, _} -> false;
                             _ -> not users_see_hidden(HostType)
                         end,
            case global_distrib:domains(Rt, PublicOnly) of
                {ok, Domains} ->
                    {ok, mongoose_disco:add_items([#{jid => D} || D <- Domains], Acc)};
                {error, Reason} ->
                    logger:warning(#{what => gd_disco_failed, reason => Reason}),
                    {ok, Acc}
            end
    end;
disco_local_items(Acc, _Params, _Extra) ->
    {ok, Acc}.

-spec users_see_hidden(host_type()) -> boolean().
users_see_hidden(HostType) ->
    %% mod_disco's option (true by default), read from the configuration so
    %% that this hook does not depend on mod_disco being loaded.
    Path = [{modules, HostType}, mod_disco, users_can_see_hidden_services],
    mongoose_config:get_opt(Path, true) =:= true.

%%--------------------------------------------------------------------
%% Stanzas handed over by the runtime

%% @doc Delivery callback (run by a global_distrib_worker): a stanza for a
%% local recipient — from another DC, or held by bounce and now routed
%% here, or given up to local routing because its recipient was found
%% nowhere (so mod_offline and friends see it, as in MongooseIM) — goes on
%% through this node's router, marked so that filter_packet lets it
%% through. A stanza given up on (`undeliverable') is answered with
%% `service-unavailable'.
-spec deliver(host_type(), global_distrib_worker:event(), global_distrib:meta(), binary()) -> ok.
deliver(HostType, Event, Meta, Payload) ->
    case decode(Payload) of
        {ok, From, To, Packet} ->
            {_, LServer} = jid:to_lus(To),
            Acc0 = mongoose_acc:new(#{location => #{mfa => {?MODULE, deliver, 4},
                                                    file => ?FILE, line => ?LINE},
                                      host_type => HostType, lserver => LServer,
                                      from_jid => From, to_jid => To, element => Packet}),
            Acc1 = put_metadata(Acc0, origin, maps:get(origin, Meta, undefined)),
            case Event of
                deliver ->
                    %% Not permanent: the mark is for this routing pass only
                    %% (local delivery strips it), so a module that routes
                    %% the same acc on to someone else routes it globally.
                    route(mongoose_acc:set(global_distrib, delivered, true, Acc1),
                          From, To, Packet);
                undeliverable ->
                    route_error(Acc1, From, To, Packet, maps:get(reason, Meta, undefined))
            end;
        {error, Why} ->
            logger:warning(#{what => gd_bad_payload, reason => Why, event => Event,
                             from => maps:get(from, Meta, undefined),
                             to => maps:get(to, Meta, undefined)})
    end.

%% Stanzas from other DCs are decoded with binary_to_term(_, [safe]),
%% which refuses atoms this VM does not know: the atoms of exml's element
%% records are made known at start (MongooseIM's exml has them loaded
%% anyway; a node where no stanza was parsed yet may not).
-spec ensure_exml_atoms() -> ok.
ensure_exml_atoms() ->
    lists:foreach(fun(Name) -> binary_to_atom(Name, utf8) end, [<<"xmlel">>, <<"xmlcdata">>]).

-spec decode(binary()) -> {ok, jid(), jid(), packet()} | {error, term()}.
decode(Payload) ->
    try binary_to_term(Payload, [safe]) of
        {FromB, ToB, Packet} when is_binary(FromB), is_binary(ToB), is_tuple(Packet) ->
            case {jid:from_binary(FromB), jid:from_binary(ToB)} of
                {error, _} -> {error, {bad_jid, FromB}};
                {_, error} -> {error, {bad_jid, ToB}};
                {From, To} -> {ok, From, To, Packet}
            end;
        _ ->
            {error, bad_term}
    catch
        error:badarg -> {error, unsafe_or_bad_term}
    end.

%% Answers a stanza given up on with service-unavailable (never an error
%% with an error). The reply is routed globally: the sender may be at
%% another DC when the stanza was given up on here.
-spec route_error(acc(), jid(), jid(), packet(), atom()) -> ok.
route_error(Acc, From, To, Packet, Reason) ->
    case is_error(Packet) of
        true ->
            ok;
        false ->
            logger:info(#{what => gd_undeliverable, to => jid:to_binary(To), reason => Reason}),
            case jlib:make_error_reply(Acc, Packet, mongoose_xmpp_errors:service_unavailable()) of
                {_Acc1, {error, _}} -> ok;
                {Acc1, Reply} -> route(remove_metadata(Acc1, delivered), To, From, Reply)
            end
    end.

-spec route(acc(), jid(), jid(), packet()) -> ok.
route(Acc, From, To, Packet) ->
    _ = case router() of
            mongoose_router ->
                mongoose_router:route(
                  mongoose_acc:update_stanza(#{from_jid => From, to_jid => To,
                                               element => Packet}, Acc));
            ejabberd_router ->
                ejabberd_router:route(From, To, Acc, Packet);
            undefined ->
                logger:warning(#{what => gd_route_after_stop, to => jid:to_binary(To)})
        end,
    ok.

%%--------------------------------------------------------------------
%% Metadata of a stanza (namespace `global_distrib' of its acc), with the
%% functions and semantics of MongooseIM's module. Set here: `origin' (the
%% DC where the stanza entered global routing, permanent) and `delivered'
%% (handed over by the runtime: routed globally already; for one routing
%% pass).

-spec get_metadata(acc(), term(), term()) -> term().
get_metadata(Acc, Key, Default) ->
    mongoose_acc:get(global_distrib, Key, Default, Acc).

-spec find_metadata(acc(), term()) -> {ok, term()} | {error, undefined}.
find_metadata(Acc, Key) ->
    try mongoose_acc:get(global_distrib, Key, Acc) of
        Value -> {ok, Value}
    catch
        _:_ -> {error, undefined}
    end.

-spec put_metadata(acc(), term(), term()) -> acc().
put_metadata(Acc, Key, Value) ->
    mongoose_acc:set_permanent(global_distrib, Key, Value, Acc).

-spec remove_metadata(acc(), term()) -> acc().
remove_metadata(Acc, Key) ->
    mongoose_acc:delete(global_distrib, Key, Acc).

-spec same_user(jid(), jid()) -> boolean().
same_user(From, To) ->
    case {jid:to_lus(From), jid:to_lus(To)} of
        {{U, S}, {U, S}} -> true;
        _ -> false
    end.

-spec with_rt(fun((global_distrib:runtime()) -> term())) -> ok.
with_rt(Fun) ->
    case runtime() of
        undefined -> ok;
        Rt ->
            case Fun(Rt) of
                ok -> ok;
                %% session_opened/2: the store write is retried by the core,
                %% which logged it already (gd_session_write_deferred).
                {ok, pending} -> ok;
                Other -> logger:warning(#{what => gd_call_failed, result => Other})
            end
    end.

-spec kind(packet()) -> global_distrib:kind().
kind({xmlel, <<"message">>, _, _}) -> message;
kind({xmlel, <<"iq">>, _, _}) -> iq;
kind({xmlel, <<"presence">>, Attrs, _}) ->
    case attr(<<"type">>, Attrs) of
        <<"unavailable">> -> presence_unavailable;
        _ -> presence
    end;
kind(_) -> other.

-spec is_error(packet()) -> boolean().
is_error({xmlel, _, Attrs, _}) ->
    attr(<<"type">>, Attrs) =:= <<"error">>;
is_error(_) ->
    false.

%% exml 3 (MongooseIM 6.3+) keeps attributes in a map, older exml in a list.
-spec attr(binary(), map() | list()) -> binary() | undefined.
attr(Name, Attrs) when is_map(Attrs) -> maps:get(Name, Attrs, undefined);
attr(Name, Attrs) when is_list(Attrs) -> proplists:get_value(Name, Attrs, undefined).
