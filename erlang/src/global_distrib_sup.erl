%% @doc Top supervisor: the log forwarder, then for each running runtime
%% its {@link global_distrib_pool_sup} and, after it, its owner
%% {@link global_distrib_runtime} (added by {@link global_distrib:start/2},
%% removed by {@link global_distrib:stop/2}). Children stop in reverse
%% start order, so at the application's stop each runtime stops
%% gracefully before its delivery pool goes.
-module(global_distrib_sup).
-behaviour(supervisor).

-export([start_link/0, start_pool/3, stop_pool/1, start_runtime/4, stop_runtime/1,
         start_child/1, stop_child/1]).
-export([init/1]).

-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% @doc Starts the delivery worker pool of runtime `Key'.
-spec start_pool(reference(), pos_integer(), global_distrib_worker:callback()) ->
          {ok, pid()} | {error, term()}.
start_pool(Key, N, Callback) ->
    Spec = #{id => {pool, Key},
             start => {global_distrib_pool_sup, start_link, [Key, N, Callback]},
             restart => temporary,
             shutdown => infinity,
             type => supervisor,
             modules => [global_distrib_pool_sup]},
    case supervisor:start_child(?MODULE, Spec) of
        {ok, Pid} -> {ok, Pid};
        {ok, Pid, _} -> {ok, Pid};
        {error, _} = E -> E
    end.

-spec stop_pool(reference()) -> ok.
stop_pool(Key) ->
    _ = supervisor:terminate_child(?MODULE, {pool, Key}),
    _ = supervisor:delete_child(?MODULE, {pool, Key}),
    ok.

%% @doc Starts the owner of runtime `Key' (after its pool). Its shutdown
%% time covers the graceful stop (`StopTimeout' ms) and the workers' runs
%% of the stop's reports.
-spec start_runtime(reference(), global_distrib_nif:rt(), pid(), non_neg_integer()) ->
          {ok, pid()} | {error, term()}.
start_runtime(Key, Nif, Pool, StopTimeout) ->
    start_child(#{id => {runtime, Key},
                  start => {global_distrib_runtime, start_link, [Key, Nif, Pool, StopTimeout]},
                  restart => temporary,
                  shutdown => StopTimeout + 10000,
                  type => worker,
                  modules => [global_distrib_runtime]}).

%% @doc Removes runtime `Key''s owner (stopping the runtime if it still
%% runs) and then its pool.
-spec stop_runtime(reference()) -> ok.
stop_runtime(Key) ->
    ok = stop_child({runtime, Key}),
    stop_pool(Key).

%% @doc Starts a process of a facade (e.g. MongooseIM's instrumentation
%% reader) under this supervisor, so that it stops with the application.
-spec start_child(supervisor:child_spec()) -> {ok, pid()} | {error, term()}.
start_child(Spec) ->
    case supervisor:start_child(?MODULE, Spec) of
        {ok, Pid} -> {ok, Pid};
        {ok, Pid, _} -> {ok, Pid};
        {error, _} = E -> E
    end.

%% @doc Stops and removes the child `Id' (`ok' when there is none).
-spec stop_child(term()) -> ok.
stop_child(Id) ->
    _ = supervisor:terminate_child(?MODULE, Id),
    _ = supervisor:delete_child(?MODULE, Id),
    ok.

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Log = #{id => global_distrib_log,
            start => {global_distrib_log, start_link, []},
            restart => permanent,
            shutdown => 5000,
            type => worker,
            modules => [global_distrib_log]},
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, [Log]}}.
