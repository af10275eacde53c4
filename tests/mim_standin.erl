%% Test-side control of the MongooseIM stand-ins (tests/*.erl modelled on
%% MongooseIM 6.8.0, see tests/STANDINS.md). NOT a model of one MongooseIM
%% module: it owns the stand-ins' state and plays the MongooseIM internals
%% the models leave out (route table, domain -> host type, routing chain,
%% local delivery, s2s), recording what they receive. Written for this
%% project; where it plays MongooseIM 6.8.0 (mongoose_local_delivery,
%% mongoose_modules, mongoose_hooks, the routing modules) it was written from
%% the behaviour of those files; no code copied (MongooseIM is GPLv2).
%%
%%   start/0, stop/0          tables owner, gen_hook and mongoose_instrument
%%                            servers, initial mongoose_config options
%%   set_config/2             mongoose_config:set_opt/2 (hosts, host_types,
%%                            outgoing_pools, {modules, HT}, services, ...)
%%   add_domain/2, remove_domain/1   a (dynamic) domain of a host type
%%   register_route/2, unregister_route/1, lookup_route/1, all_routes/0
%%   routed/0                 local deliveries, in order: [{From, To, Acc, Packet}]
%%   s2s_routed/0             stanzas for domains without a local route
%%   route_chain/4            the routing chain of both router stand-ins
%%   instrument_events/0      [{EventName, Labels, Measurements}] in order
%%   instrument_errors/0      metrics handler failures
%%   clear/0                  forget routed, s2s_routed and instrument records
%%   ensure_started/3, ensure_stopped/2   mongoose_modules 6.8.0 (gen_mod +
%%                            gen_hook:reload_hooks/0)
%%   set_mongoose_version/1   '6.8' | '6.6' | both: which router API exists
%%   filter_packet/1, filter_local_packet/1, sm_register_connection/4,
%%   sm_remove_connection/5, register_subhost/2, unregister_subhost/1,
%%   packet_to_component/3, disco_local_items/1, disco_acc/5
%%                            the hooks, run as mongoose_hooks 6.8.0 runs them
-module(mim_standin).

-export([start/0, stop/0, clear/0,
         set_config/2, get_config/1,
         add_domain/2, remove_domain/1, get_host_type/1,
         register_route/2, unregister_route/1, lookup_route/1, all_routes/0,
         routed/0, s2s_routed/0, instrument_events/0, instrument_errors/0,
         ensure_started/3, ensure_stopped/2,
         set_mongoose_version/1]).

%% called by the stand-ins
-export([route_chain/4, local_delivery/5, s2s_route/4,
         record_instrument_event/3, record_instrument_error/4]).

%% mongoose_hooks 6.8.0
-export([filter_packet/1, filter_local_packet/1,
         sm_register_connection/4, sm_remove_connection/5,
         register_subhost/2, unregister_subhost/1,
         packet_to_component/3, disco_local_items/1, disco_acc/5]).

-include("jid.hrl").

-define(OWNER, mim_standin_owner).
-define(ROUTED, mim_standin_routed).
-define(S2S, mim_standin_s2s).
-define(EVENTS, mim_standin_events).
-define(ERRORS, mim_standin_instrument_errors).
-define(ROUTES, mim_standin_routes).
-define(DOMAINS, mim_standin_domains).

%%--------------------------------------------------------------------
%% Life cycle

%% @doc Starts the stand-ins on this node (idempotent): a process owning the
%% public ETS tables, the gen_hook and mongoose_instrument servers (unlinked,
%% so they outlive the caller), and mongoose_config with
%% #{hosts => [], host_types => [], services => #{}, outgoing_pools => [],
%%   instrumentation => #{}} unless options are already set.
-spec start() -> ok.
start() ->
    case whereis(?OWNER) of
        undefined ->
            Self = self(),
            Pid = spawn(fun() ->
                                register(?OWNER, self()),
                                [ets:new(T, [named_table, public, ordered_set])
                                 || T <- [?ROUTED, ?S2S, ?EVENTS, ?ERRORS]],
                                [ets:new(T, [named_table, public, set])
                                 || T <- [?ROUTES, ?DOMAINS]],
                                Self ! {ready, self()},
                                receive stop -> ok end
                        end),
            receive {ready, Pid} -> ok after 5000 -> error(mim_standin_start_timeout) end;
        _ ->
            ok
    end,
    ok = started(gen_hook:start()),
    ok = started(mongoose_instrument:start()),
    try mongoose_config:get_opts() of
        _ -> ok
    catch error:badarg ->
            mongoose_config:set_opts(#{hosts => [], host_types => [], services => #{},
                                       outgoing_pools => [], instrumentation => #{}})
    end,
    ok.

started({ok, _}) -> ok;
started({error, {already_started, _}}) -> ok.

%% @doc Stops what start/0 started and erases the config.
-spec stop() -> ok.
stop() ->
    lists:foreach(fun stop_server/1, [gen_hook, mongoose_instrument]),
    _ = mongoose_config:erase_opts(),
    case whereis(?OWNER) of
        undefined -> ok;
        Pid ->
            Ref = monitor(process, Pid),
            Pid ! stop,
            receive {'DOWN', Ref, process, Pid, _} -> ok end
    end,
    ok.

stop_server(Name) ->
    try gen_server:stop(Name)
    catch exit:_ -> ok   % not running, or stopped meanwhile
    end.

%% @doc Forgets what was routed and instrumented (not the hooks, config, routes).
-spec clear() -> ok.
clear() ->
    [ets:delete_all_objects(T) || T <- [?ROUTED, ?S2S, ?EVENTS, ?ERRORS]],
    ok.

%%--------------------------------------------------------------------
%% Config, domains, routes

%% @doc mongoose_config:set_opt/2. Setting `hosts' or `host_types' also
%% sets {modules, HT} => #{} for each new host type that has none (the
%% config parser of MongooseIM gives every host type a modules map).
-spec set_config(mongoose_config:key() | mongoose_config:key_path(), term()) -> ok.
set_config(Key, Value) when Key =:= hosts; Key =:= host_types ->
    ok = mongoose_config:set_opt(Key, Value),
    [ok = mongoose_config:set_opt({modules, HT}, #{})
     || HT <- Value, mongoose_config:lookup_opt({modules, HT}) =:= {error, not_found}],
    ok;
set_config(Key, Value) ->
    mongoose_config:set_opt(Key, Value).

-spec get_config(mongoose_config:key() | mongoose_config:key_path()) -> term().
get_config(Key) ->
    mongoose_config:get_opt(Key).

%% @doc Domain -> host type, as mongoose_domain_api:get_host_type/1: a
%% configured host (mongoose_config `hosts') is its own host type; other
%% domains are those added with add_domain/2.
-spec get_host_type(binary()) -> {ok, binary()} | {error, not_found}.
get_host_type(Domain) ->
    case lists:member(Domain, mongoose_config:get_opt(hosts, [])) of
        true -> {ok, Domain};
        false ->
            case ets:lookup(?DOMAINS, Domain) of
                [{_, HostType}] -> {ok, HostType};
                [] -> {error, not_found}
            end
    end.

%% @doc Adds a domain of HostType (as a dynamic domain): it gets a host type
%% and a local route.
-spec add_domain(binary(), binary()) -> ok.
add_domain(Domain, HostType) ->
    ets:insert(?DOMAINS, {Domain, HostType}),
    ok.

-spec remove_domain(binary()) -> ok.
remove_domain(Domain) ->
    ets:delete(?DOMAINS, Domain),
    ok.

%% @doc The route table (mongoose_router's in MongooseIM): a registered
%% route (a component, a subdomain), else `local' for a configured host or
%% an added domain, else no_route.
-spec lookup_route(binary()) -> no_route | term().
lookup_route(LDomain) ->
    case ets:lookup(?ROUTES, LDomain) of
        [{_, Handler}] -> Handler;
        [] ->
            case get_host_type(LDomain) of
                {ok, _} -> local;
                {error, not_found} -> no_route
            end
    end.

-spec register_route(binary(), term()) -> true.
register_route(LDomain, Handler) ->
    ets:insert(?ROUTES, {LDomain, Handler}).

-spec unregister_route(binary()) -> true.
unregister_route(LDomain) ->
    ets:delete(?ROUTES, LDomain).

-spec all_routes() -> [binary()].
all_routes() ->
    lists:usort([D || {D, _} <- ets:tab2list(?ROUTES)]
                ++ mongoose_config:get_opt(hosts, [])
                ++ [D || {D, _} <- ets:tab2list(?DOMAINS)]).

%%--------------------------------------------------------------------
%% What the stand-ins recorded

%% @doc Local deliveries in order: the From, To, Acc and Packet handed to
%% the recipient's handler by mongoose_local_delivery (Acc stripped to its
%% permanent fields, as in MongooseIM).
-spec routed() -> [{jid:jid(), jid:jid(), mongoose_acc:t(), term()}].
routed() ->
    [R || {_, R} <- ets:tab2list(?ROUTED)].

%% @doc Stanzas the chain sent past local routing (no local route for To's
%% domain: external component or s2s in MongooseIM), in order.
-spec s2s_routed() -> [{jid:jid(), jid:jid(), mongoose_acc:t(), term()}].
s2s_routed() ->
    [R || {_, R} <- ets:tab2list(?S2S)].

-spec instrument_events() -> [{atom(), map(), map()}].
instrument_events() ->
    [R || {_, R} <- ets:tab2list(?EVENTS)].

-spec instrument_errors() -> [{atom(), map(), map(), {atom(), term()}}].
instrument_errors() ->
    [R || {_, R} <- ets:tab2list(?ERRORS)].

-spec record_instrument_event(atom(), map(), map()) -> ok.
record_instrument_event(EventName, Labels, Measurements) ->
    ets:insert(?EVENTS, {erlang:unique_integer([monotonic]), {EventName, Labels, Measurements}}),
    ok.

-spec record_instrument_error(atom(), map(), map(), {atom(), term()}) -> ok.
record_instrument_error(EventName, Labels, Measurements, Error) ->
    ets:insert(?ERRORS, {erlang:unique_integer([monotonic]),
                         {EventName, Labels, Measurements, Error}}),
    ok.

%%--------------------------------------------------------------------
%% The routing chain and local delivery (used by the router stand-ins)

%% @doc The fixed routing chain of tests/mongoose_router.erl and
%% tests/ejabberd_router.erl: [mongoose_router_global,
%% mongoose_router_localdomain, ejabberd_s2s]. Each element first filters
%% (drop ends routing with {drop, Module}), then routes (done ends it with
%% {done, Module}; passing on goes to the next element). A crash in either
%% is logged and ends routing with {error, {Module, Reason}}. The outcome is
%% appended to the Acc's {router, result}. A filter_packet handler may not
%% change From or To (error {try_clause, Result}, as in MongooseIM).
-spec route_chain(jid:jid(), jid:jid(), mongoose_acc:t(), term()) -> mongoose_acc:t().
route_chain(From, To, Acc, Packet) ->
    walk_chain([mongoose_router_global, mongoose_router_localdomain, ejabberd_s2s],
               From, To, Acc, Packet).

walk_chain([], _From, To, Acc, _Packet) ->
    logger:warning(#{what => no_more_routing_modules, acc => Acc, to => To}),
    outcome({error, out_of_modules}, Acc);
walk_chain([Element | Next], From, To, Acc, Packet) ->
    case guarded(route_filter_failed, Element, Acc,
                 fun() -> chain_filter(Element, From, To, Acc, Packet) end) of
        {crashed, Reason} ->
            outcome({error, {Element, Reason}}, Acc);
        drop ->
            outcome({drop, Element}, Acc);
        {From, To, FilteredAcc, FilteredPacket} ->
            case guarded(routing_failed, Element, FilteredAcc,
                         fun() -> chain_route(Element, From, To, FilteredAcc, FilteredPacket) end) of
                {crashed, Reason} ->
                    outcome({error, {Element, Reason}}, FilteredAcc);
                {done, DoneAcc} ->
                    outcome({done, Element}, DoneAcc);
                {From1, To1, Acc1, Packet1} ->
                    walk_chain(Next, From1, To1, Acc1, Packet1)
            end;
        Changed ->
            erlang:error({try_clause, Changed})
    end.

outcome(Result, Acc) ->
    mongoose_acc:append(router, result, Result, Acc).

%% Runs Fun; a crash is logged as What and returned as {crashed, Reason}.
guarded(What, Element, Acc, Fun) ->
    try
        Fun()
    catch
        Class:Reason:Stack ->
            logger:warning(#{what => What, router_module => Element, acc => Acc,
                             class => Class, reason => Reason, stacktrace => Stack}),
            {crashed, Reason}
    end.

%% Only the global element filters: the filter_packet hook.
chain_filter(mongoose_router_global, From, To, Acc, Packet) ->
    case filter_packet({From, To, Acc, Packet}) of
        drop -> drop;
        {_, _, _, _} = Filtered -> Filtered
    end;
chain_filter(_Element, From, To, Acc, Packet) ->
    {From, To, Acc, Packet}.

chain_route(mongoose_router_localdomain, From, To, Acc, Packet) ->
    case lookup_route(To#jid.lserver) of
        no_route -> {From, To, Acc, Packet};
        Handler -> {done, local_delivery(From, To, Acc, Packet, Handler)}
    end;
chain_route(ejabberd_s2s, From, To, Acc, Packet) ->
    {done, s2s_route(From, To, Acc, Packet)};
chain_route(_Element, From, To, Acc, Packet) ->
    {From, To, Acc, Packet}.

%% @doc Delivery to a local route, as MongooseIM 6.8.0's
%% mongoose_local_delivery does it, the recipient being a recorder: the Acc
%% is stripped (only its permanent fields stay) and gets the recipient's
%% lserver and host type; for a domain with a host type the
%% filter_local_packet hook runs first (drop: nothing delivered, the
%% stripped Acc returned); the delivery is recorded (routed/0); the Acc
%% returned has the original host_type and lserver back.
-spec local_delivery(jid:jid(), jid:jid(), mongoose_acc:t(), term(), term()) ->
          mongoose_acc:t().
local_delivery(From, To, Acc, Packet, _Handler) ->
    Domain = To#jid.lserver,
    Recipient = #{lserver => Domain, from_jid => From, to_jid => To, element => Packet},
    case get_host_type(Domain) of
        {error, not_found} ->
            %% e.g. a component's domain: no filter_local_packet
            Delivered = record_delivery(From, To, mongoose_acc:strip(Recipient, Acc), Packet),
            with_sender_fields(Acc, Delivered);
        {ok, HostType} ->
            Stripped = mongoose_acc:strip(Recipient#{host_type => HostType}, Acc),
            case filter_local_packet({From, To, Stripped, Packet}) of
                drop ->
                    Stripped;
                {From1, To1, Acc1, Packet1} ->
                    Stanza = #{from_jid => From1, to_jid => To1, element => Packet1},
                    Acc2 = mongoose_acc:update_stanza(Stanza, Acc1),
                    with_sender_fields(Acc, record_delivery(From1, To1, Acc2, Packet1))
            end
    end.

record_delivery(From, To, Acc, Packet) ->
    ets:insert(?ROUTED, {erlang:unique_integer([monotonic]), {From, To, Acc, Packet}}),
    Acc.

with_sender_fields(SenderAcc, Acc) ->
    Acc#{host_type := mongoose_acc:host_type(SenderAcc),
         lserver := mongoose_acc:lserver(SenderAcc)}.

%% @doc The end of the routing chain (external components, s2s): recorded.
-spec s2s_route(jid:jid(), jid:jid(), mongoose_acc:t(), term()) -> mongoose_acc:t().
s2s_route(From, To, Acc, Packet) ->
    ets:insert(?S2S, {erlang:unique_integer([monotonic]), {From, To, Acc, Packet}}),
    Acc.

%%--------------------------------------------------------------------
%% Starting and stopping a module at runtime, as mongoose_modules 6.8.0
%% does it: {modules, HostType} updated around gen_mod, then the hooks
%% reloaded (not when the start or stop crashed).

%% @doc The module is started with Opts unless it already runs with them; a
%% module running with other options is stopped and started again. A start
%% crash puts {modules, HostType} back as it was and is re-raised.
-spec ensure_started(binary(), module(), map()) ->
          already_started | {started, term()} | {restarted, map(), term()}.
ensure_started(HostType, Module, Opts) ->
    Running = running_modules(HostType),
    Result = case Running of
                 #{Module := Opts} ->
                     already_started;
                 #{Module := OldOpts} ->
                     stop_and_forget(HostType, Module, Running),
                     {restarted, OldOpts, start_and_remember(HostType, Module, Opts, Running)};
                 #{} ->
                     {started, start_and_remember(HostType, Module, Opts, Running)}
             end,
    ok = gen_hook:reload_hooks(),
    Result.

%% @doc The module is stopped if it runs.
-spec ensure_stopped(binary(), module()) -> already_stopped | {stopped, map()}.
ensure_stopped(HostType, Module) ->
    Running = running_modules(HostType),
    Result = case Running of
                 #{Module := Opts} ->
                     stop_and_forget(HostType, Module, Running),
                     {stopped, Opts};
                 #{} ->
                     already_stopped
             end,
    ok = gen_hook:reload_hooks(),
    Result.

start_and_remember(HostType, Module, Opts, Before) ->
    ok = mongoose_config:set_opt({modules, HostType}, Before#{Module => Opts}),
    try gen_mod:start_module(HostType, Module, Opts) of
        {ok, Started} -> Started
    catch
        Class:Reason:Stack ->
            ok = mongoose_config:set_opt({modules, HostType}, Before),
            erlang:raise(Class, Reason, Stack)
    end.

stop_and_forget(HostType, Module, Before) ->
    gen_mod:stop_module(HostType, Module),
    ok = mongoose_config:set_opt({modules, HostType}, maps:remove(Module, Before)).

%% MongooseIM's config has {modules, HT} for every host type; a missing
%% one is taken as #{} here.
running_modules(HostType) ->
    mongoose_config:get_opt({modules, HostType}, #{}).

%%--------------------------------------------------------------------
%% Which MongooseIM router API exists

%% @doc '6.8': mongoose_router:route/1 exists and ejabberd_router does not
%% (an empty module replaces it: code:ensure_loaded succeeds, nothing is
%% exported). '6.6': ejabberd_router:route/3,4 exist, mongoose_router is
%% replaced by its 6.6.0 shape, without route/1 (lookup_route/1,
%% is_registered_route/1, get_all_domains/0 only), and mongoose_acc loses
%% what 6.7 added (new/4, update/3, update/4: the model recompiled from its
%% debug_info without those exports). both: the stand-in files as compiled
%% (the state after start/0). Call it before starting the facade, which
%% picks its router at start.
-spec set_mongoose_version('6.8' | '6.6' | both) -> ok.
set_mongoose_version('6.8') ->
    reload_from_path(mongoose_router),
    reload_from_path(mongoose_acc),
    load_forms(ejabberd_router, ["-module(ejabberd_router)."]);
set_mongoose_version('6.6') ->
    reload_from_path(ejabberd_router),
    load_without(mongoose_acc, [{new, 4}, {update, 3}, {update, 4}]),
    load_forms(mongoose_router,
               ["-module(mongoose_router).",
                "-export([lookup_route/1, is_registered_route/1, get_all_domains/0]).",
                "lookup_route(D) -> mim_standin:lookup_route(D).",
                "is_registered_route(D) -> mim_standin:lookup_route(D) =/= no_route.",
                "get_all_domains() -> mim_standin:all_routes()."]);
set_mongoose_version(both) ->
    reload_from_path(mongoose_router),
    reload_from_path(mongoose_acc),
    reload_from_path(ejabberd_router).

load_forms(Module, Lines) ->
    Forms = [begin
                 {ok, Tokens, _} = erl_scan:string(L),
                 {ok, Form} = erl_parse:parse_form(Tokens),
                 Form
             end || L <- Lines],
    {ok, Module, Bin} = compile:forms(Forms, []),
    _ = code:purge(Module),
    {module, Module} = code:load_binary(Module, atom_to_list(Module) ++ "_standin_shape", Bin),
    ok.

%% Module as compiled, minus the exports Hidden (and their functions)
load_without(Module, Hidden) ->
    {ok, {Module, [{abstract_code, {raw_abstract_v1, Forms0}}]}} =
        beam_lib:chunks(code:which(Module), [abstract_code]),
    Forms = lists:filtermap(
              fun({attribute, L, export, FAs}) ->
                      {true, {attribute, L, export, FAs -- Hidden}};
                 ({function, _, F, A, _}) ->
                      not lists:member({F, A}, Hidden);
                 ({attribute, _, spec, {{F, A}, _}}) ->
                      not lists:member({F, A}, Hidden);
                 (_) ->
                      true
              end, Forms0),
    {ok, Module, Bin} = compile:forms(Forms, [nowarn_unused_function]),
    _ = code:purge(Module),
    {module, Module} = code:load_binary(Module, atom_to_list(Module) ++ "_standin_shape", Bin),
    ok.

reload_from_path(Module) ->
    _ = code:purge(Module),
    {module, Module} = code:load_file(Module),
    ok.

%%--------------------------------------------------------------------
%% The hooks, with the accumulators and parameters mongoose_hooks 6.8.0
%% gives them. A hook run returns the final accumulator, whether the fold
%% ended with ok or stop. A host-type hook for an undefined host type runs
%% nothing: MongooseIM logs undefined_host_type and returns the accumulator.

%% global; Acc {From, To, Acc, Packet}; result drop or the same shape
-spec filter_packet({jid:jid(), jid:jid(), mongoose_acc:t(), term()}) ->
          drop | {jid:jid(), jid:jid(), mongoose_acc:t(), term()}.
filter_packet(FilterAcc) ->
    fold_hook(filter_packet, global, FilterAcc, #{}).

%% host type of the Acc inside; Acc {From, To, Acc, Packet}
filter_local_packet({_From, _To, Acc, _Packet} = FilterAcc) ->
    fold_hook(filter_local_packet, mongoose_acc:host_type(Acc), FilterAcc, #{}).

%% Acc `ok'; Params #{sid, jid, info}
sm_register_connection(HostType, SID, JID, Info) ->
    fold_hook(sm_register_connection, HostType, ok, #{sid => SID, jid => JID, info => Info}).

%% Acc a mongoose_acc (its host type); Params #{sid, jid, info, reason}
sm_remove_connection(Acc, SID, JID, Info, Reason) ->
    fold_hook(sm_remove_connection, mongoose_acc:host_type(Acc), Acc,
              #{sid => SID, jid => JID, info => Info, reason => Reason}).

%% global; Acc `ok'; Params #{ldomain, is_hidden}
register_subhost(LDomain, IsHidden) ->
    fold_hook(register_subhost, global, ok, #{ldomain => LDomain, is_hidden => IsHidden}).

%% global; Acc `ok'; Params #{ldomain}
unregister_subhost(LDomain) ->
    fold_hook(unregister_subhost, global, ok, #{ldomain => LDomain}).

%% global; Acc a mongoose_acc; Params #{from, to}
packet_to_component(Acc, From, To) ->
    fold_hook(packet_to_component, global, Acc, #{from => From, to => To}).

%% host type of the disco accumulator; Params #{}
disco_local_items(#{host_type := HostType} = DiscoAcc) ->
    fold_hook(disco_local_items, HostType, DiscoAcc, #{}).

%% @doc A fresh accumulator of the disco hooks (mongoose_disco 6.8.0).
disco_acc(HostType, From, To, Node, Lang) ->
    #{host_type => HostType, from_jid => From, to_jid => To,
      node => Node, lang => Lang, result => empty}.

fold_hook(Hook, undefined, Acc, Params) ->
    logger:error(#{what => undefined_host_type,
                   text => <<"Running hook for an undefined host type">>,
                   hook_name => Hook, hook_acc => Acc, hook_args => Params}),
    Acc;
fold_hook(Hook, Tag, Acc, Params) when (is_binary(Tag) orelse Tag =:= global),
                                       is_map(Params) ->
    {_OkOrStop, Final} = gen_hook:run_fold(Hook, Tag, Acc, Params),
    Final.
