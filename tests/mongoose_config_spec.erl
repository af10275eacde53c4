%% Test stand-in for the parts of MongooseIM's mongoose_config_spec that a
%% module spec and the outgoing pools use: src/config/mongoose_config_spec.erl
%% (and merge_sections/2 of src/config/mongoose_config_utils.erl) at
%% MongooseIM 6.8.0 (commit cabaa45da4883aa2392057efb4632bdbbc5a74a6).
%% Written for this project from the behaviour of those files; no code
%% copied (MongooseIM is GPLv2). The option names, types, validators and
%% defaults below are MongooseIM's.
%%
%%   tls(Entities)      the `common' TLS options (verify_mode = peer,
%%                      disconnect_on_failure = true, crl_files = [] by
%%                      default; certfile without keyfile is an error when
%%                      processed) plus those of server | client | xmpp |
%%                      xmpp_tls; client adds server_name_indication, always
%%                      present (enabled = true, protocol = default)
%%   wpool/1            worker pool options (workers 10, strategy best_worker,
%%                      call_timeout 5000 by default, extra defaults merged)
%%   iqdisc/0, process_iqdisc/1, process_infinity_as_zero/1
%%   outgoing_pools/1   the `outgoing_pools' section (global_config or
%%                      host_config); one pool becomes #{type, scope, tag,
%%                      opts, conn_opts} (process_pool/2,
%%                      process_host_config_pool/2); max_worker_queue_len
%%                      with a strategy other than best_worker is an error
%%   merge_sections/2   mongoose_config_utils': items and defaults of the
%%                      second win, required and process appended
%% Simplification: only the `redis' pool type (the others need their own
%% modules). outgoing_pools/1 and merge_sections/2 are exported for the
%% parser stand-in.
-module(mongoose_config_spec).

-export([wpool/1, iqdisc/0, tls/1]).
-export([process_pool/2, process_host_config_pool/2, process_iqdisc/1,
         process_infinity_as_zero/1]).
-export([outgoing_pools/1, merge_sections/2]).

%% erlang/include is not on the include path of extra_src_dirs (tests/)
-include_lib("global_distrib/include/mongoose_config_spec.hrl").

-type config_section() :: #section{}.
-type config_list() :: #list{}.
-type config_option() :: #option{}.
-type config_node() :: config_section() | config_list() | config_option().
-type option_type() :: boolean | binary | string | atom | int_or_infinity
                     | int_or_atom | integer | float.
-type wrapper() :: global_config | host_config | default | item | remove | none.
-type format_items() :: list | map.

-export_type([config_node/0, config_section/0, config_list/0, config_option/0,
              wrapper/0, format_items/0, option_type/0]).

-type tls_entity() :: common | server | client | xmpp | xmpp_tls.

%%--------------------------------------------------------------------
%% Sections

-spec merge_sections(config_section(), config_section()) -> config_section().
merge_sections(#section{} = Base, #section{} = Extra) ->
    Base#section{items = maps:merge(Base#section.items, Extra#section.items),
                 required = Base#section.required ++ Extra#section.required,
                 defaults = maps:merge(Base#section.defaults, Extra#section.defaults),
                 process = lists:flatten([Base#section.process, Extra#section.process])}.

%% a scalar option with a validator
opt(Type, Validator) -> #option{type = Type, validate = Validator}.
opt(Type) -> #option{type = Type}.

%%--------------------------------------------------------------------
%% TLS

-spec tls([tls_entity()]) -> config_section();
         (tls_entity()) -> config_section().
tls(Entities) when is_list(Entities) ->
    lists:foldl(fun(Entity, Acc) -> merge_sections(tls(Entity), Acc) end,
                tls(common), Entities);
tls(common) ->
    #section{items = #{<<"verify_mode">> => opt(atom, {enum, [peer, selfsigned_peer, none]}),
                       <<"certfile">> => opt(string, filename),
                       <<"cacertfile">> => opt(string, filename),
                       <<"ciphers">> => opt(string),
                       <<"keyfile">> => opt(string, filename),
                       <<"password">> => opt(string),
                       <<"versions">> => #list{items = opt(atom)},
                       <<"disconnect_on_failure">> => opt(boolean),
                       <<"crl_files">> => #list{items = opt(string, filename)}},
             defaults = #{<<"verify_mode">> => peer,
                          <<"disconnect_on_failure">> => true,
                          <<"crl_files">> => []},
             process = fun key_with_cert/1};
tls(server) ->
    #section{items = #{<<"dhfile">> => opt(string, filename),
                       <<"early_data">> => opt(boolean),
                       <<"session_tickets">> => opt(atom, {enum, [stateless]})}};
tls(client) ->
    Sni = #section{items = #{<<"enabled">> => opt(boolean),
                             <<"host">> => opt(string, non_empty),
                             <<"protocol">> => opt(atom, {enum, [default, https]})},
                   defaults = #{<<"enabled">> => true, <<"protocol">> => default},
                   include = always},
    #section{items = #{<<"server_name_indication">> => Sni}};
tls(xmpp) ->
    xmpp_tls_mode(starttls);
tls(xmpp_tls) ->
    xmpp_tls_mode(tls).

%% XMPP listeners (default starttls) and components (default tls)
xmpp_tls_mode(DefaultMode) ->
    #section{items = #{<<"mode">> => opt(atom, {enum, [tls, starttls, starttls_required]}),
                       <<"keep_secrets">> => opt(boolean)},
             defaults = #{<<"mode">> => DefaultMode, <<"keep_secrets">> => false}}.

%% Since OTP 28.1 a certificate file may not hold the private key too.
key_with_cert(#{certfile := CertFile} = Opts) when not is_map_key(keyfile, Opts) ->
    error(#{what => tls_certfile_without_keyfile,
            text => <<"TLS certfile provided without a separate keyfile. "
                      "Since OTP 28.1, concatenated certificate and private key files "
                      "are not supported. Please provide a separate keyfile option.">>,
            certfile => CertFile});
key_with_cert(Opts) ->
    Opts.

%%--------------------------------------------------------------------
%% IQ handling

-spec iqdisc() -> config_section().
iqdisc() ->
    #section{items = #{<<"type">> => opt(atom, {enum, [no_queue, one_queue, parallel, queues]}),
                       <<"workers">> => opt(integer, positive)},
             required = [<<"type">>],
             process = fun ?MODULE:process_iqdisc/1}.

%% @doc `workers' only goes with the `queues' type (badmatch otherwise).
-spec process_iqdisc(map()) -> atom() | {queues, pos_integer()}.
process_iqdisc(#{type := Type} = Opts) ->
    case Opts of
        #{workers := Workers} ->
            queues = Type,
            {queues, Workers};
        #{} ->
            Type
    end.

-spec process_infinity_as_zero(infinity | integer()) -> integer().
process_infinity_as_zero(infinity) -> 0;
process_infinity_as_zero(N) -> N.

%%--------------------------------------------------------------------
%% Worker pools and outgoing pools

-spec wpool(map()) -> config_section().
wpool(ExtraDefaults) ->
    Strategies = [best_worker, random_worker, next_worker, available_worker,
                  next_available_worker],
    #section{items = #{<<"workers">> => opt(integer, positive),
                       <<"strategy">> => opt(atom, {enum, Strategies}),
                       <<"call_timeout">> => opt(integer, positive),
                       <<"max_worker_queue_len">> => opt(integer, non_negative)},
             defaults = maps:merge(#{<<"workers">> => 10,
                                     <<"strategy">> => best_worker,
                                     <<"call_timeout">> => 5000},
                                   ExtraDefaults)}.

%% @doc The `outgoing_pools' section: outgoing_pools.<type>.<tag>.
-spec outgoing_pools(global_config | host_config) -> config_section().
outgoing_pools(Scope) ->
    ByType = maps:from_list([{Type, #section{items = #{default => one_pool(Scope, Type)},
                                             validate_keys = non_empty,
                                             format_items = list,
                                             wrap = none}}
                             || Type <- [<<"redis">>]]),
    #section{items = ByType,
             format_items = list,
             wrap = Scope,
             include = case Scope of
                           global_config -> always;
                           host_config -> when_present
                       end}.

one_pool(Scope, Type) ->
    Connection = #{<<"connection">> => connection(Type)},
    Specific = case Scope of
                   global_config ->
                       #section{items = Connection#{<<"scope">> =>
                                                        opt(atom, {enum, [global, host_type, host]})},
                                defaults = #{<<"scope">> => global},
                                process = fun ?MODULE:process_pool/2};
                   host_config ->
                       #section{items = Connection,
                                process = fun ?MODULE:process_host_config_pool/2}
               end,
    (merge_sections(wpool(#{}), Specific))#section{wrap = item}.

%% outgoing_pools.redis.*.connection
connection(<<"redis">>) ->
    #section{items = #{<<"host">> => opt(string, non_empty),
                       <<"port">> => opt(integer, port),
                       <<"database">> => opt(integer, non_negative),
                       <<"username">> => opt(string),
                       <<"password">> => opt(string),
                       <<"tls">> => tls([client])},
             defaults = #{<<"host">> => "127.0.0.1", <<"port">> => 6379, <<"database">> => 0},
             include = always}.

%% @doc A pool of the global `outgoing_pools'; Path is [Tag, Type | _].
-spec process_pool(mongoose_config_parser_toml:path(), map()) -> map().
process_pool([Tag, Type | _], #{scope := Scope, connection := Conn} = Opts) ->
    pool_map(Tag, Type, scope_of(Scope), maps:without([scope, host, connection], Opts), Conn).

%% @doc A pool of a host_config section: its scope is the host type.
-spec process_host_config_pool(mongoose_config_parser_toml:path(), map()) -> map().
process_host_config_pool([Tag, Type, _Pools, {host, HostType} | _],
                         #{connection := Conn} = Opts) ->
    pool_map(Tag, Type, HostType, maps:remove(connection, Opts), Conn).

pool_map(Tag, Type, Scope, WorkerOpts, Conn) ->
    #{type => binary_to_atom(Type, utf8),
      scope => Scope,
      tag => binary_to_atom(Tag, utf8),
      opts => checked_strategy(WorkerOpts),
      conn_opts => Conn}.

%% `host' is the deprecated name of `host_type'
scope_of(global) -> global;
scope_of(host_type) -> host_type;
scope_of(host) -> host_type.

checked_strategy(#{strategy := Strategy} = Opts)
  when Strategy =/= best_worker, is_map_key(max_worker_queue_len, Opts) ->
    error(#{what => invalid_worker_pool_strategy_option,
            text => <<"max_worker_queue_len can only be set for the best_worker strategy">>,
            pool_options => Opts});
checked_strategy(Opts) ->
    Opts.
