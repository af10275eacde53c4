%% Test stand-in for the `jid' module of esl/mongoose_jid, src/jid.erl at
%% tag 2.2.3 (commit 4985beffdeb46267a28639de52f5206e9f678fab), the version
%% locked by MongooseIM 6.8.0 (cabaa45da4883aa2392057efb4632bdbbc5a74a6).
%% Written for this project from the behaviour of that file; no code copied.
%%
%% What callers can rely on (as in mongoose_jid):
%%   * a JID is #jid{luser, lserver, lresource} (tests/jid.hrl), every part
%%     already normalised; bad input gives the atom `error', never a crash;
%%   * a literal JID must be shorter than 3071 bytes, each part shorter than
%%     1024 bytes (before and after normalisation);
%%   * parsing: "user@domain/resource", "domain/resource", "user@domain",
%%     "domain"; after the domain's first `/' anything (even `@') is the
%%     resource; an empty user or domain part is an error, an empty resource
%%     after `/' is accepted; mongoose_jid's byte-window quirk in finding
%%     the user part is kept (see split_literal/1).
%% mongoose_jid normalises with the stringprep NIF; here the profiles are
%% done in plain Erlang (normalise/2): invalid UTF-8 refused, RFC 3454 table
%% B.1 characters removed, case folding (string:casefold/1) except for
%% resources, NFKC, then the prohibited characters of each profile refused
%% (all: RFC 3454 C.1.2, C.2.2, C.3-C.9; nodeprep also ASCII space, ASCII
%% controls and " & ' / : < > @; resourceprep also ASCII controls).
%% Not done: the bidirectional text rule and the unassigned code points.
-module(jid).

-export([make/3, make/1, make_bare/2, make_noprep/3, make_noprep/1,
         from_binary/1, from_binary_noprep/1,
         binary_to_bare/1, to_bare_binary/1, to_binary/1,
         are_equal/2, are_bare_equal/2, is_nodename/1,
         nodeprep/1, nameprep/1, resourceprep/1,
         luser/1, lserver/1, lresource/1,
         to_lower/1, to_lus/1, to_bare/1,
         replace_resource/2, replace_resource_noprep/2,
         str_tolower/1]).

-include("jid.hrl").

-type user() :: binary().
-type server() :: binary().
-type resource() :: binary().
-type luser() :: binary().
-type lserver() :: binary().
-type lresource() :: binary().
-type jid() :: #jid{}.
%% normalised user, server, resource
-type ljid() :: {luser(), lserver(), lresource()}.
%% the same, not normalised yet
-type simple_jid() :: {user(), server(), resource()}.
%% normalised user and server
-type simple_bare_jid() :: {luser(), lserver()}.
%% a JID as text, maybe not normalised
-type literal_jid() :: binary().

-export_type([jid/0, ljid/0, simple_jid/0, simple_bare_jid/0, literal_jid/0,
              user/0, server/0, resource/0, luser/0, lserver/0, lresource/0]).

%% Byte limits: one part, a whole literal JID (RFC 7622, section 3.1)
-define(PART_MAX, 1024).
-define(JID_MAX, 3071).

%%--------------------------------------------------------------------
%% Construction

-spec make(user(), server(), resource()) -> jid() | error.
make(User, Server, Resource) ->
    all_or_error([nodeprep(User), nameprep(Server), resourceprep(Resource)],
                 fun([U, S, R]) -> #jid{luser = U, lserver = S, lresource = R} end).

-spec make(simple_jid()) -> jid() | error.
make({User, Server, Resource}) ->
    make(User, Server, Resource).

-spec make_bare(user(), server()) -> jid() | error.
make_bare(User, Server) ->
    all_or_error([nodeprep(User), nameprep(Server)],
                 fun([U, S]) -> #jid{luser = U, lserver = S} end).

%% @doc No normalisation: the parts are trusted as they are.
-spec make_noprep(luser(), lserver(), lresource()) -> jid().
make_noprep(LUser, LServer, LResource) ->
    #jid{luser = LUser, lserver = LServer, lresource = LResource}.

-spec make_noprep(ljid()) -> jid().
make_noprep({LUser, LServer, LResource}) ->
    #jid{luser = LUser, lserver = LServer, lresource = LResource}.

%% Builds with the parts when none of them is `error'.
all_or_error(Parts, Build) ->
    case lists:member(error, Parts) of
        true -> error;
        false -> Build(Parts)
    end.

%%--------------------------------------------------------------------
%% Parsing and printing

-spec from_binary(binary()) -> jid() | error.
from_binary(Text) ->
    case split_literal(Text) of
        {User, Server, Resource} -> make(User, Server, Resource);
        error -> error
    end.

-spec from_binary_noprep(binary()) -> jid() | error.
from_binary_noprep(Text) ->
    case split_literal(Text) of
        {User, Server, Resource} -> make_noprep(User, Server, Resource);
        error -> error
    end.

-spec binary_to_bare(binary()) -> jid() | error.
binary_to_bare(Text) when is_binary(Text) ->
    to_bare(from_binary(Text)).

-spec to_binary(simple_jid() | simple_bare_jid() | jid() | literal_jid()) -> binary().
to_binary(Literal) when is_binary(Literal) ->
    Literal;
to_binary(#jid{luser = U, lserver = S, lresource = R}) ->
    join(U, S, R);
to_binary({U, S}) ->
    join(U, S, <<>>);
to_binary({U, S, R}) ->
    join(U, S, R).

-spec to_bare_binary(ljid() | simple_bare_jid() | jid() | literal_jid()) -> binary() | error.
to_bare_binary(Literal) when is_binary(Literal) ->
    case binary_to_bare(Literal) of
        error -> error;
        Bare -> to_binary(Bare)
    end;
to_bare_binary(#jid{luser = U, lserver = S}) ->
    join(U, S, <<>>);
to_bare_binary({U, S}) ->
    join(U, S, <<>>);
to_bare_binary({U, S, _}) ->
    join(U, S, <<>>).

%% "user@" only with a user, "/resource" only with a resource
join(User, Server, Resource) ->
    Prefix = case User of
                 <<>> -> <<>>;
                 _ -> <<User/binary, $@>>
             end,
    Suffix = case Resource of
                 <<>> -> <<>>;
                 _ -> <<$/, Resource/binary>>
             end,
    <<Prefix/binary, Server/binary, Suffix/binary>>.

%% Text -> {User, Server, Resource} (not normalised) | error.
%% mongoose_jid looks for the end of the first part in windows of nine
%% bytes starting every eight bytes, and in a window an `@' beats a `/' that
%% comes before it: "a/b@c" is user "a/b" at "c" (then refused by nodeprep),
%% while "abcdefghi/j@k" (the `/' and the `@' in different windows) is
%% domain "abcdefghi" with resource "j@k". That is kept here.
split_literal(Text) when is_binary(Text), byte_size(Text) < ?JID_MAX ->
    case binary:match(Text, [<<"@">>, <<"/">>]) of
        nomatch ->
            non_empty_server(<<>>, Text, <<>>);
        {First, 1} ->
            Window = 8 * (max(First - 1, 0) div 8),
            Scope = {Window, min(9, byte_size(Text) - Window)},
            case binary:match(Text, <<"@">>, [{scope, Scope}]) of
                {0, 1} ->
                    error;
                {At, 1} ->
                    <<User:At/binary, $@, Rest/binary>> = Text,
                    split_after_user(User, Rest);
                nomatch when First =:= 0 ->
                    error;
                nomatch ->
                    <<Server:First/binary, $/, Resource/binary>> = Text,
                    {<<>>, Server, Resource}
            end
    end;
split_literal(_) ->
    error.

%% After "user@": "server" or "server/resource"; a second `@' before any
%% `/' is an error.
split_after_user(User, Rest) ->
    case binary:match(Rest, [<<"@">>, <<"/">>]) of
        nomatch ->
            non_empty_server(User, Rest, <<>>);
        {At, 1} ->
            case Rest of
                <<Server:At/binary, $/, Resource/binary>> ->
                    non_empty_server(User, Server, Resource);
                _ ->
                    error
            end
    end.

non_empty_server(_User, <<>>, _Resource) -> error;
non_empty_server(User, Server, Resource) -> {User, Server, Resource}.

%%--------------------------------------------------------------------
%% Comparison, access, conversion

-spec are_equal(jid(), jid()) -> boolean().
are_equal(#jid{} = A, #jid{} = B) ->
    A =:= B;
are_equal(_, _) ->
    false.

-spec are_bare_equal(jid() | ljid(), jid() | ljid()) -> boolean().
are_bare_equal(A, B) ->
    case {user_and_server(A), user_and_server(B)} of
        {{U, S}, {U, S}} -> true;
        _ -> false
    end.

user_and_server(#jid{luser = U, lserver = S}) -> {U, S};
user_and_server({U, S, _}) -> {U, S};
user_and_server(_) -> no_jid.

-spec luser(jid() | ljid() | simple_bare_jid()) -> luser().
luser(#jid{luser = U}) -> U;
luser(Tuple) when tuple_size(Tuple) =:= 2; tuple_size(Tuple) =:= 3 -> element(1, Tuple).

-spec lserver(jid() | ljid() | simple_bare_jid()) -> lserver().
lserver(#jid{lserver = S}) -> S;
lserver(Tuple) when tuple_size(Tuple) =:= 2; tuple_size(Tuple) =:= 3 -> element(2, Tuple).

-spec lresource(jid() | ljid() | simple_bare_jid()) -> lresource().
lresource(#jid{lresource = R}) -> R;
lresource({_, _, R}) -> R;
lresource({_, _}) -> <<>>.

%% @doc The normalised triple; a raw triple is normalised first.
-spec to_lower(simple_jid() | jid()) -> ljid() | error.
to_lower(#jid{luser = U, lserver = S, lresource = R}) ->
    {U, S, R};
to_lower({User, Server, Resource}) ->
    all_or_error([jid:nodeprep(User), jid:nameprep(Server), jid:resourceprep(Resource)],
                 fun list_to_tuple/1).

-spec to_lus(jid() | ljid() | simple_bare_jid()) -> simple_bare_jid();
            (error) -> error.
to_lus(error) -> error;
to_lus(#jid{luser = U, lserver = S}) -> {U, S};
to_lus({U, S}) -> {U, S};
to_lus({U, S, _}) -> {U, S}.

-spec to_bare(jid()) -> jid();
             (ljid()) -> ljid();
             (simple_bare_jid()) -> simple_bare_jid();
             (error) -> error.
to_bare(error) -> error;
to_bare(#jid{} = Jid) -> Jid#jid{lresource = <<>>};
to_bare({U, S}) -> {U, S};
to_bare({U, S, _}) -> {U, S, <<>>}.

-spec replace_resource(jid(), resource()) -> jid() | error.
replace_resource(#jid{} = Jid, Resource) ->
    case resourceprep(Resource) of
        error -> error;
        LResource -> Jid#jid{lresource = LResource}
    end.

-spec replace_resource_noprep(jid(), resource()) -> jid().
replace_resource_noprep(#jid{} = Jid, LResource) ->
    Jid#jid{lresource = LResource}.

%%--------------------------------------------------------------------
%% Normalisation of the parts

-spec is_nodename(binary()) -> boolean().
is_nodename(<<>>) -> false;
is_nodename(Name) -> nodeprep(Name) =/= error.

-spec nodeprep(user()) -> luser() | error.
nodeprep(User) -> prep_part(User, nodeprep).

-spec nameprep(server()) -> lserver() | error.
nameprep(<<>>) -> error;
nameprep(Server) -> prep_part(Server, nameprep).

-spec resourceprep(resource()) -> lresource() | error.
resourceprep(Resource) -> prep_part(Resource, resourceprep).

%% @doc Lower case as the stringprep library does it (no length limit).
-spec str_tolower(iodata()) -> binary() | error.
str_tolower(Text) when is_binary(Text); is_list(Text) ->
    normalise(iolist_to_binary(Text), tolower).

%% A part: a binary under the part limit, before and after normalisation.
prep_part(Part, Profile) when is_binary(Part), byte_size(Part) < ?PART_MAX ->
    case normalise(Part, Profile) of
        Out when is_binary(Out), byte_size(Out) < ?PART_MAX -> Out;
        _ -> error
    end;
prep_part(_, _) ->
    error.

-type profile() :: nodeprep | nameprep | resourceprep | tolower.

-spec normalise(binary(), profile()) -> binary() | error.
normalise(Bin, Profile) ->
    case unicode:characters_to_list(Bin, utf8) of
        Chars when is_list(Chars) ->
            Kept = lists:filter(fun(C) -> not in_ranges(C, ignored()) end, Chars),
            Folded = case Profile of
                         resourceprep -> Kept;
                         _ -> string:casefold(Kept)
                     end,
            Normal = unicode:characters_to_nfkc_list(Folded),
            case lists:any(fun(C) -> refused(Profile, C) end, Normal) of
                true -> error;
                false -> unicode:characters_to_binary(Normal)
            end;
        _Invalid ->
            error
    end.

refused(Profile, C) ->
    always_refused(C) orelse extra_refused(Profile, C).

extra_refused(nodeprep, C) ->
    C =:= $\s orelse ascii_control(C) orelse lists:member(C, [$", $&, $', $/, $:, $<, $>, $@]);
extra_refused(resourceprep, C) ->
    ascii_control(C);
extra_refused(_, _) ->
    false.

ascii_control(C) -> C < 16#20 orelse C =:= 16#7F.

%% RFC 3454 C.1.2, C.2.2, C.3 to C.9, and the two last code points of
%% every plane (C.4).
always_refused(C) ->
    C band 16#FFFF >= 16#FFFE orelse in_ranges(C, refused_ranges()).

in_ranges(C, Ranges) ->
    lists:any(fun({Lo, Hi}) -> C >= Lo andalso C =< Hi end, Ranges).

%% RFC 3454 B.1: removed before anything else
ignored() ->
    [{16#00AD, 16#00AD}, {16#034F, 16#034F}, {16#1806, 16#1806},
     {16#180B, 16#180D}, {16#200B, 16#200D}, {16#2060, 16#2060},
     {16#FE00, 16#FE0F}, {16#FEFF, 16#FEFF}].

refused_ranges() ->
    [%% C.1.2 spaces beyond ASCII
     {16#00A0, 16#00A0}, {16#1680, 16#1680}, {16#2000, 16#200B},
     {16#2028, 16#2029}, {16#202F, 16#202F}, {16#205F, 16#205F}, {16#3000, 16#3000},
     %% C.2.2 controls beyond ASCII
     {16#0080, 16#009F}, {16#06DD, 16#06DD}, {16#070F, 16#070F}, {16#180E, 16#180E},
     {16#200C, 16#200D}, {16#2060, 16#2063}, {16#206A, 16#206F}, {16#FEFF, 16#FEFF},
     {16#FFF9, 16#FFFC}, {16#1D173, 16#1D17A},
     %% C.3 private use
     {16#E000, 16#F8FF}, {16#F0000, 16#FFFFD}, {16#100000, 16#10FFFD},
     %% C.4 non-characters (besides xFFFE, xFFFF)
     {16#FDD0, 16#FDEF},
     %% C.5 surrogates
     {16#D800, 16#DFFF},
     %% C.6 not fit for plain text
     {16#FFF9, 16#FFFD},
     %% C.7 not fit for canonical representation
     {16#2FF0, 16#2FFB},
     %% C.8 display properties, deprecated
     {16#0340, 16#0341}, {16#200E, 16#200F}, {16#202A, 16#202E},
     %% C.9 tags
     {16#E0001, 16#E0001}, {16#E0020, 16#E007F}].
