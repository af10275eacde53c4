%% @doc B5 and B6 of the benchmark suite (driven by `native/bench/src/erlang.rs'):
%% the global_distrib NIF driven from Erlang. One run per invocation:
%%
%%   erl -noshell -sname gd_bench_OSPID -pa DIR -pa .../global_distrib/ebin \
%%       -run gd_bench_nif main full|smoke RedisUrl Ca Dc1Cert Dc1Key Dc2Cert Dc2Key
%%
%% The controller (this VM) starts two OTP `peer' nodes (standard_io
%% connection, so they die with it) on its own code path: node A runs
%% datacenter dc1.example.com, node B dc2.example.com, both on the given
%% redis-server, with mutual TLS between them. On B `bob@example.com/b' is
%% logged in; B's delivery callback ({@link deliver/3}) counts deliveries in
%% an atomics array and, while recording, the latency of each stanza.
%%
%% B5, end to end through the Erlang API on A to the callback on B, after a
%% warm-up (`await_peer', one stanza from each of the 100 sender JIDs,
%% all delivered: the route is cached and the connection up):
%% <ul>
%% <li>throughput: 10 processes on A call `global_distrib:route/5' with a
%%   512-byte payload as fast as they can, 100 sender JIDs spread over them,
%%   `Total' stanzas in all; rate = Total / (first send on A to the last
%%   delivery on B), both read from the OS clock shared by the nodes.</li>
%% <li>latency at 20 000 stanzas/s for `LatSecs' s: one paced sender on A
%%   sends whatever its schedule (from a start time) says is due, every ms;
%%   each payload starts with its send time (`os:system_time(microsecond)',
%%   64 bits) and B's callback records now minus that; p50/p99/max over all
%%   of them.</li>
%% <li>long_schedule: during both, `erlang:system_monitor/2' with
%%   `{long_schedule, 5}' on both nodes; every event is counted, whatever
%%   its cause (details on stderr). 0 shows that no process, the senders
%%   calling the NIF included, held a scheduler for 5 ms or more.</li>
%% </ul>
%% Every stanza must arrive (and none be reported undeliverable) within a
%% deadline, or the run fails. The outgoing queue of dc1 is sized to hold a
%% whole burst, so that the rate is the pipeline's and not bounce's.
%%
%% B6, on node A (dc1 caches bob's location for an hour): the cost of a
%% cached `global_distrib:route/5' (the B5 stanza, answered inline with
%% `{forwarded, _}'; any other answer fails the run, and so does a mapping
%% cache miss during the loop, which would mean a call waited for the store)
%% beside `ets:lookup/2' on a set of 10 000 entries: batches of 1000 calls,
%% each timed with `erlang:monotonic_time(nanosecond)', median ns per call.
%% Between route batches, untimed, A waits until the batch has been written
%% to dc2, so each batch runs without a backlog of earlier ones.
%%
%% Output (stdout): `GD_ROW\t<key>\t<number>' for `b5_rate', `b5_p50_us',
%% `b5_p99_us', `b5_max_us', `b5_long_schedule', `b6_route_ns',
%% `b6_lookup_ns', `b6_ets_ns', `b6_route_held_ns'; or `GD_ERROR\t<reason>'
%% and exit status 1 (also on any exception and when the watchdog fires).
%% Progress goes to stderr.
-module(gd_bench_nif).

-export([main/1]).
%% Run inside the peer nodes, through peer:call/5.
-export([start_dc/1, stop_dc/0, login/1, await_peer/1, reset_sink/2, sink_status/0,
         latency_stats/0, watch_start/0, watch_stop/0, warm_up/0, send_burst/2,
         send_paced/2, cached_route_cost/1]).
%% The delivery callback of both runtimes.
-export([deliver/3]).

-define(TO, <<"bob@example.com/b">>).
%% Logged in nowhere: bounce holds what is sent to it (B6, held pair).
-define(NOBODY, <<"nobody@example.com/x">>).
-define(SENDERS, 10).
-define(FROM_JIDS, 100).
-define(PAYLOAD_BYTES, 512).
-define(LATENCY_RATE, 20000).
-define(BATCH, 1000).
-define(ETS_ENTRIES, 10000).
-define(WATCHDOG_MS, 300000).
-define(CALL_MS, 120000).
-define(AWAIT_PEER_MS, 15000).
-define(WARM_UP_MS, 15000).
-define(DRAIN_MS, 10000).
-define(WRITTEN, <<"global.mod_global_distrib.outgoing.messages.dc2.example.com">>).
-define(CACHE_MISSES, <<"global.mod_global_distrib.mapping_cache_misses">>).
%% The peers' logger writes to stderr: their stdout is the peer connection,
%% and what they print through `user' ends on the controller's stdout.
-define(PEER_LOGGER, "[{handler,default,logger_std_h,#{config=>#{type=>standard_error}}}]").

%% Slots of the sink (atomics) of each node.
-define(DELIVERED, 1).
-define(UNDELIVERABLE, 2).
-define(RECORDING, 3).
-define(TARGET, 4).
-define(TARGET_REACHED_AT, 5).
-define(SINK_SLOTS, 5).
-define(SINK, {?MODULE, sink}).
-define(RT, {?MODULE, rt}).
-define(LATENCIES, gd_bench_nif_latencies).
-define(WATCHER, gd_bench_nif_watcher).

%%--------------------------------------------------------------------
%% Controller

-spec main([string()]) -> no_return().
main(Args) ->
    log_to_stderr(),
    start_watchdog(),
    try run(options(Args)) of
        Rows ->
            [io:format("GD_ROW\t~s\t~s~n", [Key, io_lib:format("~.3f", [float(Value)])])
             || {Key, Value} <- Rows],
            erlang:halt(0)
    catch
        throw:{bench_failed, Reason} ->
            fail(Reason);
        Class:Reason:Stack ->
            progress("~p:~p~n~p", [Class, Reason, Stack]),
            fail(io_lib:format("~p:~0p", [Class, Reason]))
    end.

-spec options([string()]) -> map().
options([Mode, RedisUrl, Ca, Dc1Cert, Dc1Key, Dc2Cert, Dc2Key]) when Mode =:= "full";
                                                                    Mode =:= "smoke" ->
    Sizes = case Mode of
                "full" -> #{total => 600000, latency_secs => 5, b6_batches => 1000};
                "smoke" -> #{total => 5000, latency_secs => 1, b6_batches => 100}
            end,
    Sizes#{redis_url => RedisUrl, ca => Ca,
           certs => #{1 => {Dc1Cert, Dc1Key}, 2 => {Dc2Cert, Dc2Key}}};
options(Args) ->
    bench_failed("usage: gd_bench_nif main full|smoke RedisUrl CaFile Dc1Cert Dc1Key "
                 "Dc2Cert Dc2Key (got ~0p)", [Args]).

-spec run(map()) -> [{string(), number()}].
run(#{total := Total, latency_secs := LatencySecs, b6_batches := Batches} = Opts) ->
    A = start_peer(),
    B = start_peer(),
    ok = call(A, start_dc, [dc_config(1, Opts)]),
    ok = call(B, start_dc, [dc_config(2, Opts)]),
    ok = call(A, await_peer, [host(2)]),
    ok = call(B, await_peer, [host(1)]),
    ok = call(B, login, [?TO]),
    warm_up(A, B),
    ok = call(A, watch_start, []),
    ok = call(B, watch_start, []),
    Rate = throughput(A, B, Total),
    ok = paced_run(A, B, LatencySecs),
    LongSchedules = long_schedules("A (dc1)", A) + long_schedules("B (dc2)", B),
    {P50, P99, Max} = latency(B, LatencySecs),
    {RouteNs, LookupNs, EtsNs, HeldNs} = call(A, cached_route_cost, [Batches]),
    progress("B6: cached route() ~.1f ns/call (~.1f with one pair held in bounce), "
             "cached lookup() ~.1f ns/call, ets:lookup ~.1f ns/call (median of ~b x ~b)",
             [RouteNs, HeldNs, LookupNs, EtsNs, Batches, ?BATCH]),
    ok = call(A, stop_dc, []),
    ok = call(B, stop_dc, []),
    ok = peer:stop(A),
    ok = peer:stop(B),
    [{"b5_rate", Rate}, {"b5_p50_us", P50}, {"b5_p99_us", P99}, {"b5_max_us", Max},
     {"b5_long_schedule", LongSchedules}, {"b6_route_ns", RouteNs},
     {"b6_lookup_ns", LookupNs}, {"b6_ets_ns", EtsNs}, {"b6_route_held_ns", HeldNs}].

%% A peer node on the controller's code path (OTP's own directories aside);
%% linked to this process, and halting when the controller's VM goes.
-spec start_peer() -> pid().
start_peer() ->
    Root = code:root_dir(),
    Paths = [D || D <- code:get_path(), not lists:prefix(Root, D)],
    Args = lists:append([["-pa", D] || D <- Paths]) ++ ["-kernel", "logger", ?PEER_LOGGER],
    case peer:start_link(#{connection => standard_io, args => Args}) of
        {ok, Peer} -> Peer;
        {ok, Peer, _Node} -> Peer
    end.

-spec dc_config(1 | 2, map()) -> [{atom(), term()}].
dc_config(N, #{redis_url := Url, ca := Ca, certs := Certs}) ->
    {Cert, Key} = maps:get(N, Certs),
    [{global_host, <<"example.com">>},
     {local_host, host(N)},
     {node_name, "gd_bench_dc" ++ integer_to_list(N) ++ "@localhost"},
     {backend, redis},
     {redis, [{url, Url}]},
     {connections, [{endpoints, [{"127.0.0.1", 0}]},
                    {endpoint_refresh_interval_when_empty, 1},
                    {outgoing_queue_size, 1000000},
                    {tls, [{certfile, Cert}, {keyfile, Key}, {cacertfile, Ca}]}]},
     {cache, [{jid_lifetime_seconds, 3600}]}].

%% One stanza from each sender JID, all delivered: bob's location is cached
%% at dc1 and the connection to dc2 is up.
-spec warm_up(pid(), pid()) -> ok.
warm_up(A, B) ->
    ok = call(B, reset_sink, [?FROM_JIDS, false]),
    check_outcomes("warm-up", call(A, warm_up, [])),
    _ = await_delivered(A, B, ?FROM_JIDS, ?WARM_UP_MS, "warm-up"),
    ok.

%% B5 throughput: stanzas/s from the first send on A to the last delivery on B.
-spec throughput(pid(), pid(), pos_integer()) -> float().
throughput(A, B, Total) ->
    ok = call(B, reset_sink, [Total, false]),
    {StartUs, Outcomes} = call(A, send_burst, [Total, ?SENDERS]),
    check_outcomes("throughput", Outcomes),
    #{target_reached_at := EndUs} =
        await_delivered(A, B, Total, 30000 + Total div 10, "throughput"),
    Rate = Total * 1.0e6 / max(EndUs - StartUs, 1),
    progress("B5 throughput: ~b stanzas dc1 -> dc2 in ~.1f ms: ~b stanzas/s",
             [Total, (EndUs - StartUs) / 1000, round(Rate)]),
    Rate.

%% B5 latency: ?LATENCY_RATE stanzas/s for Secs s, all delivered, their
%% latency recorded on B.
-spec paced_run(pid(), pid(), pos_integer()) -> ok.
paced_run(A, B, Secs) ->
    Total = ?LATENCY_RATE * Secs,
    ok = call(B, reset_sink, [Total, true]),
    check_outcomes("latency", call(A, send_paced, [?LATENCY_RATE, Total])),
    _ = await_delivered(A, B, Total, 30000, "latency"),
    ok.

%% {p50, p99, max} in µs of the latencies recorded by paced_run/3.
-spec latency(pid(), pos_integer()) -> {integer(), integer(), integer()}.
latency(B, Secs) ->
    Total = ?LATENCY_RATE * Secs,
    {Count, P50, P99, Max} = call(B, latency_stats, []),
    ok = call(B, reset_sink, [0, false]),
    Count =:= Total orelse bench_failed("latency: ~b samples for ~b stanzas", [Count, Total]),
    progress("B5 latency at ~b stanzas/s for ~b s: p50 ~b us, p99 ~b us, max ~b us",
             [?LATENCY_RATE, Secs, P50, P99, Max]),
    {P50, P99, Max}.

%% Polls B until Total stanzas are delivered there (the delivery that
%% reached the target has noted its time); fails after TimeoutMs, or as soon
%% as either node reported a stanza undeliverable.
-spec await_delivered(pid(), pid(), pos_integer(), pos_integer(), string()) -> map().
await_delivered(A, B, Total, TimeoutMs, Phase) ->
    await_delivered(A, B, Total, erlang:monotonic_time(millisecond) + TimeoutMs, TimeoutMs, Phase).

-spec await_delivered(pid(), pid(), pos_integer(), integer(), pos_integer(), string()) -> map().
await_delivered(A, B, Total, Deadline, TimeoutMs, Phase) ->
    #{delivered := Delivered, undeliverable := LostB, target_reached_at := ReachedAt} =
        Status = call(B, sink_status, []),
    #{undeliverable := LostA} = call(A, sink_status, []),
    LostA + LostB =:= 0
        orelse bench_failed("~s: ~b stanzas reported undeliverable", [Phase, LostA + LostB]),
    if
        ReachedAt > 0 ->
            Delivered =:= Total
                orelse progress("~s: ~b deliveries for ~b stanzas", [Phase, Delivered, Total]),
            Status;
        true ->
            erlang:monotonic_time(millisecond) < Deadline
                orelse bench_failed("~s: ~b of ~b stanzas delivered within ~b ms",
                                    [Phase, Delivered, Total, TimeoutMs]),
            receive after 10 -> ok end,
            await_delivered(A, B, Total, Deadline, TimeoutMs, Phase)
    end.

%% route() answers other than `{forwarded, _}', by answer: `stored' ones
%% are resent by bounce (and awaited like the others), any other fails.
-spec check_outcomes(string(), #{term() => pos_integer()}) -> ok.
check_outcomes(_Phase, Outcomes) when map_size(Outcomes) =:= 0 ->
    ok;
check_outcomes(Phase, #{stored := N} = Outcomes) when map_size(Outcomes) =:= 1 ->
    progress("~s: ~b stanzas held by bounce (route() answered stored)", [Phase, N]);
check_outcomes(Phase, Outcomes) ->
    bench_failed("~s: route() answered ~0p", [Phase, Outcomes]).

%% Stops the long_schedule watch of a node: the number of events.
-spec long_schedules(string(), pid()) -> non_neg_integer().
long_schedules(Node, Peer) ->
    Events = call(Peer, watch_stop, []),
    [progress("long_schedule on node ~s: ~s", [Node, E]) || E <- Events],
    length(Events).

-spec call(pid(), atom(), [term()]) -> term().
call(Peer, Function, Args) ->
    peer:call(Peer, ?MODULE, Function, Args, ?CALL_MS).

-spec log_to_stderr() -> ok.
log_to_stderr() ->
    ok = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}).

-spec start_watchdog() -> pid().
start_watchdog() ->
    spawn(fun() ->
                  receive after ?WATCHDOG_MS -> ok end,
                  fail(io_lib:format("watchdog: no result after ~b s", [?WATCHDOG_MS div 1000]))
          end).

-spec bench_failed(string(), [term()]) -> no_return().
bench_failed(Format, Args) ->
    throw({bench_failed, io_lib:format(Format, Args)}).

-spec fail(unicode:chardata()) -> no_return().
fail(Reason) ->
    OneLine = string:replace(lists:flatten(io_lib:format("~ts", [Reason])), "\n", " ", all),
    Text = string:slice(string:replace(OneLine, "\t", " ", all), 0, 1000),
    io:format("GD_ERROR\t~ts~n", [Text]),
    erlang:halt(1).

-spec progress(string(), [term()]) -> ok.
progress(Format, Args) ->
    io:format(standard_error, "gd_bench_nif: " ++ Format ++ "~n", Args).

%%--------------------------------------------------------------------
%% Both peer nodes

%% Starts this node's datacenter, its sink and the table of latencies.
-spec start_dc([{atom(), term()}]) -> ok.
start_dc(Config) ->
    Self = self(),
    %% The table outlives this call: a process of its own keeps it.
    _ = spawn(fun() ->
                      ?LATENCIES = ets:new(?LATENCIES, [named_table, public, set,
                                                        {write_concurrency, true}]),
                      Self ! latencies_ready,
                      receive after infinity -> ok end
              end),
    receive latencies_ready -> ok end,
    persistent_term:put(?SINK, atomics:new(?SINK_SLOTS, [{signed, true}])),
    case global_distrib:start(Config, #{callback => {?MODULE, deliver}}) of
        {ok, Rt} -> persistent_term:put(?RT, Rt);
        {error, Reason} -> error({start_dc, Reason})
    end.

-spec stop_dc() -> ok.
stop_dc() ->
    {ok, _} = global_distrib:stop(rt(), 5000),
    ok.

-spec login(binary()) -> ok.
login(Jid) ->
    case global_distrib:session_opened(rt(), Jid) of
        ok -> ok;
        {ok, pending} -> error({session_opened, Jid, store_write_pending});
        {error, Reason} -> error({session_opened, Jid, Reason})
    end.

-spec await_peer(binary()) -> ok.
await_peer(Host) ->
    case global_distrib:await_peer(rt(), Host, ?AWAIT_PEER_MS) of
        ok -> ok;
        {error, Reason} -> error({await_peer, Host, Reason})
    end.

%% @doc The delivery callback: counts deliveries (noting the OS time of the
%% one that reaches the target) and, while recording, their latency.
-spec deliver(deliver | undeliverable, global_distrib:meta(), binary()) -> ok | true.
deliver(deliver, _Meta, Payload) ->
    NowUs = os:system_time(microsecond),
    Sink = persistent_term:get(?SINK),
    N = atomics:add_get(Sink, ?DELIVERED, 1),
    case N =:= atomics:get(Sink, ?TARGET) of
        true -> atomics:put(Sink, ?TARGET_REACHED_AT, NowUs);
        false -> ok
    end,
    case atomics:get(Sink, ?RECORDING) of
        1 ->
            <<SentUs:64, _/binary>> = Payload,
            ets:insert(?LATENCIES, {N, NowUs - SentUs});
        0 ->
            ok
    end;
deliver(undeliverable, Meta, _Payload) ->
    atomics:add(persistent_term:get(?SINK), ?UNDELIVERABLE, 1),
    io:format(standard_error, "gd_bench_nif: undeliverable ~0p~n", [Meta]).

%% Zeroes the delivery count for a phase of Target stanzas; Recording says
%% whether latencies are recorded (those of the previous phase are dropped).
-spec reset_sink(non_neg_integer(), boolean()) -> ok.
reset_sink(Target, Recording) ->
    Sink = persistent_term:get(?SINK),
    atomics:put(Sink, ?RECORDING, 0),
    true = ets:delete_all_objects(?LATENCIES),
    atomics:put(Sink, ?DELIVERED, 0),
    atomics:put(Sink, ?TARGET_REACHED_AT, 0),
    atomics:put(Sink, ?TARGET, Target),
    atomics:put(Sink, ?RECORDING, case Recording of true -> 1; false -> 0 end).

-spec sink_status() -> #{delivered := non_neg_integer(), undeliverable := non_neg_integer(),
                         target_reached_at := integer()}.
sink_status() ->
    Sink = persistent_term:get(?SINK),
    #{delivered => atomics:get(Sink, ?DELIVERED),
      undeliverable => atomics:get(Sink, ?UNDELIVERABLE),
      target_reached_at => atomics:get(Sink, ?TARGET_REACHED_AT)}.

%% {Count, p50, p99, max} of the recorded latencies, in µs.
-spec latency_stats() -> {non_neg_integer(), integer(), integer(), integer()}.
latency_stats() ->
    Sorted = lists:sort([L || {_, L} <- ets:tab2list(?LATENCIES)]),
    Count = length(Sorted),
    Count > 0 orelse error(no_latency_recorded),
    Rank = fun(Q) -> lists:nth(max(1, ceil(Q * Count)), Sorted) end,
    {Count, Rank(0.50), Rank(0.99), lists:last(Sorted)}.

%% Starts counting long_schedule events of this node.
-spec watch_start() -> ok.
watch_start() ->
    Self = self(),
    Watcher = spawn(fun() ->
                            _ = erlang:system_monitor(self(), [{long_schedule, 5}]),
                            Self ! {watching, self()},
                            watch([])
                    end),
    receive {watching, Watcher} -> ok end,
    true = register(?WATCHER, Watcher),
    ok.

-spec watch([string()]) -> ok.
watch(Events) ->
    receive
        {monitor, Who, long_schedule, Info} ->
            watch([lists:flatten(io_lib:format("~0p ~0p", [Who, Info])) | Events]);
        {stop, From} ->
            _ = erlang:system_monitor(undefined),
            From ! {?WATCHER, lists:reverse(Events)},
            ok
    end.

%% Stops the watch: the long_schedule events seen, one line each.
-spec watch_stop() -> [string()].
watch_stop() ->
    ?WATCHER ! {stop, self()},
    receive {?WATCHER, Events} -> Events
    after 5000 -> error(watcher_gone)
    end.

%%--------------------------------------------------------------------
%% Node A (dc1): the senders

%% One stanza from each sender JID; answers other than `{forwarded, _}'.
-spec warm_up() -> #{term() => pos_integer()}.
warm_up() ->
    Rt = rt(),
    Payload = payload(),
    lists:foldl(fun(From, Odd) -> tally(global_distrib:route(Rt, From, ?TO, message, Payload), Odd) end,
                #{}, tuple_to_list(from_jids(1, 1))).

%% Total stanzas from Senders processes as fast as they go: the OS time
%% (µs) just before they start, and the answers other than `{forwarded, _}'.
-spec send_burst(pos_integer(), pos_integer()) -> {integer(), #{term() => pos_integer()}}.
send_burst(Total, Senders) ->
    Rt = rt(),
    Payload = payload(),
    Self = self(),
    Pids = [spawn_link(fun() ->
                               Froms = from_jids(I, Senders),
                               Count = Total div Senders + case I =< Total rem Senders of
                                                               true -> 1;
                                                               false -> 0
                                                           end,
                               receive go -> ok end,
                               Self ! {sent, self(), burst(Rt, Froms, Payload, Count, #{})}
                       end)
            || I <- lists:seq(1, Senders)],
    StartUs = os:system_time(microsecond),
    [Pid ! go || Pid <- Pids],
    Outcomes = [receive {sent, Pid, Odd} -> Odd end || Pid <- Pids],
    {StartUs, lists:foldl(fun merge_tally/2, #{}, Outcomes)}.

-spec burst(global_distrib:runtime(), tuple(), binary(), non_neg_integer(),
            #{term() => pos_integer()}) -> #{term() => pos_integer()}.
burst(_Rt, _Froms, _Payload, 0, Odd) ->
    Odd;
burst(Rt, Froms, Payload, N, Odd) ->
    From = element(N rem tuple_size(Froms) + 1, Froms),
    burst(Rt, Froms, Payload, N - 1, tally(global_distrib:route(Rt, From, ?TO, message, Payload), Odd)).

%% Total stanzas at Rate per second on a schedule from the start time: every
%% ms, whatever is due; each payload starts with its OS send time in µs.
-spec send_paced(pos_integer(), pos_integer()) -> #{term() => pos_integer()}.
send_paced(Rate, Total) ->
    Pad = binary:copy(<<"p">>, ?PAYLOAD_BYTES - 8),
    paced(rt(), from_jids(1, 1), Pad, Rate, Total, erlang:monotonic_time(microsecond), 0, #{}).

-spec paced(global_distrib:runtime(), tuple(), binary(), pos_integer(), pos_integer(),
            integer(), non_neg_integer(), #{term() => pos_integer()}) ->
          #{term() => pos_integer()}.
paced(_Rt, _Froms, _Pad, _Rate, Total, _StartUs, Total, Odd) ->
    Odd;
paced(Rt, Froms, Pad, Rate, Total, StartUs, Sent, Odd) ->
    Due = min(Total, (erlang:monotonic_time(microsecond) - StartUs) * Rate div 1000000),
    Odd1 = send_stamped(Rt, Froms, Pad, Sent, Due, Odd),
    receive after 1 -> ok end,
    paced(Rt, Froms, Pad, Rate, Total, StartUs, Due, Odd1).

-spec send_stamped(global_distrib:runtime(), tuple(), binary(), non_neg_integer(),
                   non_neg_integer(), #{term() => pos_integer()}) -> #{term() => pos_integer()}.
send_stamped(_Rt, _Froms, _Pad, Due, Due, Odd) ->
    Odd;
send_stamped(Rt, Froms, Pad, I, Due, Odd) ->
    From = element(I rem tuple_size(Froms) + 1, Froms),
    Payload = <<(os:system_time(microsecond)):64, Pad/binary>>,
    Outcome = global_distrib:route(Rt, From, ?TO, message, Payload),
    send_stamped(Rt, Froms, Pad, I + 1, Due, tally(Outcome, Odd)).

-spec tally(term(), #{term() => pos_integer()}) -> #{term() => pos_integer()}.
tally({forwarded, _}, Odd) ->
    Odd;
tally(Other, Odd) ->
    maps:update_with(Other, fun(C) -> C + 1 end, 1, Odd).

-spec merge_tally(#{term() => pos_integer()}, #{term() => pos_integer()}) ->
          #{term() => pos_integer()}.
merge_tally(A, B) ->
    maps:fold(fun(K, V, Acc) -> maps:update_with(K, fun(C) -> C + V end, V, Acc) end, B, A).

%% B6: {route ns/call, lookup ns/call, ets:lookup ns/call, route ns/call
%% with one pair held in bounce}, medians of Batches batches. lookup/2 is
%% the decision alone (where bob is, from the cache), the same question the
%% ETS lookup answers. For the held figure, before each batch (untimed) one
%% stanza from the same sender to a user logged in nowhere is routed and
%% must answer `stored': bounce holds that pair during the whole batch
%% (its retries back off from resend_after_ms, so one more per batch keeps
%% it held), while the timed routes go to bob.
-spec cached_route_cost(pos_integer()) -> {float(), float(), float(), float()}.
cached_route_cost(Batches) ->
    Rt = rt(),
    From = element(1, from_jids(1, 1)),
    Payload = payload(),
    Written0 = counter(Rt, ?WRITTEN),
    case global_distrib_nif:route(global_distrib:nif(Rt), From, ?TO, message, Payload) of
        {forwarded, _} -> ok;
        NotInline -> error({b6_route_not_cached_inline, NotInline})
    end,
    Misses0 = counter(Rt, ?CACHE_MISSES),
    Route = fun(Batch) ->
                    Ns = route_batch(Rt, From, Payload),
                    await_written(Rt, Written0 + 1 + Batch * ?BATCH,
                                  erlang:monotonic_time(millisecond) + ?DRAIN_MS),
                    Ns
            end,
    _ = Route(1),                               % warm-up, not counted
    RouteNs = median([Route(Batch) || Batch <- lists:seq(2, Batches + 1)]),
    %% lookup/2 and ets:lookup/2 in alternate batches, so that both see
    %% the same machine (the runtimes' threads still writing the routes
    %% above, the other node): their ratio is the target.
    Tab = ets:new(gd_bench_b6, [set, public, {read_concurrency, true}]),
    true = ets:insert(Tab, [{user(I), <<"dc2.example.com">>} || I <- lists:seq(1, ?ETS_ENTRIES)]),
    Key = user(?ETS_ENTRIES div 2),
    _ = lookup_batch(Rt),                       % warm-ups, not counted
    _ = ets_batch(Tab, Key),
    Pairs = [{lookup_batch(Rt), ets_batch(Tab, Key)} || _ <- lists:seq(1, Batches)],
    LookupNs = median([L || {L, _} <- Pairs]),
    EtsNs = median([E || {_, E} <- Pairs]),
    true = ets:delete(Tab),
    Misses = counter(Rt, ?CACHE_MISSES) - Misses0,
    Misses =:= 0 orelse error({b6_route_missed_cache, Misses}),
    %% After the miss check: the held pair's retries drop nobody's cache
    %% entries and ask the store again (bob's entry stays cached).
    Held = fun(Batch) ->
                   case global_distrib:route(Rt, From, ?NOBODY, message, Payload) of
                       stored -> ok;
                       NotHeld -> error({b6_nobody_not_held, NotHeld})
                   end,
                   Route(Batch)
           end,
    _ = Held(Batches + 2),                      % warm-up, not counted
    HeldNs = median([Held(Batch) || Batch <- lists:seq(Batches + 3, 2 * Batches + 2)]),
    {RouteNs, LookupNs, EtsNs, HeldNs}.

-spec lookup_batch(global_distrib:runtime()) -> float().
lookup_batch(Rt) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = lookup_loop(Rt, ?BATCH),
    (erlang:monotonic_time(nanosecond) - T0) / ?BATCH.

-spec lookup_loop(global_distrib:runtime(), non_neg_integer()) -> ok.
lookup_loop(_Rt, 0) ->
    ok;
lookup_loop(Rt, N) ->
    case global_distrib:lookup(Rt, ?TO) of
        {remote, _} -> lookup_loop(Rt, N - 1);
        Other -> error({b6_lookup_not_cached, Other})
    end.

-spec route_batch(global_distrib:runtime(), binary(), binary()) -> float().
route_batch(Rt, From, Payload) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = route_loop(Rt, From, Payload, ?BATCH),
    (erlang:monotonic_time(nanosecond) - T0) / ?BATCH.

-spec route_loop(global_distrib:runtime(), binary(), binary(), non_neg_integer()) -> ok.
route_loop(_Rt, _From, _Payload, 0) ->
    ok;
route_loop(Rt, From, Payload, N) ->
    case global_distrib:route(Rt, From, ?TO, message, Payload) of
        {forwarded, _} -> route_loop(Rt, From, Payload, N - 1);
        Other -> error({b6_route_not_forwarded, Other})
    end.

-spec ets_batch(ets:tid(), binary()) -> float().
ets_batch(Tab, Key) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = ets_loop(Tab, Key, ?BATCH),
    (erlang:monotonic_time(nanosecond) - T0) / ?BATCH.

-spec ets_loop(ets:tid(), binary(), non_neg_integer()) -> ok.
ets_loop(_Tab, _Key, 0) ->
    ok;
ets_loop(Tab, Key, N) ->
    [_] = ets:lookup(Tab, Key),
    ets_loop(Tab, Key, N - 1).

%% Waits until dc1 has written Target stanzas to dc2 in all.
-spec await_written(global_distrib:runtime(), pos_integer(), integer()) -> ok.
await_written(Rt, Target, Deadline) ->
    case counter(Rt, ?WRITTEN) >= Target of
        true ->
            ok;
        false ->
            erlang:monotonic_time(millisecond) < Deadline
                orelse error({b6_backlog_not_written, Target, counter(Rt, ?WRITTEN)}),
            receive after 1 -> ok end,
            await_written(Rt, Target, Deadline)
    end.

-spec counter(global_distrib:runtime(), binary()) -> non_neg_integer().
counter(Rt, Name) ->
    maps:get(Name, global_distrib:metrics(Rt), 0).

-spec median([float()]) -> float().
median(Samples) ->
    lists:nth((length(Samples) + 1) div 2, lists:sort(Samples)).

%%--------------------------------------------------------------------
%% Helpers of the peer nodes

-spec rt() -> global_distrib:runtime().
rt() ->
    persistent_term:get(?RT).

-spec host(1 | 2) -> binary().
host(N) ->
    <<"dc", (integer_to_binary(N))/binary, ".example.com">>.

-spec user(pos_integer()) -> binary().
user(N) ->
    <<"user", (integer_to_binary(N))/binary, "@example.com/r">>.

%% Sender JIDs number I, I + Step, ... up to ?FROM_JIDS.
-spec from_jids(pos_integer(), pos_integer()) -> tuple().
from_jids(I, Step) ->
    list_to_tuple([user(N) || N <- lists:seq(I, ?FROM_JIDS, Step)]).

-spec payload() -> binary().
payload() ->
    binary:copy(<<"x">>, ?PAYLOAD_BYTES).
