# The two commands a newcomer runs (see README.md): `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: demo test deps-demo deps-test lint unit sim-report bench-forwarder bench-forwarder-edges bench-failover bench-mutants test-clone

# The demo is a test tool, not part of the product: its own binary in the testkit crate,
# which runs the apivip built next to it.
demo: deps-demo
	$(CARGO) build -p apivip -p apivip-testkit --bins
	$(SUDO) target/debug/apivip-demo

test: deps-test lint unit sim-report

deps-demo:
	scripts/install-deps.sh demo

deps-test:
	scripts/install-deps.sh test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The testkit's binaries (apivip-demo, apivip-standin) are built first: the docs' and
# the demo's tests run them from next to apivip.
unit:
	$(CARGO) build -p apivip -p apivip-testkit --bins
	$(CARGO) test --workspace

# The election simulator's figures: 10,800 random schedules, failover and handover times.
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

# `make test` from a fresh clone in a 0700 directory, as a new root user clones into
# their home: a full build, so it is not part of `make test` (netns-tests/harness.rs
# checks there what such a directory changes).
test-clone:
	scripts/test-clone.sh test
