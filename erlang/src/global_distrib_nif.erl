%% @doc NIF stubs of `native/nif' (Rust). Use {@link global_distrib} instead:
%% calls answering `{wait, Ref}' send `{Ref, Result}' to the caller later.
-module(global_distrib_nif).

-export([new_embedded_store/0, check_config/1, start/2, stop/2, set_worker/3, delivered/2, set_log/2,
         session_opened/2, session_closed/2, register_subhost/3, unregister_subhost/2,
         route/5, route_dirty/5, lookup/2, public_domains/1, domains/2, refresh_hosts_now/1, refresh_now/1,
         rebalance_now/1, cache_origin/3, store_del/2, endpoints_of/2, endpoints/2, disabled_pools/2,
         debug_cache_session/3, debug_store_exec/2, info/1, metrics/1, prometheus/1, version/0,
         store_health/1]).

-nifs([new_embedded_store/0, check_config/1, start/2, stop/2, set_worker/3, delivered/2, set_log/2,
       session_opened/2, session_closed/2, register_subhost/3, unregister_subhost/2,
       route/5, route_dirty/5, lookup/2, public_domains/1, domains/2, refresh_hosts_now/1, refresh_now/1,
       rebalance_now/1, cache_origin/3, store_del/2, endpoints_of/2, endpoints/2, disabled_pools/2,
       debug_cache_session/3, debug_store_exec/2, info/1, metrics/1, prometheus/1, version/0,
       store_health/1]).

-on_load(init/0).

-type rt() :: reference().
-type store() :: reference().
-type wait() :: {wait, reference()}.
-type bad_jid() :: {error, {bad_jid, binary()}}.
-type stopped() :: {error, stopped}.
-export_type([rt/0, store/0, wait/0]).

-spec init() -> ok | {error, term()}.
init() ->
    erlang:load_nif(filename:join(priv_dir(), "global_distrib_nif"), 0).

-spec priv_dir() -> file:filename().
priv_dir() ->
    case code:priv_dir(global_distrib) of
        Dir when is_list(Dir) ->
            Dir;
        {error, bad_name} ->
            %% Not loaded as an application (plain -pa): ../priv of the beam.
            case code:which(?MODULE) of
                Beam when is_list(Beam) ->
                    filename:join([filename:dirname(filename:dirname(Beam)), "priv"]);
                _ ->
                    "priv"
            end
    end.

-spec new_embedded_store() -> store().
new_embedded_store() -> erlang:nif_error(nif_not_loaded).

-spec check_config(term()) -> ok | {error, {config, binary()}}.
check_config(_Config) -> erlang:nif_error(nif_not_loaded).

%% @doc `Opts': `workers' (1 to 1024 pids), `store', `worker_threads' (1 to
%% 64), `dispatch_shards' (1 to 64); a bad one is `{error, {config, Msg}}'.
-spec start(term(), map()) -> {ok, rt()} | {error, {config | start, binary()}}.
start(_Config, _Opts) -> erlang:nif_error(nif_not_loaded).

%% @doc Graceful stop within `TimeoutMs' (clamped to 24 h). Idempotent.
-spec stop(rt(), non_neg_integer()) -> {ok, non_neg_integer()}.
stop(_Rt, _TimeoutMs) -> erlang:nif_error(nif_not_loaded).

%% @doc The delivery worker of slot `Index' is `Pid' now; what was held for
%% the slot's dead worker goes to it. `{error, bad_index}' unless `Index' is
%% below the number of workers given at start.
-spec set_worker(rt(), non_neg_integer(), pid()) -> ok | {error, bad_index}.
set_worker(_Rt, _Index, _Pid) -> erlang:nif_error(nif_not_loaded).

%% @doc Called by the worker of slot `Index' after each stanza's callback:
%% the NIF forgets it (until then it would resend it to a restarted
%% successor). `{error, bad_index}' when the caller is not that worker.
-spec delivered(rt(), non_neg_integer()) -> ok | {error, bad_index}.
delivered(_Rt, _Index) -> erlang:nif_error(nif_not_loaded).

-spec set_log(pid() | undefined, atom()) -> ok.
set_log(_Pid, _Level) -> erlang:nif_error(nif_not_loaded).

%% @doc Then `{Ref, ok}' (written) or `{Ref, {ok, pending}}' (retried by the
%% refresher).
-spec session_opened(rt(), binary()) -> wait() | bad_jid() | stopped().
session_opened(_Rt, _Jid) -> erlang:nif_error(nif_not_loaded).

%% @doc Then `{Ref, {ok, Health}}' (global_distrib:store_health/1).
-spec store_health(rt()) -> wait() | stopped().
store_health(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec session_closed(rt(), binary()) -> wait() | bad_jid() | stopped().
session_closed(_Rt, _Jid) -> erlang:nif_error(nif_not_loaded).

-spec register_subhost(rt(), binary(), boolean()) -> wait() | stopped().
register_subhost(_Rt, _Domain, _Public) -> erlang:nif_error(nif_not_loaded).

-spec unregister_subhost(rt(), binary()) -> wait() | stopped().
unregister_subhost(_Rt, _Domain) -> erlang:nif_error(nif_not_loaded).

-spec route(rt(), binary(), binary(), global_distrib:kind(), binary()) ->
          global_distrib:route_result() | wait() | bad_jid() | stopped() | {error, bad_kind}.
route(_Rt, _From, _To, _Kind, _Payload) -> erlang:nif_error(nif_not_loaded).

%% @doc {@link route/5} on a dirty CPU scheduler, for payloads over 16 KiB
%% (which {@link route/5} refuses with badarg).
-spec route_dirty(rt(), binary(), binary(), global_distrib:kind(), binary()) ->
          global_distrib:route_result() | wait() | bad_jid() | stopped() | {error, bad_kind}.
route_dirty(_Rt, _From, _To, _Kind, _Payload) -> erlang:nif_error(nif_not_loaded).

-spec lookup(rt(), binary()) -> global_distrib:location() | wait() | bad_jid() | stopped().
lookup(_Rt, _Jid) -> erlang:nif_error(nif_not_loaded).

-spec public_domains(rt()) -> wait() | stopped().
public_domains(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec domains(rt(), boolean()) -> wait() | stopped().
domains(_Rt, _PublicOnly) -> erlang:nif_error(nif_not_loaded).

-spec refresh_hosts_now(rt()) -> wait() | stopped().
refresh_hosts_now(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec refresh_now(rt()) -> wait() | stopped().
refresh_now(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec rebalance_now(rt()) -> wait() | stopped().
rebalance_now(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec cache_origin(rt(), binary(), binary()) ->
          ok | wait() | bad_jid() | stopped() | {error, {unknown_origin, binary()}}.
cache_origin(_Rt, _Sender, _Origin) -> erlang:nif_error(nif_not_loaded).

-spec store_del(rt(), [binary()]) -> wait() | stopped().
store_del(_Rt, _Keys) -> erlang:nif_error(nif_not_loaded).

-spec endpoints_of(rt(), binary()) -> non_neg_integer().
endpoints_of(_Rt, _Host) -> erlang:nif_error(nif_not_loaded).

-spec endpoints(rt(), binary()) -> [{binary(), inet:port_number()}].
endpoints(_Rt, _Host) -> erlang:nif_error(nif_not_loaded).

-spec disabled_pools(rt(), binary()) -> non_neg_integer().
disabled_pools(_Rt, _Host) -> erlang:nif_error(nif_not_loaded).

%% @doc DEBUGGING ONLY: puts `Key -> Host' in the runtime's session cache
%% without touching the store (a stale cache entry). Tests only.
-spec debug_cache_session(rt(), binary(), binary()) -> ok.
debug_cache_session(_Rt, _Key, _Host) -> erlang:nif_error(nif_not_loaded).

%% @doc DEBUGGING ONLY: raw commands of the store dialect through the
%% runtime's backend; see {@link global_distrib:debug_store_exec/2}.
-spec debug_store_exec(rt(), [global_distrib:store_cmd()]) -> wait() | stopped().
debug_store_exec(_Rt, _Cmds) -> erlang:nif_error(nif_not_loaded).

-spec info(rt()) -> map().
info(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec metrics(rt()) -> #{binary() => integer() | map()}.
metrics(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec prometheus(rt()) -> binary().
prometheus(_Rt) -> erlang:nif_error(nif_not_loaded).

-spec version() -> binary().
version() -> erlang:nif_error(nif_not_loaded).
