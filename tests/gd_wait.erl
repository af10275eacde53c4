%% Waiting for a condition with a deadline, shared by the suites: tests
%% poll for what they expect instead of sleeping a fixed time.
-module(gd_wait).
-export([within/2, until/2]).

%% Polls `Fun' until it returns true; fails the test case after `Ms'.
-spec within(fun(() -> term()), non_neg_integer()) -> ok.
within(Fun, Ms) ->
    until(Fun, erlang:monotonic_time(millisecond) + Ms).

%% Same, with an absolute deadline (monotonic milliseconds).
-spec until(fun(() -> term()), integer()) -> ok.
until(Fun, Deadline) ->
    case Fun() of
        true -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail({condition_not_met, erlang:fun_info(Fun, name)});
                false -> receive after 10 -> until(Fun, Deadline) end
            end
    end.
