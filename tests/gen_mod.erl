%% Test stand-in for MongooseIM's gen_mod, src/gen_mod.erl at MongooseIM
%% 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6). Written for this
%% project from the behaviour of that file; no code copied (MongooseIM is
%% GPLv2).
%%
%% What a module sees (as in MongooseIM):
%%   * start_module/3 first wants the module in mongoose_config
%%     {modules, HostType} (else error(#{what => module_not_loaded, ...}),
%%     not logged); then, logged as module_start_failed (critical) and
%%     re-raised if anything crashes: every {service, S} of Module:deps/2
%%     must be a key of the `services' option (error(#{what =>
%%     service_not_loaded, ...})); a host type outside `hosts' needs the
%%     dynamic_domains feature (error({Module, HostType,
%%     dynamic_domains_feature_is_not_supported})); then
%%     mongoose_instrument:set_up(Module:instrumentation(HostType)),
%%     Module:start(HostType, Opts), gen_hook:add_handlers(Module:hooks(HostType))
%%     (the optional callbacks only if exported by the loaded module). The
%%     result of start/2 is not checked: {ok, R} stays, anything else X
%%     becomes {ok, X}. New links of the caller are logged.
%%   * stop_module/2: the hooks deleted, Module:stop(HostType) ({wait, P} or
%%     {wait, [P]} waited for, 5 s then killed; a crash logged and
%%     re-raised), then mongoose_instrument:tear_down/1.
%%   * neither reloads the hooks: mongoose_modules does, after them (here
%%     mim_standin:ensure_started/3, ensure_stopped/2).
%%   * options are read from mongoose_config at [{modules, HostType},
%%     Module | Key or path]; get_opt/2 on an options map crashes on a
%%     missing key, get_opt/3 has a default.
%% Differences: MongooseIM halts the node after a start crash when neither
%% mongooseim nor common_test runs; here the crash is always re-raised. A
%% service counts as loaded when it is a key of `services'. Not kept
%% (nobody here calls them): is_app_running/1, get_deps/3, backend_opts/1,
%% reported_module_options/3, get_module_proc/2.
-module(gen_mod).

-export([start_module/3, stop_module/2,
         does_module_support/2, config_spec/1,
         get_opt/2, get_opt/3,
         lookup_module_opt/3, get_module_opt/3, get_module_opt/4,
         get_module_opts/2, get_loaded_module_opts/2,
         loaded_modules/0, loaded_modules/1,
         loaded_modules_with_opts/0, loaded_modules_with_opts/1,
         hosts_with_module/1, hosts_and_opts_with_module/1,
         is_loaded/2]).

-type host_type() :: binary().
-type module_feature() :: atom().
-type opt_key() :: atom().
-type opt_value() :: mongoose_config:value().
-type key_path() :: mongoose_config:key_path().
-type module_opts() :: #{opt_key() => opt_value()}.

-export_type([key_path/0, opt_key/0, opt_value/0, module_opts/0, host_type/0,
              module_feature/0]).

%% The callbacks of a MongooseIM module
-callback start(host_type(), module_opts()) -> any().
-callback stop(host_type()) -> any().
-callback hooks(host_type()) -> gen_hook:hook_list().
-callback supported_features() -> [module_feature()].
-callback config_spec() -> mongoose_config_spec:config_section().
-callback instrumentation(host_type()) -> [mongoose_instrument:spec()].
-callback reported_module_options(host_type(), module_opts()) -> [{opt_key(), opt_value()}].
%% {service, S} entries are required services; the others are modules
-callback deps(host_type(), module_opts()) -> [tuple()].
-callback backend_opts() -> [opt_key()].
-optional_callbacks([hooks/1, config_spec/0, supported_features/0, instrumentation/1,
                     reported_module_options/2, deps/2, backend_opts/0]).

%%--------------------------------------------------------------------
%% Start and stop

-spec start_module(host_type(), module(), module_opts()) -> {ok, term()}.
start_module(HostType, Module, Opts) ->
    must_be_configured(HostType, Module),
    {links, Before} = process_info(self(), links),
    try
        Result = do_start(HostType, Module, Opts),
        {links, After} = process_info(self(), links),
        lists:sort(Before) =:= lists:sort(After) orelse
            logger:error(#{what => unexpected_links, ci_info => "fail_ci_build=true ",
                           links_before => Before, links_after => After}),
        logger:debug(#{what => module_started, module => Module, host_type => HostType}),
        case Result of
            {ok, _} -> Result;
            Other -> {ok, Other}
        end
    catch
        Class:Reason:Stack ->
            logger:critical(#{what => module_start_failed, module => Module,
                              host_type => HostType, opts => Opts, class => Class,
                              reason => Reason, stacktrace => Stack}),
            erlang:raise(Class, Reason, Stack)
    end.

do_start(HostType, Module, Opts) ->
    lists:foreach(fun service_must_be_configured/1, required_services(HostType, Module, Opts)),
    lists:member(HostType, mongoose_config:get_opt(hosts))
        orelse does_module_support(Module, dynamic_domains)
        orelse error({Module, HostType, dynamic_domains_feature_is_not_supported}),
    if_exported(Module, instrumentation, HostType, fun mongoose_instrument:set_up/1),
    Result = Module:start(HostType, Opts),
    if_exported(Module, hooks, HostType, fun gen_hook:add_handlers/1),
    Result.

-spec stop_module(host_type(), module()) -> ok.
stop_module(HostType, Module) ->
    must_be_configured(HostType, Module),
    if_exported(Module, hooks, HostType, fun gen_hook:delete_handlers/1),
    try Module:stop(HostType) of
        {wait, Procs} when is_list(Procs) -> lists:foreach(fun await_exit/1, Procs);
        {wait, Proc} -> await_exit(Proc);
        _ -> ok
    catch
        Class:Reason:Stack ->
            logger:error(#{what => module_stopping_failed, host_type => HostType,
                           stop_module => Module, class => Class, reason => Reason,
                           stacktrace => Stack}),
            erlang:raise(Class, Reason, Stack)
    end,
    if_exported(Module, instrumentation, HostType, fun mongoose_instrument:tear_down/1).

%% Runs Apply on Module:Callback(HostType) when the (loaded) module exports it.
if_exported(Module, Callback, HostType, Apply) ->
    case erlang:function_exported(Module, Callback, 1) of
        true -> Apply(Module:Callback(HostType));
        false -> ok
    end.

%% Waits up to 5 s for the process to end, then kills it.
await_exit(Proc) ->
    Ref = monitor(process, Proc),
    case down_within(Ref, 5000) of
        true ->
            ok;
        false ->
            kill_registered(Proc),
            _ = down_within(Ref, 5000),
            ok
    end.

%% the process may have a registered name, or be gone already
kill_registered(Proc) ->
    try exit(whereis(Proc), kill)
    catch error:badarg -> true
    end.

down_within(Ref, Timeout) ->
    receive
        {'DOWN', Ref, process, _, _} -> true
    after Timeout -> false
    end.

must_be_configured(HostType, Module) ->
    is_loaded(HostType, Module) orelse
        error(#{what => module_not_loaded,
                text => <<"Module missing from mongoose_config">>,
                host_type => HostType, module => Module}),
    ok.

%% as mongoose_service:assert_loaded/1
service_must_be_configured(Service) ->
    maps:is_key(Service, mongoose_config:get_opt(services, #{})) orelse
        error(#{what => service_not_loaded,
                text => <<"Service missing from mongoose_config">>,
                service => Service}),
    ok.

required_services(HostType, Module, Opts) ->
    _ = code:ensure_loaded(Module),
    case erlang:function_exported(Module, deps, 2) of
        true -> [S || {service, S} <- Module:deps(HostType, Opts)];
        false -> []
    end.

%%--------------------------------------------------------------------
%% Module facts

-spec does_module_support(module(), module_feature()) -> boolean().
does_module_support(Module, Feature) ->
    %% false for a module not loaded yet, as in MongooseIM
    erlang:function_exported(Module, supported_features, 0)
        andalso lists:member(Feature, Module:supported_features()).

-spec config_spec(module()) -> mongoose_config_spec:config_section().
config_spec(Module) ->
    Module:config_spec().

%%--------------------------------------------------------------------
%% Options

-spec get_opt(opt_key() | key_path(), module_opts()) -> opt_value().
get_opt(Path, Opts) when is_list(Path), is_map(Opts) ->
    lists:foldl(fun(Key, Map) -> maps:get(Key, Map) end, Opts, Path);
get_opt(Key, Opts) when is_map(Opts) ->
    maps:get(Key, Opts).

-spec get_opt(opt_key() | key_path(), module_opts(), opt_value()) -> opt_value().
get_opt(KeyOrPath, Opts, Default) ->
    try get_opt(KeyOrPath, Opts)
    catch error:{badkey, _} -> Default
    end.

-spec lookup_module_opt(host_type(), module(), opt_key() | key_path()) ->
          {ok, opt_value()} | {error, not_found}.
lookup_module_opt(HostType, Module, KeyOrPath) ->
    mongoose_config:lookup_opt(opt_path(HostType, Module, KeyOrPath)).

-spec get_module_opt(host_type(), module(), opt_key() | key_path()) -> opt_value().
get_module_opt(HostType, Module, KeyOrPath) ->
    mongoose_config:get_opt(opt_path(HostType, Module, KeyOrPath)).

%% @doc Module must be a loadable module (a wrong argument order crashes).
-spec get_module_opt(host_type(), module(), opt_key() | key_path(), opt_value()) -> opt_value().
get_module_opt(HostType, Module, KeyOrPath, Default) ->
    Module = Module:module_info(module),
    mongoose_config:get_opt(opt_path(HostType, Module, KeyOrPath), Default).

-spec get_module_opts(host_type(), module()) -> module_opts().
get_module_opts(HostType, Module) ->
    Module = Module:module_info(module),
    mongoose_config:get_opt([{modules, HostType}, Module], #{}).

-spec get_loaded_module_opts(host_type(), module()) -> module_opts().
get_loaded_module_opts(HostType, Module) ->
    mongoose_config:get_opt([{modules, HostType}, Module]).

opt_path(HostType, Module, Path) when is_list(Path) ->
    [{modules, HostType}, Module | Path];
opt_path(HostType, Module, Key) when is_atom(Key) ->
    [{modules, HostType}, Module, Key].

%%--------------------------------------------------------------------
%% Which modules run where

-spec is_loaded(host_type(), module()) -> boolean().
is_loaded(HostType, Module) ->
    maps:is_key(Module, loaded_modules_with_opts(HostType)).

-spec loaded_modules(host_type()) -> [module()].
loaded_modules(HostType) ->
    maps:keys(loaded_modules_with_opts(HostType)).

-spec loaded_modules() -> [module()].
loaded_modules() ->
    lists:usort(lists:append([loaded_modules(HT) || HT <- host_types()])).

-spec loaded_modules_with_opts(host_type()) -> #{module() => module_opts()}.
loaded_modules_with_opts(HostType) ->
    mongoose_config:get_opt({modules, HostType}).

-spec loaded_modules_with_opts() -> #{host_type() => #{module() => module_opts()}}.
loaded_modules_with_opts() ->
    maps:from_list([{HT, loaded_modules_with_opts(HT)} || HT <- host_types()]).

-spec hosts_with_module(module()) -> [host_type()].
hosts_with_module(Module) ->
    [HT || HT <- host_types(), is_loaded(HT, Module)].

-spec hosts_and_opts_with_module(module()) -> #{host_type() => module_opts()}.
hosts_and_opts_with_module(Module) ->
    Found = [{HT, mongoose_config:lookup_opt([{modules, HT}, Module])} || HT <- host_types()],
    maps:from_list([{HT, Opts} || {HT, {ok, Opts}} <- Found]).

%% static hosts, then the host types of dynamic domains
host_types() ->
    mongoose_config:get_opt(hosts) ++ mongoose_config:get_opt(host_types).
