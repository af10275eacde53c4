%% Stand-in for MongooseIM's jlib (tests only).
-module(jlib).
-export([make_error_reply/3]).

make_error_reply(Acc, {xmlel, Name, Attrs, Children}, Error) ->
    {Acc, {xmlel, Name, Attrs#{<<"type">> => <<"error">>}, Children ++ [Error]}}.
