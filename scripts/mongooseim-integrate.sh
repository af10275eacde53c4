#!/usr/bin/env bash
# Puts global_distrib in place of MongooseIM's own global distribution in a
# MongooseIM 6.x checkout (written against 6.8.0):
#
#   scripts/mongooseim-integrate.sh MIM_CHECKOUT
#
# 1. removes MongooseIM's global distribution modules (src/global_distrib/,
#    include/global_distrib_metrics.hrl and the unit suite of their internals);
# 2. copies the facade (mod_global_distrib, mod_global_distrib_instrument)
#    into src/global_distrib/, where it is compiled with MongooseIM's own
#    headers (mongoose_config_spec.hrl) and calls MongooseIM's modules;
# 3. copies the engine (OTP application global_distrib, without the facade,
#    plus the Rust workspace that builds its NIF) to _checkouts/global_distrib,
#    declares it in rebar.config's deps and in mongooseim.app.src's
#    applications, so `make rel` builds the NIF with cargo and ships it.
#
# The operator's TOML stays as it is. Run it again after updating this
# repository: it replaces what it copied before. docs/MONGOOSEIM.md has the
# whole procedure, the migration and what differs from MongooseIM's module.
set -euo pipefail

usage() { echo "usage: $0 MIM_CHECKOUT" >&2; exit 2; }
[ $# -eq 1 ] || usage
HERE="$(cd "$(dirname "$0")/.." && pwd)"
MIM="$(cd "$1" && pwd)" || usage

fail() { echo "mongooseim-integrate: $*" >&2; exit 1; }
[ -f "$MIM/rebar.config" ] && [ -f "$MIM/src/mongooseim.app.src" ] \
    || fail "$MIM is not a MongooseIM checkout (no rebar.config or src/mongooseim.app.src)"
[ -f "$MIM/include/mongoose_config_spec.hrl" ] \
    || fail "$MIM has no include/mongoose_config_spec.hrl: MongooseIM 6.x is needed"
grep -q 'mod_global_distrib' "$MIM/src/config/mongoose_config_spec.erl" \
    || fail "$MIM's config spec does not list mod_global_distrib: not a MongooseIM 6.x tree"

MARK="$MIM/src/global_distrib/.global_distrib"

# 1. MongooseIM's own modules.
if [ ! -f "$MARK" ]; then
    echo "removing MongooseIM's global distribution modules"
    rm -f "$MIM"/src/global_distrib/*.erl
    rm -f "$MIM/include/global_distrib_metrics.hrl"
    rm -f "$MIM/test/mod_global_distrib_SUITE.erl"
fi

# 2. The facade, compiled inside MongooseIM.
mkdir -p "$MIM/src/global_distrib"
rm -f "$MIM"/src/global_distrib/*.erl
cp "$HERE/erlang/src/mod_global_distrib.erl" \
   "$HERE/erlang/src/mod_global_distrib_instrument.erl" "$MIM/src/global_distrib/"
echo "global_distrib facade from $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$MARK"

# 3. The engine as a checkout dependency: a plain OTP application whose
#    pre-compile hook builds the NIF.
DEP="$MIM/_checkouts/global_distrib"
rm -rf "$DEP"
mkdir -p "$DEP/src" "$DEP/priv"
for f in "$HERE"/erlang/src/*; do
    case "$(basename "$f")" in
        mod_global_distrib.erl|mod_global_distrib_instrument.erl) ;;
        *) cp "$f" "$DEP/src/" ;;
    esac
done
cp "$HERE/Cargo.toml" "$HERE/Cargo.lock" "$DEP/"
[ -f "$HERE/clippy.toml" ] && cp "$HERE/clippy.toml" "$DEP/"
(cd "$HERE" && tar --exclude='target' --exclude='*/fuzz/corpus' --exclude='*/fuzz/artifacts' \
     -cf - native) | tar -xf - -C "$DEP"
cat > "$DEP/rebar.config" <<'EOF'
%% global_distrib's engine, placed here by scripts/mongooseim-integrate.sh.
%% The NIF is built by cargo before every compile (CARGO_TARGET_DIR honoured).
{erl_opts, [debug_info]}.
{deps, []}.
{pre_hooks, [{compile, "sh -c 'cargo build --release -p global_distrib_nif && mkdir -p priv && cp -f \"${CARGO_TARGET_DIR:-target}/release/libglobal_distrib_nif.so\" priv/global_distrib_nif.so'"}]}.
EOF

# rebar.config: the dependency (its source is the _checkouts copy).
if ! grep -q '{global_distrib,' "$MIM/rebar.config"; then
    awk '
        /^\{deps,/ { in_deps = 1 }
        in_deps && /^ *\[/ && !done {
            print
            print "  %%% Global distribution: global_distrib, from _checkouts/global_distrib"
            print "  {global_distrib, {git, \"https://github.com/global-distrib/global_distrib.git\", {branch, \"main\"}}},"
            done = 1; next
        }
        { print }
    ' "$MIM/rebar.config" > "$MIM/rebar.config.new"
    mv "$MIM/rebar.config.new" "$MIM/rebar.config"
fi
grep -q '{global_distrib,' "$MIM/rebar.config" || fail "could not add the dependency to rebar.config"

# mongooseim.app.src: started before mongooseim, shipped in the release.
if ! grep -q 'global_distrib' "$MIM/src/mongooseim.app.src"; then
    awk '
        /worker_pool/ && !done { sub(/worker_pool/, "worker_pool,\n    global_distrib"); done = 1 }
        { print }
    ' "$MIM/src/mongooseim.app.src" > "$MIM/src/mongooseim.app.src.new"
    mv "$MIM/src/mongooseim.app.src.new" "$MIM/src/mongooseim.app.src"
fi
grep -q 'global_distrib' "$MIM/src/mongooseim.app.src" \
    || fail "could not add global_distrib to src/mongooseim.app.src"

if command -v erl >/dev/null 2>&1; then
    erl -noshell -eval '
        [F] = init:get_plain_arguments(),
        case file:consult(F) of
            {ok, _} -> halt(0);
            {error, E} -> io:format(standard_error, "~s: ~p~n", [F, E]), halt(1)
        end.' -extra "$MIM/rebar.config" || fail "rebar.config no longer parses"
fi

left=$(cd "$MIM" && grep -rlE 'mod_global_distrib_[a-z_]+:' src include rel 2>/dev/null \
           | grep -v '^src/global_distrib/' || true)
echo "done: facade in src/global_distrib/, engine in _checkouts/global_distrib"
if [ -n "$left" ]; then
    echo "files still naming MongooseIM's removed modules (check them):"
    echo "$left" | sed 's/^/  /'
fi
