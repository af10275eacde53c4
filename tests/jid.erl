%% Stand-in for MongooseIM's jid module (tests only): a JID is {jid, Binary}.
-module(jid).
-export([from_binary/1, to_binary/1]).

from_binary(B) when is_binary(B) -> {jid, B}.

to_binary({jid, B}) -> B.
