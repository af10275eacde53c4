%% Test stand-in for MongooseIM's mongoose_xmpp_errors,
%% src/mongoose_xmpp_errors.erl at MongooseIM 6.8.0 (commit
%% cabaa45da4883aa2392057efb4632bdbbc5a74a6). Written for this project from
%% the behaviour of that file; no code copied (MongooseIM is GPLv2).
%%
%% The stanza errors of RFC 6120 as MongooseIM names them: Name/0 gives the
%% <error/> element (jlib:stanza_error/3), Name/1 the same with a <text/>
%% (jlib:stanza_errort/4). For example service_unavailable() is
%%   <error code="503" type="cancel">
%%     <service-unavailable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>
%%   </error>
%% The codes and types below are MongooseIM's. 6.8.0 has no Name/2
%% (language + text) variants. Not here: auth and stream errors.
-module(mongoose_xmpp_errors).

-export([bad_request/0, conflict/0, feature_not_implemented/0, forbidden/0, gone/0,
         internal_server_error/0, item_not_found/0, jid_malformed/0, not_acceptable/0,
         not_acceptable_cancel/0, not_acceptable_blocked/0, not_allowed/0,
         not_authorized/0, payment_required/0, recipient_unavailable/0, redirect/0,
         registration_required/0, remote_server_not_found/0, remote_server_timeout/0,
         resource_constraint/0, service_unavailable/0, service_unavailable_wait/0,
         subscription_required/0, unexpected_request/0, unexpected_request_cancel/0]).
-export([bad_request/1, conflict/1, feature_not_implemented/1, forbidden/1, gone/1,
         internal_server_error/1, item_not_found/1, jid_malformed/1, not_acceptable/1,
         not_allowed/1, not_authorized/1, payment_required/1, recipient_unavailable/1,
         redirect/1, registration_required/1, remote_server_not_found/1,
         remote_server_timeout/1, resource_constraint/1, service_unavailable/1,
         subscription_required/1, unexpected_request/1]).

-type el() :: tuple().

%% {Code, Type, Condition} of each error
-spec spec_of(atom()) -> {binary(), binary(), binary()}.
spec_of(bad_request)               -> {<<"400">>, <<"modify">>, <<"bad-request">>};
spec_of(conflict)                  -> {<<"409">>, <<"cancel">>, <<"conflict">>};
spec_of(feature_not_implemented)   -> {<<"501">>, <<"cancel">>, <<"feature-not-implemented">>};
spec_of(forbidden)                 -> {<<"403">>, <<"auth">>, <<"forbidden">>};
spec_of(gone)                      -> {<<"302">>, <<"modify">>, <<"gone">>};
spec_of(internal_server_error)     -> {<<"500">>, <<"wait">>, <<"internal-server-error">>};
spec_of(item_not_found)            -> {<<"404">>, <<"cancel">>, <<"item-not-found">>};
spec_of(jid_malformed)             -> {<<"400">>, <<"modify">>, <<"jid-malformed">>};
spec_of(not_acceptable)            -> {<<"406">>, <<"modify">>, <<"not-acceptable">>};
spec_of(not_acceptable_cancel)     -> {<<"406">>, <<"cancel">>, <<"not-acceptable">>};
spec_of(not_allowed)               -> {<<"405">>, <<"cancel">>, <<"not-allowed">>};
spec_of(not_authorized)            -> {<<"401">>, <<"auth">>, <<"not-authorized">>};
spec_of(payment_required)          -> {<<"402">>, <<"auth">>, <<"payment-required">>};
spec_of(recipient_unavailable)     -> {<<"404">>, <<"wait">>, <<"recipient-unavailable">>};
spec_of(redirect)                  -> {<<"302">>, <<"modify">>, <<"redirect">>};
spec_of(registration_required)     -> {<<"407">>, <<"auth">>, <<"registration-required">>};
spec_of(remote_server_not_found)   -> {<<"404">>, <<"cancel">>, <<"remote-server-not-found">>};
spec_of(remote_server_timeout)     -> {<<"504">>, <<"wait">>, <<"remote-server-timeout">>};
spec_of(resource_constraint)       -> {<<"500">>, <<"wait">>, <<"resource-constraint">>};
spec_of(service_unavailable)       -> {<<"503">>, <<"cancel">>, <<"service-unavailable">>};
spec_of(service_unavailable_wait)  -> {<<"502">>, <<"wait">>, <<"service-unavailable">>};
spec_of(subscription_required)     -> {<<"407">>, <<"auth">>, <<"subscription-required">>};
spec_of(unexpected_request)        -> {<<"400">>, <<"wait">>, <<"unexpected-request">>};
spec_of(unexpected_request_cancel) -> {<<"401">>, <<"cancel">>, <<"unexpected-request">>}.

plain(Name) ->
    {Code, Type, Condition} = spec_of(Name),
    jlib:stanza_error(Code, Type, Condition).

with_text(Name, Text) ->
    {Code, Type, Condition} = spec_of(Name),
    jlib:stanza_errort(Code, Type, Condition, Text).

-spec bad_request() -> el().
bad_request() -> plain(bad_request).
-spec conflict() -> el().
conflict() -> plain(conflict).
-spec feature_not_implemented() -> el().
feature_not_implemented() -> plain(feature_not_implemented).
-spec forbidden() -> el().
forbidden() -> plain(forbidden).
-spec gone() -> el().
gone() -> plain(gone).
-spec internal_server_error() -> el().
internal_server_error() -> plain(internal_server_error).
-spec item_not_found() -> el().
item_not_found() -> plain(item_not_found).
-spec jid_malformed() -> el().
jid_malformed() -> plain(jid_malformed).
-spec not_acceptable() -> el().
not_acceptable() -> plain(not_acceptable).
-spec not_acceptable_cancel() -> el().
not_acceptable_cancel() -> plain(not_acceptable_cancel).
%% XEP-0191: <blocked xmlns="urn:xmpp:blocking:errors"/> before the condition
-spec not_acceptable_blocked() -> el().
not_acceptable_blocked() ->
    {Code, Type, Condition} = spec_of(not_acceptable_cancel),
    jlib:stanza_error(Code, Type, Condition, <<"blocked">>, <<"urn:xmpp:blocking:errors">>).
-spec not_allowed() -> el().
not_allowed() -> plain(not_allowed).
-spec not_authorized() -> el().
not_authorized() -> plain(not_authorized).
-spec payment_required() -> el().
payment_required() -> plain(payment_required).
-spec recipient_unavailable() -> el().
recipient_unavailable() -> plain(recipient_unavailable).
-spec redirect() -> el().
redirect() -> plain(redirect).
-spec registration_required() -> el().
registration_required() -> plain(registration_required).
-spec remote_server_not_found() -> el().
remote_server_not_found() -> plain(remote_server_not_found).
-spec remote_server_timeout() -> el().
remote_server_timeout() -> plain(remote_server_timeout).
-spec resource_constraint() -> el().
resource_constraint() -> plain(resource_constraint).
-spec service_unavailable() -> el().
service_unavailable() -> plain(service_unavailable).
-spec service_unavailable_wait() -> el().
service_unavailable_wait() -> plain(service_unavailable_wait).
-spec subscription_required() -> el().
subscription_required() -> plain(subscription_required).
-spec unexpected_request() -> el().
unexpected_request() -> plain(unexpected_request).
-spec unexpected_request_cancel() -> el().
unexpected_request_cancel() -> plain(unexpected_request_cancel).

-spec bad_request(binary()) -> el().
bad_request(Text) -> with_text(bad_request, Text).
-spec conflict(binary()) -> el().
conflict(Text) -> with_text(conflict, Text).
-spec feature_not_implemented(binary()) -> el().
feature_not_implemented(Text) -> with_text(feature_not_implemented, Text).
-spec forbidden(binary()) -> el().
forbidden(Text) -> with_text(forbidden, Text).
-spec gone(binary()) -> el().
gone(Text) -> with_text(gone, Text).
-spec internal_server_error(binary()) -> el().
internal_server_error(Text) -> with_text(internal_server_error, Text).
-spec item_not_found(binary()) -> el().
item_not_found(Text) -> with_text(item_not_found, Text).
-spec jid_malformed(binary()) -> el().
jid_malformed(Text) -> with_text(jid_malformed, Text).
-spec not_acceptable(binary()) -> el().
not_acceptable(Text) -> with_text(not_acceptable, Text).
-spec not_allowed(binary()) -> el().
not_allowed(Text) -> with_text(not_allowed, Text).
-spec not_authorized(binary()) -> el().
not_authorized(Text) -> with_text(not_authorized, Text).
-spec payment_required(binary()) -> el().
payment_required(Text) -> with_text(payment_required, Text).
-spec recipient_unavailable(binary()) -> el().
recipient_unavailable(Text) -> with_text(recipient_unavailable, Text).
-spec redirect(binary()) -> el().
redirect(Text) -> with_text(redirect, Text).
-spec registration_required(binary()) -> el().
registration_required(Text) -> with_text(registration_required, Text).
-spec remote_server_not_found(binary()) -> el().
remote_server_not_found(Text) -> with_text(remote_server_not_found, Text).
-spec remote_server_timeout(binary()) -> el().
remote_server_timeout(Text) -> with_text(remote_server_timeout, Text).
-spec resource_constraint(binary()) -> el().
resource_constraint(Text) -> with_text(resource_constraint, Text).
-spec service_unavailable(binary()) -> el().
service_unavailable(Text) -> with_text(service_unavailable, Text).
-spec subscription_required(binary()) -> el().
subscription_required(Text) -> with_text(subscription_required, Text).
-spec unexpected_request(binary()) -> el().
unexpected_request(Text) -> with_text(unexpected_request, Text).
