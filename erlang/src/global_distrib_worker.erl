%% @doc A delivery worker: receives `{global_distrib, deliver | undeliverable,
%% Meta, Payload}', or `{global_distrib, deliver_batch, [{Meta, Payload}]}'
%% for several stanzas of one network read, sent by the NIF from runtime
%% threads, and hands each to the host's callback, one stanza at a time in
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

-record(state, {index :: non_neg_integer(), callback :: callback()}).

-spec start_link(reference(), non_neg_integer(), callback()) -> {ok, pid()} | {error, term()}.
start_link(Key, Index, Callback) ->
    gen_server:start_link(?MODULE, {Key, Index, Callback}, []).

-spec init({reference(), non_neg_integer(), callback()}) -> {ok, #state{}}.
init({Key, Index, Callback}) ->
    %% After a restart, tell the NIF where this slot's stanzas go now. On
    %% the first start the runtime does not exist yet: it is given the
    %% pids at start.
    case persistent_term:get({global_distrib_rt, Key}, undefined) of
        undefined -> ok;
        Nif -> ok = global_distrib_nif:set_worker(Nif, Index, self())
    end,
    {ok, #state{index = Index, callback = Callback}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, {error, unknown_call}, #state{}}.
handle_call(_Req, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({global_distrib, Event, Meta, Payload}, #state{callback = Cb} = State)
  when Event =:= deliver; Event =:= undeliverable ->
    safe_call(Cb, Event, Meta, Payload),
    {noreply, State};
handle_info({global_distrib, deliver_batch, Stanzas}, #state{callback = Cb} = State)
  when is_list(Stanzas) ->
    lists:foreach(fun({Meta, Payload}) -> safe_call(Cb, deliver, Meta, Payload) end, Stanzas),
    {noreply, State};
handle_info(Other, State) ->
    logger:warning(#{what => global_distrib_worker_unexpected_message,
                     index => State#state.index, message => Other}),
    {noreply, State}.

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
