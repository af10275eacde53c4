%% The "XMPP server" of one datacenter in scripts/demo_nodes.escript: runs
%% inside each peer node, starts one global_distrib runtime through the
%% Erlang API and prints what global routing hands it. Compiled and loaded
%% into the peer nodes by the escript (not part of the application).
-module(gd_demo_host).

-export([start/3, stop/0, handle/3, login/1, logout/1, send/3, counts/0,
         bounce_queue_size/0, await_peer/1, metrics/0]).

-define(GLOBAL, <<"example.com">>).

%% Starts DC `N' (dcN.example.com) on 127.0.0.1:Port against Redis `Url'.
start(N, Url, Port) ->
    {ok, _} = application:ensure_all_started(global_distrib),
    Self = self(),
    Owner = spawn(fun() ->
                          ets:new(gd_demo_counts, [named_table, public]),
                          ets:insert(gd_demo_counts, [{delivered, 0}, {failed, 0}]),
                          Self ! {table, self()},
                          receive stop -> ok end
                  end),
    receive {table, Owner} -> ok end,
    Host = iolist_to_binary(["dc", integer_to_list(N), ".example.com"]),
    Cfg = #{global_host => ?GLOBAL,
            local_host => Host,
            node_name => "node" ++ integer_to_list(N) ++ "@demo",
            hosts_refresh_interval => 300,
            backend => redis,
            redis => #{url => Url, refresh_after => 2, expire_after => 10},
            connections => #{endpoints => [{"127.0.0.1", Port}],
                             endpoint_refresh_interval => 1,
                             endpoint_refresh_interval_when_empty => 1,
                             tls => false},
            cache => #{jid_lifetime_seconds => 1},
            bounce => #{resend_after_ms => 150}},
    case global_distrib:start(Cfg, #{callback => {?MODULE, handle}}) of
        {ok, Rt} ->
            persistent_term:put(?MODULE, Rt),
            #{listen := Listen} = global_distrib:info(Rt),
            {ok, Host, Listen};
        {error, _} = E ->
            E
    end.

stop() ->
    global_distrib:stop(rt(), 1000).

rt() ->
    persistent_term:get(?MODULE).

handle(deliver, #{from := From, to := To, from_host := FromHost,
                  transfer_time_us := Us}, Payload) ->
    ets:update_counter(gd_demo_counts, delivered, 1),
    Via = case FromHost of
              undefined -> "released by bounce";
              _ -> io_lib:format("from ~s, ~b us on the wire", [FromHost, Us])
          end,
    io:format("    [~s] deliver ~s -> ~s: ~p (~s)~n",
              [global_distrib:local_host(rt()), From, To, Payload, Via]);
handle(undeliverable, #{from := From, to := To, reason := Reason}, Payload) ->
    ets:update_counter(gd_demo_counts, failed, 1),
    io:format("    [~s] undeliverable ~s -> ~s: ~p (~s) -> answering service-unavailable~n",
              [global_distrib:local_host(rt()), From, To, Payload, Reason]).

login(Jid) ->
    %% {ok, pending}: the store did not confirm the write yet; the runtime
    %% retries it and the session is local here meanwhile.
    Written = case global_distrib:session_opened(rt(), Jid) of
                  ok -> "";
                  {ok, pending} -> " (store write pending)"
              end,
    io:format("  ~s logs in at ~s~s~n", [Jid, global_distrib:local_host(rt()), Written]).

logout(Jid) ->
    ok = global_distrib:session_closed(rt(), Jid),
    io:format("  ~s logs out of ~s~n", [Jid, global_distrib:local_host(rt())]).

send(From, To, Body) ->
    R = global_distrib:route(rt(), From, To, message, Body),
    What = case R of
               local -> "local";
               {forwarded, H} -> io_lib:format("forwarded to ~s", [H]);
               stored -> io_lib:format("stored by bounce (queue: ~b)", [bounce_queue_size()]);
               {undeliverable, Reason} -> io_lib:format("undeliverable (~s)", [Reason]);
               Other -> io_lib:format("~p", [Other])
           end,
    io:format("  ~s -> ~s: ~p at ~s: ~s~n", [From, To, Body, global_distrib:local_host(rt()), What]),
    R.

counts() ->
    maps:from_list(ets:tab2list(gd_demo_counts)).

bounce_queue_size() ->
    maps:get(bounce_queue_size, global_distrib:info(rt())).

await_peer(Host) ->
    global_distrib:await_peer(rt(), Host, 10000).

metrics() ->
    global_distrib:metrics(rt()).
