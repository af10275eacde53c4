#!/usr/bin/env bash
# Checks scripts/mongooseim-integrate.sh on a copy of a MongooseIM 6.x
# checkout given as MIM_CHECKOUT (a MongooseIM source tree; nothing is
# fetched). A MongooseIM release needs OTP 27 and hex, which this machine
# lacks, so this checks what can be checked here: the tree the script
# leaves (MongooseIM's modules gone, the facade in place, the dependency
# declared and parseable, the application listed), that the facade compiles
# with MongooseIM's own headers, that the engine application compiles as a
# rebar3 dependency on its own, and that a second run changes nothing.
# Without MIM_CHECKOUT it says it skipped and succeeds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ -z "${MIM_CHECKOUT:-}" ]; then
    echo "mongooseim-integrate check: skipped (set MIM_CHECKOUT to a MongooseIM 6.x source tree)"
    exit 0
fi
fail() { echo "mongooseim-integrate check: FAILED: $*" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MIM="$WORK/mim"
cp -a "$MIM_CHECKOUT" "$MIM"

bash scripts/mongooseim-integrate.sh "$MIM" > "$WORK/run1.log"

# Idempotent: a second run leaves the same tree.
(cd "$WORK" && tar -cf before.tar -C "$MIM" .)
bash scripts/mongooseim-integrate.sh "$MIM" > "$WORK/run2.log"
(cd "$WORK" && tar -cf after.tar -C "$MIM" .)
diff <(tar -tvf "$WORK/before.tar" | awk '{print $3, $6}' | sort) \
     <(tar -tvf "$WORK/after.tar" | awk '{print $3, $6}' | sort) > /dev/null \
    || fail "a second run changed the tree"

facade=$(cd "$MIM/src/global_distrib" && ls ./*.erl | sort | tr '\n' ' ')
[ "$facade" = "./mod_global_distrib.erl ./mod_global_distrib_instrument.erl " ] \
    || fail "src/global_distrib holds: $facade"
[ ! -e "$MIM/include/global_distrib_metrics.hrl" ] || fail "MongooseIM's metrics header is still there"
grep -q '{global_distrib,' "$MIM/rebar.config" || fail "rebar.config lacks the dependency"
grep -q 'global_distrib' "$MIM/src/mongooseim.app.src" || fail "mongooseim.app.src lacks the application"
erl -noshell -eval '
    {ok, Terms} = file:consult("'"$MIM"'/rebar.config"),
    {deps, Deps} = lists:keyfind(deps, 1, Terms),
    true = lists:keymember(global_distrib, 1, Deps),
    {ok, [{application, mongooseim, App}]} = file:consult("'"$MIM"'/src/mongooseim.app.src"),
    true = lists:member(global_distrib, proplists:get_value(applications, App)),
    halt(0).' || fail "rebar.config or mongooseim.app.src does not parse as expected"

# The facade against MongooseIM's own headers (the real mongoose_config_spec.hrl).
mkdir -p "$WORK/beam"
erlc -Werror -I "$MIM/include" -o "$WORK/beam" "$MIM"/src/global_distrib/*.erl \
    || fail "the facade does not compile against $MIM/include"

# The engine as rebar3 compiles a _checkouts dependency.
(cd "$MIM/_checkouts/global_distrib" && CARGO_TARGET_DIR="$ROOT/target" rebar3 compile) \
    > "$WORK/engine.log" 2>&1 || { cat "$WORK/engine.log"; fail "the engine does not compile"; }
[ -f "$MIM/_checkouts/global_distrib/priv/global_distrib_nif.so" ] || fail "no NIF in the engine's priv/"
[ -f "$MIM/_checkouts/global_distrib/_build/default/lib/global_distrib/ebin/global_distrib.app" ] \
    || fail "no global_distrib.app built"

echo "mongooseim-integrate check: passed against $MIM_CHECKOUT"
