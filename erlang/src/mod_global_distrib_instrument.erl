%% @doc Feeds MongooseIM's instrumentation from the runtime's metrics: every
%% interval (1 s, application env `instrument_interval_ms') it reads
%% {@link global_distrib:metrics/1}, and executes the growth of each metric
%% since the last reading as the `mongoose_instrument' event MongooseIM 6.8
%% names it (see {@link mod_global_distrib:instrumentation/0}), with the
%% DC in the `host' measurement as MongooseIM does. No per-stanza Erlang
%% work: one reading per interval, whatever the traffic.
%%
%% Counters become one event with `count => Growth'. Histograms carry only
%% their count and sum here: the new samples of an interval are replayed as
%% their mean, at most 64 times per metric and interval (the count is exact
%% up to that bound, the distribution within one interval is flattened).
%% The bounce queue size is not read here: it is the probe
%% {@link mod_global_distrib:probe/3}, which mongoose_instrument polls.
-module(mod_global_distrib_instrument).
-behaviour(gen_server).

-export([child_spec/1, start_link/1, events/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-ignore_xref([{mongoose_instrument, execute, 3}, start_link/1]).

-define(PREFIX, "global.mod_global_distrib.").
-define(MAX_REPLAYED, 64).

-type metrics() :: #{binary() => integer() | map()}.
-type event() :: {atom(), #{atom() => term()}}.

-spec child_spec(global_distrib:runtime()) -> supervisor:child_spec().
child_spec(Rt) ->
    #{id => ?MODULE,
      start => {?MODULE, start_link, [Rt]},
      restart => permanent,
      shutdown => 5000,
      type => worker,
      modules => [?MODULE]}.

-spec start_link(global_distrib:runtime()) -> {ok, pid()} | {error, term()}.
start_link(Rt) ->
    gen_server:start_link(?MODULE, Rt, []).

-spec init(global_distrib:runtime()) -> {ok, map()}.
init(Rt) ->
    Interval = application:get_env(global_distrib, instrument_interval_ms, 1000),
    erlang:send_after(Interval, self(), tick),
    {ok, #{rt => Rt, interval => Interval, last => global_distrib:metrics(Rt)}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, ok, map()}.
handle_call(flush, _From, State) ->
    {reply, ok, report(State)};
handle_call(_Request, _From, State) ->
    {reply, ok, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(tick, #{interval := Interval} = State) ->
    erlang:send_after(Interval, self(), tick),
    {noreply, report(State)};
handle_info(_Info, State) ->
    {noreply, State}.

-spec report(map()) -> map().
report(#{rt := Rt, last := Last} = State) ->
    Now = global_distrib:metrics(Rt),
    _ = [mongoose_instrument:execute(Name, #{}, Measurements)
         || {Name, Measurements} <- events(Last, Now)],
    State#{last := Now}.

%% @doc The events that take metrics from `Last' to `Now'.
-spec events(metrics(), metrics()) -> [event()].
events(Last, Now) ->
    lists:flatmap(fun({Name, Value}) -> event(Name, Value, maps:get(Name, Last, zero)) end,
                  lists:sort(maps:to_list(Now))).

-spec event(binary(), integer() | map(), integer() | map() | zero) -> [event()].
event(<<?PREFIX, Rest/binary>>, Value, Old) ->
    case metric(Rest) of
        {Event, Field, Labels} -> measure(Event, Field, Labels, Value, Old);
        none -> []
    end;
event(_Name, _Value, _Old) ->
    [].

-spec measure(atom(), atom(), map(), integer() | map(), integer() | map() | zero) -> [event()].
measure(Event, count, Labels, New, Old) when is_integer(New) ->
    case New - old_count(Old) of
        Growth when Growth > 0 -> [{Event, Labels#{count => Growth}}];
        _ -> []
    end;
measure(Event, Field, Labels, #{count := N, sum := S}, Old) ->
    {N0, S0} = case Old of
                   #{count := C, sum := Sum} -> {C, Sum};
                   _ -> {0, 0}
               end,
    case N - N0 of
        Growth when Growth > 0 ->
            Mean = (S - S0) div Growth,
            lists:duplicate(min(Growth, ?MAX_REPLAYED), {Event, Labels#{Field => Mean}});
        _ ->
            []
    end;
measure(_Event, _Field, _Labels, _New, _Old) ->
    [].

-spec old_count(integer() | map() | zero) -> integer().
old_count(Old) when is_integer(Old) -> Old;
old_count(_) -> 0.

%% The core's metric name (after the prefix) -> MongooseIM 6.8's event,
%% its measurement and the DC it concerns.
-spec metric(binary()) -> {atom(), count | time | value, map()} | none.
metric(<<"delivered_with_ttl">>) -> {mod_global_distrib_delivered_with_ttl, value, #{}};
metric(<<"stop_ttl_zero">>) -> {mod_global_distrib_stop_ttl_zero, count, #{}};
metric(<<"mapping_fetches">>) -> {mod_global_distrib_mapping_fetches, count, #{}};
metric(<<"mapping_fetch_time">>) -> {mod_global_distrib_mapping_fetches, time, #{}};
metric(<<"mapping_cache_misses">>) -> {mod_global_distrib_mapping_cache_misses, count, #{}};
metric(<<"incoming.queue_time">>) -> {mod_global_distrib_incoming_queue, time, #{}};
metric(<<"incoming.established">>) -> {mod_global_distrib_incoming_established, count, #{}};
metric(<<"outgoing.messages.", H/binary>>) -> {mod_global_distrib_outgoing_messages, count, host(H)};
metric(<<"incoming.messages.", H/binary>>) -> {mod_global_distrib_incoming_messages, count, host(H)};
metric(<<"incoming.transfer_time.", H/binary>>) -> {mod_global_distrib_incoming_transfer, time, host(H)};
metric(<<"outgoing.queue_time.", H/binary>>) -> {mod_global_distrib_outgoing_queue, time, host(H)};
metric(<<"incoming.first_packet.", H/binary>>) ->
    {mod_global_distrib_incoming_first_packet, count, host(H)};
metric(<<"incoming.closed.", H/binary>>) -> {mod_global_distrib_incoming_closed, count, host(H)};
metric(<<"incoming.errored.", H/binary>>) -> {mod_global_distrib_incoming_errored, count, host(H)};
metric(<<"outgoing.established.", H/binary>>) ->
    {mod_global_distrib_outgoing_established, count, host(H)};
metric(<<"outgoing.closed.", H/binary>>) -> {mod_global_distrib_outgoing_closed, count, host(H)};
metric(<<"outgoing.errored.", H/binary>>) -> {mod_global_distrib_outgoing_errored, count, host(H)};
metric(_) -> none.

-spec host(binary()) -> #{host := binary()}.
host(H) -> #{host => H}.
