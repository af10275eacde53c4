%% Test stand-in for the JID record header of mongoose_jid, include/jid.hrl
%% of esl/mongoose_jid 2.2.3 (commit 4985beffdeb46267a28639de52f5206e9f678fab),
%% the jid package that MongooseIM 6.8.0 locks. Written for this project
%% from the behaviour of that file; no code copied.
%%
%% Since mongoose_jid 2.0 a JID keeps only its normalised parts: local part,
%% domain part and resource part, all binaries, all empty by default.
-ifndef(MONGOOSE_JID_HRL).
-define(MONGOOSE_JID_HRL, true).

-record(jid, {luser = <<>> :: binary(),
              lserver = <<>> :: binary(),
              lresource = <<>> :: binary()}).

-endif.
