# onceflow — the README's two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CONFIG ?= deploy/local/onceflow.toml
STACK  := deploy/local/stack
BIN    := target/debug/onceflow
SANDBOX := target/debug/onceflow-sandbox
export ONCEFLOW_CONFIG := $(CONFIG)
# Development secrets only (deploy/local/onceflow.toml reads them from here): the demo sender's
# HMAC secret, the provider sandboxes' API key, the outgoing webhooks' signing secret.
export ONCEFLOW_SOURCE_DEMO_SECRET ?= demo-secret
export ONCEFLOW_SANDBOX_API_KEY ?= sandbox-key
export ONCEFLOW_WEBHOOK_SECRET ?= whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==
export ONCEFLOW_SANDBOX_WEBHOOK_SECRET ?= $(ONCEFLOW_WEBHOOK_SECRET)
export ONCEFLOW_CONSOLE_TOKEN ?= dev-console-token

.PHONY: demo test build lint stack-up stack-down stack-status fuzz

# Seconds per fuzz target: `make test` runs each briefly, `make fuzz` longer (fuzz/README.md).
FUZZ_SHORT_SECONDS ?= 5
FUZZ_SECONDS ?= 60

## demo: start the local stack, create the topics, run the pipeline on sample events.
demo: stack-up build
	@echo "== topics"
	$(BIN) topics create
	@echo "== transactional round trip"
	$(BIN) demo round-trip
	@echo "== provider sandboxes on 127.0.0.1:8700 (logs in target/demo-sandbox.log)"
	@$(SANDBOX) --listen 127.0.0.1:8700 > /dev/null 2> target/demo-sandbox.log & sandbox=$$!; \
	$(BIN) --log-format json ingest 2> target/demo-ingest.log & ingest=$$!; \
	trap 'kill $$ingest $$sandbox 2>/dev/null; wait $$ingest $$sandbox 2>/dev/null' EXIT; \
	echo "== ingest: signed sample webhooks (logs in target/demo-ingest.log)"; \
	$(BIN) demo webhooks; \
	echo "== processors (logs in target/demo-processors.log)"; \
	$(BIN) --log-format json demo processors 2> target/demo-processors.log; \
	echo "== dispatchers (logs in target/demo-dispatchers.log)"; \
	$(BIN) --log-format json demo dispatchers 2> target/demo-dispatchers.log; \
	echo "== what the providers did"; \
	$(BIN) demo providers; \
	echo "== operator console: run 'make console', open http://127.0.0.1:8090 and log in with the token $$ONCEFLOW_CONSOLE_TOKEN"

## test: start the local stack (if down) and run every test, then each fuzz target for
## FUZZ_SHORT_SECONDS (fuzz/run); prints the total at the end.
test: stack-up
	@mkdir -p target
	@status=0; cargo test --locked --workspace --no-fail-fast 2>&1 | tee target/test.log || status=$$?; \
	FUZZ_SECONDS=$(FUZZ_SHORT_SECONDS) fuzz/run 2>&1 | tee target/fuzz.log || status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6; i += $$8 } \
	     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' target/test.log; \
	exit $$status

build:
	cargo build --locked --workspace

## lint: formatting and clippy, as CI runs them.
lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	@# unsafe code is denied everywhere but in the allocator's options (Cargo.toml, [workspace.lints]).
	@! grep -rln --include='*.rs' 'allow(unsafe_code)' src sandbox tests benches fuzz 2>/dev/null \
	  | grep -vx 'src/allocator.rs' || { echo 'lint: unsafe code allowed outside src/allocator.rs'; exit 1; }

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

## bench-ingest: start the local stack (if down), then benchmark the HTTP intake against the bare
## producer (bench/README.md). Not part of `make test`.
.PHONY: bench-ingest
bench-ingest: stack-up
	cargo bench --locked --bench ingest

## console: the operator console on http://127.0.0.1:8090 (token: $ONCEFLOW_CONSOLE_TOKEN) until Ctrl-C.
.PHONY: console
console: stack-up build
	$(BIN) console

## bench-delivery: webhook → provider effect latency at 500/1000/2000 events/s (open loop) and
## dispatcher commands/s against a 50 ms provider (bench/DELIVERY.md). Not part of `make test`.
.PHONY: bench-delivery
bench-delivery: stack-up
	cargo bench --locked --bench delivery

## bench-dedupe: the dedupe store's bytes a key at 1 M and 10 M keys (against the layout it had
## before) and its restore rate from a changelog (against a bare consumer); bench/DEDUPE.md.
.PHONY: bench-dedupe
bench-dedupe: stack-up
	cargo bench --locked --bench dedupe

## bench-processor: records/s of the processor (exactly-once) vs. the same loop at-least-once,
## Kafka Streams EOS v2 (pass-through, and with the processor's Avro + dedupe work) and Kafka's
## TransactionalMessageCopier (bench/PROCESSOR.md).
.PHONY: bench-processor
bench-processor:
	bench/processor

## fuzz: every fuzz target for FUZZ_SECONDS (default 60) each, from the committed seeds and what
## earlier runs kept (fuzz/README.md). Needs no stack.
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run

## chaos: the long chaos run (README "Chaos"): CHAOS_EVENTS (default 1000000) signed webhooks at
## CHAOS_RATE/s through the release binaries on the three-broker cluster under broker, registry
## and stage faults; prints the fault schedule and the figures, fails on any loss or duplicate.
## Stops the cluster at the end. Not part of `make test` (tests/chaos.rs is the short version).
.PHONY: chaos
chaos: stack-up
	nice -n 10 cargo bench --locked --bench chaos
