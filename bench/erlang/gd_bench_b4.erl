%%% @doc B4: MongooseIM's mod_global_distrib inter-datacenter transport,
%%% re-implemented in plain Erlang as the baseline our Rust runtime is
%%% measured against in `make bench'.
%%%
%%% The point is a faithful reproduction of MongooseIM's pattern, not a
%%% tuned one, so the same processes and hand-offs are kept:
%%%
%%% <ul>
%%% <li>Sender side (`mod_global_distrib_sender' and
%%%   `mod_global_distrib_connection'): each sender process does
%%%   `term_to_binary({From, To, Acc, Packet})', prefixes the From key as
%%%   `<<FromLen:16, From/binary, Bin/binary>>' and hands it to the
%%%   connection gen_server with `cast_or_call' (a cast, or a call once the
%%%   connection's mailbox is above 500 messages: MongooseIM's only
%%%   back-pressure). The connection frames each message as
%%%   `<<Size:32, ClockUs:64, Data/binary>>' and writes it with
%%%   `gen_tcp:send/2' or `ssl:send/2', one write per stanza. Unlike
%%%   MongooseIM, ClockUs is taken by the sender when it sends, not by the
%%%   connection, so that latency is measured send-to-delivery.</li>
%%% <li>Receiver side (`mod_global_distrib_receiver'): one process per
%%%   connection with `{active, once}', appending to a buffer, splitting on
%%%   the 32-bit length prefix and handing each frame with `cast_or_call' to
%%%   the worker chosen by `erlang:phash2(From, N)'. Ranch's acceptor and the
%%%   protocol process are one process here: the receiver accepts its
%%%   connection itself.</li>
%%% <li>Delivery (`mod_global_distrib_worker'): a gen_server that does
%%%   `binary_to_term' and "delivers" the stanza: counts it and records
%%%   latency = `erlang:system_time(microsecond) - ClockUs'.
%%%   MongooseIM's worker_sup starts one worker per From key; here a fixed
%%%   pool of ?DELIVERY_WORKERS is used.</li>
%%% </ul>
%%%
%%% One invocation measures, each over a fresh listener, connection,
%%% receiver and workers: TCP throughput, TLS throughput (100 sender
%%% processes, one per From key, sending as fast as they can; timed from the
%%% first send until every stanza is delivered) and TLS latency at a paced
%%% ?LATENCY_RATE stanzas/s. CPU is user + system time of the whole BEAM
%%% (both sides of the link), read from /proc/self/stat like getrusage in
%%% the Rust driver: `erlang:statistics(runtime)' leaves out system time,
%%% which is most of the cost of a socket write. Schedulers run with the VM's
%%% defaults (busy-waiting included), as a MongooseIM node would.
%%%
%%% Run as
%%% `erl -noshell -run gd_bench_b4 main Mode CaFile ServerCert ServerKey
%%% ClientCert ClientKey [Total]', Mode being `full' or `smoke'. Prints
%%% `GD_ROW\t<key>\t<number>' lines on stdout, or `GD_ERROR\t<reason>' and
%%% exits with status 1.
-module(gd_bench_b4).
-behaviour(gen_server).

-export([main/1]).
-export([init/1, handle_continue/2, handle_call/3, handle_cast/2, handle_info/2]).

%% 100 distinct From keys, one sender process each.
-define(SENDER_KEYS, 100).
-define(PACKET_BYTES, 512).
%% Fixed rather than schedulers * 2 so the work split does not change with
%% the machine; on the 2-core bench machine the two choices agree.
-define(DELIVERY_WORKERS, 4).
%% mod_global_distrib_utils:cast_or_call/2's defaults.
-define(SYNC_WATERMARK, 500).
-define(SYNC_CALL_TIMEOUT, 5000).
-define(LATENCY_RATE, 20000).
-define(ACCEPT_TIMEOUT, 10000).
-define(DELIVERY_DEADLINE_MS, 60000).
-define(WATCHDOG_MS, 240000).
-define(SERVER_NAME, "dc1.example.com").

-record(tls_files, {ca :: string(),
                    server_cert :: string(),
                    server_key :: string(),
                    client_cert :: string(),
                    client_key :: string()}).

-type transport() :: gen_tcp | ssl.
-type socket() :: gen_tcp:socket() | ssl:sslsocket().

%% mod_global_distrib_connection
-record(connection, {transport :: transport(),
                     socket :: socket()}).

%% mod_global_distrib_receiver
-record(receiver, {transport :: transport(),
                   listen :: socket(),
                   socket :: socket() | undefined,
                   waiting_for = header :: header | non_neg_integer(),
                   buffer = <<>> :: binary(),
                   workers :: tuple()}).

%% mod_global_distrib_worker
-record(worker, {delivered :: counters:counters_ref(),
                 expected :: pos_integer(),
                 notify :: pid(),
                 latencies = [] :: [integer()]}).

%%--------------------------------------------------------------------
%% Entry point
%%--------------------------------------------------------------------

-spec main([string()]) -> no_return().
main(Args) ->
    log_to_stderr(),
    Main = self(),
    {Bench, Ref} = spawn_monitor(fun() -> Main ! {rows, self(), run(Args)} end),
    receive
        {rows, Bench, Rows} ->
            [io:format("GD_ROW\t~s\t~s~n", [Key, format_number(Value)])
             || {Key, Value} <- Rows],
            erlang:halt(0);
        {'DOWN', Ref, process, Bench, Reason} ->
            fail(Reason)
    after ?WATCHDOG_MS ->
        fail({watchdog, ?WATCHDOG_MS div 1000, seconds})
    end.

-spec fail(term()) -> no_return().
fail(Reason) ->
    Line = lists:flatten(io_lib:format("~0tP", [Reason, 40])),
    io:format("GD_ERROR\t~ts~n", [string:replace(Line, "\t", " ", all)]),
    erlang:halt(1).

%% Under -noshell, logger's default handler writes crash and TLS alert
%% reports to stdout; stdout is for GD_ROW/GD_ERROR lines only.
log_to_stderr() ->
    ok = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h,
                            #{config => #{type => standard_error},
                              formatter => {logger_formatter,
                                            #{single_line => true, chars_limit => 2000}}}).

format_number(Value) ->
    io_lib:format("~.3f", [float(Value)]).

run(Args) ->
    {Total, LatencySecs, Files} = parse_args(Args),
    {ok, _} = application:ensure_all_started(ssl),
    progress("B4: ~b stanzas per protocol, ~b s latency run, ~b delivery workers",
             [Total, LatencySecs, ?DELIVERY_WORKERS]),
    {TcpRate, TcpCpu} = throughput(gen_tcp, Files, Total),
    Watcher = count_long_schedules(),
    {TlsRate, TlsCpu} = throughput(ssl, Files, Total),
    {P50, P99, P999, Max} = latency(ssl, Files, ?LATENCY_RATE * LatencySecs),
    LongSchedules = stop_counting(Watcher),
    [{tcp_rate, TcpRate}, {tcp_cpu, TcpCpu},
     {tls_rate, TlsRate}, {tls_cpu, TlsCpu},
     {tls_p50_us, P50}, {tls_p99_us, P99}, {tls_p999_us, P999}, {tls_max_us, Max},
     {long_schedule, LongSchedules}].

%% The control for B5's long_schedule count: the same monitor over the TLS
%% runs of this pure-Erlang pattern. Events here cannot come from a NIF;
%% they are the OS taking a scheduler thread away on a busy machine.
count_long_schedules() ->
    Self = self(),
    Watcher = spawn_link(fun() ->
                                 _ = erlang:system_monitor(self(), [{long_schedule, 5}]),
                                 Self ! {watching, self()},
                                 count_events(0)
                         end),
    receive {watching, Watcher} -> Watcher end.

count_events(N) ->
    receive
        {monitor, _, long_schedule, _} -> count_events(N + 1);
        {stop, From} ->
            _ = erlang:system_monitor(undefined),
            From ! {long_schedules, self(), N}
    end.

stop_counting(Watcher) ->
    Watcher ! {stop, self()},
    receive {long_schedules, Watcher, N} -> N end.

parse_args([Mode, Ca, ServerCert, ServerKey, ClientCert, ClientKey | Rest]) ->
    Files = #tls_files{ca = Ca, server_cert = ServerCert, server_key = ServerKey,
                       client_cert = ClientCert, client_key = ClientKey},
    {DefaultTotal, LatencySecs} = case Mode of
                                      "full" -> {200000, 5};
                                      "smoke" -> {5000, 1};
                                      _ -> error({bad_mode, Mode})
                                  end,
    Total = case Rest of
                [] -> DefaultTotal;
                [Explicit] -> list_to_integer(Explicit)
            end,
    Total > 0 orelse error({bad_total, Total}),
    {Total, LatencySecs, Files};
parse_args(Args) ->
    error({usage, "main full|smoke CaFile ServerCert ServerKey ClientCert ClientKey [Total]",
           Args}).

progress(Format, Args) ->
    io:format(standard_error, "gd_bench_b4: " ++ Format ++ "~n", Args).

%%--------------------------------------------------------------------
%% Measurements
%%--------------------------------------------------------------------

%% Total stanzas from ?SENDER_KEYS sender processes as fast as they go;
%% returns {stanzas/s, CPU-s per million stanzas}.
throughput(Transport, Files, Total) ->
    Link = open_link(Transport, Files, Total),
    Keys = sender_keys(),
    Packet = packet(),
    Conn = maps:get(connection, Link),
    Senders = [spawn_sender(Conn, Key, Packet, Count)
               || {Key, Count} <- lists:zip(Keys, shares(Total, length(Keys)))],
    Cpu0 = cpu_ms(),
    T0 = erlang:monotonic_time(microsecond),
    [Sender ! go || Sender <- Senders],
    Sent = lists:sum([receive {sent, Sender, Count} -> Count end || Sender <- Senders]),
    await_delivery(Link, Sent),
    Micros = erlang:monotonic_time(microsecond) - T0,
    CpuMs = cpu_ms() - Cpu0,
    close_link(Link),
    Rate = Sent * 1.0e6 / Micros,
    CpuPerM = (CpuMs / 1000) / (Sent / 1.0e6),
    progress("~p: ~b stanzas in ~.3f s: ~.1f/s, ~.3f CPU-s/M",
             [Transport, Sent, Micros / 1.0e6, Rate, CpuPerM]),
    {Rate, CpuPerM}.

%% Count stanzas at ?LATENCY_RATE/s; returns {P50, P99, P99.9, Max} in µs
%% of send-to-delivery latency over every stanza.
latency(Transport, Files, Count) ->
    Link = open_link(Transport, Files, Count),
    Keys = list_to_tuple(sender_keys()),
    T0 = erlang:monotonic_time(microsecond),
    Sent = pace(maps:get(connection, Link), Keys, packet(), Count, T0, 0),
    Micros = erlang:monotonic_time(microsecond) - T0,
    await_delivery(Link, Sent),
    Latencies = lists:append([gen_server:call(Worker, take_latencies, ?DELIVERY_DEADLINE_MS)
                              || Worker <- maps:get(workers, Link)]),
    close_link(Link),
    length(Latencies) =:= Sent orelse error({latency_samples, length(Latencies), sent, Sent}),
    Sorted = list_to_tuple(lists:sort(Latencies)),
    Figures = {percentile(Sorted, 50), percentile(Sorted, 99), percentile(Sorted, 99.9),
               element(Sent, Sorted)},
    progress("~p latency: ~b stanzas at ~.1f/s; p50/p99/p99.9/max ~0p us",
             [Transport, Sent, Sent * 1.0e6 / Micros, Figures]),
    Figures.

%% Sends however many stanzas are due since T0 at ?LATENCY_RATE, then
%% sleeps a millisecond: the schedule is computed from the start time, so
%% timer lateness does not accumulate. Returns the number sent.
pace(_Conn, _Keys, _Packet, Count, _T0, Count) ->
    Count;
pace(Conn, Keys, Packet, Count, T0, Sent) ->
    Elapsed = erlang:monotonic_time(microsecond) - T0,
    Due = min(Count, Elapsed * ?LATENCY_RATE div 1000000),
    send_round_robin(Conn, Keys, Packet, Sent, Due),
    receive after 1 -> ok end,
    pace(Conn, Keys, Packet, Count, T0, Due).

send_round_robin(_Conn, _Keys, _Packet, Due, Due) ->
    ok;
send_round_robin(Conn, Keys, Packet, N, Due) ->
    send_stanza(Conn, element(N rem tuple_size(Keys) + 1, Keys), Packet),
    send_round_robin(Conn, Keys, Packet, N + 1, Due).

%% Nearest rank, as the Rust driver's stats::percentile.
percentile(Sorted, P) ->
    N = tuple_size(Sorted),
    element(min(N, max(1, ceil(P / 100 * N))), Sorted).

%% Waits until the workers have delivered Sent stanzas, at most
%% ?DELIVERY_DEADLINE_MS; anything short of every stanza is an error.
await_delivery(#{delivered := Delivered}, Sent) ->
    receive
        all_delivered -> ok
    after ?DELIVERY_DEADLINE_MS -> ok
    end,
    case counters:get(Delivered, 1) of
        Sent -> ok;
        Got -> error({delivered, Got, sent, Sent, after_ms, ?DELIVERY_DEADLINE_MS})
    end.

%% User + system CPU time of this OS process, in ms (clock ticks of 10 ms).
cpu_ms() ->
    {ok, Stat} = file:read_file("/proc/self/stat"),
    [_Pid, AfterComm] = binary:split(Stat, <<") ">>),
    Fields = binary:split(AfterComm, <<" ">>, [global]),
    %% Fields 14 and 15 of proc(5), counted from the state field (3).
    UTime = binary_to_integer(lists:nth(12, Fields)),
    STime = binary_to_integer(lists:nth(13, Fields)),
    (UTime + STime) * 10.

%%--------------------------------------------------------------------
%% Senders (mod_global_distrib_sender:send/2)
%%--------------------------------------------------------------------

sender_keys() ->
    [{<<"user", (integer_to_binary(I))/binary, "@dc2.example.com/res">>,
      <<"user", (integer_to_binary(I))/binary, "@dc1.example.com/res">>}
     || I <- lists:seq(1, ?SENDER_KEYS)].

packet() ->
    binary:copy(<<"x">>, ?PACKET_BYTES).

%% Total split over N senders, the remainder going to the first ones.
shares(Total, N) ->
    [Total div N + if I =< Total rem N -> 1; true -> 0 end || I <- lists:seq(1, N)].

spawn_sender(Conn, Key, Packet, Count) ->
    Bench = self(),
    spawn_link(fun() ->
                       receive go -> ok end,
                       send_many(Conn, Key, Packet, Count),
                       Bench ! {sent, self(), Count}
               end).

send_many(_Conn, _Key, _Packet, 0) ->
    ok;
send_many(Conn, Key, Packet, N) ->
    send_stanza(Conn, Key, Packet),
    send_many(Conn, Key, Packet, N - 1).

send_stanza(Conn, {From, To}, Packet) ->
    ClockUs = erlang:system_time(microsecond),
    Acc = #{ref => make_ref(), timestamp => ClockUs},
    BinPacket = term_to_binary({From, To, Acc, Packet}),
    Data = <<(byte_size(From)):16, From/binary, BinPacket/binary>>,
    cast_or_call(Conn, {data, ClockUs, Data}).

%% mod_global_distrib_utils:cast_or_call/2. Not a plain cast: with 100
%% senders outpacing the socket the connection's mailbox would grow without
%% bound, and every gen_tcp:send/2 (which awaits its inet_reply with a
%% selective receive) would scan it; a TCP run then delivers a fraction of
%% its stanzas within the deadline.
cast_or_call(Pid, Message) ->
    case process_info(Pid, message_queue_len) of
        {message_queue_len, Len} when Len > ?SYNC_WATERMARK ->
            ok = gen_server:call(Pid, Message, ?SYNC_CALL_TIMEOUT);
        {message_queue_len, _} ->
            gen_server:cast(Pid, Message)
    end.

%%--------------------------------------------------------------------
%% One link: listener, receiver, delivery workers, connection
%%--------------------------------------------------------------------

%% Everything is linked to the calling process, so a crash anywhere fails
%% the run (main/1 turns it into GD_ERROR).
open_link(Transport, Files, Expected) ->
    {ok, Listen} = listen(Transport, Files),
    {ok, {_, Port}} = sockname(Transport, Listen),
    Delivered = counters:new(1, [atomics]),
    Workers = [start_link({worker, Delivered, Expected, self()})
               || _ <- lists:seq(1, ?DELIVERY_WORKERS)],
    Receiver = start_link({receiver, Transport, Listen, list_to_tuple(Workers)}),
    Conn = start_link({connection, Transport, Port, Files}),
    #{transport => Transport, listen => Listen, receiver => Receiver, connection => Conn,
      workers => Workers, delivered => Delivered}.

close_link(#{transport := Transport, listen := Listen, receiver := Receiver,
             connection := Conn, workers := Workers}) ->
    [gen_server:stop(Pid) || Pid <- [Receiver, Conn | Workers]],
    ok = Transport:close(Listen),
    flush_all_delivered().

%% A worker that sees the count reach the target notifies; two may race.
flush_all_delivered() ->
    receive all_delivered -> flush_all_delivered()
    after 0 -> ok
    end.

start_link(Args) ->
    {ok, Pid} = gen_server:start_link(?MODULE, Args, []),
    Pid.

%% Binary, raw packets and Nagle off (ranch_tcp's listener default in
%% MongooseIM), on both ends.
socket_opts() ->
    [binary, {packet, raw}, {active, false}, {nodelay, true}].

tls_versions() ->
    [{versions, ['tlsv1.3', 'tlsv1.2']}].

listen(gen_tcp, _Files) ->
    gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}, {reuseaddr, true} | socket_opts()]);
listen(ssl, #tls_files{ca = Ca, server_cert = Cert, server_key = Key}) ->
    ssl:listen(0, [{ip, {127, 0, 0, 1}}, {reuseaddr, true}, {verify, verify_peer},
                   {fail_if_no_peer_cert, true}, {cacertfile, Ca}, {certfile, Cert}
                   | keyfile(Key) ++ tls_versions() ++ socket_opts()]).

connect(gen_tcp, Port, _Files) ->
    gen_tcp:connect({127, 0, 0, 1}, Port, socket_opts(), ?ACCEPT_TIMEOUT);
connect(ssl, Port, #tls_files{ca = Ca, client_cert = Cert, client_key = Key}) ->
    ssl:connect({127, 0, 0, 1}, Port,
                [{verify, verify_peer}, {cacertfile, Ca}, {certfile, Cert},
                 {server_name_indication, ?SERVER_NAME}
                 | keyfile(Key) ++ tls_versions() ++ socket_opts()],
                ?ACCEPT_TIMEOUT).

%% An empty key path means the key is in the certificate file.
keyfile("") -> [];
keyfile(Key) -> [{keyfile, Key}].

accept(gen_tcp, Listen) ->
    gen_tcp:accept(Listen, ?ACCEPT_TIMEOUT);
accept(ssl, Listen) ->
    {ok, Socket} = ssl:transport_accept(Listen, ?ACCEPT_TIMEOUT),
    ssl:handshake(Socket, ?ACCEPT_TIMEOUT).

sockname(gen_tcp, Socket) -> inet:sockname(Socket);
sockname(ssl, Socket) -> ssl:sockname(Socket).

setopts(gen_tcp, Socket, Opts) -> inet:setopts(Socket, Opts);
setopts(ssl, Socket, Opts) -> ssl:setopts(Socket, Opts).

%%--------------------------------------------------------------------
%% gen_server callbacks: connection, receiver and worker processes
%%--------------------------------------------------------------------

-spec init({connection, transport(), inet:port_number(), #tls_files{}}
           | {receiver, transport(), socket(), tuple()}
           | {worker, counters:counters_ref(), pos_integer(), pid()}) ->
          {ok, #connection{} | #worker{}} | {ok, #receiver{}, {continue, accept}}.
init({connection, Transport, Port, Files}) ->
    {ok, Socket} = connect(Transport, Port, Files),
    case Transport of
        ssl ->
            {ok, Info} = ssl:connection_information(Socket, [protocol, selected_cipher_suite]),
            progress("TLS connection: ~0p", [Info]);
        gen_tcp ->
            ok
    end,
    {ok, #connection{transport = Transport, socket = Socket}};
init({receiver, Transport, Listen, Workers}) ->
    {ok, #receiver{transport = Transport, listen = Listen, workers = Workers},
     {continue, accept}};
init({worker, Delivered, Expected, Notify}) ->
    {ok, #worker{delivered = Delivered, expected = Expected, notify = Notify}}.

-spec handle_continue(accept, #receiver{}) -> {noreply, #receiver{}}.
handle_continue(accept, #receiver{transport = Transport, listen = Listen} = State) ->
    {ok, Socket} = accept(Transport, Listen),
    ok = setopts(Transport, Socket, [{active, once}]),
    {noreply, State#receiver{socket = Socket}}.

%% As MongooseIM: a call (cast_or_call above the watermark) is answered at
%% once and then handled as the cast.
-spec handle_call(take_latencies | {data, integer(), binary()}, gen_server:from(),
                  #connection{} | #worker{}) ->
          {reply, [integer()], #worker{}} | {noreply, #connection{} | #worker{}}.
handle_call(take_latencies, _From, #worker{latencies = Latencies} = State) ->
    {reply, Latencies, State#worker{latencies = []}};
handle_call({data, _, _} = Message, From, State) ->
    gen_server:reply(From, ok),
    handle_cast(Message, State).

-spec handle_cast({data, integer(), binary()}, #connection{} | #worker{}) ->
          {noreply, #connection{} | #worker{}}.
handle_cast({data, ClockUs, Data}, #connection{transport = Transport, socket = Socket} = State) ->
    ok = Transport:send(Socket, <<(byte_size(Data) + 8):32, ClockUs:64, Data/binary>>),
    {noreply, State};
handle_cast({data, ClockUs, BinTerm}, #worker{} = State) ->
    {_From, _To, _Acc, _Packet} = binary_to_term(BinTerm),
    Latency = erlang:system_time(microsecond) - ClockUs,
    {noreply, count_delivered(State#worker{latencies = [Latency | State#worker.latencies]})}.

-spec handle_info({tcp | ssl, socket(), binary()}
                  | {tcp_closed | ssl_closed, socket()}
                  | {tcp_error | ssl_error, socket(), term()}, #receiver{}) ->
          {noreply, #receiver{}} | {stop, term(), #receiver{}}.
handle_info({Tag, Socket, RawData},
            #receiver{transport = Transport, socket = Socket, buffer = Buffer} = State)
  when Tag =:= tcp; Tag =:= ssl ->
    ok = setopts(Transport, Socket, [{active, once}]),
    {noreply, handle_buffered(State#receiver{buffer = <<Buffer/binary, RawData/binary>>})};
handle_info({Tag, Socket}, #receiver{socket = Socket} = State)
  when Tag =:= tcp_closed; Tag =:= ssl_closed ->
    {stop, normal, State};
handle_info({Tag, Socket, Reason}, #receiver{socket = Socket} = State)
  when Tag =:= tcp_error; Tag =:= ssl_error ->
    {stop, {socket_error, Reason}, State}.

%% mod_global_distrib_receiver:handle_buffered/1.
handle_buffered(#receiver{waiting_for = header,
                          buffer = <<Header:4/binary, Rest/binary>>} = State) ->
    Size = binary:decode_unsigned(Header),
    handle_buffered(State#receiver{waiting_for = Size, buffer = Rest});
handle_buffered(#receiver{waiting_for = Size, buffer = Buffer} = State)
  when is_integer(Size), byte_size(Buffer) >= Size ->
    <<Data:Size/binary, Rest/binary>> = Buffer,
    handle_data(Data, State),
    handle_buffered(State#receiver{waiting_for = header, buffer = Rest});
handle_buffered(State) ->
    State.

%% mod_global_distrib_receiver:handle_data/2: hand the frame to the worker
%% for its From key.
handle_data(Data, #receiver{workers = Workers}) ->
    <<ClockUs:64, FromLen:16, _/binary>> = Data,
    <<_:80, From:FromLen/binary, BinTerm/binary>> = Data,
    Worker = element(erlang:phash2(From, tuple_size(Workers)) + 1, Workers),
    cast_or_call(Worker, {data, ClockUs, BinTerm}).

count_delivered(#worker{delivered = Delivered, expected = Expected, notify = Notify} = State) ->
    ok = counters:add(Delivered, 1, 1),
    case counters:get(Delivered, 1) >= Expected of
        true -> Notify ! all_delivered;
        false -> ok
    end,
    State.
