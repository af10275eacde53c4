%% Stand-in for MongooseIM's gen_hook (tests only). Handlers live in a
%% public ETS table owned by a process of their own. Several DCs run in one
%% VM, so a `global' hook is run for one host type: run_fold(Hook,
%% {global, HostType}, ...) runs the global handlers whose Extra names it.
-module(gen_hook).
-export([add_handlers/1, delete_handlers/1, run_fold/4]).

-define(TAB, gen_hook_standin).

table() ->
    case ets:whereis(?TAB) of
        undefined ->
            Self = self(),
            Pid = spawn(fun() ->
                                _ = ets:new(?TAB, [named_table, public, bag]),
                                Self ! {ready, self()},
                                receive stop -> ok end
                        end),
            receive {ready, Pid} -> ok end;
        _ ->
            ok
    end.

add_handlers(Handlers) ->
    table(),
    ets:insert(?TAB, [{{H, T}, P, F, E} || {H, T, F, E, P} <- Handlers]),
    ok.

delete_handlers(Handlers) ->
    table(),
    [ets:delete_object(?TAB, {{H, T}, P, F, E}) || {H, T, F, E, P} <- Handlers],
    ok.

run_fold(Hook, {global, HostType}, Acc, Params) ->
    run(handlers({Hook, global}, fun(#{host_type := HT}) -> HT =:= HostType end), Acc, Params);
run_fold(Hook, HostType, Acc, Params) ->
    run(handlers({Hook, HostType}, fun(_) -> true end), Acc, Params).

handlers(Key, Filter) ->
    table(),
    lists:sort([{P, F, E} || {_, P, F, E} <- ets:lookup(?TAB, Key), Filter(E)]).

run([], Acc, _Params) ->
    {ok, Acc};
run([{_, F, E} | Rest], Acc, Params) ->
    case F(Acc, Params, E) of
        {ok, Acc1} -> run(Rest, Acc1, Params);
        {stop, Acc1} -> {stop, Acc1}
    end.
