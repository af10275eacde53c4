#!/usr/bin/env bash
# Installs what the project needs on a fresh machine, only what is missing.
# Shared by `make demo`, `make test` and `.ci/run`; safe to run repeatedly.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

have redis-server || need_apt+=(redis-server)
have nutcracker   || need_apt+=(nutcracker)
have erl          || need_apt+=(erlang-nox)
[ -d /usr/lib/erlang/usr/include ] || need_apt+=(erlang-dev)
[ -n "$(ls -d /usr/lib/erlang/lib/common_test-* 2>/dev/null)" ] || need_apt+=(erlang-common-test)
[ -n "$(ls -d /usr/lib/erlang/lib/dialyzer-* 2>/dev/null)" ] || need_apt+=(erlang-dialyzer)
have rebar3       || need_apt+=(rebar3)
have cc           || need_apt+=(build-essential)
have valgrind     || need_apt+=(valgrind)
have openssl      || need_apt+=(openssl)

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! have cargo; then
    echo "setup: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true
exit 0
