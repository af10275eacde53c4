%% @doc The owner of one runtime: a child of {@link global_distrib_sup}
%% started by {@link global_distrib:start/2} next to the runtime's delivery
%% pool ({@link global_distrib_pool_sup}), after it. It traps exits and stops
%% the runtime gracefully in `terminate/2', within the stop deadline given
%% at start (`stop_timeout', default 5000 ms), then lets the workers run
%% the reports of the stop: `application:stop(global_distrib)' (which
%% terminates children in reverse start order, so each runtime before its
%% pool) stops every runtime cleanly, and no stanza is sent to a dead pool.
%% {@link global_distrib:stop/2} goes through {@link stop/2}.
%%
%% It also publishes the NIF handle for the pool's workers: a restarted
%% worker reads it in its `init/1' to register its new pid
%% (`global_distrib_nif:set_worker/3').
-module(global_distrib_runtime).
-behaviour(gen_server).

-export([start_link/4, stop/2, nif_of/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(state, {key :: reference(),
                nif :: global_distrib_nif:rt(),
                pool :: pid(),
                host :: binary(),
                stop_timeout :: non_neg_integer(),
                stopped = false :: boolean()}).

-spec start_link(reference(), global_distrib_nif:rt(), pid(), non_neg_integer()) ->
          {ok, pid()} | {error, term()}.
start_link(Key, Nif, Pool, StopTimeout) ->
    gen_server:start_link(?MODULE, {Key, Nif, Pool, StopTimeout}, []).

%% @doc Graceful stop within `TimeoutMs'; `{ok, Undeliverable}'. The
%% process ends after answering.
-spec stop(pid(), non_neg_integer()) -> {ok, non_neg_integer()}.
stop(Pid, TimeoutMs) ->
    gen_server:call(Pid, {stop, TimeoutMs}, infinity).

%% @doc The NIF handle of runtime `Key', `undefined' before it started or
%% after it stopped.
-spec nif_of(reference()) -> global_distrib_nif:rt() | undefined.
nif_of(Key) ->
    persistent_term:get({global_distrib_rt, Key}, undefined).

-spec init({reference(), global_distrib_nif:rt(), pid(), non_neg_integer()}) ->
          {ok, #state{}}.
init({Key, Nif, Pool, StopTimeout}) ->
    process_flag(trap_exit, true),
    %% A pool that gave up (restart intensity) takes the runtime with it:
    %% nobody would take its stanzas any more.
    link(Pool),
    persistent_term:put({global_distrib_rt, Key}, Nif),
    %% A worker that restarted between the start of the runtime (given the
    %% pids of that moment) and the line above found no handle to register
    %% with: register the pool's pids of now.
    Ws = workers(Pool),
    _ = [ok = global_distrib_nif:set_worker(Nif, I, W)
         || {I, W} <- lists:zip(lists:seq(0, length(Ws) - 1), Ws)],
    #{local_host := Host} = global_distrib_nif:info(Nif),
    {ok, #state{key = Key, nif = Nif, pool = Pool, host = Host, stop_timeout = StopTimeout}}.

-spec handle_call(term(), gen_server:from(), #state{}) ->
          {stop, normal, {ok, non_neg_integer()}, #state{}}
        | {reply, {error, unknown_call}, #state{}}.
handle_call({stop, TimeoutMs}, _From, State) ->
    {N, State1} = stop_runtime(TimeoutMs, State),
    {stop, normal, {ok, N}, State1};
handle_call(_Req, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}} | {stop, term(), #state{}}.
handle_info({'EXIT', _From, Reason}, State) when Reason =/= normal ->
    %% The supervisor (or a linked caller) is going away: stop the runtime.
    {stop, Reason, State};
handle_info(_Other, State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{stopped = true}) ->
    ok;
terminate(_Reason, #state{stop_timeout = Timeout} = State) ->
    _ = stop_runtime(Timeout, State),
    ok.

%% Stops the runtime, lets the workers run what the stop reported, and
%% withdraws the handle.
-spec stop_runtime(non_neg_integer(), #state{}) -> {non_neg_integer(), #state{}}.
stop_runtime(TimeoutMs, #state{key = Key, nif = Nif, pool = Pool, host = Host} = State) ->
    {ok, N} = global_distrib_nif:stop(Nif, TimeoutMs),
    %% Undeliverable reports of the stop were sent before it returned; let
    %% the workers run them before the pool goes (the pool supervisor is
    %% asked directly: the top supervisor may be busy stopping us).
    _ = [catch sys:get_state(W, 5000) || W <- workers(Pool)],
    _ = persistent_term:erase({global_distrib_rt, Key}),
    logger:info(#{what => global_distrib_stopped, local_host => Host, undeliverable => N}),
    {N, State#state{stopped = true}}.

-spec workers(pid()) -> [pid()].
workers(Pool) ->
    try global_distrib_pool_sup:workers(Pool)
    catch exit:_ -> []
    end.
