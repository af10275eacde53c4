%% Stand-in for MongooseIM's mongoose_xmpp_errors (tests only).
-module(mongoose_xmpp_errors).
-export([service_unavailable/0]).

service_unavailable() ->
    {xmlel, <<"error">>, #{<<"type">> => <<"cancel">>},
     [{xmlel, <<"service-unavailable">>,
       #{<<"xmlns">> => <<"urn:ietf:params:xml:ns:xmpp-stanzas">>}, []}]}.
