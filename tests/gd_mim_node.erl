%% One MongooseIM node of a datacenter, played by the stand-ins (tests/, see
%% tests/STANDINS.md) on an OTP peer node: mod_global_distrib is configured
%% and started exactly as MongooseIM 6.8 does it — the operator's TOML
%% (as tomerl parses it) through the module's config_spec/0 and the
%% config parser model, the Redis pool in mongoose_config's
%% `outgoing_pools', then mongoose_modules' ensure_started for every host
%% type (gen_mod:start_module + gen_hook:reload_hooks). Clients are played
%% through the hooks MongooseIM runs (sm_register_connection) and the
%% router of the version the node models. Called by mod_global_distrib_SUITE
%% with peer:call/4.
-module(gd_mim_node).

-export([start/1, start_again/0, stop/0, set_module_opts/2, atom_exists/1,
         login/1, send/3, routed/0, s2s_routed/0, events/0, flush_instrument/0,
         lookup/1, info/0, store_del/1, handlers/0, register_subhost/2, unregister_subhost/1,
         disco/1, last_routed_to/1, packet_to_component/3, await_peer/1]).

-define(GLOBAL, <<"example.com">>).

%% @doc Starts the stand-ins and the module on this node. `version':
%% '6.8' (mongoose_router:route/1) or '6.6' (ejabberd_router:route/4).
-spec start(#{hosts := [binary()], version := '6.8' | '6.6', module := map(),
              pool := map()}) -> ok.
start(#{hosts := Hosts, version := Version, module := ModToml, pool := PoolToml}) ->
    ok = mim_standin:start(),
    ok = mim_standin:set_mongoose_version(Version),
    ok = mim_standin:set_config(hosts, Hosts),
    Pools = mongoose_config_parser_toml:process_outgoing_pools(
              #{<<"redis">> => #{<<"global_distrib">> => PoolToml}}),
    ok = mim_standin:set_config(outgoing_pools, Pools),
    Opts = mongoose_config_parser_toml:process_module(mod_global_distrib, ModToml),
    persistent_term:put({?MODULE, opts}, Opts),
    _ = [mim_standin:ensure_started(H, mod_global_distrib, Opts) || H <- Hosts],
    ok.

%% @doc Starts the module again, with the options of start/1.
-spec start_again() -> ok.
start_again() ->
    Opts = persistent_term:get({?MODULE, opts}),
    _ = [mim_standin:ensure_started(H, mod_global_distrib, Opts)
         || H <- mongoose_config:get_opt(hosts)],
    ok.

%% @doc Options of another module of the global host type (e.g. mod_disco).
-spec set_module_opts(module(), map()) -> ok.
set_module_opts(Module, Opts) ->
    Modules = mongoose_config:get_opt({modules, ?GLOBAL}, #{}),
    _ = mongoose_config:set_opt({modules, ?GLOBAL}, Modules#{Module => Opts}),
    ok.

-spec atom_exists(binary()) -> boolean().
atom_exists(Name) ->
    try binary_to_existing_atom(Name, utf8) of
        _ -> true
    catch
        error:badarg -> false
    end.

-spec stop() -> ok.
stop() ->
    _ = [mim_standin:ensure_stopped(H, mod_global_distrib)
         || H <- mongoose_config:get_opt(hosts, [])],
    ok.

%% @doc A client session opened: ejabberd_sm runs sm_register_connection
%% for the host type of the user's domain.
-spec login(binary()) -> ok.
login(JidBin) ->
    Jid = jid:from_binary(JidBin),
    {_, LServer} = jid:to_lus(Jid),
    _ = mim_standin:sm_register_connection(LServer, {erlang:timestamp(), self()}, Jid, #{}),
    ok.

%% @doc A client sends a stanza: its c2s process routes it with the router
%% of this node's version.
-spec send(binary(), binary(), tuple()) -> ok.
send(FromBin, ToBin, Packet) ->
    route(new_acc(FromBin, ToBin, Packet), FromBin, ToBin, Packet).

new_acc(FromBin, ToBin, Packet) ->
    From = jid:from_binary(FromBin),
    {_, LServer} = jid:to_lus(From),
    mongoose_acc:new(#{location => #{mfa => {?MODULE, send, 3}, file => ?FILE, line => ?LINE},
                       lserver => LServer, host_type => ?GLOBAL,
                       from_jid => From, to_jid => jid:from_binary(ToBin), element => Packet}).

route(Acc, FromBin, ToBin, Packet) ->
    case erlang:function_exported(mongoose_router, route, 1) of
        true -> _ = mongoose_router:route(Acc);
        false -> _ = ejabberd_router:route(jid:from_binary(FromBin), jid:from_binary(ToBin),
                                           Acc, Packet)
    end,
    ok.

%% @doc What local routing received, in order: [{From, To, Packet}].
-spec routed() -> [{binary(), binary(), tuple()}].
routed() ->
    [{jid:to_binary(F), jid:to_binary(T), P} || {F, T, _Acc, P} <- mim_standin:routed()].

-spec s2s_routed() -> [{binary(), binary(), tuple()}].
s2s_routed() ->
    [{jid:to_binary(F), jid:to_binary(T), P} || {F, T, _Acc, P} <- mim_standin:s2s_routed()].

%% @doc The instrumentation events executed so far.
-spec events() -> [{atom(), map(), map()}].
events() ->
    mim_standin:instrument_events().

%% @doc Makes the instrumentation reader report now.
-spec flush_instrument() -> ok.
flush_instrument() ->
    [Pid] = [P || {mod_global_distrib_instrument, P, _, _}
                      <- supervisor:which_children(global_distrib_sup), is_pid(P)],
    gen_server:call(Pid, flush).

-spec lookup(binary()) -> term().
lookup(JidBin) ->
    global_distrib:lookup(mod_global_distrib:runtime(), JidBin).

-spec info() -> map().
info() ->
    global_distrib:info(mod_global_distrib:runtime()).

-spec store_del([binary()]) -> ok | {error, term()}.
store_del(Keys) ->
    global_distrib:store_del(mod_global_distrib:runtime(), Keys).

%% @doc The facade's handlers visible to gen_hook, as {Hook, Tag}.
-spec handlers() -> [{atom(), binary() | global}].
handlers() ->
    lists:sort([{H, T} || {H, T, _F, _E, _P} <- mod_global_distrib:hook_handlers(?GLOBAL)]).

-spec register_subhost(binary(), boolean()) -> ok.
register_subhost(Domain, Hidden) ->
    _ = mim_standin:register_subhost(Domain, Hidden),
    ok.

-spec unregister_subhost(binary()) -> ok.
unregister_subhost(Domain) ->
    _ = mim_standin:unregister_subhost(Domain),
    ok.

%% @doc The disco#items of the empty node of the global host, asked by `From'.
-spec disco(binary()) -> [binary()].
disco(FromBin) ->
    Acc = mim_standin:disco_acc(?GLOBAL, jid:from_binary(FromBin), jid:from_binary(?GLOBAL),
                                <<>>, <<"en">>),
    case mim_standin:disco_local_items(Acc) of
        #{result := Items} when is_list(Items) -> lists:sort([J || #{jid := J} <- Items]);
        _ -> []
    end.

%% @doc The last stanza local routing received for `ToBin', with the acc
%% it had: what MongooseIM's cluster routing hands to the node a component
%% is attached to when that is another node of the DC.
-spec last_routed_to(binary()) -> {tuple(), tuple(), map()}.
last_routed_to(ToBin) ->
    [{From, To, Acc, _} | _] = lists:reverse([R || {_, T, _, _} = R <- mim_standin:routed(),
                                                   jid:to_binary(T) =:= ToBin]),
    {From, To, Acc}.

%% @doc The component service of this node receives a stanza routed here by
%% another node of the cluster: packet_to_component with that acc.
-spec packet_to_component(map(), tuple(), tuple()) -> ok.
packet_to_component(Acc, From, To) ->
    _ = mim_standin:packet_to_component(Acc, From, To),
    ok.

-spec await_peer(binary()) -> ok | {error, timeout}.
await_peer(Host) ->
    global_distrib:await_peer(mod_global_distrib:runtime(), Host, 10000).
