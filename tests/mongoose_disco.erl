%% Stand-in for MongooseIM's mongoose_disco (tests only).
-module(mongoose_disco).
-export([add_items/2]).

add_items(Items, Acc) ->
    Acc#{items => maps:get(items, Acc, []) ++ Items}.
