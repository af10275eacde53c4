%% Stand-in for MongooseIM's ejabberd_router (tests only), in MongooseIM's
%% order: the filter_packet hooks first (global routing may drop the
%% stanza), then local routing, recorded in the public ETS table
%% `mim_standin_routed' as {Seq, HostType, From, To, Packet}.
-module(ejabberd_router).
-export([route/4]).

route(From, To, Acc, Packet) ->
    HostType = mongoose_acc:host_type(Acc),
    case gen_hook:run_fold(filter_packet, {global, HostType}, {From, To, Acc, Packet}, #{}) of
        {_, drop} ->
            ok;
        {_, {From1, To1, _Acc1, Packet1}} ->
            ets:insert(mim_standin_routed,
                       {erlang:unique_integer([monotonic]), HostType, From1, To1, Packet1}),
            ok
    end.
