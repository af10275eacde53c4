%% @doc Forwards the Rust core's `tracing' events to `logger' as maps: the
%% NIF sends `{global_distrib_log, Level, Target, [{Field, Value}]}' here
%% (from its own thread, dropping events when its bounded queue is full).
%% Field names are the fixed names written in the core's source, so turning
%% them (and the `what' value) into atoms is bounded.
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
handle_info({global_distrib_log, Level, Target, Fields}, State) ->
    Event = maps:from_list([field(K, V) || {K, V} <- Fields]),
    logger:log(Level, maps:merge(#{what => global_distrib_core, target => Target}, Event),
               #{domain => [global_distrib]}),
    {noreply, State};
handle_info(_Other, State) ->
    {noreply, State}.

-spec field(binary(), binary()) -> {atom(), binary() | atom()}.
field(<<"what">>, V) -> {what, binary_to_atom(V)};
field(K, V) -> {binary_to_atom(K), V}.

-spec terminate(term(), level()) -> ok.
terminate(_Reason, _Level) ->
    global_distrib_nif:set_log(undefined, none).
