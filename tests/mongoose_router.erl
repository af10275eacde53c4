%% Test stand-in for MongooseIM's mongoose_router, src/mongoose_router.erl at
%% MongooseIM 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6): route/1
%% (since 6.7.0) and the route table functions. Written for this project
%% from the behaviour of that file (and of the routing modules it runs);
%% no code copied (MongooseIM is GPLv2).
%%
%% route(Acc) -> Acc routes the Acc's own stanza (mongoose_acc:from_jid/1,
%% to_jid/1, element/1) through the routing chain and appends the outcome
%% to the Acc's {router, result} list: {drop, Module}, {done, Module} or
%% {error, {Module, Reason}}. MongooseIM's chain comes from the
%% routing_modules option; here it is fixed and shared with
%% tests/ejabberd_router.erl (mim_standin:route_chain/4):
%%   1. mongoose_router_global: the global filter_packet hook (drop, or the
%%      {From, To, Acc, Packet} that routing continues with; a handler that
%%      changes From or To makes routing crash with try_clause, as in
%%      MongooseIM);
%%   2. mongoose_router_localdomain: To's domain has a route (a configured
%%      host, a domain added with mim_standin:add_domain/2, a registered
%%      route) -> local delivery as mongoose_local_delivery does it, the
%%      stanza RECORDED (mim_standin:routed/0);
%%   3. anything else is what external components and s2s would get:
%%      RECORDED (mim_standin:s2s_routed/0), outcome {done, ejabberd_s2s}.
%% The route table is kept by mim_standin, so that ejabberd_router works
%% when this module is replaced by its 6.6 shape. Not modelled: router
%% instrumentation events.
-module(mongoose_router).

-export([route/1]).
-export([get_all_domains/0, lookup_route/1, is_registered_route/1,
         register_route/2, unregister_route/1]).

-spec route(mongoose_acc:t()) -> mongoose_acc:t().
route(Acc) ->
    logger:debug(#{what => route, acc => Acc}),
    mim_standin:route_chain(mongoose_acc:from_jid(Acc), mongoose_acc:to_jid(Acc),
                            Acc, mongoose_acc:element(Acc)).

-spec get_all_domains() -> [binary()].
get_all_domains() ->
    mim_standin:all_routes().

-spec lookup_route(binary()) -> no_route | term().
lookup_route(LDomain) ->
    mim_standin:lookup_route(LDomain).

-spec is_registered_route(binary()) -> boolean().
is_registered_route(LDomain) ->
    no_route =/= mim_standin:lookup_route(LDomain).

%% @doc The domain is normalised first: {error, invalid_domain, Domain} if
%% it cannot be.
-spec register_route(binary(), term()) -> any().
register_route(Domain, Handler) ->
    with_ldomain(Domain, fun(LDomain) -> mim_standin:register_route(LDomain, Handler) end).

-spec unregister_route(binary()) -> any().
unregister_route(Domain) ->
    with_ldomain(Domain, fun mim_standin:unregister_route/1).

with_ldomain(Domain, Fun) ->
    case jid:nameprep(Domain) of
        error -> {error, invalid_domain, Domain};
        LDomain -> Fun(LDomain)
    end.
