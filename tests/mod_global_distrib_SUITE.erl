%% mod_global_distrib, the MongooseIM facade, started exactly as MongooseIM
%% 6.8 starts a module: the operator's TOML processed through its
%% config_spec/0, the Redis pool in `outgoing_pools', start/2 for every host
%% type, hooks through gen_hook. Each datacenter (and each node of a DC) is
%% an OTP peer node running the MongooseIM stand-ins (tests/STANDINS.md) and
%% a real runtime; the DCs share a real redis-server started by the suite.
%% Clients are played through the hooks and routers MongooseIM runs
%% (tests/gd_mim_node.erl).
-module(mod_global_distrib_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([facade_calls_exist_in_standins/1,
         config_spec_processes_as_mongooseim/1, bad_option_aborts_start/1,
         starts_once_for_global_host/1, chat_across_dcs_and_versions/1,
         instrumentation_events_have_mongooseim_names/1,
         recipient_found_nowhere_continues_local_routing/1,
         unreachable_dc_answers_service_unavailable/1,
         local_sessions_survive_store_flush/1, sender_cached_on_component_node/1,
         subhosts_and_disco/1, unsafe_payload_is_refused/1, stop_removes_everything/1]).

-define(WAIT, 15000).
-define(GLOBAL, <<"example.com">>).
%% The peers of the running case, stopped by end_per_testcase.
-define(PEERS, {?MODULE, peers}).

suite() ->
    [{timetrap, {minutes, 3}}].

all() ->
    [facade_calls_exist_in_standins,
     config_spec_processes_as_mongooseim, bad_option_aborts_start,
     starts_once_for_global_host, chat_across_dcs_and_versions,
     instrumentation_events_have_mongooseim_names,
     recipient_found_nowhere_continues_local_routing,
     unreachable_dc_answers_service_unavailable, local_sessions_survive_store_flush,
     sender_cached_on_component_node, subhosts_and_disco, unsafe_payload_is_refused,
     stop_removes_everything].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(global_distrib),
    case gd_redis:start() of
        {ok, Redis} -> [{redis, Redis} | Config];
        {skip, _} = Skip -> Skip
    end.

end_per_suite(Config) ->
    gd_redis:stop(?config(redis, Config)).

init_per_testcase(_Case, Config) ->
    ok = gd_redis:flushall(redis_port(Config)),
    Config.

end_per_testcase(_Case, _Config) ->
    [catch peer:stop(P) || P <- persistent_term:get(?PEERS, [])],
    _ = persistent_term:erase(?PEERS),
    catch mim_standin:stop(),
    ok.

redis_port(Config) ->
    maps:get(port, ?config(redis, Config)).

%%--------------------------------------------------------------------
%% Datacenters

host(N) when is_integer(N) ->
    iolist_to_binary(["dc", integer_to_list(N), ".example.com"]).

%% The operator's TOML of one node (as tomerl parses it), MongooseIM's
%% option names only.
module_toml(LocalHost, Ports) ->
    #{<<"global_host">> => ?GLOBAL,
      <<"local_host">> => LocalHost,
      <<"hosts_refresh_interval">> => 200,
      <<"connections">> =>
          #{<<"endpoints">> => [#{<<"host">> => <<"127.0.0.1">>, <<"port">> => P}
                                || P <- Ports],
            <<"endpoint_refresh_interval">> => 1,
            <<"endpoint_refresh_interval_when_empty">> => 1},
      <<"redis">> => #{<<"pool">> => <<"global_distrib">>},
      <<"cache">> => #{<<"jid_lifetime_seconds">> => 1, <<"domain_lifetime_seconds">> => 1},
      <<"bounce">> => #{<<"resend_after_ms">> => 100, <<"max_retries">> => 2}}.

pool_toml(Config) ->
    #{<<"scope">> => <<"global">>, <<"workers">> => 2,
      <<"connection">> => #{<<"host">> => <<"127.0.0.1">>, <<"port">> => redis_port(Config)}}.

%% A MongooseIM node of DC `LocalHost' on a new peer.
start_node(LocalHost, Ports, Version, Config) ->
    Peer = gd_redis:start_peer(),
    persistent_term:put(?PEERS, [Peer | persistent_term:get(?PEERS, [])]),
    ok = call(Peer, gd_mim_node, start,
              [#{hosts => [?GLOBAL, LocalHost], version => Version,
                 module => module_toml(LocalHost, Ports), pool => pool_toml(Config)}]),
    Peer.

%% dc1 (MongooseIM 6.8's router) and dc2 (6.0-6.6's), each aware of the other.
start_two(Config) ->
    P1 = start_node(host(1), [gd_redis:free_port()], '6.8', Config),
    P2 = start_node(host(2), [gd_redis:free_port()], '6.6', Config),
    ok = call(P1, gd_mim_node, await_peer, [host(2)]),
    ok = call(P2, gd_mim_node, await_peer, [host(1)]),
    {P1, P2}.

call(Peer, M, F, A) ->
    peer:call(Peer, M, F, A, 30000).

wait_until(Fun) ->
    gd_wait:within(Fun, ?WAIT).

message(Body) ->
    {xmlel, <<"message">>, #{<<"type">> => <<"chat">>},
     [{xmlel, <<"body">>, #{}, [{xmlcdata, Body}]}]}.

routed(P) ->
    call(P, gd_mim_node, routed, []).

error_children(Packet) ->
    {xmlel, _, #{<<"type">> := <<"error">>}, Children} = Packet,
    [{Attrs, Conditions} || {xmlel, <<"error">>, Attrs, Conditions} <- Children].

%%--------------------------------------------------------------------
%% Configuration and start

%% Every call the facade makes to a MongooseIM module (the imports of its
%% beams) exists, with that arity, in the stand-in of that module: the
%% stand-ins are what the calls were checked against (tests/STANDINS.md).
facade_calls_exist_in_standins(_Config) ->
    Mim = [ejabberd_router, gen_hook, gen_mod, jid, jlib, mongoose_acc, mongoose_config,
           mongoose_config_spec, mongoose_disco, mongoose_instrument, mongoose_router,
           mongoose_xmpp_errors],
    Calls = lists:usort(
              lists:append(
                [[MFA || {M, _, _} = MFA <- imports(Facade), lists:member(M, Mim)]
                 || Facade <- [mod_global_distrib, mod_global_distrib_instrument]])),
    ?assertNotEqual([], Calls),
    %% ejabberd_router:route/4 is the 6.0-6.6 API: loaded as in 6.6.
    ok = mim_standin:set_mongoose_version(both),
    Missing = [MFA || {M, F, A} = MFA <- Calls,
                      not (code:ensure_loaded(M) =:= {module, M}
                           andalso erlang:function_exported(M, F, A))],
    ?assertEqual([], Missing),
    ct:log("facade calls into MongooseIM: ~p", [Calls]).

imports(Module) ->
    {ok, {Module, [{imports, Imports}]}} = beam_lib:chunks(code:which(Module), [imports]),
    Imports.

%% MongooseIM's own config test (test/config_parser_SUITE_data/modules.toml
%% and the expected map in test/common/config_parser_helper.erl, 6.8.0)
%% processed through the facade's config_spec/0 gives MongooseIM's map.
config_spec_processes_as_mongooseim(Config) ->
    ok = mim_standin:start(),
    %% The parser's `filename' validator wants the files to exist.
    [Cert, Key, Ca] = [pem_file(Config, N) || N <- ["cert.pem", "dc1.pem", "ca.pem"]],
    Toml = #{<<"global_host">> => <<"example.com">>,
             <<"local_host">> => <<"datacenter1.example.com">>,
             <<"connections">> =>
                 #{<<"endpoints">> => [#{<<"host">> => <<"172.16.0.2">>, <<"port">> => 5555}],
                   <<"advertised_endpoints">> =>
                       [#{<<"host">> => <<"172.16.0.2">>, <<"port">> => 5555}],
                   <<"tls">> => #{<<"certfile">> => Cert, <<"keyfile">> => Key,
                                  <<"cacertfile">> => Ca},
                   <<"connections_per_endpoint">> => 30},
             <<"cache">> => #{<<"domain_lifetime_seconds">> => 60},
             <<"bounce">> => #{<<"resend_after_ms">> => 300, <<"max_retries">> => 3},
             <<"redis">> => #{<<"pool">> => <<"global_distrib">>}},
    Opts = mongoose_config_parser_toml:process_module(mod_global_distrib, Toml),
    #{connections := #{tls := Tls} = Conns} = Opts,
    ?assertEqual(#{global_host => <<"example.com">>,
                   local_host => <<"datacenter1.example.com">>,
                   message_ttl => 4,
                   hosts_refresh_interval => 3000,
                   bounce => #{enabled => true, max_retries => 3, resend_after_ms => 300},
                   cache => #{cache_missed => true, domain_lifetime_seconds => 60,
                              jid_lifetime_seconds => 5, max_jids => 10000},
                   redis => #{pool => global_distrib, expire_after => 120, refresh_after => 60},
                   connections => #{endpoints => [{"172.16.0.2", 5555}],
                                    advertised_endpoints => [{"172.16.0.2", 5555}],
                                    resolved_endpoints => [{{172, 16, 0, 2}, 5555}],
                                    connections_per_endpoint => 30,
                                    endpoint_refresh_interval => 60,
                                    endpoint_refresh_interval_when_empty => 3,
                                    disabled_gc_interval => 60,
                                    tls => Tls}},
                 Opts#{connections := Conns}),
    %% MongooseIM's TLS defaults come with the given files.
    ?assertMatch(#{certfile := _, keyfile := _, cacertfile := _, verify_mode := peer,
                   disconnect_on_failure := true, crl_files := []}, Tls),
    ?assertEqual({binary_to_list(Cert), binary_to_list(Key), binary_to_list(Ca)},
                 {maps:get(certfile, Tls), maps:get(keyfile, Tls), maps:get(cacertfile, Tls)}),
    %% Ours: Redis Cluster seed nodes, a list of binaries.
    Seeds = [<<"redis://10.0.0.1:7000">>, <<"redis://10.0.0.2:7000">>],
    #{redis := Redis} = mongoose_config_parser_toml:process_module(
                          mod_global_distrib,
                          Toml#{<<"redis">> => #{<<"cluster">> => Seeds}}),
    ?assertEqual(#{pool => global_distrib, expire_after => 120, refresh_after => 60,
                   cluster => Seeds}, Redis).

pem_file(Config, Name) ->
    Path = filename:join(?config(priv_dir, Config), Name),
    ok = file:write_file(Path, <<"-----BEGIN CERTIFICATE-----\n">>),
    list_to_binary(Path).

%% A bad option stops the start with an error naming it: in the TOML (the
%% config parser), or one only the runtime can judge (gen_mod re-raises
%% start/2's error, which aborts MongooseIM's start). Nothing is left
%% running or hooked after a failed start.
bad_option_aborts_start(Config) ->
    ok = mim_standin:start(),
    ok = mim_standin:set_config(hosts, [?GLOBAL, host(1)]),
    Pools = mongoose_config_parser_toml:process_outgoing_pools(
              #{<<"redis">> => #{<<"global_distrib">> => pool_toml(Config)}}),
    ok = mim_standin:set_config(outgoing_pools, Pools),
    Toml = module_toml(host(1), [gd_redis:free_port()]),
    %% The parser: a negative TTL.
    {config_error, _, [ParseError | _]} =
        catch_error(fun() ->
                            mongoose_config_parser_toml:process_module(
                              mod_global_distrib, Toml#{<<"message_ttl">> => -1})
                    end),
    ?assertMatch(#{toml_path := "modules.mod_global_distrib.message_ttl"}, ParseError),
    %% The runtime: an unknown cipher suite.
    Conns = maps:get(<<"connections">>, Toml),
    BadTls = Conns#{<<"tls">> => #{<<"certfile">> => cert_file(Config),
                                   <<"keyfile">> => cert_file(Config),
                                   <<"cacertfile">> => cert_file(Config),
                                   <<"ciphers">> => <<"NOT-A-CIPHER">>}},
    Opts = mongoose_config_parser_toml:process_module(mod_global_distrib,
                                                      Toml#{<<"connections">> => BadTls}),
    {mod_global_distrib, start_failed, {config, Msg}} =
        catch_error(fun() -> mim_standin:ensure_started(?GLOBAL, mod_global_distrib, Opts) end),
    ?assertMatch({match, _}, re:run(Msg, "connections\\.tls\\.ciphers")),
    %% A pool that MongooseIM's configuration does not have.
    NoPool = mongoose_config_parser_toml:process_module(
               mod_global_distrib, Toml#{<<"redis">> => #{<<"pool">> => <<"elsewhere">>}}),
    {mod_global_distrib, start_failed, {config, PoolMsg}} =
        catch_error(fun() ->
                            mim_standin:ensure_started(?GLOBAL, mod_global_distrib, NoPool)
                    end),
    ?assertMatch({match, _}, re:run(PoolMsg, "elsewhere")),
    %% A cluster seed that is not a redis:// URL (checked by the runtime).
    BadSeed = mongoose_config_parser_toml:process_module(
                mod_global_distrib,
                Toml#{<<"redis">> => #{<<"cluster">> => [<<"http://10.0.0.1:7000">>]}}),
    {mod_global_distrib, start_failed, {config, SeedMsg}} =
        catch_error(fun() ->
                            mim_standin:ensure_started(?GLOBAL, mod_global_distrib, BadSeed)
                    end),
    ?assertMatch({match, _}, re:run(SeedMsg, "redis\\.cluster\\[0\\]")),
    ?assertEqual(undefined, mod_global_distrib:runtime()),
    ?assertEqual([], [C || {mod_global_distrib_instrument, _, _, _} = C
                               <- supervisor:which_children(global_distrib_sup)]),
    %% No filter_packet handler: routing goes on untouched.
    Drop = {jid:from_binary(<<"a@example.com/r">>), jid:from_binary(<<"b@example.com/r">>),
            mongoose_acc:new(#{location => #{mfa => {?MODULE, ?FUNCTION_NAME, 1}},
                               lserver => ?GLOBAL, host_type => ?GLOBAL}),
            message(<<"x">>)},
    ?assertEqual(Drop, mim_standin:filter_packet(Drop)).

catch_error(Fun) ->
    try Fun() of
        R -> ct:fail({no_error, R})
    catch
        error:E -> E
    end.

%% Any existing file does for the parser: the cipher is refused first.
cert_file(Config) ->
    pem_file(Config, "any.pem").

%% Started for both host types; only global_host starts a runtime and
%% registers hooks (filter_packet and the component hooks global, the
%% session and disco hooks for the global host's host type).
starts_once_for_global_host(Config) ->
    P = start_node(host(1), [gd_redis:free_port()], '6.8', Config),
    Pools = call(P, supervisor, which_children, [global_distrib_sup]),
    ?assertEqual(1, length([Id || {{pool, _} = Id, _, _, _} <- Pools])),
    ?assertEqual(mongoose_router, call(P, mod_global_distrib, router, [])),
    ?assertEqual([{disco_local_items, ?GLOBAL}, {filter_packet, global},
                  {packet_to_component, global}, {register_subhost, global},
                  {sm_register_connection, ?GLOBAL}, {sm_remove_connection, ?GLOBAL},
                  {unregister_subhost, global}],
                 call(P, gd_mim_node, handlers, [])).

%% dc1 runs MongooseIM 6.8's router, dc2 6.0-6.6's: stanzas cross in both
%% directions through filter_packet and reach local routing at the
%% recipient's DC only, with the router of that DC's version.
chat_across_dcs_and_versions(Config) ->
    {P1, P2} = start_two(Config),
    ?assertEqual(mongoose_router, call(P1, mod_global_distrib, router, [])),
    ?assertEqual(ejabberd_router, call(P2, mod_global_distrib, router, [])),
    ok = call(P1, gd_mim_node, login, [<<"alice@example.com/a">>]),
    ok = call(P2, gd_mim_node, login, [<<"bob@example.com/b">>]),
    Hi = message(<<"hi bob">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi]),
    wait_until(fun() ->
                       routed(P2) =:= [{<<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi}]
               end),
    ?assertEqual([], routed(P1)),
    Reply = message(<<"hi alice">>),
    ok = call(P2, gd_mim_node, send, [<<"bob@example.com/b">>, <<"alice@example.com/a">>, Reply]),
    wait_until(fun() ->
                       routed(P1) =:= [{<<"bob@example.com/b">>, <<"alice@example.com/a">>, Reply}]
               end),
    %% A recipient here passes filter_packet untouched, at once.
    ok = call(P1, gd_mim_node, login, [<<"carol@example.com/c">>]),
    Local = message(<<"local">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"carol@example.com/c">>, Local]),
    ?assert(lists:member({<<"alice@example.com/a">>, <<"carol@example.com/c">>, Local},
                         routed(P1))).

%% The runtime's metrics reach mongoose_instrument under MongooseIM 6.8's
%% event names, with the DC as the `host' measurement, and every metric
%% value is one the metric type accepts (the stand-in checks like the
%% Prometheus handler).
instrumentation_events_have_mongooseim_names(Config) ->
    {P1, P2} = start_two(Config),
    ok = call(P2, gd_mim_node, login, [<<"bob@example.com/b">>]),
    Msgs = [message(integer_to_binary(I)) || I <- lists:seq(1, 5)],
    [ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, M])
     || M <- Msgs],
    wait_until(fun() -> length(routed(P2)) =:= 5 end),
    ok = call(P1, gd_mim_node, flush_instrument, []),
    ok = call(P2, gd_mim_node, flush_instrument, []),
    E1 = call(P1, gd_mim_node, events, []),
    E2 = call(P2, gd_mim_node, events, []),
    Sum = fun(Name, Events) ->
                  lists:sum([C || {N, #{}, #{count := C, host := <<"dc2.example.com">>}} <- Events,
                                  N =:= Name])
          end,
    ?assertEqual(5, Sum(mod_global_distrib_outgoing_messages, E1)),
    ?assertEqual(5, lists:sum([C || {mod_global_distrib_incoming_messages, #{},
                                     #{count := C, host := <<"dc1.example.com">>}} <- E2])),
    ?assert(lists:any(fun({mod_global_distrib_outgoing_established, #{}, #{host := _}}) -> true;
                         (_) -> false
                      end, E1)),
    ?assert(lists:any(fun({mod_global_distrib_delivered_with_ttl, #{}, #{value := V}}) ->
                              is_integer(V);
                         (_) -> false
                      end, E2)),
    ?assertEqual([], call(P1, mim_standin, instrument_errors, [])),
    ?assertEqual([], call(P2, mim_standin, instrument_errors, [])),
    %% The bounce queue gauge is a probe, as in MongooseIM.
    ?assertEqual(#{size => 0},
                 call(P1, mod_global_distrib, probe, [mod_global_distrib_bounce_queue, #{}, #{}])).

%% MongooseIM's offline semantics: a recipient in no DC is held by bounce,
%% then its stanza continues local routing here (mod_offline would store
%% it): no error reply. The same for a domain outside the GD map (s2s).
recipient_found_nowhere_continues_local_routing(Config) ->
    {P1, _P2} = start_two(Config),
    Msg = message(<<"are you there?">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"nobody@example.com">>, Msg]),
    %% Held first (bounce retries), not routed at once.
    ?assertEqual([], routed(P1)),
    wait_until(fun() ->
                       routed(P1) =:= [{<<"alice@example.com/a">>, <<"nobody@example.com">>, Msg}]
               end),
    Fed = message(<<"federated">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"carol@other.org/c">>, Fed]),
    wait_until(fun() ->
                       call(P1, gd_mim_node, s2s_routed, []) =:=
                           [{<<"alice@example.com/a">>, <<"carol@other.org/c">>, Fed}]
               end),
    %% No error reply went to alice meanwhile.
    ?assertEqual([{<<"alice@example.com/a">>, <<"nobody@example.com">>, Msg}], routed(P1)).

%% A known DC that stays unreachable: the sender gets service-unavailable
%% with code 503, routed to it like any stanza.
unreachable_dc_answers_service_unavailable(Config) ->
    {P1, P2} = start_two(Config),
    ok = call(P1, gd_mim_node, login, [<<"alice@example.com/a">>]),
    ok = call(P2, gd_mim_node, login, [<<"bob@example.com/b">>]),
    First = message(<<"first">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, First]),
    wait_until(fun() -> routed(P2) =/= [] end),
    %% Its acknowledgement is back (else it would be given back and answered
    %% with an error too: at-least-once, docs/PROTOCOL.md).
    wait_until(fun() -> maps:get(in_flight, call(P1, gd_mim_node, info, [])) =:= 0 end),
    %% dc2 goes away without a word: its sessions stay in Redis.
    ok = peer:stop(P2),
    Lost = message(<<"lost">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, Lost]),
    wait_until(fun() -> routed(P1) =/= [] end),
    [{<<"bob@example.com/b">>, <<"alice@example.com/a">>, Reply}] = routed(P1),
    [{ErrAttrs, [{xmlel, <<"service-unavailable">>, _, _}]}] = error_children(Reply),
    ?assertMatch(#{<<"code">> := <<"503">>, <<"type">> := <<"cancel">>}, ErrAttrs),
    %% The body of the stanza is sent back with the error.
    {xmlel, <<"message">>, _, Children} = Reply,
    ?assert(lists:member({xmlel, <<"body">>, #{}, [{xmlcdata, <<"lost">>}]}, Children)).

%% A session this node holds is local whatever the store says: with Redis
%% flushed, alice -> bob (both at dc1) is routed locally at once.
local_sessions_survive_store_flush(Config) ->
    {P1, _P2} = start_two(Config),
    ok = call(P1, gd_mim_node, login, [<<"alice@example.com/a">>]),
    ok = call(P1, gd_mim_node, login, [<<"bob@example.com/b">>]),
    ok = gd_redis:flushall(redis_port(Config)),
    %% The caches forget (jid_lifetime_seconds = 1).
    timer:sleep(1200),
    Hi = message(<<"still here">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi]),
    %% Synchronous: filter_packet let it through, local routing got it.
    ?assertEqual([{<<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi}], routed(P1)).

%% MongooseIM's test_update_senders_host_by_ejd_service: a component on
%% node A of dc1, stanzas from dc2 arriving at node B of dc1 (A has no
%% listener), the sender's store entry gone. Node B learns the sender's DC
%% from the stanza, node A when the stanza reaches the component
%% (packet_to_component): both can answer eve.
sender_cached_on_component_node(Config) ->
    A = start_node(host(1), [], '6.8', Config),
    B = start_node(host(1), [gd_redis:free_port()], '6.8', Config),
    Asia = start_node(host(2), [gd_redis:free_port()], '6.8', Config),
    ok = call(Asia, gd_mim_node, await_peer, [host(1)]),
    Service = <<"service.example.com">>,
    ok = call(A, gd_mim_node, register_subhost, [Service, false]),
    %% The component's route exists on every node of the cluster.
    _ = [call(N, mim_standin, register_route, [Service, component]) || N <- [A, B]],
    Eve = <<"eve@example.com/e">>,
    ok = call(Asia, gd_mim_node, login, [Eve]),
    ok = call(Asia, gd_mim_node, store_del, [[Eve, <<"eve@example.com">>]]),
    Hi = message(<<"hi service">>),
    ok = call(Asia, gd_mim_node, send, [Eve, Service, Hi]),
    wait_until(fun() -> routed(B) =:= [{Eve, Service, Hi}] end),
    %% Cluster routing hands the stanza to A, where the component is.
    {From, To, Acc} = call(B, gd_mim_node, last_routed_to, [Service]),
    ok = call(A, gd_mim_node, packet_to_component, [Acc, From, To]),
    ?assertEqual({remote, host(2)}, call(A, gd_mim_node, lookup, [Eve])),
    ?assertEqual({remote, host(2)}, call(B, gd_mim_node, lookup, [Eve])).

%% Component and MUC domains: registered only when a subdomain of the
%% global host alone; disco shows the public ones to users (mod_disco's
%% users_can_see_hidden_services = false) and all to servers; routing to a
%% room reaches the DC that serves it.
subhosts_and_disco(Config) ->
    {P1, P2} = start_two(Config),
    ok = call(P1, gd_mim_node, set_module_opts,
              [mod_disco, #{users_can_see_hidden_services => false}]),
    Muc = <<"muc.example.com">>,
    Hidden = <<"hidden.example.com">>,
    Own = <<"muc.dc2.example.com">>,
    ok = call(P2, gd_mim_node, register_subhost, [Muc, false]),
    ok = call(P2, gd_mim_node, register_subhost, [Hidden, true]),
    ok = call(P2, gd_mim_node, register_subhost, [Own, false]),
    _ = call(P2, mim_standin, register_route, [Muc, muc]),
    wait_until(fun() ->
                       lists:member(Muc, call(P1, gd_mim_node, disco, [<<"alice@example.com/a">>]))
               end),
    UserSees = call(P1, gd_mim_node, disco, [<<"alice@example.com/a">>]),
    ServerSees = call(P1, gd_mim_node, disco, [<<"example.com">>]),
    ?assertNot(lists:member(Hidden, UserSees)),
    ?assert(lists:member(Hidden, ServerSees)),
    ?assert(lists:member(Muc, ServerSees)),
    ?assertNot(lists:member(Own, ServerSees)),
    ToRoom = message(<<"to the room">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"room@muc.example.com/n">>,
                                      ToRoom]),
    wait_until(fun() ->
                       routed(P2) =:= [{<<"alice@example.com/a">>, <<"room@muc.example.com/n">>,
                                        ToRoom}]
               end),
    ok = call(P2, gd_mim_node, unregister_subhost, [Muc]),
    wait_until(fun() ->
                       not lists:member(Muc, call(P1, gd_mim_node, disco, [<<"example.com">>]))
               end).

%% A payload naming an atom the VM never saw: binary_to_term(_, [safe])
%% refuses it; the facade logs and drops it, nothing is routed.
unsafe_payload_is_refused(Config) ->
    P = start_node(host(1), [gd_redis:free_port()], '6.8', Config),
    Name = <<"gd_never_seen_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    Unsafe = <<131, 104, 3, 109, 0:32, 109, 0:32, 119, (byte_size(Name)), Name/binary>>,
    Meta = #{to => <<"bob@example.com/b">>, from => <<"x@example.com/y">>, reason => undefined,
             origin => host(2)},
    ok = call(P, mod_global_distrib, deliver, [?GLOBAL, deliver, Meta, Unsafe]),
    %% A JID the parser refuses is dropped the same way.
    BadJid = term_to_binary({<<"x@example.com/y">>, <<"@@">>, message(<<"?">>)}),
    ok = call(P, mod_global_distrib, deliver, [?GLOBAL, deliver, Meta, BadJid]),
    ?assertEqual([], routed(P)),
    ?assertNot(call(P, gd_mim_node, atom_exists, [Name])).

%% stop/1 for every host type: hooks removed, runtime and instrumentation
%% reader gone, events torn down; routing goes on without global routing.
stop_removes_everything(Config) ->
    {P1, P2} = start_two(Config),
    ok = call(P2, gd_mim_node, login, [<<"bob@example.com/b">>]),
    ok = call(P1, gd_mim_node, stop, []),
    ?assertEqual(undefined, call(P1, mod_global_distrib, runtime, [])),
    ?assertEqual([], [C || {mod_global_distrib_instrument, _, _, _} = C
                               <- call(P1, supervisor, which_children, [global_distrib_sup])]),
    Hi = message(<<"no gd">>),
    ok = call(P1, gd_mim_node, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi]),
    ?assertEqual([{<<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi}], routed(P1)),
    %% Set up again from scratch: the events were torn down.
    ok = call(P1, gd_mim_node, start_again, []),
    ?assertNotEqual(undefined, call(P1, mod_global_distrib, runtime, [])).
