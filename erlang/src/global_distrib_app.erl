%% @doc The `global_distrib' application: starts {@link global_distrib_sup}.
-module(global_distrib_app).
-behaviour(application).

-export([start/2, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    global_distrib_sup:start_link().

-spec stop(term()) -> ok.
stop(_State) ->
    ok.
