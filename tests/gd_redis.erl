%% A real redis-server for the suites: started on a free loopback port with
%% no persistence, flushed between cases, killed at the end, and a way to
%% start OTP peer nodes with the test code path.
-module(gd_redis).
-export([start/0, start_on/1, stop/1, flushall/1, free_port/0, wait_tcp/2, start_peer/0]).

%% @doc redis-server on a free port: `{ok, #{port, os_pid}}', or
%% `{skip, Why}' without redis-server.
-spec start() -> {ok, #{port := inet:port_number(), os_pid := non_neg_integer()}}
               | {skip, string()}.
start() ->
    start_on(free_port()).

%% @doc redis-server on `Port' (e.g. again, after a case killed it). The
%% Erlang port dies with the calling process and redis-server does not exit
%% when its stdin closes: stop/1 kills it by OS pid.
-spec start_on(inet:port_number()) ->
          {ok, #{port := inet:port_number(), os_pid := non_neg_integer()}} | {skip, string()}.
start_on(Port) ->
    case os:find_executable("redis-server") of
        false ->
            {skip, "redis-server not installed"};
        Exe ->
            P = open_port({spawn_executable, Exe},
                          [{args, ["--port", integer_to_list(Port), "--save", "",
                                   "--appendonly", "no", "--bind", "127.0.0.1"]},
                           exit_status, stderr_to_stdout]),
            {os_pid, OsPid} = erlang:port_info(P, os_pid),
            ok = wait_tcp(Port, erlang:monotonic_time(millisecond) + 10000),
            {ok, #{port => Port, os_pid => OsPid}}
    end.

-spec stop(#{os_pid := non_neg_integer()} | undefined) -> ok.
stop(#{os_pid := OsPid}) ->
    _ = os:cmd("kill " ++ integer_to_list(OsPid)),
    ok;
stop(undefined) ->
    ok.

-spec flushall(inet:port_number()) -> ok.
flushall(Port) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 2000),
    ok = gen_tcp:send(S, <<"*1\r\n$8\r\nFLUSHALL\r\n">>),
    {ok, <<"+OK\r\n">>} = gen_tcp:recv(S, 0, 2000),
    gen_tcp:close(S).

-spec free_port() -> inet:port_number().
free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    ok = gen_tcp:close(S),
    Port.

-spec wait_tcp(inet:port_number(), integer()) -> ok | {error, not_listening}.
wait_tcp(Port, Deadline) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, [], 200) of
        {ok, S} -> gen_tcp:close(S);
        {error, _} ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {error, not_listening};
                false -> receive after 20 -> wait_tcp(Port, Deadline) end
            end
    end.

%% @doc An OTP peer node (standard_io connection: no distribution needed)
%% with this node's build directories on its code path.
-spec start_peer() -> pid().
start_peer() ->
    Paths = [D || D <- code:get_path(), string:find(D, "_build") =/= nomatch],
    case peer:start_link(#{connection => standard_io,
                           args => lists:append([["-pa", D] || D <- Paths])}) of
        {ok, P} -> P;
        {ok, P, _Node} -> P
    end.
