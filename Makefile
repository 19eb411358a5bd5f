# The two commands a newcomer runs (see README.md): `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: demo test deps-demo deps-test lint unit sim-report bench-forwarder bench-forwarder-edges bench-failover bench-mutants

demo: deps-demo
	$(CARGO) build --bin apivip
	$(SUDO) target/debug/apivip demo

test: deps-test lint unit sim-report

deps-demo:
	scripts/install-deps.sh demo

deps-test:
	scripts/install-deps.sh test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

# The election simulator's figures: 5,400 random schedules, failover and handover times.
sim-report:
	$(CARGO) run -q --release -p apivip-proto --features sim --example sim-report -- 300

bench-forwarder:
	bench/forwarder

bench-forwarder-edges:
	bench/forwarder-edges

bench-failover:
	bench/failover

# Not in `make test`: hours for every mutant on 2 cores (docs/design.md, "Mutation testing").
bench-mutants:
	bench/mutants
