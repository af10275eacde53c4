%% Test stand-in for MongooseIM's TOML processing of a module section and of
%% outgoing pools: src/config/mongoose_config_parser_toml.erl (the processing
%% of spec nodes) and src/config/mongoose_config_validator.erl (the
%% validators) at MongooseIM 6.8.0 (commit
%% cabaa45da4883aa2392057efb4632bdbbc5a74a6). Written for this project from
%% the behaviour of those files; no code copied (MongooseIM is GPLv2).
%%
%% Input: TOML as tomerl parses it (binary keys, maps, lists, binaries,
%% integers, floats, booleans). Every node goes through MongooseIM's steps,
%% in this order, the first failure ending it:
%%   parse        section: required keys present, every key passes
%%                validate_keys, the children (TOML keys, then the
%%                defaults of absent keys, then `include = always'
%%                subsections even when absent), sorted by key; list: the
%%                children; option: conversion to binary | string | atom |
%%                integer | float | boolean | int_or_infinity | int_or_atom;
%%   validate     the node's validator (mongoose_config_validator's);
%%   format_items (sections and lists) a map with unique keys, or a list;
%%   process      the spec's fun or funs, arity 1 or 2 (with the path);
%%   wrap         how the result goes into its parent.
%% Defaults are only wrapped. A failure gives a map #{what =>
%% toml_processing_failed, class => error, text => "TOML configuration
%% error: " ++ Malformed node | Invalid node value | ..., toml_path =>
%% "modules.mod_global_distrib.message_ttl", toml_value, reason, stacktrace}
%% (an error map raised by the step adds its fields, its `what' becoming
%% `reason'); the failures of a whole run are raised as
%%   error({config_error, "Could not read the TOML configuration file", Errors}).
%%
%% Entry points (MongooseIM processes a whole file; these are test-only):
%%   process_module(Module, Toml) -> Opts, what mongoose_config holds at
%%       [{modules, HostType}, Module] (the `modules' section: key checked
%%       with the `module' validator, spec Module:config_spec()/gen_mod);
%%   process_modules(Toml) -> #{Module => Opts} (no config_spec/0: the
%%       empty section, as MongooseIM's `default' item);
%%   process_pool(Type, Tag, Toml) -> #{type, scope, tag, opts, conn_opts};
%%   process_outgoing_pools(Toml) -> [Pool], the `outgoing_pools' option.
%% Not modelled: the rest of the root spec, host_config, what
%% mongoose_config_parser does afterwards (module deps...); the validators
%% ldap_filter, subdomain_template and ip_mask (they fail with
%% validator_not_modelled); `domain' does not try to resolve the name
%% (MongooseIM only logs a warning when it cannot).
-module(mongoose_config_parser_toml).

-export([process_module/2, process_modules/1, process_pool/3, process_outgoing_pools/1,
         extract_errors/1]).

%% erlang/include is not on the include path of extra_src_dirs (tests/)
-include_lib("global_distrib/include/mongoose_config_spec.hrl").
-include("jid.hrl").

-type toml_key() :: binary().
-type toml_value() :: term().
-type toml_section() :: #{toml_key() => toml_value()}.
-type option_value() :: atom() | binary() | string() | float().
-type config_part() :: term().
-type config_error() :: #{class := error, what := atom(), text := string(), any() => any()}.
-type config() :: {atom() | tuple(), term()} | config_error().
-type processor_fun() :: fun((path(), config_part()) -> config_part())
                       | fun((config_part()) -> config_part()).
-type processor() :: processor_fun() | [processor_fun()].
-type path() :: [toml_key() | item | {host, binary()}].
-type step() :: parse | validate | format_items | process | wrap.

-export_type([toml_key/0, toml_value/0, toml_section/0, option_value/0, config/0,
              config_error/0, config_part/0, processor/0, path/0]).

%%--------------------------------------------------------------------
%% Entry points

-spec process_module(module(), toml_section()) -> map().
process_module(Module, Toml) ->
    #{Module := Opts} = process_modules(#{atom_to_binary(Module, utf8) => Toml}),
    Opts.

-spec process_modules(toml_section()) -> #{module() => map()}.
process_modules(Toml) ->
    [{{modules, global}, Modules}] = checked(node_parts([<<"modules">>], Toml,
                                                       modules_section(Toml))),
    Modules.

-spec process_pool(atom() | binary(), atom() | binary(), toml_section()) -> map().
process_pool(Type, Tag, Toml) ->
    [Pool] = process_outgoing_pools(#{bin(Type) => #{bin(Tag) => Toml}}),
    Pool.

-spec process_outgoing_pools(toml_section()) -> [map()].
process_outgoing_pools(Toml) ->
    Spec = mongoose_config_spec:outgoing_pools(global_config),
    [{outgoing_pools, Pools}] = checked(node_parts([<<"outgoing_pools">>], Toml, Spec)),
    Pools.

checked(Parts) ->
    case extract_errors(Parts) of
        [] -> Parts;
        Errors -> error({config_error, "Could not read the TOML configuration file", Errors})
    end.

%% The `modules' section, with the specs of the modules named in the TOML
%% (MongooseIM lists every configurable module instead).
modules_section(Toml) ->
    Named = case is_map(Toml) of
                true -> [{Key, module_spec(Key)} || Key <- maps:keys(Toml), is_binary(Key)];
                false -> []
            end,
    #section{items = maps:put(default, #section{}, maps:from_list(Named)),
             validate_keys = module,
             wrap = host_config}.

module_spec(Key) ->
    Module = binary_to_atom(Key, utf8),
    case code:ensure_loaded(Module) =:= {module, Module}
        andalso erlang:function_exported(Module, config_spec, 0) of
        true -> gen_mod:config_spec(Module);
        false -> #section{}
    end.

bin(Atom) when is_atom(Atom) -> atom_to_binary(Atom, utf8);
bin(Bin) when is_binary(Bin) -> Bin.

%% @doc Every failure map in a processing result, however deep.
-spec extract_errors(term()) -> [config_error()].
extract_errors(#{what := _, class := error} = Failure) ->
    [Failure];
extract_errors(Term) when is_list(Term) ->
    lists:append([extract_errors(T) || T <- Term]);
extract_errors(Term) when is_tuple(Term) ->
    extract_errors(tuple_to_list(Term));
extract_errors(Term) when is_map(Term) ->
    extract_errors(maps:to_list(Term));
extract_errors(_) ->
    [].

%%--------------------------------------------------------------------
%% Nodes

-spec node_parts(path(), toml_value(), mongoose_config_spec:config_node()) -> [config_part()].
node_parts(Path, Toml, #option{} = Spec) ->
    run_steps([parse, validate, process, wrap], Path, Toml, Spec, Toml);
node_parts(Path, Toml, Spec) ->
    run_steps([parse, validate, format_items, process, wrap], Path, Toml, Spec, Toml).

default_parts(Path, Default, Spec) ->
    run_steps([wrap], Path, Default, Spec, Default).

-spec run_steps([step()], path(), toml_value(), mongoose_config_spec:config_node(), term()) ->
          [config_part()].
run_steps([], _Path, _Toml, _Spec, Done) ->
    Done;
run_steps([Step | Later], Path, Toml, Spec, Current) ->
    try step(Step, Path, Current, Spec) of
        {children_failed, Failures} -> Failures;
        Next -> run_steps(Later, Path, Toml, Spec, Next)
    catch
        error:Reason:Stack -> [failure(Step, Path, Toml, Reason, Stack)]
    end.

step(parse, Path, Value, Spec) ->
    parse(Spec, Path, Value);
step(validate, _Path, Value, #section{validate = Validator}) ->
    check_section(Value, Validator),
    Value;
step(validate, _Path, Value, #list{validate = Validator}) ->
    check_list(Value, Validator),
    Value;
step(validate, _Path, Value, #option{type = Type, validate = Validator}) ->
    validate(Value, Type, Validator),
    Value;
step(format_items, _Path, Parts, #section{format_items = Format}) ->
    format(Parts, Format);
step(format_items, _Path, Parts, #list{format_items = Format}) ->
    format(Parts, Format);
step(process, Path, Value, Spec) ->
    apply_processors(Path, Value, processors(Spec));
step(wrap, Path, Value, Spec) ->
    wrap(Path, Value, wrapper(Spec)).

%% A table needs a section spec, an array a list spec, a scalar an option
%% spec; anything else fails as MongooseIM's parse step does, with
%% {case_clause, Spec}.
parse(#section{validate_keys = KeyCheck} = Spec, Path, Table) when is_map(Table) ->
    must_have_required(Spec, Table),
    lists:foreach(fun(Key) -> validate(key_atom(Key), atom, KeyCheck) end, maps:keys(Table)),
    unless_failed(section_children(Path, Table, Spec));
parse(#list{items = ItemSpec}, Path, Array) when is_list(Array) ->
    Children = [node_parts([item_key(Path, Elem) | Path], Elem, ItemSpec) || Elem <- Array],
    unless_failed(lists:append(Children));
parse(#option{type = Type}, _Path, Scalar) when not is_map(Scalar), not is_list(Scalar) ->
    convert(Scalar, Type);
parse(Spec, _Path, _Value) ->
    erlang:error({case_clause, Spec}).

unless_failed(Parts) ->
    case extract_errors(Parts) of
        [] -> Parts;
        Failures -> {children_failed, Failures}
    end.

must_have_required(#section{required = Required, items = Items}, Value) ->
    Keys = case Required of
               all -> maps:keys(Items);
               _ -> Required
           end,
    case [K || K <- Keys, not maps:is_key(K, Value)] of
        [] -> ok;
        Missing -> error(#{what => missing_mandatory_keys, missing_keys => Missing})
    end.

%% The parts of a section's children, ordered by key: those in the TOML,
%% the `include = always' subsections (as empty tables) when absent, the
%% defaults of the other absent keys (wrapped only).
section_children(Path, Value, #section{items = Items, defaults = Defaults}) ->
    AlwaysThere = maps:from_list([{K, #{}} || {K, #section{include = always}}
                                                  <- maps:to_list(Items)]),
    Given = maps:merge(AlwaysThere, Value),
    FromToml = maps:map(fun(K, V) -> node_parts([K | Path], V, child_spec(K, Items)) end,
                        Given),
    NotGiven = maps:without(maps:keys(Value), Defaults),
    FromDefaults = maps:map(fun(K, V) -> default_parts([K | Path], V, maps:get(K, Items)) end,
                            NotGiven),
    ByKey = lists:keysort(1, maps:to_list(maps:merge(FromDefaults, FromToml))),
    lists:append([Parts || {_Key, Parts} <- ByKey]).

child_spec(Key, Items) ->
    case Items of
        #{Key := Spec} -> Spec;
        #{default := Spec} -> Spec;
        #{} -> error(#{what => unexpected_key, key => Key, items => Items})
    end.

%% host_config items are named after their host; other list items are `item'
item_key([<<"host_config">>], #{<<"host_type">> := HostType}) -> {host, HostType};
item_key([<<"host_config">>], #{<<"host">> := Host}) -> {host, Host};
item_key(_Path, _Elem) -> item.

key_atom(Key) -> binary_to_atom(Key, utf8).

%% TOML scalar -> option value (function_clause or badarg when it cannot be)
convert(Bool, boolean) when is_boolean(Bool) -> Bool;
convert(Bin, binary) when is_binary(Bin) -> Bin;
convert(Bin, string) -> binary_to_list(Bin);
convert(Bin, atom) -> key_atom(Bin);
convert(<<"infinity">>, int_or_infinity) -> infinity;
convert(Int, int_or_infinity) when is_integer(Int) -> Int;
convert(Int, int_or_atom) when is_integer(Int) -> Int;
convert(Bin, int_or_atom) -> key_atom(Bin);
convert(Int, integer) when is_integer(Int) -> Int;
convert(Float, float) when is_float(Float) -> Float.

format(Parts, map) ->
    Keys = lists:map(fun({K, _}) -> K end, Parts),
    check_list(Keys, unique),
    maps:from_list(Parts);
format(Parts, list) when is_list(Parts) ->
    Parts.

processors(#section{process = P}) -> P;
processors(#list{process = P}) -> P;
processors(#option{process = P}) -> P.

apply_processors(Path, Value, Funs) when is_list(Funs) ->
    lists:foldl(fun(F, V) -> apply_processors(Path, V, F) end, Value, Funs);
apply_processors(_Path, Value, F) when is_function(F, 1) ->
    F(Value);
apply_processors(Path, Value, F) when is_function(F, 2) ->
    F(Path, Value).

wrapper(#section{wrap = W}) -> W;
wrapper(#list{wrap = W}) -> W;
wrapper(#option{wrap = W}) -> W.

%% The parts a node gives its parent.
wrap([Key | _] = Path, Value, host_config) ->
    [{{key_atom(Key), host_of(Path)}, Value}];
wrap([Key | _] = Path, Value, global_config) ->
    global = host_of(Path),
    [{key_atom(Key), Value}];
wrap([item | _], Value, default) ->
    [Value];
wrap([Key | _], Value, default) ->
    [{key_atom(Key), Value}];
wrap(_Path, Value, item) ->
    [Value];
wrap(_Path, _Value, remove) ->
    [];
wrap(_Path, Parts, none) when is_list(Parts) ->
    Parts.

%% the host of a host_config entry, global elsewhere
host_of(Path) ->
    case lists:reverse(Path) of
        [<<"host_config">>, {host, Host} | _] -> Host;
        _ -> global
    end.

failure(Step, Path, Toml, Reason, Stack) ->
    Common = #{what => toml_processing_failed,
               class => error,
               text => "TOML configuration error: " ++ step_text(Step),
               toml_path => path_text(Path),
               toml_value => Toml,
               stacktrace => Stack},
    Specific = case Reason of
                   #{what := What} -> (maps:remove(what, Reason))#{reason => What};
                   _ -> #{reason => Reason}
               end,
    maps:merge(Common, Specific).

step_text(parse) -> "Malformed node";
step_text(validate) -> "Invalid node value";
step_text(format_items) -> "List or section has invalid key-value pairs";
step_text(process) -> "Node could not be processed";
step_text(wrap) -> "Node could not be wrapped in a config option".

%% "a.b.c" from the TOML keys (list items and hosts leave no trace)
path_text(Path) ->
    Names = [binary_to_list(K) || K <- lists:reverse(Path), K =/= item,
                                  not (is_tuple(K) andalso element(1, K) =:= host)],
    lists:append(lists:join(".", Names)).

%%--------------------------------------------------------------------
%% Validators (mongoose_config_validator 6.8.0). A failed check raises:
%% function_clause for a wrong value of a simple kind, an error map with
%% `what' for the others.

-spec validate(term(), mongoose_config_spec:option_type(), term()) -> any().
validate(_Value, _Type, any) -> ok;
validate(Value, _Type, {enum, Allowed}) -> one_of(Value, Allowed);
validate(Value, binary, Check) -> check_binary(Check, Value);
validate(Value, string, Check) -> check_string(Check, Value);
validate(Value, atom, Check) -> check_atom(Check, Value);
validate(Value, integer, non_negative) -> at_least(0, Value);
validate(Value, integer, positive) -> at_least(1, Value);
validate(Value, integer, port) -> port(Value);
validate(infinity, int_or_infinity, Check) when Check =:= non_negative;
                                                 Check =:= positive -> ok;
validate(Value, int_or_infinity, non_negative) -> at_least(0, Value);
validate(Value, int_or_infinity, positive) -> at_least(1, Value).

check_binary(domain, V) -> domain(V);
check_binary(url, V) -> non_empty_binary(V);
check_binary(non_empty, V) -> non_empty_binary(V);
check_binary(subdomain_template, V) -> not_modelled(subdomain_template, V);
check_binary({module, Prefix}, V) -> loadable(prefixed(Prefix, binary_to_list(V)));
check_binary(jid, V) -> jid(V);
check_binary(jid_localpart, V) -> jid_localpart(V);
check_binary(ldap_filter, V) -> not_modelled(ldap_filter, V).

check_string(url, V) -> non_empty_string(V);
check_string(domain, V) -> domain(V);
check_string(subdomain_template, V) -> not_modelled(subdomain_template, V);
check_string(ip_address, V) -> ip_address(V);
check_string(ip_mask, V) -> not_modelled(ip_mask, V);
check_string(network_address, V) -> network_address(V);
check_string(filename, V) -> filename(V);
check_string(non_empty, V) -> non_empty_string(V);
check_string(dirname, V) -> dirname(V).

check_atom(module, V) -> loadable(V);
check_atom({module, Prefix}, V) -> loadable(prefixed(Prefix, atom_to_list(V)));
check_atom(loglevel, V) -> loglevel(V);
check_atom(instrumentation_loglevel, none) ->
    error(#{what => validate_instrumentation_loglevel_failed, value => none});
check_atom(instrumentation_loglevel, V) -> loglevel(V);
check_atom(Check, V) when Check =:= pool_name; Check =:= shaper; Check =:= access_rule;
                          Check =:= non_empty ->
    non_empty_atom(V).

check_section([_ | _], non_empty) -> ok;
check_section(Parts, any) when is_list(Parts) -> ok.

check_list([_ | _] = Items, unique_non_empty) -> all_different(Items);
check_list([_ | _], non_empty) -> ok;
check_list(Items, unique) -> all_different(Items);
check_list(Items, any) when is_list(Items) -> ok.

%% {badmatch, Length} when two items are the same
all_different(Items) ->
    Length = map_size(maps:from_keys(Items, true)),
    Length = length(Items).

at_least(Min, N) when is_integer(N), N >= Min -> ok.

port(N) when is_integer(N), N >= 0, N =< 65535 -> ok.

non_empty_binary(B) when is_binary(B), B =/= <<>> -> ok.

non_empty_string(S) when is_list(S), S =/= [] -> ok.

non_empty_atom(A) when is_atom(A), A =/= '' -> ok.

%% mongoose_logs:loglevel_keyword_to_number/1 accepts exactly these
loglevel(Level) when Level =:= none; Level =:= emergency; Level =:= alert;
                     Level =:= critical; Level =:= error; Level =:= warning;
                     Level =:= notice; Level =:= info; Level =:= debug; Level =:= all ->
    ok.

one_of(Value, Allowed) ->
    lists:member(Value, Allowed) orelse
        error(#{what => validate_enum_failed, value => Value, allowed_values => Allowed}),
    ok.

prefixed(Prefix, Name) ->
    list_to_atom(atom_to_list(Prefix) ++ "_" ++ Name).

loadable(Module) ->
    case code:ensure_loaded(Module) of
        {module, _} -> ok;
        Other -> error(#{what => module_not_found, module => Module, reason => Other})
    end.

jid(Bin) ->
    case jid:from_binary(Bin) of
        #jid{} -> ok;
        _ -> error(#{what => validate_jid_failed, value => Bin})
    end.

jid_localpart(Bin) ->
    case jid:nodeprep(Bin) of
        error -> error(#{what => validate_jid_localpart_failed, value => Bin,
                         text => <<"Invalid JID localpart">>});
        _ -> ok
    end.

%% a syntactically valid name; not resolved here
domain(Bin) when is_binary(Bin) ->
    domain(binary_to_list(Bin));
domain(Name) ->
    inet_parse:domain(Name) orelse
        error(#{what => validate_domain_failed, text => <<"Invalid domain name">>,
                domain => Name}),
    ok.

%% badmatch when not an address
ip_address(Text) ->
    {ok, _} = inet:parse_address(Text),
    ok.

%% a domain name or an IP address
network_address(Text) ->
    Outcomes = [outcome(Check, Text) || Check <- [fun domain/1, fun ip_address/1]],
    lists:member(ok, Outcomes) orelse
        error(#{what => validate_oneof_failed, validation_results => Outcomes}),
    ok.

outcome(Check, Value) ->
    try Check(Value) of
        _ -> ok
    catch
        error:Reason:Stack -> #{reason => Reason, stacktrace => Stack}
    end.

filename(Name) ->
    case file:read_file_info(Name) of
        {ok, _} -> ok;
        Failed -> error(#{what => invalid_filename, filename => Name, reason => Failed})
    end.

dirname(Name) ->
    case file:list_dir(Name) of
        {ok, _} -> ok;
        Failed -> error(#{what => invalid_dirname, dirname => Name, reason => Failed})
    end.

not_modelled(Validator, Value) ->
    error(#{what => validator_not_modelled, validator => Validator, value => Value}).
