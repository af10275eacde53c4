%% Test stand-in for MongooseIM's mongoose_config, src/config/mongoose_config.erl
%% at MongooseIM 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6).
%% Written for this project from the behaviour of that file; no code copied
%% (MongooseIM is GPLv2).
%%
%% Behaviour kept: all options live in one map stored as the persistent
%% term `mongoose_config'. A key is an atom (hosts, host_types,
%% outgoing_pools, services, instrumentation...) or a {Key, HostType} tuple
%% ({modules, HostType} => #{Module => Opts}); a list is a path into the
%% nested maps ([{modules, HT}, Module, Opt]).
%%   get_opt/1    crashes with {badkey, K} when a key of the path is missing
%%                (badarg when no options were ever set);
%%   get_opt/2    gives the default for a missing key (only for badkey);
%%   lookup_opt/1 gives {ok, V} | {error, not_found} (only for badkey).
%% The test API set_opts/1, get_opts/0, erase_opts/0, set_opt/2, unset_opt/1
%% is kept; reading the TOML file (start/0) is not: mim_standin:start/0 and
%% mim_standin:set_config/2 set the options.
-module(mongoose_config).

-export([stop/0, lookup_opt/1, get_opt/1, get_opt/2]).
-export([set_opts/1, get_opts/0, erase_opts/0, set_opt/2, unset_opt/1]).

-type host_type_key() :: {atom(), binary() | global}.
-type key() :: atom() | host_type_key().
-type inner_key() :: atom() | binary() | integer() | string() | tuple().
-type key_path() :: [key() | inner_key()].
-type value() :: atom() | binary() | integer() | string() | [value()] | tuple() | map().

-export_type([host_type_key/0, key/0, key_path/0, value/0]).

-define(TERM, ?MODULE).

-spec stop() -> ok | {error, not_started}.
stop() ->
    case erase_opts() of
        true -> ok;
        false -> {error, not_started}
    end.

%%--------------------------------------------------------------------
%% Reading

-spec get_opt(key() | key_path()) -> value().
get_opt(KeyOrPath) ->
    walk(persistent_term:get(?TERM), as_path(KeyOrPath)).

-spec get_opt(key() | key_path(), value()) -> value().
get_opt(KeyOrPath, Default) ->
    case lookup_opt(KeyOrPath) of
        {ok, Value} -> Value;
        {error, not_found} -> Default
    end.

-spec lookup_opt(key() | key_path()) -> {ok, value()} | {error, not_found}.
lookup_opt(KeyOrPath) ->
    try
        {ok, get_opt(KeyOrPath)}
    catch
        error:{badkey, _} -> {error, not_found}
    end.

%% maps:get/2 at every step: {badkey, K} for a missing key, {badmap, V}
%% when the path goes through something that is not a map.
walk(Value, []) -> Value;
walk(Map, [Key | Rest]) -> walk(maps:get(Key, Map), Rest).

as_path(Path) when is_list(Path) -> Path;
as_path(Key) -> [Key].

%%--------------------------------------------------------------------
%% Test API

-spec set_opts(#{key() => value()}) -> ok.
set_opts(Opts) ->
    persistent_term:put(?TERM, Opts).

-spec get_opts() -> #{key() => value()}.
get_opts() ->
    persistent_term:get(?TERM).

-spec erase_opts() -> boolean().
erase_opts() ->
    persistent_term:erase(?TERM).

%% @doc Sets the value at a key or path; every map above the last key must
%% already exist.
-spec set_opt(key() | key_path(), value()) -> ok.
set_opt(KeyOrPath, Value) ->
    Put = fun(Map, Last) -> Map#{Last => Value} end,
    set_opts(change_at(get_opts(), as_path(KeyOrPath), Put)).

-spec unset_opt(key() | key_path()) -> ok.
unset_opt(KeyOrPath) ->
    Remove = fun(Map, Last) -> maps:remove(Last, Map) end,
    set_opts(change_at(get_opts(), as_path(KeyOrPath), Remove)).

%% Applies Change to the innermost map of the path and rebuilds the maps
%% around it.
change_at(Map, [Last], Change) ->
    Change(Map, Last);
change_at(Map, [Key | Rest], Change) ->
    Map#{Key => change_at(maps:get(Key, Map), Rest, Change)}.
