# The audience engine. `make run` for the demo, `make test` for the whole suite.
# Everything builds with the release profile into one shared target directory, so RocksDB and
# librdkafka (20 minutes on 2 cores) compile once per machine.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/audience-engine/target
BIN := $(CARGO_TARGET_DIR)/release
CARGO := cargo

.PHONY: setup build run test lint fmt bench chaos fuzz clean prune deploy-check

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

# The chaos matrix against real processes (a broker, the engine binary), one row per scenario
# and a JSON report; CHAOS_SOAK=1 for the long soak, CHAOS_ONLY=poison,... to pick. Then each
# fuzz target for FUZZ_SECONDS.
chaos: build
	CHAOS_REPORT=$${CHAOS_REPORT:-$(CARGO_TARGET_DIR)/chaos-report.json} $(BIN)/audience-chaos; \
	  matrix=$$?; $(MAKE) --no-print-directory fuzz || exit 1; exit $$matrix

# Coverage-guided fuzzing of the decoders (fuzz/): cargo-fuzz and libFuzzer on the stable
# toolchain (RUSTC_BOOTSTRAP lets it pass the coverage flags), with debug assertions so that
# an overflow is a crash. Each target starts from its checked-in corpus (fuzz/corpus/T, read
# only) and keeps what it finds beside the target directory; a crash lands in fuzz/artifacts.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := batch_decode definition cursor
FUZZ_TARGET_DIR := $(dir $(CARGO_TARGET_DIR))fuzz-target
fuzz: setup
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_TARGET_DIR)/corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --debug-assertions \
	    --target-dir $(FUZZ_TARGET_DIR) $$t $(FUZZ_TARGET_DIR)/corpus/$$t corpus/$$t \
	    -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 || exit 1; \
	done

clean:
	rm -rf .data
