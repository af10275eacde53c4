%% @doc A delivery worker: receives `{global_distrib, deliver | undeliverable,
%% Meta, Payload}', or `{global_distrib, deliver_batch, [{Meta, Payload}]}'
%% for several stanzas of one network read, sent by the NIF from runtime
%% threads (`Meta' a tuple there, see meta/1), and hands each to the host's
%% callback with the metadata map, one stanza at a time in
%% arrival order (so one sender's stanzas, which always hash to the same
%% worker, keep their order).
-module(global_distrib_worker).
-behaviour(gen_server).

-export([start_link/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([callback/0, event/0]).

-type event() :: deliver | undeliverable.
%% `fun(Event, Meta, Payload)' or `{Module, Function}' called as
%% `Module:Function(Event, Meta, Payload)'.
-type callback() :: fun((event(), global_distrib:meta(), binary()) -> term())
                  | {module(), atom()}.

-record(state, {key :: reference(),
                index :: non_neg_integer(),
                callback :: callback(),
                nif :: global_distrib_nif:rt() | undefined}).

-spec start_link(reference(), non_neg_integer(), callback()) -> {ok, pid()} | {error, term()}.
start_link(Key, Index, Callback) ->
    gen_server:start_link(?MODULE, {Key, Index, Callback}, []).

-spec init({reference(), non_neg_integer(), callback()}) -> {ok, #state{}}.
init({Key, Index, Callback}) ->
    %% After a restart, tell the NIF where this slot's stanzas go now: it
    %% held those sent to the dead worker, and sends them here first. On
    %% the first start the runtime does not exist yet: it is given the
    %% pids at start (and its owner registers them again once it runs).
    Nif = global_distrib_runtime:nif_of(Key),
    case Nif of
        undefined -> ok;
        _ -> ok = global_distrib_nif:set_worker(Nif, Index, self())
    end,
    {ok, #state{key = Key, index = Index, callback = Callback, nif = Nif}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, {error, unknown_call}, #state{}}.
handle_call(_Req, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({global_distrib, Event, Meta, Payload}, #state{callback = Cb} = State0)
  when Event =:= deliver; Event =:= undeliverable ->
    State = with_nif(State0),
    safe_call(Cb, Event, meta(Meta), Payload),
    confirm(State),
    {noreply, State};
handle_info({global_distrib, deliver_batch, Stanzas}, #state{callback = Cb} = State0)
  when is_list(Stanzas) ->
    State = with_nif(State0),
    lists:foreach(fun({Meta, Payload}) ->
                          safe_call(Cb, deliver, meta(Meta), Payload),
                          confirm(State)
                  end, Stanzas),
    {noreply, State};
handle_info(Other, State) ->
    logger:warning(#{what => global_distrib_worker_unexpected_message,
                     index => State#state.index, message => Other}),
    {noreply, State}.

%% The metadata the NIF sends (a tuple, cheaper to build there) as the map
%% callbacks get: the keys are a literal, shared by every map built here.
-spec meta(tuple()) -> global_distrib:meta().
meta({From, To, Kind, IdHigh, IdLow, Origin, Ttl, FromHost, TransferTimeUs, Reason}) ->
    #{from => From, to => To, kind => Kind, message_id => (IdHigh bsl 64) bor IdLow,
      origin => Origin, ttl => Ttl, from_host => FromHost,
      transfer_time_us => TransferTimeUs, reason => Reason}.

%% The NIF keeps each stanza sent here until it is confirmed, so that a
%% restarted successor gets what this worker did not run.
-spec confirm(#state{}) -> ok.
confirm(#state{nif = undefined}) ->
    ok;
confirm(#state{nif = Nif, index = Index}) ->
    _ = global_distrib_nif:delivered(Nif, Index),
    ok.

%% The runtime's handle, published by its owner right after the start: a
%% stanza that reaches a first-started worker before that waits for it (at
%% most a second), so that every stanza is confirmed.
-spec with_nif(#state{}) -> #state{}.
with_nif(#state{nif = undefined, key = Key} = State) ->
    State#state{nif = await_nif(Key, 1000)};
with_nif(State) ->
    State.

-spec await_nif(reference(), non_neg_integer()) -> global_distrib_nif:rt() | undefined.
await_nif(Key, Tries) ->
    case global_distrib_runtime:nif_of(Key) of
        undefined when Tries > 0 ->
            timer:sleep(1),
            await_nif(Key, Tries - 1);
        Nif ->
            Nif
    end.

%% One callback; a crash is logged and does not cost the other stanzas.
-spec safe_call(callback(), event(), global_distrib:meta(), binary()) -> ok.
safe_call(Cb, Event, Meta, Payload) ->
    try call(Cb, Event, Meta, Payload) of
        _ -> ok
    catch Class:Reason:Stacktrace ->
            logger:error(#{what => global_distrib_callback_failed, event => Event,
                           meta => Meta, class => Class, reason => Reason,
                           stacktrace => Stacktrace})
    end.

-spec call(callback(), event(), global_distrib:meta(), binary()) -> term().
call({M, F}, Event, Meta, Payload) ->
    M:F(Event, Meta, Payload);
call(Fun, Event, Meta, Payload) when is_function(Fun, 3) ->
    Fun(Event, Meta, Payload).
