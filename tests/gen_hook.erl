%% Test stand-in for MongooseIM's gen_hook, src/gen_hook.erl at MongooseIM
%% 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6). Written for this
%% project from the behaviour of that file; no code copied (MongooseIM is
%% GPLv2).
%%
%% Behaviour kept (what a module such as mod_global_distrib sees):
%%   * a handler is {HookName, Tag, Fun, Extra, Priority}: HookName an atom,
%%     Tag a host type (binary) or `global', Fun an external `fun M:F/3'
%%     whose module can be loaded and exports F/3, Extra a map, Priority an
%%     integer > 0. Other shapes: function_clause. A local fun, a module
%%     that does not load or a function not exported: error(#{what =>
%%     only_external_function_references_allowed | module_is_not_loaded |
%%     function_is_not_exported, ...});
%%   * the handler gets as Extra its registered map over #{hook_name,
%%     hook_tag} (+ host_type for a binary Tag); registered keys win;
%%   * handlers of a {HookName, Tag} run by increasing priority, in the
%%     order they were added for equal priorities; adding the same handler
%%     again (same priority, Extra, fun module and name) is ignored with a
%%     warning; deleting removes the handlers matching those four;
%%   * {ok, Acc} goes on, {stop, Acc} ends the run, a crash is logged
%%     (hook_failed, through error_running_hook/5) and the next handler gets
%%     the Acc the crashed one got; another return value crashes the run;
%%   * the table that run_fold/4 reads is the one published by the last
%%     reload_hooks/0 (a persistent term): added or deleted handlers are not
%%     run before it. mongoose_modules reloads after starting or stopping
%%     modules; here mim_standin:ensure_started/3 and ensure_stopped/2 do.
%% Differences: start/0 starts the server unlinked (for mim_standin);
%% no per-hook instrumentation.
-module(gen_hook).

-behaviour(gen_server).

-export([start_link/0, start/0,
         add_handler/5, delete_handler/5,
         add_handlers/1, delete_handlers/1,
         run_fold/4, reload_hooks/0]).
-export([error_running_hook/5]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-type hook_name() :: atom().
-type hook_tag() :: binary() | global.
-type hook_acc() :: any().
-type hook_params() :: map().
-type hook_extra() :: map().
-type extra() :: #{hook_name := hook_name(), hook_tag := hook_tag(),
                   host_type => binary(), _ => _}.
-type hook_fn_ret(Acc) :: {ok | stop, Acc}.
-type hook_fn_ret() :: hook_fn_ret(hook_acc()).
-type hook_fn() :: fun((hook_acc(), hook_params(), extra()) -> hook_fn_ret()).
-type hook_tuple(Fn) :: {hook_name(), hook_tag(), Fn, hook_extra(), pos_integer()}.
-type hook_tuple() :: hook_tuple(hook_fn()).
-type hook_list(Fn) :: [hook_tuple(Fn)].
-type hook_list() :: hook_list(hook_fn()).

-export_type([hook_name/0, hook_tag/0, hook_fn/0, hook_list/0, hook_list/1,
              hook_fn_ret/0, hook_fn_ret/1, hook_tuple/0, hook_params/0, extra/0]).

%% One registered handler: {Priority, Fun, Extra as passed to Fun}
-type entry() :: {pos_integer(), hook_fn(), extra()}.
%% {HookName, Tag} => entries in run order
-type table() :: #{{hook_name(), hook_tag()} => [entry()]}.

-define(PUBLISHED, ?MODULE).

%%--------------------------------------------------------------------
%% API

-spec start_link() -> gen_server:start_ret().
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Not in MongooseIM: the server without a link to the caller.
-spec start() -> gen_server:start_ret().
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

-spec add_handler(hook_name(), hook_tag(), hook_fn(), hook_extra(), pos_integer()) -> ok.
add_handler(HookName, Tag, Fun, Extra, Priority) ->
    change(add, {HookName, Tag, Fun, Extra, Priority}).

-spec delete_handler(hook_name(), hook_tag(), hook_fn(), hook_extra(), pos_integer()) -> ok.
delete_handler(HookName, Tag, Fun, Extra, Priority) ->
    change(delete, {HookName, Tag, Fun, Extra, Priority}).

-spec add_handlers(hook_list()) -> ok.
add_handlers(Handlers) ->
    lists:foreach(fun(H) -> change(add, H) end, Handlers).

-spec delete_handlers(hook_list()) -> ok.
delete_handlers(Handlers) ->
    lists:foreach(fun(H) -> change(delete, H) end, Handlers).

-spec reload_hooks() -> ok.
reload_hooks() ->
    gen_server:call(?MODULE, publish).

%% @doc Folds Acc through the published handlers of {HookName, Tag}.
-spec run_fold(hook_name(), hook_tag(), hook_acc(), hook_params()) -> hook_fn_ret().
run_fold(HookName, Tag, Acc, Params) ->
    Key = {HookName, Tag},
    Entries = maps:get(Key, persistent_term:get(?PUBLISHED, #{}), []),
    fold_entries(Entries, Key, Acc, Params).

%% @doc Called (as an external call) for every crashing handler.
-spec error_running_hook(map(), term(), hook_acc(), hook_params(), term()) -> ok.
error_running_hook(CrashInfo, Handler, Acc, Params, Key) ->
    logger:error(CrashInfo#{what => hook_failed, text => <<"Error running hook">>,
                            key => Key, handler => Handler, acc => Acc, params => Params}).

%%--------------------------------------------------------------------
%% Running

fold_entries([], _Key, Acc, _Params) ->
    {ok, Acc};
fold_entries([{_, Fun, Extra} = Entry | Later], Key, Acc, Params) ->
    case call_safely(Fun, Acc, Params, Extra) of
        {ok, NewAcc} ->
            fold_entries(Later, Key, NewAcc, Params);
        {stop, NewAcc} ->
            {stop, NewAcc};
        {crashed, CrashInfo} ->
            ?MODULE:error_running_hook(CrashInfo, Entry, Acc, Params, Key),
            fold_entries(Later, Key, Acc, Params)
    end.

call_safely(Fun, Acc, Params, Extra) ->
    try
        Fun(Acc, Params, Extra)
    catch
        Class:Reason:Stack ->
            {crashed, #{class => Class, reason => Reason, stacktrace => Stack}}
    end.

%%--------------------------------------------------------------------
%% Registration (checked in the caller, applied by the server)

change(Op, Tuple) ->
    {Key, Entry} = to_entry(Tuple),
    gen_server:call(?MODULE, {Op, Key, Entry}).

-spec to_entry(hook_tuple()) -> {{hook_name(), hook_tag()}, entry()}.
to_entry({HookName, Tag, Fun, Extra, Priority})
  when is_atom(HookName), (is_binary(Tag) orelse Tag =:= global),
       is_function(Fun, 3), is_map(Extra), is_integer(Priority), Priority > 0 ->
    require_exported_fun(Fun),
    Base = case Tag of
               global -> #{};
               _ -> #{host_type => Tag}
           end,
    FullExtra = maps:merge(Base#{hook_name => HookName, hook_tag => Tag}, Extra),
    {{HookName, Tag}, {Priority, Fun, FullExtra}}.

require_exported_fun(Fun) ->
    case erlang:fun_info(Fun, type) of
        {type, local} ->
            error(#{what => only_external_function_references_allowed, function => Fun});
        {type, external} ->
            {module, M} = erlang:fun_info(Fun, module),
            {name, F} = erlang:fun_info(Fun, name),
            case code:ensure_loaded(M) of
                {module, M} -> ok;
                Other -> error(#{what => module_is_not_loaded, module => M, error => Other})
            end,
            erlang:function_exported(M, F, 3) orelse
                error(#{what => function_is_not_exported, function => Fun}),
            ok
    end.

%% Two entries are the same handler when priority, Extra and the fun's
%% module and name agree.
same_handler({P, FunA, ExtraA}, {P, FunB, ExtraB}) ->
    ExtraA =:= ExtraB andalso fun_id(FunA) =:= fun_id(FunB);
same_handler(_, _) ->
    false.

fun_id(Fun) ->
    {erlang:fun_info(Fun, module), erlang:fun_info(Fun, name)}.

%% After every entry of lower or equal priority.
insert_in_order(Entry = {P, _, _}, Entries) ->
    {Before, After} = lists:splitwith(fun({Q, _, _}) -> Q =< P end, Entries),
    Before ++ [Entry | After].

%%--------------------------------------------------------------------
%% gen_server

-spec init([]) -> {ok, table()}.
init([]) ->
    process_flag(trap_exit, true),
    {ok, #{}}.

handle_call({add, Key, Entry}, _From, Table) ->
    Entries = maps:get(Key, Table, []),
    case lists:any(fun(E) -> same_handler(E, Entry) end, Entries) of
        true ->
            logger:warning(#{what => duplicated_handler, key => Key, handler => Entry}),
            {reply, ok, Table};
        false ->
            {reply, ok, Table#{Key => insert_in_order(Entry, Entries)}}
    end;
handle_call({delete, Key, Entry}, _From, Table) ->
    case Table of
        #{Key := Entries} ->
            Kept = [E || E <- Entries, not same_handler(E, Entry)],
            {reply, ok, Table#{Key := Kept}};
        #{} ->
            {reply, ok, Table}
    end;
handle_call(publish, _From, Table) ->
    persistent_term:put(?PUBLISHED, Table),
    {reply, ok, Table};
handle_call(Request, From, Table) ->
    logger:warning(#{what => unexpected_call, msg => Request, call_from => From}),
    {reply, bad_request, Table}.

handle_cast(Msg, Table) ->
    logger:warning(#{what => unexpected_cast, msg => Msg}),
    {noreply, Table}.

handle_info(Msg, Table) ->
    logger:warning(#{what => unexpected_info, msg => Msg}),
    {noreply, Table}.

terminate(_Reason, _Table) ->
    _ = persistent_term:erase(?PUBLISHED),
    ok.
