%% Stand-in of MongooseIM's include/mongoose_config_spec.hrl (MongooseIM
%% 6.8.0, commit cabaa45da4883aa2392057efb4632bdbbc5a74a6), written for this
%% project from the record definitions of that file; no code copied.
%% It gives the three node kinds of a module's config_spec/0: a TOML table
%% (section), an array (list) and a scalar (option), with the same record
%% names, fields, field order and defaults as MongooseIM's, and the same
%% guard macro, so that including both headers is harmless.
%% Used only when this application is built on its own (tests, stand-ins);
%% compiled inside MongooseIM, the facade gets MongooseIM's own header.
-ifndef(MONGOOSEIM_CONFIG_SPEC_HRL).
-define(MONGOOSEIM_CONFIG_SPEC_HRL, true).

%% A TOML table. items: key (binary) or `default' => node; required: keys
%% (or `all'); format_items: map | list; process: fun(s) of arity 1 or 2;
%% wrap: how the result is put in its parent; include = always: processed
%% (with its defaults) even when absent from the TOML.
-record(section, {items = #{} :: #{binary() | default => term()},
                  validate_keys = any :: term(),
                  required = [] :: [binary()] | all,
                  validate = any :: term(),
                  format_items = map :: map | list,
                  process = [] :: term(),
                  defaults = #{} :: #{binary() => term()},
                  wrap = default :: atom(),
                  include = when_present :: always | when_present}).

%% A TOML array: items is the node of every element.
-record(list, {items :: term(),
               validate = any :: term(),
               format_items = list :: map | list,
               process = [] :: term(),
               wrap = default :: atom()}).

%% A TOML scalar: type is the conversion (binary, string, atom, integer...).
-record(option, {type :: atom(),
                 validate = any :: term(),
                 process = [] :: term(),
                 wrap = default :: atom()}).

-endif.
