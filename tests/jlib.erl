%% Test stand-in for MongooseIM's jlib, src/jlib.erl at MongooseIM 6.8.0
%% (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6). Written for this
%% project from the behaviour of that file; no code copied (MongooseIM is
%% GPLv2). Elements are exml 4.2.1's (attributes in a map).
%%
%% Only the stanza helpers the facade and the stand-ins use, and their
%% close neighbours:
%%   * make_error_reply(Acc, Packet, Error) -> {Acc1, Reply}: Acc1 has the
%%     field {flag, error} = true. When the Acc already has that flag,
%%     nothing is built: an error is logged (error_reply_to_error) and the
%%     result is {Acc, {error, {already_an_error, Packet, Error}}}. The
%%     stanza's own type attribute is not looked at.
%%   * make_error_reply(Acc, Error) uses mongoose_acc:element(Acc);
%%     make_error_reply(#xmlel{}, Error) returns the reply element only.
%%   * the reply keeps the element's name, exchanges from and to (a lone
%%     one moves to the other attribute), sets type="error" and has Error as
%%     its FIRST child, before the original children.
%%   * stanza_error/3,5 and stanza_errort/4 build <error code type> with the
%%     condition in the urn:ietf:params:xml:ns:xmpp-stanzas namespace
%%     (stanza_error/5: an application element in front of it;
%%     stanza_errort/4: a <text/> after it).
%%   * make_result_iq_reply/1 (element form), replace_from_to/3, remove_attr/2.
%% Not here: IQ records, RSM, delays, stream errors.
-module(jlib).

-export([make_result_iq_reply/1,
         make_error_reply/2, make_error_reply/3,
         replace_from_to/3, remove_attr/2,
         stanza_error/3, stanza_error/5, stanza_errort/4]).

%% exml 4.2.1
-record(xmlel, {name :: binary(),
                attrs = #{} :: #{binary() => binary()},
                children = [] :: [term()]}).
-record(xmlcdata, {content = [] :: iodata(),
                   style = escaped :: escaped | cdata}).

-define(STANZAS_NS, <<"urn:ietf:params:xml:ns:xmpp-stanzas">>).

%%--------------------------------------------------------------------
%% Replies

-spec make_result_iq_reply(#xmlel{}) -> #xmlel{}.
make_result_iq_reply(#xmlel{attrs = Attrs} = IQ) ->
    IQ#xmlel{attrs = (reverse_direction(Attrs))#{<<"type">> => <<"result">>}}.

-spec make_error_reply(#xmlel{} | mongoose_acc:t(), #xmlel{}) ->
          #xmlel{} | {mongoose_acc:t(), #xmlel{} | {error, {already_an_error, _, _}}}.
make_error_reply(#xmlel{} = Packet, Error) ->
    logger:debug(#{what => make_error_reply, exml_packet => Packet, error_element => Error}),
    error_element_for(Packet, Error);
make_error_reply(Acc, Error) ->
    make_error_reply(Acc, mongoose_acc:element(Acc), Error).

-spec make_error_reply(mongoose_acc:t(), #xmlel{}, #xmlel{}) ->
          {mongoose_acc:t(), #xmlel{} | {error, {already_an_error, _, _}}}.
make_error_reply(Acc, Packet, Error) ->
    logger:debug(#{what => make_error_reply, acc => Acc, error_element => Error}),
    AlreadyError = mongoose_acc:get(flag, error, false, Acc) =:= true,
    if
        AlreadyError ->
            logger:error(#{what => error_reply_to_error, exml_packet => Packet,
                           reason => Error}),
            {Acc, {error, {already_an_error, Packet, Error}}};
        true ->
            {mongoose_acc:set(flag, error, true, Acc), error_element_for(Packet, Error)}
    end.

error_element_for(#xmlel{attrs = Attrs, children = Children} = Packet, Error) ->
    Packet#xmlel{attrs = (reverse_direction(Attrs))#{<<"type">> => <<"error">>},
                 children = [Error | Children]}.

%% The sender becomes the recipient and the other way round.
reverse_direction(Attrs) ->
    From = maps:find(<<"from">>, Attrs),
    To = maps:find(<<"to">>, Attrs),
    Bare = maps:without([<<"from">>, <<"to">>], Attrs),
    with_attr(<<"to">>, From, with_attr(<<"from">>, To, Bare)).

with_attr(Name, {ok, Value}, Attrs) -> Attrs#{Name => Value};
with_attr(_Name, error, Attrs) -> Attrs.

%%--------------------------------------------------------------------
%% Attributes

%% @doc Sets from (and to, or removes to when it is undefined).
-spec replace_from_to(jid:simple_jid() | jid:jid(), undefined | jid:simple_jid() | jid:jid(),
                      #xmlel{}) -> #xmlel{}.
replace_from_to(From, To, #xmlel{attrs = Attrs} = El) ->
    WithFrom = Attrs#{<<"from">> => jid:to_binary(From)},
    NewAttrs = case To of
                   undefined -> maps:remove(<<"to">>, WithFrom);
                   _ -> WithFrom#{<<"to">> => jid:to_binary(To)}
               end,
    El#xmlel{attrs = NewAttrs}.

-spec remove_attr(binary(), #xmlel{}) -> #xmlel{}.
remove_attr(Name, #xmlel{attrs = Attrs} = El) ->
    El#xmlel{attrs = maps:remove(Name, Attrs)}.

%%--------------------------------------------------------------------
%% Error elements

-spec stanza_error(binary(), binary(), binary() | undefined) -> #xmlel{}.
stanza_error(Code, Type, Condition) ->
    error_el(Code, Type, [condition_el(Condition)]).

-spec stanza_error(binary(), binary(), binary(), binary(), binary() | undefined) -> #xmlel{}.
stanza_error(Code, Type, Condition, AppTag, AppNs) ->
    AppEl = #xmlel{name = AppTag, attrs = #{<<"xmlns">> => AppNs}},
    error_el(Code, Type, [AppEl, condition_el(Condition)]).

-spec stanza_errort(binary(), binary(), binary(), binary()) -> #xmlel{}.
stanza_errort(Code, Type, Condition, Text) ->
    TextEl = #xmlel{name = <<"text">>, attrs = #{<<"xmlns">> => ?STANZAS_NS},
                    children = [#xmlcdata{content = Text}]},
    error_el(Code, Type, [condition_el(Condition), TextEl]).

error_el(Code, Type, Children) ->
    #xmlel{name = <<"error">>, attrs = #{<<"code">> => Code, <<"type">> => Type},
           children = Children}.

condition_el(Condition) ->
    #xmlel{name = Condition, attrs = #{<<"xmlns">> => ?STANZAS_NS}}.
