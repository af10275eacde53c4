%% @doc Host-agnostic API of global_distrib: one runtime per datacenter node
%% (several may run in one VM), backed by the Rust core through
%% {@link global_distrib_nif}.
%%
%% Stanzas for local users arriving from other datacenters, and stanzas given
%% up on, reach the host through the callback given to {@link start/2}, run
%% by a pool of {@link global_distrib_worker}s:
%% `Callback(deliver | undeliverable, Meta, Payload)'. In a `deliver', the
%% meta's `reason' is `undefined', or, for a stanza whose recipient was found
%% in no datacenter and that global routing hands back to local routing
%% (offline storage, or the host's own error), why:
%% `retries_exhausted' (bounce's retries ran out), `no_route' (bounce
%% disabled), `bounce_full' or `stopped' (the runtime stopped while bounce
%% held it). Route it locally like any other delivery.
%%
%% Calls that need the metadata store or the network are answered by the
%% NIF with `{wait, Ref}'; the functions here wait for `{Ref, Result}' with
%% a timeout (default 5 s). A reply arriving after the timeout stays in the
%% caller's mailbox as `{Ref, Result}' with a reference nobody matches.
-module(global_distrib).

-export([start/1, start/2, stop/1, stop/2, new_store/0, check_config/1,
         session_opened/2, session_closed/2,
         register_subhost/3, unregister_subhost/2,
         route/5, route/6, lookup/2, public_domains/1, domains/2,
         refresh_hosts/1, refresh_now/1, rebalance_now/1, cache_origin/3,
         await_peer/3, store_del/2,
         endpoints_of/2, disabled_pools/2, debug_cache_session/3, debug_store_exec/2,
         info/1, metrics/1, prometheus/1, store_health/1, local_host/1, nif/1, workers/1,
         set_log_level/1]).

-export_type([runtime/0, store/0, kind/0, route_result/0, location/0, meta/0,
              start_opts/0, jid/0, store_cmd/0, store_reply/0, store_health/0]).

-record(gd_rt, {nif :: global_distrib_nif:rt(),
                key :: reference(),
                host :: binary(),
                owner :: pid()}).

-opaque runtime() :: #gd_rt{}.
-type store() :: global_distrib_nif:store().
-type jid() :: binary().
-type kind() :: message | presence | presence_unavailable | iq | other.
-type reason() :: retries_exhausted | no_route | unreachable | bounce_full | queue_full
                | stopped | store_unavailable | too_large | rejected | timeout.
-type route_result() :: local | {forwarded, Host :: binary()} | stored
                      | {undeliverable, reason()}.
-type location() :: local | {remote, Host :: binary()} | unknown.
-type meta() :: #{from := jid(), to := jid(), kind := kind(),
                  message_id := non_neg_integer(), origin := binary(),
                  ttl := non_neg_integer(), from_host := binary() | undefined,
                  transfer_time_us := non_neg_integer(),
                  reason := reason() | undefined}.
-type store_cmd() :: {get | del | smembers | hgetall, Key :: binary()}
                   | {sadd | srem, Key :: binary(), Members :: [binary()]}
                   | {hdel, Key :: binary(), Field :: binary()}
                   | {hset, Key :: binary(), Field :: binary(), Value :: binary()}.
-type store_reply() :: nil | ok | integer() | binary() | [binary()]
                     | [{binary(), binary()}] | {error, binary()}.
-type store_error_kind() :: timeout | down | connect | closed | auth | noperm | refused
                          | protocol | config.
-type store_health() :: #{status := ok | degraded | down,
                          backend := binary(),
                          reachable := boolean(),
                          last_error := undefined | #{kind := store_error_kind(),
                                                      message := binary(),
                                                      age_s := non_neg_integer()},
                          pending_opens := non_neg_integer(),
                          last_refresh_age_s := undefined | non_neg_integer(),
                          refresh_lag_s := non_neg_integer(),
                          unrefreshed_keys := non_neg_integer(),
                          errors := #{store_error_kind() => non_neg_integer()}}.
-type start_opts() :: #{callback => global_distrib_worker:callback(),
                        workers => pos_integer(),
                        store => store(),
                        worker_threads => pos_integer(),
                        dispatch_shards => pos_integer(),
                        stop_timeout => non_neg_integer()}.

%% A last resort: the core answers store-bound calls within
%% `redis.timeout_ms' (1 s by default), so keep this well above it.
-define(TIMEOUT, 5000).
%% Payloads above this size are routed by a dirty-scheduler NIF
%% (global_distrib_nif:route_dirty/5): the copy would hold a normal
%% scheduler too long. docs/ERLANG.md, "Scheduling rules".
-define(INLINE_PAYLOAD_MAX, 16384).
-define(MAX_WORKERS, 1024).

%% @equiv start(Config, #{})
-spec start(term()) -> {ok, runtime()} | {error, term()}.
start(Config) ->
    start(Config, #{}).

%% @doc Starts a runtime from `Config': a map or the seed's proplist
%% (`[{global_host, "example.com"}, {local_host, "dc1.example.com"}, ...]').
%% Options: `callback' (default: log and drop), `workers' (delivery pool
%% size, 1 to 1024, default 4), `store' (a store from {@link new_store/0}
%% shared by the runtimes of this VM instead of the configured backend),
%% `worker_threads' (1 to 64), `dispatch_shards' (1 to 64), `stop_timeout'
%% (ms, default 5000: the deadline of the graceful stop when the
%% application stops).
%% A wrong configuration or option fails with
%% `{error, {config, <<"path: message">>}}'. The runtime is owned by a
%% {@link global_distrib_runtime} process under the application's
%% supervisor, next to its delivery pool: `application:stop(global_distrib)'
%% stops it gracefully.
-spec start(term(), start_opts()) -> {ok, runtime()} | {error, term()}.
start(Config, Opts) ->
    {ok, _} = application:ensure_all_started(global_distrib),
    N = maps:get(workers, Opts, 4),
    StopTimeout = maps:get(stop_timeout, Opts, ?TIMEOUT),
    Callback = maps:get(callback, Opts, fun default_callback/3),
    if
        not is_integer(N); N < 1; N > ?MAX_WORKERS ->
            {error, {config, iolist_to_binary(
                               io_lib:format("workers: expected an integer from 1 to ~b, got ~0tp",
                                             [?MAX_WORKERS, N]))}};
        not is_integer(StopTimeout); StopTimeout < 0 ->
            {error, {config, iolist_to_binary(
                               io_lib:format("stop_timeout: expected a non-negative integer "
                                             "(milliseconds), got ~0tp", [StopTimeout]))}};
        true ->
            start_pool(Config, Opts, N, Callback, StopTimeout)
    end.

-spec start_pool(term(), start_opts(), pos_integer(), global_distrib_worker:callback(),
                 non_neg_integer()) -> {ok, runtime()} | {error, term()}.
start_pool(Config, Opts, N, Callback, StopTimeout) ->
    Key = make_ref(),
    case global_distrib_sup:start_pool(Key, N, Callback) of
        {ok, Pool} ->
            Workers = global_distrib_pool_sup:workers(Pool),
            NifOpts = maps:put(workers, Workers,
                               maps:with([store, worker_threads, dispatch_shards], Opts)),
            case global_distrib_nif:start(Config, NifOpts) of
                {ok, Nif} ->
                    own(Key, Nif, Pool, StopTimeout);
                {error, _} = E ->
                    global_distrib_sup:stop_pool(Key),
                    E
            end;
        {error, _} = E ->
            E
    end.

%% Hands the runtime to its owner process.
-spec own(reference(), global_distrib_nif:rt(), pid(), non_neg_integer()) ->
          {ok, runtime()} | {error, term()}.
own(Key, Nif, Pool, StopTimeout) ->
    case global_distrib_sup:start_runtime(Key, Nif, Pool, StopTimeout) of
        {ok, Owner} ->
            #{local_host := Host} = global_distrib_nif:info(Nif),
            logger:info(#{what => global_distrib_started, local_host => Host}),
            {ok, #gd_rt{nif = Nif, key = Key, host = Host, owner = Owner}};
        {error, _} = E ->
            {ok, _} = global_distrib_nif:stop(Nif, 0),
            global_distrib_sup:stop_pool(Key),
            E
    end.

%% @doc Reads `Config' as {@link start/2} would, without starting anything.
-spec check_config(term()) -> ok | {error, {config, binary()}}.
check_config(Config) ->
    {ok, _} = application:ensure_all_started(global_distrib),
    global_distrib_nif:check_config(Config).

%% @equiv stop(Rt, 5000)
-spec stop(runtime()) -> {ok, non_neg_integer()}.
stop(Rt) ->
    stop(Rt, ?TIMEOUT).

%% @doc Graceful stop: flushes queues within `TimeoutMs', reports the rest
%% undeliverable (their count is returned), then stops the worker pool.
%% Through the runtime's owner ({@link global_distrib_runtime}); `{ok, 0}'
%% for a runtime already stopped (by an earlier call or the application's
%% stop).
-spec stop(runtime(), non_neg_integer()) -> {ok, non_neg_integer()}.
stop(#gd_rt{nif = Nif, key = Key, owner = Owner}, TimeoutMs) ->
    Result = try global_distrib_runtime:stop(Owner, TimeoutMs)
             catch exit:_ ->
                     %% The owner is gone: stopping again is harmless.
                     global_distrib_nif:stop(Nif, TimeoutMs)
             end,
    global_distrib_sup:stop_runtime(Key),
    Result.

-spec pool_children(reference()) -> [{term(), pid(), worker, [module()]}].
pool_children(Key) ->
    case [P || {{pool, K}, P, _, _} <- supervisor:which_children(global_distrib_sup),
               K =:= Key, is_pid(P)] of
        [Pool] -> [C || {_, W, _, _} = C <- supervisor:which_children(Pool), is_pid(W)];
        [] -> []
    end.

%% @doc A new in-process metadata store to share between runtimes of one VM.
-spec new_store() -> store().
new_store() ->
    {ok, _} = application:ensure_all_started(global_distrib),
    global_distrib_nif:new_embedded_store().

%% @doc A user's session opened at this datacenter (newest login wins).
%% `ok' when its keys are written to the store; `{ok, pending}' when the
%% store could not be written within `redis.timeout_ms': routing here finds
%% the user already, and the refresher retries the write every second (a
%% "pending open", counted in `store_health/1' and the
%% `store.pending_opens' gauge).
-spec session_opened(runtime(), jid()) -> ok | {ok, pending} | {error, term()}.
session_opened(#gd_rt{nif = Nif}, Jid) ->
    await(global_distrib_nif:session_opened(Nif, Jid), ?TIMEOUT).

%% @doc A user's session closed at this datacenter.
-spec session_closed(runtime(), jid()) -> ok | {error, term()}.
session_closed(#gd_rt{nif = Nif}, Jid) ->
    await(global_distrib_nif:session_closed(Nif, Jid), ?TIMEOUT).

%% @doc A component/MUC subdomain served here; `Public' lists it in disco.
-spec register_subhost(runtime(), binary(), boolean()) -> ok | {error, term()}.
register_subhost(#gd_rt{nif = Nif}, Domain, Public) ->
    await(global_distrib_nif:register_subhost(Nif, Domain, Public), ?TIMEOUT).

-spec unregister_subhost(runtime(), binary()) -> ok | {error, term()}.
unregister_subhost(#gd_rt{nif = Nif}, Domain) ->
    await(global_distrib_nif:unregister_subhost(Nif, Domain), ?TIMEOUT).

%% @equiv route(Rt, From, To, Kind, Payload, 5000)
-spec route(runtime(), jid(), jid(), kind(), binary()) -> route_result() | {error, term()}.
route(Rt, From, To, Kind, Payload) ->
    route(Rt, From, To, Kind, Payload, ?TIMEOUT).

%% @doc route(): `local' (the host routes it itself: the recipient is here, or
%% it is found in no datacenter and bounce cannot hold it), `{forwarded, Host}',
%% `stored' (held by bounce; it comes back through the callback) or
%% `{undeliverable, Reason}' (answer the sender with an error). Inline on a
%% cache hit; otherwise waits up to `Timeout' ms (`{undeliverable, timeout}').
-spec route(runtime(), jid(), jid(), kind(), binary(), timeout()) ->
          route_result() | {error, term()}.
route(#gd_rt{nif = Nif}, From, To, Kind, Payload, Timeout) ->
    Routed = case is_binary(Payload) andalso byte_size(Payload) > ?INLINE_PAYLOAD_MAX of
                 true -> global_distrib_nif:route_dirty(Nif, From, To, Kind, Payload);
                 false -> global_distrib_nif:route(Nif, From, To, Kind, Payload)
             end,
    case Routed of
        {wait, Ref} ->
            receive {Ref, R} -> R
            after Timeout -> {undeliverable, timeout}
            end;
        R ->
            R
    end.

%% @doc Where `Jid' is: `local', `{remote, Host}' or `unknown'.
-spec lookup(runtime(), jid()) -> location() | {error, term()}.
lookup(#gd_rt{nif = Nif}, Jid) ->
    await(global_distrib_nif:lookup(Nif, Jid), ?TIMEOUT).

%% @doc Public subdomains of every datacenter (disco items).
-spec public_domains(runtime()) -> {ok, [binary()]} | {error, term()}.
public_domains(#gd_rt{nif = Nif}) ->
    await(global_distrib_nif:public_domains(Nif), ?TIMEOUT).

%% @doc Domains of every datacenter: the public ones (`PublicOnly' true, as
%% {@link public_domains/1}) or all of them, hidden ones included.
-spec domains(runtime(), boolean()) -> {ok, [binary()]} | {error, term()}.
domains(#gd_rt{nif = Nif}, PublicOnly) ->
    await(global_distrib_nif:domains(Nif, PublicOnly), ?TIMEOUT).

%% @doc Reads the datacenter list of the store now.
-spec refresh_hosts(runtime()) -> ok | {error, term()}.
refresh_hosts(#gd_rt{nif = Nif}) ->
    await(global_distrib_nif:refresh_hosts_now(Nif), ?TIMEOUT).

%% @doc Runs the store refresh cycle now (what happens every
%% `redis.refresh_after'): re-writes everything this node owns (sessions and
%% domains by compare-and-set, its endpoints, its stamp in
%% `<local_host>#{nodes}' pruning dead nodes' fields, its `hosts' member)
%% and retries pending session writes. It reads nothing about other
%% datacenters: {@link rebalance_now/1} re-reads their endpoints,
%% {@link refresh_hosts/1} the datacenter list. Runs on the runtime's
%% threads; the caller waits for the answer by message.
-spec refresh_now(runtime()) -> ok | {error, term()}.
refresh_now(#gd_rt{nif = Nif}) ->
    await(global_distrib_nif:refresh_now(Nif), ?TIMEOUT).

%% @doc Re-reads the endpoints of every datacenter this runtime has pools
%% for and rebalances them now, without waiting for
%% `connections.endpoint_refresh_interval' (MongooseIM's
%% `mod_global_distrib_server_mgr:force_refresh/1'): a new endpoint gets a
%% pool and takes traffic, a vanished one is disabled (closed later by the
%% disabled GC). Writes nothing to the store.
-spec rebalance_now(runtime()) -> ok | {error, term()}.
rebalance_now(#gd_rt{nif = Nif}) ->
    await(global_distrib_nif:rebalance_now(Nif), ?TIMEOUT).

%% @doc A stanza from `Sender' entered global routing at datacenter
%% `OriginHost' (MongooseIM's `mod_global_distrib_utils:maybe_update_mapping/2',
%% on the node of the component it is for): if a lookup finds the sender
%% nowhere, the cache (never the store) learns `Sender -> OriginHost', so the
%% answer is routed before the store replicates. A user of global_host is
%% cached by full and bare JID, a domain sender (no user part) as a domain;
%% other senders are left alone. Skip `presence type="unavailable"', as
%% MongooseIM does. `OriginHost' must be this datacenter's local_host or a
%% datacenter of the store's `hosts' set: `{error, {unknown_origin, Host}}'
%% otherwise. Inline when the cache answers.
-spec cache_origin(runtime(), jid(), binary()) -> ok | {error, term()}.
cache_origin(#gd_rt{nif = Nif}, Sender, OriginHost) ->
    await(global_distrib_nif:cache_origin(Nif, Sender, OriginHost), ?TIMEOUT).

%% @doc Endpoints of datacenter `Host' whose connection pools are enabled
%% (empty while unknown).
-spec endpoints_of(runtime(), binary()) -> [{binary(), inet:port_number()}].
endpoints_of(#gd_rt{nif = Nif}, Host) ->
    global_distrib_nif:endpoints(Nif, Host).

%% @doc Pools towards `Host' disabled by a refresh (their endpoint vanished)
%% and not garbage-collected yet.
-spec disabled_pools(runtime(), binary()) -> non_neg_integer().
disabled_pools(#gd_rt{nif = Nif}, Host) ->
    global_distrib_nif:disabled_pools(Nif, Host).

%% @doc DEBUGGING ONLY (tests): puts `Key -> Host' in this runtime's session
%% cache without touching the store, as a stale cache entry would be.
-spec debug_cache_session(runtime(), binary(), binary()) -> ok.
debug_cache_session(#gd_rt{nif = Nif}, Key, Host) ->
    global_distrib_nif:debug_cache_session(Nif, Key, Host).

%% @doc DEBUGGING ONLY (tests, operations): raw commands of the store
%% dialect (see docs/REDIS.md) through this runtime's backend, one reply per
%% command; `{error, {store, Msg}}' when the store cannot be reached.
-spec debug_store_exec(runtime(), [store_cmd()]) -> {ok, [store_reply()]} | {error, term()}.
debug_store_exec(#gd_rt{nif = Nif}, Cmds) ->
    await(global_distrib_nif:debug_store_exec(Nif, Cmds), ?TIMEOUT).

%% @doc Refreshes hosts and waits until endpoints of datacenter `Host' are
%% known (its connection pools are being set up).
-spec await_peer(runtime(), binary(), timeout()) -> ok | {error, timeout}.
await_peer(#gd_rt{nif = Nif} = Rt, Host, Timeout) ->
    ok = refresh_hosts(Rt),
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    poll(fun() -> global_distrib_nif:endpoints_of(Nif, Host) > 0 end, Deadline).

-spec poll(fun(() -> boolean()), integer()) -> ok | {error, timeout}.
poll(Cond, Deadline) ->
    case Cond() of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> {error, timeout};
                false ->
                    receive after 10 -> poll(Cond, Deadline) end
            end
    end.

%% @doc Deletes metadata store keys (operations, tests).
-spec store_del(runtime(), [binary()]) -> ok | {error, term()}.
store_del(#gd_rt{nif = Nif}, Keys) ->
    await(global_distrib_nif:store_del(Nif, Keys), ?TIMEOUT).

%% @doc local_host, global_host, listen addresses, bounce queue size,
%% stanzas sent to other DCs and not acknowledged yet (`in_flight'),
%% received stanzas handed to the workers and not confirmed (`unconfirmed',
%% `unconfirmed_bytes', and `host_waits': times the runtime waited for them), etc.
-spec info(runtime()) -> map().
info(#gd_rt{nif = Nif}) ->
    global_distrib_nif:info(Nif).

%% @doc Every metric: counters and gauges as integers, histograms as maps.
-spec metrics(runtime()) -> #{binary() => integer() | map()}.
metrics(#gd_rt{nif = Nif}) ->
    global_distrib_nif:metrics(Nif).

%% @doc The store's health, for a load balancer's check: `status' is `ok',
%% `degraded' (reachable, but opens are pending or the refresh is late or
%% incomplete) or `down' (the last store call found it unusable), with the
%% last error, pending opens, the refresh's age and lag (seconds), keys the
%% last pass left unrefreshed and the errors counted by kind. Sends one
%% `GET' of the health sentinel first: answers within `redis.timeout_ms',
%% at once while the store is known down. docs/ERLANG.md, "Store health".
-spec store_health(runtime()) -> {ok, store_health()} | {error, term()}.
store_health(#gd_rt{nif = Nif}) ->
    await(global_distrib_nif:store_health(Nif), ?TIMEOUT).

%% @doc The metrics in the Prometheus text format.
-spec prometheus(runtime()) -> binary().
prometheus(#gd_rt{nif = Nif}) ->
    global_distrib_nif:prometheus(Nif).

-spec local_host(runtime()) -> binary().
local_host(#gd_rt{host = Host}) ->
    Host.

%% @doc The NIF handle, for callers that use {@link global_distrib_nif} directly.
-spec nif(runtime()) -> global_distrib_nif:rt().
nif(#gd_rt{nif = Nif}) ->
    Nif.

%% @doc Pids of the runtime's delivery workers, in index order.
-spec workers(runtime()) -> [pid()].
workers(#gd_rt{key = Key}) ->
    [W || {_, W, _, _} <- lists:keysort(1, pool_children(Key))].

%% @doc Most verbose level of core log events forwarded to `logger'.
-spec set_log_level(global_distrib_log:level()) -> ok.
set_log_level(Level) ->
    global_distrib_log:set_level(Level).

-spec await(term(), timeout()) -> term().
await({wait, Ref}, Timeout) ->
    receive {Ref, R} -> R
    after Timeout -> {error, timeout}
    end;
await(Other, _Timeout) ->
    Other.

-spec default_callback(global_distrib_worker:event(), meta(), binary()) -> ok.
default_callback(Event, Meta, _Payload) ->
    logger:warning(#{what => global_distrib_no_callback, event => Event, meta => Meta}).
