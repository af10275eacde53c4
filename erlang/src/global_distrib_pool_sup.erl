%% @doc The delivery workers of one runtime: N {@link global_distrib_worker}s,
%% indexed 0..N-1. The NIF sends each stanza to the worker its sender hashes
%% to; a restarted worker registers its new pid with the NIF itself.
-module(global_distrib_pool_sup).
-behaviour(supervisor).

-export([start_link/3, workers/1]).
-export([init/1]).

-spec start_link(reference(), pos_integer(), global_distrib_worker:callback()) ->
          {ok, pid()} | ignore | {error, term()}.
start_link(Key, N, Callback) ->
    supervisor:start_link(?MODULE, {Key, N, Callback}).

%% @doc Worker pids in index order.
-spec workers(pid()) -> [pid()].
workers(Sup) ->
    Children = [{I, Pid} || {{worker, I}, Pid, worker, _} <- supervisor:which_children(Sup),
                            is_pid(Pid)],
    [Pid || {_, Pid} <- lists:keysort(1, Children)].

-spec init({reference(), pos_integer(), global_distrib_worker:callback()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({Key, N, Callback}) ->
    Children = [#{id => {worker, I},
                  start => {global_distrib_worker, start_link, [Key, I, Callback]},
                  restart => permanent,
                  shutdown => 5000,
                  type => worker,
                  modules => [global_distrib_worker]}
                || I <- lists:seq(0, N - 1)],
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, Children}}.
