# The two commands a newcomer runs (see README.md): `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: demo test deps-demo deps-test lint unit bench-forwarder bench-failover

demo: deps-demo
	$(CARGO) build --bin apivip
	$(SUDO) target/debug/apivip demo

test: deps-test lint unit

deps-demo:
	scripts/install-deps.sh demo

deps-test:
	scripts/install-deps.sh test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

bench-forwarder:
	bench/forwarder

bench-failover:
	bench/failover
