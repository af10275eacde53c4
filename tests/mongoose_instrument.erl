%% Test stand-in for MongooseIM's mongoose_instrument,
%% src/instrument/mongoose_instrument.erl at MongooseIM 6.8.0 (commit
%% cabaa45da4883aa2392057efb4632bdbbc5a74a6). Written for this project from
%% the behaviour of that file; no code copied (MongooseIM is GPLv2).
%%
%% Behaviour kept: a gen_server registered as mongoose_instrument knows the
%% events that were set up. A spec is {EventName, Labels, Config}, Labels a
%% map, Config #{metrics => #{Name => gauge | counter | spiral | histogram},
%% loglevel => Level, probe => #{module := M, ...}}.
%%   * set_up/3 fails with error(#{what => event_already_registered,
%%     event_name, labels}) for an {EventName, Labels} already set up, with
%%     error(#{what => inconsistent_labels, event_name, labels,
%%     existing_label_keys}) when EventName is set up with other label keys,
%%     and with error(#{what => non_gauge_metrics_in_probe, event_name,
%%     labels, improper_metrics}) for a probe with non-gauge metrics;
%%   * tear_down/1,2 never fail (unknown events are ignored);
%%   * execute/3 and span/4,5,6 fail with error(#{what =>
%%     event_not_registered, event_name, labels}) for an event not set up
%%     (span/4,5,6 before running the function); a crashing handler is
%%     logged (event_handler_failed) and the caller goes on.
%% Instead of the prometheus/exometer/log handler modules:
%%   * every execute/span of a set-up event is RECORDED as {EventName,
%%     Labels, Measurements} (mim_standin:instrument_events/0);
%%   * when Config has `metrics', one handler stands for the metrics
%%     handlers: at set_up it accepts only the four metric types (anything
%%     else crashes set_up/3 with function_clause, in the caller), at each
%%     event it wants every measurement named in `metrics' to be an integer,
%%     >= 0 for a spiral; otherwise it crashes, which is logged and RECORDED
%%     (mim_standin:instrument_errors/0).
%% Not modelled: probes (accepted, never run), the log handler, persist/0
%% (accepted), config_spec/0, add_handler/2, remove_handler/1.
-module(mongoose_instrument).

-behaviour(gen_server).

-export([start_link/0, start/0, persist/0,
         set_up/1, set_up/3, tear_down/1, tear_down/2,
         span/4, span/5, span/6, execute/3]).
-export([standin_handler/4]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-type event_name() :: atom().
-type labels() :: #{atom() => term()}.
-type metric_name() :: atom().
-type metric_type() :: gauge | counter | spiral | histogram.
-type metrics() :: #{metric_name() => metric_type()}.
-type measurements() :: #{atom() => term()}.
-type probe_config() :: #{module := module(), interval => pos_integer(), extra => map()}.
-type config() :: #{metrics => metrics(), loglevel => logger:level(),
                    probe => probe_config()}.
-type spec() :: {event_name(), labels(), config()}.
-type handler_fun() :: fun((event_name(), labels(), config(), measurements()) -> any()).
-type handlers() :: {[handler_fun()], config()}.
-type measure_fun(Result) :: fun((integer(), Result) -> measurements()).

-export_type([event_name/0, labels/0, config/0, measurements/0, spec/0, handlers/0,
              metrics/0, metric_name/0, metric_type/0, probe_config/0]).

%%--------------------------------------------------------------------
%% API

-spec start_link() -> gen_server:start_ret().
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Not in MongooseIM: the server without a link to the caller.
-spec start() -> gen_server:start_ret().
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

-spec persist() -> ok.
persist() ->
    gen_server:call(?MODULE, persist).

-spec set_up([spec()]) -> ok.
set_up(Specs) ->
    lists:foreach(fun({Name, Labels, Config}) -> set_up(Name, Labels, Config) end, Specs).

-spec set_up(event_name(), labels(), config()) -> ok.
set_up(EventName, Labels, Config) ->
    Handlers = handlers_for(Labels, Config),
    case gen_server:call(?MODULE, {register, EventName, Labels, {Handlers, Config}}) of
        ok -> ok;
        {error, Why} -> error(Why)
    end.

-spec tear_down([spec()]) -> ok.
tear_down(Specs) ->
    lists:foreach(fun({Name, Labels, _Config}) -> tear_down(Name, Labels) end, Specs).

-spec tear_down(event_name(), labels()) -> ok.
tear_down(EventName, Labels) ->
    gen_server:call(?MODULE, {unregister, EventName, Labels}).

-spec execute(event_name(), labels(), measurements()) -> ok.
execute(EventName, Labels, Measurements) ->
    dispatch(EventName, Labels, Measurements, registered(EventName, Labels)).

-spec span(event_name(), labels(), fun(() -> Result), measure_fun(Result)) -> Result.
span(EventName, Labels, Fun, Measure) ->
    span(EventName, Labels, Fun, [], Measure).

-spec span(event_name(), labels(), fun((...) -> Result), list(), measure_fun(Result)) -> Result.
span(EventName, Labels, Fun, Args, Measure) ->
    timed(EventName, Labels, fun() -> timer:tc(Fun, Args) end, Measure).

-spec span(event_name(), labels(), module(), atom(), list(), measure_fun(Result)) -> Result.
span(EventName, Labels, Module, Function, Args, Measure) ->
    timed(EventName, Labels, fun() -> timer:tc(Module, Function, Args) end, Measure).

timed(EventName, Labels, Run, Measure) ->
    Registered = registered(EventName, Labels),
    {Micros, Result} = Run(),
    dispatch(EventName, Labels, Measure(Micros, Result), Registered),
    Result.

%%--------------------------------------------------------------------
%% Events

registered(EventName, Labels) ->
    case gen_server:call(?MODULE, {find, EventName, Labels}) of
        {ok, Registered} -> Registered;
        error -> error(#{what => event_not_registered,
                         event_name => EventName, labels => Labels})
    end.

dispatch(EventName, Labels, Measurements, {Handlers, Config}) ->
    ok = mim_standin:record_instrument_event(EventName, Labels, Measurements),
    lists:foreach(
      fun(Handler) ->
              try
                  Handler(EventName, Labels, Config, Measurements)
              catch
                  Class:Reason:Stack ->
                      logger:error(#{what => event_handler_failed, handler_fun => Handler,
                                     event_name => EventName, labels => Labels,
                                     config => Config, measurements => Measurements,
                                     class => Class, reason => Reason, stacktrace => Stack}),
                      mim_standin:record_instrument_error(EventName, Labels, Measurements,
                                                          {Class, Reason})
              end
      end, Handlers).

%% The handlers an event gets: the metrics stand-in when there are metrics.
-spec handlers_for(labels(), config()) -> [handler_fun()].
handlers_for(Labels, #{metrics := Metrics}) when is_map(Labels) ->
    lists:foreach(fun known_type/1, maps:values(Metrics)),
    [fun ?MODULE:standin_handler/4];
handlers_for(Labels, #{}) when is_map(Labels) ->
    [].

known_type(Type) when Type =:= gauge; Type =:= counter; Type =:= spiral;
                      Type =:= histogram ->
    ok.

%% @private What the metrics handlers would refuse to update.
-spec standin_handler(event_name(), labels(), config(), measurements()) -> ok.
standin_handler(_EventName, _Labels, #{metrics := Metrics}, Measurements) ->
    lists:foreach(fun({Name, Type}) ->
                          case maps:find(Name, Measurements) of
                              {ok, Value} -> valid_value(Type, Value);
                              error -> ok
                          end
                  end, maps:to_list(Metrics)).

valid_value(spiral, N) when is_integer(N), N >= 0 -> ok;
valid_value(Type, N) when is_integer(N), Type =/= spiral -> ok.

%%--------------------------------------------------------------------
%% gen_server: the state is #{{EventName, Labels} => handlers()}

init([]) ->
    process_flag(trap_exit, true),
    {ok, #{}}.

handle_call({register, EventName, Labels, {_, Config} = Registered}, _From, Events) ->
    case refusal(EventName, Labels, Config, Events) of
        none -> {reply, ok, Events#{{EventName, Labels} => Registered}};
        Why -> {reply, {error, Why}, Events}
    end;
handle_call({unregister, EventName, Labels}, _From, Events) ->
    {reply, ok, maps:remove({EventName, Labels}, Events)};
handle_call({find, EventName, Labels}, _From, Events) ->
    {reply, maps:find({EventName, Labels}, Events), Events};
handle_call(persist, _From, Events) ->
    {reply, ok, Events};
handle_call(Request, _From, Events) ->
    {reply, {error, #{what => unexpected_call, request => Request}}, Events}.

handle_cast(_Msg, Events) ->
    {noreply, Events}.

handle_info(_Msg, Events) ->
    {noreply, Events}.

terminate(_Reason, _Events) ->
    ok.

%% Why an event cannot be set up, or none.
refusal(EventName, Labels, Config, Events) ->
    Error = fun(What, More) ->
                    maps:merge(#{what => What, event_name => EventName, labels => Labels}, More)
            end,
    OtherKeys = [lists:sort(maps:keys(L)) || {N, L} <- maps:keys(Events), N =:= EventName],
    MyKeys = lists:sort(maps:keys(Labels)),
    NotGauges = case Config of
                    #{probe := _, metrics := Metrics} ->
                        maps:filter(fun(_Name, Type) -> Type =/= gauge end, Metrics);
                    #{} ->
                        #{}
                end,
    if
        is_map_key({EventName, Labels}, Events) ->
            Error(event_already_registered, #{});
        OtherKeys =/= [], hd(OtherKeys) =/= MyKeys ->
            Error(inconsistent_labels, #{existing_label_keys => hd(OtherKeys)});
        map_size(NotGauges) > 0 ->
            Error(non_gauge_metrics_in_probe, #{improper_metrics => NotGauges});
        true ->
            none
    end.
