#!/usr/bin/env escript
%%! -noshell
%% The demo of native/core/examples/demo.rs with every datacenter a separate
%% Erlang node (OTP peer, standard_io: no epmd, no distribution) running one
%% global_distrib runtime through the Erlang API, all sharing a Redis server.
%%
%%   rebar3 compile && escript scripts/demo_nodes.escript redis://127.0.0.1:6379
%%
%% Story: users log in at different DCs, chat across DCs, one moves to another
%% DC in the middle of the conversation (bounce holds the stanzas that raced
%% with the move), a DC goes down (senders get undeliverable) and comes back
%% on the same endpoint, then the metrics of every DC.
-mode(compile).

main([Url]) ->
    try
        run(Url)
    catch
        C:R:St ->
            io:format(standard_error, "demo failed: ~p:~p~n~p~n", [C, R, St]),
            halt(1)
    end;
main(_) ->
    io:format(standard_error, "usage: demo_nodes.escript redis://HOST:PORT[/DB]~n", []),
    halt(2).

root() ->
    filename:dirname(filename:dirname(filename:absname(escript:script_name()))).

ebin() ->
    filename:join([root(), "_build", "default", "lib", "global_distrib", "ebin"]).

host_module() ->
    Src = filename:join([root(), "scripts", "gd_demo_host.erl"]),
    {ok, Mod, Bin} = compile:file(Src, [binary, report_errors]),
    {Mod, Src, Bin}.

start_node(N, Url, Port, {Mod, Src, Bin}) ->
    Peer = case peer:start_link(#{connection => standard_io, args => ["-pa", ebin()]}) of
               {ok, P} -> P;
               {ok, P, _} -> P
           end,
    {module, Mod} = peer:call(Peer, code, load_binary, [Mod, Src, Bin]),
    {ok, Host, Listen} = call(Peer, start, [N, Url, Port]),
    io:format("  ~s (its own Erlang node) listening on ~p~n", [Host, Listen]),
    Peer.

call(Peer, F, A) ->
    peer:call(Peer, gd_demo_host, F, A, 30000).

host(N) ->
    iolist_to_binary(["dc", integer_to_list(N), ".example.com"]).

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    ok = gen_tcp:close(S),
    Port.

%% Waits (at most Ms) for Cond; the demo goes on either way.
settle(Cond, Ms) ->
    settle_until(Cond, erlang:monotonic_time(millisecond) + Ms).

settle_until(Cond, Deadline) ->
    case Cond() orelse erlang:monotonic_time(millisecond) > Deadline of
        true -> ok;
        false -> timer:sleep(20), settle_until(Cond, Deadline)
    end.

count(Peer, What) ->
    maps:get(What, call(Peer, counts, [])).

run(Url) ->
    true = filelib:is_dir(ebin()) orelse error({not_built, ebin(), "run rebar3 compile first"}),
    Code = host_module(),
    io:format("== Three datacenters of example.com on loopback, each a separate Erlang node, "
              "sharing Redis at ~s~n", [Url]),
    Ports = [free_port() || _ <- [1, 2, 3]],
    [P1, P2, P3a] = [start_node(N, Url, lists:nth(N, Ports), Code) || N <- [1, 2, 3]],
    [ok = call(P, await_peer, [host(H)]) || {P, N} <- [{P1, 1}, {P2, 2}, {P3a, 3}],
                                            H <- [1, 2, 3], H =/= N],

    io:format("~n== Users log in at different datacenters~n"),
    call(P1, login, [<<"alice@example.com/phone">>]),
    call(P2, login, [<<"bob@example.com/laptop">>]),
    call(P3a, login, [<<"carol@example.com/desktop">>]),

    io:format("~n== They chat across datacenters~n"),
    call(P1, send, [<<"alice@example.com/phone">>, <<"bob@example.com/laptop">>,
                    <<"Hi Bob, how is DC2?">>]),
    settle(fun() -> count(P2, delivered) >= 1 end, 10000),
    call(P2, send, [<<"bob@example.com/laptop">>, <<"alice@example.com/phone">>,
                    <<"Sunny. Carol is in DC3.">>]),
    call(P3a, send, [<<"carol@example.com/desktop">>, <<"alice@example.com">>,
                     <<"Hello Alice (bare JID)!">>]),
    settle(fun() -> count(P1, delivered) >= 2 end, 10000),

    io:format("~n== Bob moves from dc2 to dc3 in the middle of the conversation~n"),
    call(P2, logout, [<<"bob@example.com/laptop">>]),
    call(P1, send, [<<"alice@example.com/phone">>, <<"bob@example.com/laptop">>,
                    <<"Bob, are you there?">>]),
    call(P1, send, [<<"alice@example.com/phone">>, <<"bob@example.com/laptop">>,
                    <<"(sent while you moved)">>]),
    settle(fun() -> call(P2, bounce_queue_size, []) >= 2 end, 5000),
    io:format("  dc2 no longer has bob: it holds ~b stanza(s) in bounce, retrying with backoff~n",
              [call(P2, bounce_queue_size, [])]),
    call(P3a, login, [<<"bob@example.com/laptop">>]),
    call(P1, send, [<<"alice@example.com/phone">>, <<"bob@example.com/laptop">>,
                    <<"Found you in dc3.">>]),
    settle(fun() -> count(P3a, delivered) >= 3 end, 10000),

    io:format("~n== dc3 goes down (its runtime stops, then its node)~n"),
    {ok, Left} = call(P3a, stop, []),
    peer:stop(P3a),
    io:format("  dc3 stopped (~b in-flight stanzas reported)~n", [Left]),
    T0 = erlang:monotonic_time(millisecond),
    call(P1, send, [<<"alice@example.com/phone">>, <<"carol@example.com/desktop">>,
                    <<"Carol? (dc3 is down)">>]),
    settle(fun() -> count(P1, failed) >= 1 end, 30000),
    io:format("  (undeliverable after ~b ms of bounce retries)~n",
              [erlang:monotonic_time(millisecond) - T0]),

    io:format("~n== dc3 comes back on the same endpoint, a new node; nobody else restarts~n"),
    P3 = start_node(3, Url, lists:nth(3, Ports), Code),
    call(P3, login, [<<"carol@example.com/desktop">>]),
    ok = call(P1, await_peer, [host(3)]),
    Deadline = erlang:monotonic_time(millisecond) + 20000,
    welcome_back(P1, P3, Deadline),

    io:format("~n== Metrics (non-zero only)~n"),
    Peers = [{host(1), P1}, {host(2), P2}, {host(3), P3}],
    print_metrics([{H, call(P, metrics, [])} || {H, P} <- Peers]),
    [begin catch call(P, stop, []), peer:stop(P) end || {_, P} <- Peers],
    ok.

welcome_back(P1, P3, Deadline) ->
    call(P1, send, [<<"alice@example.com/phone">>, <<"carol@example.com/desktop">>,
                    <<"Welcome back, Carol!">>]),
    settle(fun() -> count(P3, delivered) >= 1 end, 2000),
    case count(P3, delivered) >= 1 orelse erlang:monotonic_time(millisecond) > Deadline of
        true -> ok;
        false -> welcome_back(P1, P3, Deadline)
    end.

print_metrics(PerDc) ->
    Prefix = <<"global.mod_global_distrib.">>,
    Short = fun(Name) ->
                    case string:prefix(Name, Prefix) of
                        nomatch -> Name;
                        Rest -> Rest
                    end
            end,
    Cell = fun(0) -> skip;
              (V) when is_integer(V) -> integer_to_list(V);
              (#{count := 0}) -> skip;
              (#{count := C, p50 := P50, p99 := P99}) ->
                   lists:flatten(io_lib:format("n=~b p50=~b p99=~b", [C, P50, P99]))
           end,
    Ndc = length(PerDc),
    Rows = lists:foldl(
             fun({I, {_, Metrics}}, Acc) ->
                     maps:fold(
                       fun(Name, V, A) ->
                               case Cell(V) of
                                   skip -> A;
                                   Text ->
                                       K = binary_to_list(Short(Name)),
                                       Row = maps:get(K, A, lists:duplicate(Ndc, "-")),
                                       A#{K => setnth(I, Row, Text)}
                               end
                       end, Acc, Metrics)
             end, #{}, lists:zip(lists:seq(1, Ndc), PerDc)),
    Width = lists:max([6 | [length(K) || K <- maps:keys(Rows)]]),
    io:format("  ~-*s", [Width, "metric"]),
    [io:format(" | ~-28s", [H]) || {H, _} <- PerDc],
    io:format("~n"),
    [begin
         io:format("  ~-*s", [Width, K]),
         [io:format(" | ~-28s", [C]) || C <- Cells],
         io:format("~n")
     end || {K, Cells} <- lists:sort(maps:to_list(Rows))],
    ok.

setnth(1, [_ | T], X) -> [X | T];
setnth(N, [H | T], X) -> [H | setnth(N - 1, T, X)].
