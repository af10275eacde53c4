%% Test stand-in for MongooseIM's ejabberd_router as it was in MongooseIM
%% 6.0-6.6: src/ejabberd_router.erl at tag 6.6.0 (commit
%% 0239289cdf9dff6990883bfd48b2b79f3abcc989); the module is gone in 6.7.0,
%% where mongoose_router:route/1 replaced it. Written for this project from
%% the behaviour of that file; no code copied (MongooseIM is GPLv2). The
%% other stand-ins model 6.8.0; what this module uses from them behaves the
%% same in 6.6.0.
%%
%% Behaviour kept (every function returns the Acc):
%%   * route(From, To, #xmlel{}) makes an Acc (lserver from From, no host
%%     type) and routes it; route(From, To, Acc) routes the Acc's element
%%     with the From and To given;
%%   * route(From, To, Acc, {error, Reason}) routes nothing: {error, Reason}
%%     is appended to {router, result}; route(From, To, Acc, El) first makes
%%     From, To, El the Acc's stanza (mongoose_acc:update_stanza/2);
%%   * route_error/4 routes the error stanza unless the Acc's stanza type is
%%     already <<"error">>; route_error_reply/4 builds the reply with
%%     jlib:make_error_reply(Acc, Error) and routes it with route_error/4
%%     (From and To as given: the caller swaps them).
%% The routing chain is the one of tests/mongoose_router.erl
%% (mim_standin:route_chain/4), so this module needs no mongoose_router: a
%% node can play 6.6 (mim_standin:set_mongoose_version('6.6')). Not kept:
%% the gen_server and the route table API.
-module(ejabberd_router).

-export([route/3, route/4, route_error/4, route_error_reply/4]).

-include("jid.hrl").

%% exml 4 (6.6.0 locks exml 4.1.2: attributes in a map as in 4.2.1)
-record(xmlel, {name :: binary(),
                attrs = #{} :: #{binary() => binary()},
                children = [] :: [term()]}).

-spec route(jid:jid(), jid:jid(), mongoose_acc:t() | #xmlel{}) -> mongoose_acc:t().
route(From, To, #xmlel{} = El) ->
    Here = #{mfa => {?MODULE, ?FUNCTION_NAME, ?FUNCTION_ARITY}, line => ?LINE, file => ?FILE},
    Acc = mongoose_acc:new(#{location => Here, lserver => From#jid.lserver,
                             element => El, from_jid => From, to_jid => To}),
    route(From, To, Acc);
route(From, To, Acc) ->
    logger:debug(#{what => route, acc => Acc}),
    mim_standin:route_chain(From, To, Acc, mongoose_acc:element(Acc)).

-spec route(jid:jid(), jid:jid(), mongoose_acc:t(), #xmlel{} | {error, term()}) ->
          mongoose_acc:t().
route(_From, _To, Acc, {error, Reason}) ->
    logger:info(#{what => cannot_route_stanza, acc => Acc, reason => Reason}),
    mongoose_acc:append(router, result, {error, Reason}, Acc);
route(From, To, Acc, El) ->
    NewAcc = mongoose_acc:update_stanza(#{from_jid => From, to_jid => To, element => El}, Acc),
    logger:debug(#{what => route, acc => NewAcc}),
    mim_standin:route_chain(From, To, NewAcc, El).

-spec route_error(jid:jid(), jid:jid(), mongoose_acc:t(), #xmlel{}) -> mongoose_acc:t().
route_error(From, To, Acc, ErrorStanza) ->
    case mongoose_acc:stanza_type(Acc) =:= <<"error">> of
        true -> Acc;
        false -> route(From, To, Acc, ErrorStanza)
    end.

-spec route_error_reply(jid:jid(), jid:jid(), mongoose_acc:t(), #xmlel{}) -> mongoose_acc:t().
route_error_reply(From, To, Acc, Error) ->
    {NewAcc, Reply} = jlib:make_error_reply(Acc, Error),
    route_error(From, To, NewAcc, Reply).
