%% The MongooseIM facade mod_global_distrib against minimal stand-ins of the
%% MongooseIM modules it calls (jid, mongoose_acc, gen_hook, ejabberd_router,
%% jlib, mongoose_xmpp_errors, mongoose_disco; all in tests/). Two DCs run in
%% this VM as two host types sharing an embedded store; a stanza goes
%% through MongooseIM's order: ejabberd_router:route -> filter_packet hooks
%% -> local routing (recorded).
-module(mod_global_distrib_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, suite/0, init_per_suite/1, end_per_suite/1,
         init_per_testcase/2, end_per_testcase/2]).
-export([chat_across_dcs_through_hooks/1, undeliverable_answers_service_unavailable/1,
         subhosts_and_disco/1, unsafe_payload_is_refused/1, bad_options_fail_clearly/1]).

-define(WAIT, 10000).

suite() -> [{timetrap, {minutes, 2}}].

all() ->
    [chat_across_dcs_through_hooks, undeliverable_answers_service_unavailable,
     subhosts_and_disco, unsafe_payload_is_refused, bad_options_fail_clearly].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(global_distrib),
    Self = self(),
    Owner = spawn(fun() ->
                          _ = ets:new(mim_standin_routed, [named_table, public, ordered_set]),
                          Self ! {ready, self()},
                          receive stop -> ok end
                  end),
    receive {ready, Owner} -> ok end,
    [{owner, Owner} | Config].

end_per_suite(Config) ->
    ?config(owner, Config) ! stop,
    ok.

init_per_testcase(_Case, Config) ->
    ets:delete_all_objects(mim_standin_routed),
    Config.

end_per_testcase(_Case, _Config) ->
    [catch mod_global_distrib:stop(HT) || HT <- [<<"dc1">>, <<"dc2">>]],
    ok.

opts(N, Store) ->
    #{global_host => <<"example.com">>,
      local_host => iolist_to_binary(["dc", integer_to_list(N), ".example.com"]),
      connections => #{endpoints => [{"127.0.0.1", 0}], endpoint_refresh_interval => 1,
                       endpoint_refresh_interval_when_empty => 1},
      hosts_refresh_interval => 200,
      bounce => #{resend_after_ms => 100, max_retries => 3},
      cache => #{jid_lifetime_seconds => 1, domain_lifetime_seconds => 1},
      workers => 2,
      store => Store}.

start_two() ->
    Store = global_distrib:new_store(),
    ok = mod_global_distrib:start(<<"dc1">>, opts(1, Store)),
    ok = mod_global_distrib:start(<<"dc2">>, opts(2, Store)),
    ok.

login(HostType, Jid) ->
    {ok, _} = gen_hook:run_fold(sm_register_connection, HostType, #{},
                                #{jid => jid:from_binary(Jid)}),
    ok.

acc(HostType) ->
    mongoose_acc:new(#{host_type => HostType}).

message(Body) ->
    {xmlel, <<"message">>, #{<<"type">> => <<"chat">>},
     [{xmlel, <<"body">>, #{}, [{xmlcdata, Body}]}]}.

send(HostType, From, To, Packet) ->
    ejabberd_router:route(jid:from_binary(From), jid:from_binary(To), acc(HostType), Packet).

routed(HostType) ->
    [{jid:to_binary(F), jid:to_binary(T), P}
     || {_, HT, F, T, P} <- ets:tab2list(mim_standin_routed), HT =:= HostType].

wait_until(Fun) ->
    gd_wait:within(Fun, ?WAIT).

%%--------------------------------------------------------------------

chat_across_dcs_through_hooks(_Config) ->
    ok = start_two(),
    ok = login(<<"dc1">>, <<"alice@example.com/a">>),
    ok = login(<<"dc2">>, <<"bob@example.com/b">>),
    Hi = message(<<"hi bob">>),
    ok = send(<<"dc1">>, <<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi),
    %% Forwarded: dropped at dc1, routed locally at dc2 (and not globally
    %% again: the delivered flag lets it through filter_packet).
    wait_until(fun() ->
                       routed(<<"dc2">>) =:= [{<<"alice@example.com/a">>, <<"bob@example.com/b">>, Hi}]
               end),
    ?assertEqual([], routed(<<"dc1">>)),
    Reply = message(<<"hi alice">>),
    ok = send(<<"dc2">>, <<"bob@example.com/b">>, <<"alice@example.com/a">>, Reply),
    wait_until(fun() ->
                       routed(<<"dc1">>) =:= [{<<"bob@example.com/b">>, <<"alice@example.com/a">>, Reply}]
               end),
    %% A local recipient passes filter_packet untouched.
    ok = login(<<"dc1">>, <<"carol@example.com/c">>),
    Local = message(<<"local">>),
    ok = send(<<"dc1">>, <<"alice@example.com/a">>, <<"carol@example.com/c">>, Local),
    ?assert(lists:member({<<"alice@example.com/a">>, <<"carol@example.com/c">>, Local},
                         routed(<<"dc1">>))).

undeliverable_answers_service_unavailable(_Config) ->
    ok = start_two(),
    ok = login(<<"dc1">>, <<"alice@example.com/a">>),
    ok = send(<<"dc1">>, <<"alice@example.com/a">>, <<"nobody@example.com/x">>, message(<<"?">>)),
    %% Held by bounce, then given up: the sender gets service-unavailable.
    wait_until(fun() -> routed(<<"dc1">>) =/= [] end),
    [{<<"nobody@example.com/x">>, <<"alice@example.com/a">>,
      {xmlel, <<"message">>, #{<<"type">> := <<"error">>}, Children}}] = routed(<<"dc1">>),
    ?assertMatch([{xmlel, <<"error">>, _, [{xmlel, <<"service-unavailable">>, _, _}]}],
                 [C || {xmlel, <<"error">>, _, _} = C <- Children]).

subhosts_and_disco(_Config) ->
    ok = start_two(),
    ok = login(<<"dc1">>, <<"alice@example.com/a">>),
    {ok, _} = gen_hook:run_fold(register_subhost, {global, <<"dc2">>}, #{},
                                #{ldomain => <<"muc.example.com">>, is_hidden => false}),
    {ok, _} = gen_hook:run_fold(register_subhost, {global, <<"dc2">>}, #{},
                                #{ldomain => <<"hidden.example.com">>, is_hidden => true}),
    {ok, #{items := Items}} = gen_hook:run_fold(disco_local_items, <<"dc1">>, #{}, #{}),
    ?assert(lists:member(#{jid => <<"muc.example.com">>}, Items)),
    ?assertNot(lists:member(#{jid => <<"hidden.example.com">>}, Items)),
    ToRoom = message(<<"to the room">>),
    ok = send(<<"dc1">>, <<"alice@example.com/a">>, <<"room@muc.example.com/n">>, ToRoom),
    wait_until(fun() ->
                       routed(<<"dc2">>) =:= [{<<"alice@example.com/a">>, <<"room@muc.example.com/n">>, ToRoom}]
               end),
    {ok, _} = gen_hook:run_fold(unregister_subhost, {global, <<"dc2">>}, #{},
                                #{ldomain => <<"muc.example.com">>}),
    {ok, Acc} = gen_hook:run_fold(disco_local_items, <<"dc1">>, #{}, #{}),
    ?assertNot(lists:member(#{jid => <<"muc.example.com">>}, maps:get(items, Acc, []))).

unsafe_payload_is_refused(_Config) ->
    ok = start_two(),
    %% A payload naming an atom this VM never saw: binary_to_term(_, [safe])
    %% refuses it; the facade logs and drops it, nothing is routed.
    Name = <<"gd_never_seen_atom_", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    Unsafe = <<131, 104, 3, 109, 0:32, 109, 0:32, 119, (byte_size(Name)), Name/binary>>,
    Meta = #{to => <<"bob@example.com/b">>, reason => undefined},
    ok = mod_global_distrib:deliver(<<"dc2">>, deliver, Meta, Unsafe),
    ?assertEqual([], routed(<<"dc2">>)),
    ?assertError(badarg, binary_to_existing_atom(Name)).

bad_options_fail_clearly(_Config) ->
    Store = global_distrib:new_store(),
    {error, Msg} = mod_global_distrib:validate_opts(maps:remove(local_host, opts(1, Store))),
    ?assertMatch({match, _}, re:run(Msg, "local_host")),
    ?assertEqual(ok, mod_global_distrib:validate_opts(maps:remove(store, opts(1, Store)))),
    {error, {config, _}} = mod_global_distrib:start(<<"dc1">>, maps:remove(local_host, opts(1, Store))),
    ?assertEqual(undefined, mod_global_distrib:runtime(<<"dc1">>)).
