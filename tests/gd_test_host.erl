%% The test host run inside each peer node of global_distrib_peer_SUITE: one
%% runtime per node, deliveries recorded in a public ETS table owned by a
%% long-lived process, queried by the suite through peer:call/4.
-module(gd_test_host).

-export([start/1, stop/0, handle/3, rt/0, login/1, logout/1, send/3, bodies_to/1,
         delivered/0, delivered_count/0, undeliverable/0, await_peer/1, metrics/0,
         nif_long_schedules/0, refresh_now/0, store_exec/1, info/0, lookup/1]).

-spec start(term()) -> {ok, binary()} | {error, term()}.
start(Config) ->
    Self = self(),
    Owner = spawn(fun() ->
                          ets:new(gd_test_inbox, [named_table, ordered_set, public]),
                          ets:new(gd_test_long_schedule, [named_table, bag, public]),
                          Self ! {table, self()},
                          %% long_schedule watch of this node (the NIF runs here).
                          erlang:system_monitor(self(), [{long_schedule, 5}]),
                          watch()
                  end),
    receive {table, Owner} -> ok end,
    case global_distrib:start(Config, #{callback => {?MODULE, handle}}) of
        {ok, Rt} ->
            persistent_term:put(gd_test_host, Rt),
            {ok, global_distrib:local_host(Rt)};
        {error, _} = E ->
            E
    end.

watch() ->
    receive
        {monitor, Who, long_schedule, Info} ->
            ets:insert(gd_test_long_schedule, {Who, Info}),
            watch();
        stop ->
            ok
    end.

%% @doc long_schedule events of this node in which global_distrib_nif was
%% being scheduled in or out.
-spec nif_long_schedules() -> [term()].
nif_long_schedules() ->
    [E || {_, Info} = E <- ets:tab2list(gd_test_long_schedule),
          lists:any(fun({K, {global_distrib_nif, _, _}}) when K =:= in; K =:= out -> true;
                       (_) -> false
                    end, Info)].

-spec stop() -> {ok, non_neg_integer()}.
stop() ->
    global_distrib:stop(rt(), 2000).

-spec handle(deliver | undeliverable, map(), binary()) -> true.
handle(Event, Meta, Payload) ->
    ets:insert(gd_test_inbox, {erlang:unique_integer([monotonic]), Event, Meta, Payload}).

-spec rt() -> global_distrib:runtime().
rt() ->
    persistent_term:get(gd_test_host).

-spec login(binary()) -> ok | {ok, pending} | {error, term()}.
login(Jid) -> global_distrib:session_opened(rt(), Jid).

-spec logout(binary()) -> ok | {error, term()}.
logout(Jid) -> global_distrib:session_closed(rt(), Jid).

-spec send(binary(), binary(), binary()) -> term().
send(From, To, Body) -> global_distrib:route(rt(), From, To, message, Body).

-spec bodies_to(binary()) -> [binary()].
bodies_to(To) ->
    [P || {_, deliver, #{to := T}, P} <- ets:tab2list(gd_test_inbox), T =:= To].

-spec delivered() -> [term()].
delivered() ->
    [X || {_, deliver, _, _} = X <- ets:tab2list(gd_test_inbox)].

-spec delivered_count() -> non_neg_integer().
delivered_count() ->
    ets:info(gd_test_inbox, size).

-spec undeliverable() -> [{map(), binary()}].
undeliverable() ->
    [{M, P} || {_, undeliverable, M, P} <- ets:tab2list(gd_test_inbox)].

-spec await_peer(binary()) -> ok | {error, timeout}.
await_peer(Host) -> global_distrib:await_peer(rt(), Host, 10000).

-spec metrics() -> map().
metrics() -> global_distrib:metrics(rt()).

-spec refresh_now() -> ok | {error, term()}.
refresh_now() -> global_distrib:refresh_now(rt()).

-spec store_exec([global_distrib:store_cmd()]) -> {ok, [global_distrib:store_reply()]} | {error, term()}.
store_exec(Cmds) -> global_distrib:debug_store_exec(rt(), Cmds).

-spec info() -> map().
info() -> global_distrib:info(rt()).

-spec lookup(binary()) -> global_distrib:location() | {error, term()}.
lookup(Jid) -> global_distrib:lookup(rt(), Jid).
