%% Each datacenter as a separate Erlang node (OTP peer, standard_io
%% connection: no distribution needed), sharing a real redis-server started
%% by the suite on a free port; mutual TLS between the DCs in the main
%% group, certificates made with the openssl CLI.
-module(global_distrib_peer_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, suite/0, init_per_suite/1, end_per_suite/1,
         init_per_group/2, end_per_group/2, init_per_testcase/2, end_per_testcase/2]).
-export([pm_between_nodes_both_directions/1, message_before_presence_arrives/1,
         recipient_gone_continues_local_routing/1, dc_down_and_back/1,
         throughput_between_nodes/1, foreign_ca_peer_is_refused/1,
         dead_node_pruned_on_refresh/1, redis_restarted_mid_traffic/1]).

-define(WAIT, 15000).
-define(REDIS_PID, {?MODULE, redis_os_pid}).

suite() ->
    [{timetrap, {minutes, 3}}].

all() ->
    [{group, tls}, {group, plain}].

groups() ->
    Cases = [pm_between_nodes_both_directions, message_before_presence_arrives,
             recipient_gone_continues_local_routing, dc_down_and_back,
             dead_node_pruned_on_refresh, redis_restarted_mid_traffic],
    [{tls, [sequence], Cases ++ [throughput_between_nodes, foreign_ca_peer_is_refused]},
     {plain, [sequence], Cases}].

init_per_suite(Config) ->
    case gd_redis:start() of
        {skip, _} = Skip ->
            Skip;
        {ok, #{port := Port, os_pid := OsPid}} ->
            %% A case may restart redis-server (SPEC 11.14): the OS pid of
            %% the one running now is kept where every process sees it.
            persistent_term:put(?REDIS_PID, OsPid),
            Certs = make_certs(?config(priv_dir, Config)),
            [{redis_port, Port}, {certs, Certs} | Config]
    end.

end_per_suite(_Config) ->
    stop_redis(persistent_term:get(?REDIS_PID, undefined)),
    _ = persistent_term:erase(?REDIS_PID),
    ok.

%% Starts redis-server on Port again and records its OS pid.
start_redis(Port) ->
    {ok, #{os_pid := OsPid}} = gd_redis:start_on(Port),
    persistent_term:put(?REDIS_PID, OsPid).

%% Kills the current redis-server and waits until its port refuses.
kill_redis(Port) ->
    stop_redis(persistent_term:get(?REDIS_PID)),
    persistent_term:put(?REDIS_PID, undefined),
    wait_until(fun() ->
                       case gen_tcp:connect({127, 0, 0, 1}, Port, [], 200) of
                           {ok, S} -> gen_tcp:close(S), false;
                           {error, _} -> true
                       end
               end).

stop_redis(undefined) ->
    ok;
stop_redis(OsPid) ->
    gd_redis:stop(#{os_pid => OsPid}).

init_per_group(Group, Config) ->
    [{tls, Group =:= tls} | Config].

end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(Case, Config) ->
    %% A clean Redis per case: no state leaks between cases (only database
    %% 0 is supported, so FLUSHALL).
    ok = gd_redis:flushall(?config(redis_port, Config)),
    Db = 0,
    %% Routing from cache while Redis is down needs entries that outlive it.
    CacheLifetime = case Case of redis_restarted_mid_traffic -> 60; _ -> 1 end,
    Config1 = [{cache_lifetime, CacheLifetime} | Config],
    Peers = [start_dc(N, Db, Config1) || N <- [1, 2]],
    _ = [ok = call(P, gd_test_host, await_peer, [host(3 - N)]) || {N, P} <- Peers],
    [{peers, Peers}, {db, Db} | Config1].

end_per_testcase(_Case, Config) ->
    LongSchedules = lists:append([case catch call(P, gd_test_host, nif_long_schedules, []) of
                                      L when is_list(L) -> L;
                                      _ -> []
                                  end || {_, P} <- ?config(peers, Config)]),
    [begin catch call(P, gd_test_host, stop, []), catch peer:stop(P) end
     || {_, P} <- ?config(peers, Config)],
    case LongSchedules of
        [] -> ok;
        _ -> {fail, {long_schedule_in_nif, LongSchedules}}
    end.

host(N) ->
    iolist_to_binary(["dc", integer_to_list(N), ".example.com"]).

start_dc(N, Db, Config) ->
    Peer = gd_redis:start_peer(),
    TlsOpt = case ?config(tls, Config) of
                 true ->
                     {_, Dir} = ?config(certs, Config),
                     Name = binary_to_list(host(N)),
                     %% dc3's certificate comes from another CA.
                     Ca = filename:join(Dir, case N of 3 -> "ca2.crt"; _ -> "ca.crt" end),
                     [{tls, [{certfile, filename:join(Dir, Name ++ ".crt")},
                             {keyfile, filename:join(Dir, Name ++ ".key")},
                             {cacertfile, Ca}]}];
                 false ->
                     [{tls, false}]
             end,
    Cfg = [{global_host, "example.com"},
           {local_host, host(N)},
           {node_name, "node" ++ integer_to_list(N) ++ "@localhost"},
           {hosts_refresh_interval, 200},
           {backend, redis},
           {redis, [{url, "redis://127.0.0.1:" ++ integer_to_list(?config(redis_port, Config))
                          ++ "/" ++ integer_to_list(Db)},
                    {refresh_after, 2}, {expire_after, 10}]},
           {connections, [{endpoints, [{"127.0.0.1", 0}]},
                          {endpoint_refresh_interval, 1},
                          {endpoint_refresh_interval_when_empty, 1},
                          {disabled_gc_interval, 1} | TlsOpt]},
           {bounce, [{resend_after_ms, 100}, {max_retries, 4}]},
           {cache, [{jid_lifetime_seconds, proplists:get_value(cache_lifetime, Config, 1)}]}],
    {ok, _} = call(Peer, gd_test_host, start, [Cfg]),
    {N, Peer}.

call(Peer, M, F, A) ->
    peer:call(Peer, M, F, A, 20000).

peer_of(N, Config) ->
    proplists:get_value(N, ?config(peers, Config)).

wait_until(Fun) ->
    gd_wait:within(Fun, ?WAIT).

wait_until(Fun, Deadline) ->
    gd_wait:until(Fun, Deadline).

%% A CA and one leaf per DC (DNS SAN = its local_host, usable as server and
%% client), with the openssl CLI.
make_certs(Dir) ->
    Sh = fun(Cmd) ->
                 Out = os:cmd("cd " ++ Dir ++ " && " ++ Cmd ++ " 2>&1; echo EXIT=$?"),
                 case string:find(Out, "EXIT=0") of
                     nomatch -> ct:fail({openssl, Cmd, Out});
                     _ -> ok
                 end
         end,
    [Sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
        "-subj /CN=gd-test-" ++ Ca ++ " -keyout " ++ Ca ++ ".key -out " ++ Ca ++ ".crt "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign")
     || Ca <- ["ca", "ca2"]],
    [begin
         Name = binary_to_list(host(N)),
         ok = file:write_file(filename:join(Dir, Name ++ ".ext"),
                              ["subjectAltName=DNS:", Name, ",IP:127.0.0.1\n",
                               "extendedKeyUsage=serverAuth,clientAuth\n",
                               "keyUsage=digitalSignature,keyEncipherment\n",
                               "authorityKeyIdentifier=keyid\n",
                               "basicConstraints=CA:FALSE\n"]),
         Sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            "-subj /CN=" ++ Name ++ " -keyout " ++ Name ++ ".key -out " ++ Name ++ ".csr"),
         Ca = case N of 3 -> "ca2"; _ -> "ca" end,
         Sh("openssl x509 -req -in " ++ Name ++ ".csr -CA " ++ Ca ++ ".crt -CAkey " ++ Ca ++ ".key "
            "-CAcreateserial -days 2 -extfile " ++ Name ++ ".ext -out " ++ Name ++ ".crt")
     end || N <- [1, 2, 3]],
    {filename:join(Dir, "ca.crt"), Dir}.

%%--------------------------------------------------------------------

pm_between_nodes_both_directions(Config) ->
    P1 = peer_of(1, Config),
    P2 = peer_of(2, Config),
    ok = call(P1, gd_test_host, login, [<<"alice@example.com/a">>]),
    ok = call(P2, gd_test_host, login, [<<"bob@example.com/b">>]),
    ?assertEqual({forwarded, host(2)},
                 call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, <<"hi bob">>])),
    ?assertEqual({forwarded, host(1)},
                 call(P2, gd_test_host, send, [<<"bob@example.com/b">>, <<"alice@example.com/a">>, <<"hi alice">>])),
    wait_until(fun() -> call(P2, gd_test_host, bodies_to, [<<"bob@example.com/b">>]) =:= [<<"hi bob">>] end),
    wait_until(fun() -> call(P1, gd_test_host, bodies_to, [<<"alice@example.com/a">>]) =:= [<<"hi alice">>] end).

message_before_presence_arrives(Config) ->
    P1 = peer_of(1, Config),
    P2 = peer_of(2, Config),
    ok = call(P1, gd_test_host, login, [<<"alice@example.com/a">>]),
    ok = call(P2, gd_test_host, login, [<<"bob@example.com/b">>]),
    ?assertEqual({forwarded, host(2)},
                 call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com">>, <<"bare">>])),
    wait_until(fun() -> call(P2, gd_test_host, bodies_to, [<<"bob@example.com">>]) =:= [<<"bare">>] end).

recipient_gone_continues_local_routing(Config) ->
    P1 = peer_of(1, Config),
    P2 = peer_of(2, Config),
    ok = call(P1, gd_test_host, login, [<<"alice@example.com/a">>]),
    ok = call(P2, gd_test_host, login, [<<"bob@example.com/b">>]),
    {forwarded, _} = call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, <<"first">>]),
    wait_until(fun() -> length(call(P2, gd_test_host, delivered, [])) =:= 1 end),
    ok = call(P2, gd_test_host, logout, [<<"bob@example.com/b">>]),
    _ = call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, <<"after">>]),
    %% Found nowhere: after bounce's retries, local routing at whichever DC
    %% held it (offline storage, as MongooseIM), marked in the meta.
    Unrouted = fun() -> [{M, P} || {_, deliver, #{reason := Why} = M, P}
                                       <- call(P1, gd_test_host, delivered, [])
                                          ++ call(P2, gd_test_host, delivered, []),
                                   Why =/= undefined]
               end,
    wait_until(fun() -> length(Unrouted()) =:= 1 end),
    [{#{to := <<"bob@example.com/b">>, reason := retries_exhausted}, <<"after">>}] = Unrouted(),
    ?assertEqual([], call(P1, gd_test_host, undeliverable, [])
                     ++ call(P2, gd_test_host, undeliverable, [])).

%% SPEC 11.8: a whole DC goes down; senders get undeliverable after
%% retries; when it comes back, traffic resumes without restarting dc1.
dc_down_and_back(Config) ->
    P1 = peer_of(1, Config),
    P2 = peer_of(2, Config),
    ok = call(P1, gd_test_host, login, [<<"alice@example.com/a">>]),
    ok = call(P2, gd_test_host, login, [<<"bob@example.com/b">>]),
    {forwarded, _} = call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, <<"before">>]),
    wait_until(fun() -> call(P2, gd_test_host, bodies_to, [<<"bob@example.com/b">>]) =:= [<<"before">>] end),
    %% dc2 dies without a word (its keys stay in Redis until they expire).
    peer:stop(P2),
    T0 = erlang:monotonic_time(millisecond),
    _ = call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, <<"while down">>]),
    %% Keep sending (a sender keeps talking): each stanza either reaches
    %% dc2 (it cannot) or comes back undeliverable after retries.
    wait_until(fun() ->
                       _ = call(P1, gd_test_host, send, [<<"alice@example.com/a">>,
                                                         <<"bob@example.com/b">>, <<"while down">>]),
                       receive after 200 -> ok end,
                       length(call(P1, gd_test_host, undeliverable, [])) >= 1
               end, T0 + 30000),
    ct:log("first undeliverable after ~b ms", [erlang:monotonic_time(millisecond) - T0]),
    %% dc2 comes back (a new node, same local_host); bob logs in again.
    {2, P2b} = start_dc(2, ?config(db, Config), Config),
    ok = call(P2b, gd_test_host, login, [<<"bob@example.com/b">>]),
    ok = call(P1, gd_test_host, await_peer, [host(2)]),
    wait_until(fun() ->
                       _ = call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, <<"back">>]),
                       lists:member(<<"back">>, call(P2b, gd_test_host, bodies_to, [<<"bob@example.com/b">>]))
               end),
    catch call(P2b, gd_test_host, stop, []),
    peer:stop(P2b).

%% End-to-end stanzas/s from dc1's Erlang API to dc2's delivery callback.
throughput_between_nodes(Config) ->
    P1 = peer_of(1, Config),
    P2 = peer_of(2, Config),
    ok = call(P2, gd_test_host, login, [<<"bob@example.com/b">>]),
    N = 20000,
    {forwarded, _} = call(P1, gd_test_host, send, [<<"alice@example.com/a">>, <<"bob@example.com/b">>, <<"warm">>]),
    wait_until(fun() -> length(call(P2, gd_test_host, delivered, [])) =:= 1 end),
    T0 = erlang:monotonic_time(microsecond),
    ok = peer:call(P1, erlang, apply,
                   [fun() ->
                            Rt = gd_test_host:rt(),
                            lists:foreach(
                              fun(I) ->
                                      global_distrib:route(Rt, <<"alice@example.com/a">>,
                                                           <<"bob@example.com/b">>, message,
                                                           integer_to_binary(I))
                              end, lists:seq(1, N))
                    end, []], 60000),
    wait_until(fun() -> call(P2, gd_test_host, delivered_count, []) =:= N + 1 end),
    Us = erlang:monotonic_time(microsecond) - T0,
    Rate = N * 1000000 div max(Us, 1),
    ct:pal("~b stanzas dc1 -> dc2 (TLS, separate nodes) in ~b ms: ~b stanzas/s", [N, Us div 1000, Rate]),
    {comment, io_lib:format("~b stanzas/s", [Rate])}.

%% SPEC 11.15: a DC whose certificate comes from another CA is refused:
%% nothing reaches it, dc1 counts the failed connections.
foreign_ca_peer_is_refused(Config) ->
    P1 = peer_of(1, Config),
    {3, P3} = start_dc(3, 0, Config),
    try
        ok = call(P3, gd_test_host, login, [<<"carol@example.com/c">>]),
        ok = call(P1, gd_test_host, login, [<<"alice@example.com/a">>]),
        ok = call(P1, gd_test_host, await_peer, [host(3)]),
        Errored = <<"global.mod_global_distrib.outgoing.errored.dc3.example.com">>,
        wait_until(fun() ->
                           _ = call(P1, gd_test_host, send, [<<"alice@example.com/a">>,
                                                             <<"carol@example.com/c">>, <<"psst">>]),
                           receive after 100 -> ok end,
                           maps:get(Errored, call(P1, gd_test_host, metrics, []), 0) >= 1
                   end),
        ?assertEqual([], call(P3, gd_test_host, delivered, []))
    after
        catch call(P3, gd_test_host, stop, []),
        peer:stop(P3)
    end.

%% SPEC 11.11: a node that stopped refreshing long ago (its timestamp in
%% <host>#{nodes} is older than expire_after) is pruned by the next refresh.
dead_node_pruned_on_refresh(Config) ->
    P1 = peer_of(1, Config),
    Nodes = <<"dc1.example.com#{nodes}">>,
    {ok, [_]} = call(P1, gd_test_host, store_exec, [[{hset, Nodes, <<"ghost@localhost">>, <<"1000">>}]]),
    {ok, [Before]} = call(P1, gd_test_host, store_exec, [[{hgetall, Nodes}]]),
    ?assert(lists:keymember(<<"ghost@localhost">>, 1, Before)),
    ok = call(P1, gd_test_host, refresh_now, []),
    {ok, [After]} = call(P1, gd_test_host, store_exec, [[{hgetall, Nodes}]]),
    ?assertEqual([<<"node1@localhost">>], [F || {F, _} <- After]).

%% SPEC 11.14: Redis restarted (empty) mid-traffic: dc1 keeps routing to
%% bob from its cache while Redis is down, a refresh while it is down fails
%% quietly, and after it comes back the next refresh of each node restores
%% everything it owns; traffic and new logins work again.
redis_restarted_mid_traffic(Config) ->
    P1 = peer_of(1, Config),
    P2 = peer_of(2, Config),
    Port = ?config(redis_port, Config),
    Alice = <<"alice@example.com/a">>,
    Bob = <<"bob@example.com/b">>,
    ok = call(P1, gd_test_host, login, [Alice]),
    ok = call(P2, gd_test_host, login, [Bob]),
    {forwarded, _} = call(P1, gd_test_host, send, [Alice, Bob, <<"before">>]),
    wait_until(fun() -> call(P2, gd_test_host, bodies_to, [Bob]) =:= [<<"before">>] end),
    kill_redis(Port),
    try
        During = [iolist_to_binary(["during", integer_to_list(I)]) || I <- lists:seq(1, 20)],
        [?assertEqual({forwarded, host(2)}, call(P1, gd_test_host, send, [Alice, Bob, B]))
         || B <- During],
        wait_until(fun() -> call(P2, gd_test_host, bodies_to, [Bob]) =:= [<<"before">> | During] end),
        %% A refresh while Redis is down fails quietly.
        ct:log("refresh while down: ~p", [call(P1, gd_test_host, refresh_now, [])])
    after
        start_redis(Port)
    end,
    Get = fun(P, K) -> {ok, [V]} = call(P, gd_test_host, store_exec, [[{get, K}]]), V end,
    %% The store stays known down for up to a second after the last failure
    %% (the circuit, docs/REDIS.md): calls through the runtime fail at once
    %% until then.
    wait_until(fun() -> call(P1, gd_test_host, store_exec, [[{get, Bob}]]) =:= {ok, [nil]} end),
    ok = call(P1, gd_test_host, refresh_now, []),
    ok = call(P2, gd_test_host, refresh_now, []),
    ?assertEqual(host(2), Get(P1, Bob)),
    ?assertEqual(host(2), Get(P1, <<"bob@example.com">>)),
    ?assertEqual(host(1), Get(P2, Alice)),
    {ok, [Hosts]} = call(P1, gd_test_host, store_exec, [[{smembers, <<"hosts">>}]]),
    ?assertEqual([host(1), host(2)], lists:sort(Hosts)),
    {ok, [Eps]} = call(P1, gd_test_host, store_exec,
                       [[{smembers, <<"dc2.example.com#node2@localhost#{endpoints}">>}]]),
    #{listen := [{_, Dc2Port}]} = call(P2, gd_test_host, info, []),
    ?assertEqual([<<"127.0.0.1#", (integer_to_binary(Dc2Port))/binary>>], Eps),
    %% Traffic goes on, and a login made after the restart is found through
    %% the restored store.
    {forwarded, _} = call(P1, gd_test_host, send, [Alice, Bob, <<"after">>]),
    ok = call(P2, gd_test_host, login, [<<"carol@example.com/c">>]),
    ?assertEqual({remote, host(2)}, call(P1, gd_test_host, lookup, [<<"carol@example.com/c">>])),
    wait_until(fun() -> lists:member(<<"after">>, call(P2, gd_test_host, bodies_to, [Bob])) end).
