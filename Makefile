# The audience engine. `make run` for the demo, `make test` for the whole suite.
# Everything builds with the release profile into one shared target directory, so RocksDB and
# librdkafka (20 minutes on 2 cores) compile once per machine.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/audience-engine/target
BIN := $(CARGO_TARGET_DIR)/release
CARGO := cargo

.PHONY: setup build run test lint fmt bench clean prune deploy-check

setup: ## Install the system packages and the test broker (idempotent)
	./scripts/setup.sh

build: setup
	$(CARGO) build --release --locked --workspace --bins

run: build ## Start an engine on the embedded broker, load deploy/audiences, feed sample events
	./scripts/run-demo.sh

test: build prune ## The whole suite, end-to-end tests against a real broker (tansu)
	$(CARGO) test --release --locked --workspace -- --test-threads=2

# Every rebuilt test binary leaves its predecessor (hundreds of MB with debug info) in deps:
# keep the newest two of each name (two crates may have a test of one name), so the shared
# target directory does not fill the disk.
prune:
	@cd $(BIN)/deps 2>/dev/null && ls -t | grep -E '^[A-Za-z0-9_]+-[0-9a-f]{16}$$' \
		| awk '{ name = $$0; sub(/-[0-9a-f]+$$/, "", name); if (seen[name]++ >= 2) print }' \
		| xargs -r rm -f; true

lint: setup deploy-check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

# The deployment files against their schemas: Kubernetes' (kubernetes-validate, strict) and the
# compose specification's (check-jsonschema), from PyPI into a venv beside the target directory.
DEPLOY_VENV := $(dir $(CARGO_TARGET_DIR))deploy-venv
deploy-check: ## Validate deploy/k8s and deploy/docker-compose.yml against their schemas
	@test -x $(DEPLOY_VENV)/bin/kubernetes-validate || { python3 -m venv $(DEPLOY_VENV) \
		&& $(DEPLOY_VENV)/bin/pip install -q kubernetes-validate==1.37.0 check-jsonschema==0.39.0; }
	$(DEPLOY_VENV)/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
	$(DEPLOY_VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml

fmt:
	$(CARGO) fmt --all

bench: build ## Throughput and latency through the real broker (prints figures)
	$(BIN)/audience-cpu-bench
	$(BIN)/audience-backfill-bench
	$(BIN)/audience-bench
	$(BIN)/audience-steady-bench
	$(BIN)/audience-latency-bench
	$(BIN)/audience-failover-bench

clean:
	rm -rf .data
