# onceflow — the README's two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CONFIG ?= deploy/local/onceflow.toml
STACK  := deploy/local/stack
BIN    := target/debug/onceflow
export ONCEFLOW_CONFIG := $(CONFIG)
# The demo sender's secret, for development only (deploy/local/onceflow.toml reads it from here).
export ONCEFLOW_SOURCE_DEMO_SECRET ?= demo-secret

.PHONY: demo test build lint stack-up stack-down stack-status

## demo: start the local stack, create the topics, run the pipeline on sample events.
demo: stack-up build
	@echo "== topics"
	$(BIN) topics create
	@echo "== transactional round trip"
	$(BIN) demo round-trip
	@echo "== ingest: signed sample webhooks (logs in target/demo-ingest.log)"
	@$(BIN) --log-format json ingest 2> target/demo-ingest.log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	$(BIN) demo webhooks
	@echo "== processors (logs in target/demo-processors.log)"
	@$(BIN) --log-format json demo processors 2> target/demo-processors.log

## test: start the local stack (if down) and run every test; prints the total at the end.
test: stack-up
	@mkdir -p target
	@status=0; cargo test --locked --no-fail-fast 2>&1 | tee target/test.log || status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6; i += $$8 } \
	     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' target/test.log; \
	exit $$status

build:
	cargo build --locked

## lint: formatting and clippy, as CI runs them.
lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

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

## bench-processor: records/s of the processor (exactly-once) vs. the same loop at-least-once,
## Kafka Streams EOS v2 and Kafka's TransactionalMessageCopier (bench/PROCESSOR.md).
.PHONY: bench-processor
bench-processor:
	bench/processor
