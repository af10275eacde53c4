%% @doc Forwards the Rust core's `tracing' events to `logger': the NIF sends
%% `{global_distrib_log, Level, Target, Msg}' here (from its own thread,
%% dropping events when its bounded queue is full).
-module(global_distrib_log).
-behaviour(gen_server).

-export([start_link/0, set_level/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-type level() :: error | warning | info | debug | trace | none.
-export_type([level/0]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Most verbose core level forwarded (`none' turns forwarding off).
-spec set_level(level()) -> ok.
set_level(Level) ->
    gen_server:call(?MODULE, {set_level, Level}).

-spec init([]) -> {ok, level()}.
init([]) ->
    Level = application:get_env(global_distrib, log_level, info),
    ok = global_distrib_nif:set_log(self(), Level),
    {ok, Level}.

-spec handle_call(term(), gen_server:from(), level()) -> {reply, ok | {error, unknown_call}, level()}.
handle_call({set_level, Level}, _From, _Old) ->
    ok = global_distrib_nif:set_log(self(), Level),
    {reply, ok, Level};
handle_call(_Req, _From, Level) ->
    {reply, {error, unknown_call}, Level}.

-spec handle_cast(term(), level()) -> {noreply, level()}.
handle_cast(_Msg, Level) ->
    {noreply, Level}.

-spec handle_info(term(), level()) -> {noreply, level()}.
handle_info({global_distrib_log, Level, Target, Msg}, State) ->
    logger:log(Level, #{what => global_distrib_core, target => Target, text => Msg},
               #{domain => [global_distrib]}),
    {noreply, State};
handle_info(_Other, State) ->
    {noreply, State}.

-spec terminate(term(), level()) -> ok.
terminate(_Reason, _Level) ->
    global_distrib_nif:set_log(undefined, none).
