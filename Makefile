# The README's two commands are `make demo` and `make test`; both install
# what is missing through scripts/setup.sh first.

CARGO ?= cargo
export RUST_BACKTRACE ?= 1

.PHONY: all setup build test check fmt-check clippy cargo-test c-test erlang-test mongooseim-check demo bench bench-smoke clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace

## Everything: formatting, lints, Rust tests, the C ABI (header check, C
## tests, valgrind), the Erlang binding (Common Test, dialyzer, xref).
test: setup fmt-check clippy cargo-test c-test erlang-test mongooseim-check bench-smoke
	@echo "make test: all checks passed"

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cargo-test:
	$(CARGO) test --workspace

c-test:
	$(MAKE) -C tests/c

erlang-test:
	rebar3 ct
	rebar3 dialyzer
	rebar3 xref

## scripts/mongooseim-integrate.sh on a copy of MIM_CHECKOUT (a MongooseIM
## 6.x source tree); says it skipped when MIM_CHECKOUT is not set.
mongooseim-check:
	bash tests/mongooseim_integrate_check.sh

## Benchmarks (release build): one table, bench/results/latest.json.
## The smoke run keeps every bench compiling and running (part of test).
## rebar3 compile builds the NIF (release) and the app the Erlang benches load.
bench: setup
	rebar3 compile
	$(CARGO) run --release -p gd_bench

bench-smoke: setup
	rebar3 compile
	$(CARGO) run --release -p gd_bench -- --smoke --out bench/results/smoke.json

## The multi-datacenter demo.
## With GD_DEMO_REDIS=redis://host:port the DCs are separate Erlang nodes
## driving the runtime through the Erlang API, sharing that Redis.
demo: setup
ifdef GD_DEMO_REDIS
	rebar3 compile
	escript scripts/demo_nodes.escript $(GD_DEMO_REDIS)
else
	$(CARGO) run --release -p global_distrib_core --example demo
endif

clean:
	$(CARGO) clean
