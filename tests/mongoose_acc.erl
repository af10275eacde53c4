%% Stand-in for MongooseIM's mongoose_acc (tests only): an acc is a map.
-module(mongoose_acc).
-export([new/1, get/4, set/4, host_type/1]).

new(Params) when is_map(Params) -> Params.

get(NS, Key, Default, Acc) -> maps:get({NS, Key}, Acc, Default).

set(NS, Key, Value, Acc) -> Acc#{{NS, Key} => Value}.

host_type(Acc) -> maps:get(host_type, Acc).
