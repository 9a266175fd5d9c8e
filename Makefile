# The audience engine. `make run` for the demo, `make test` for the whole suite.
# Everything builds with the release profile into one shared target directory, so RocksDB and
# librdkafka (20 minutes on 2 cores) compile once per machine.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/audience-engine/target
BIN := $(CARGO_TARGET_DIR)/release
CARGO := cargo

.PHONY: setup build run test lint fmt bench clean

setup: ## Install the system packages and the test broker (idempotent)
	./scripts/setup.sh

build: setup
	$(CARGO) build --release --locked --workspace --bins

run: build ## Start an engine on the embedded broker, load deploy/audiences, feed sample events
	./scripts/run-demo.sh

test: build ## The whole suite, end-to-end tests against a real broker (tansu)
	$(CARGO) test --release --locked --workspace -- --test-threads=2

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: build ## Throughput and latency through the real broker (prints figures)
	$(BIN)/audience-cpu-bench
	$(BIN)/audience-backfill-bench
	$(BIN)/audience-bench

clean:
	rm -rf .data
