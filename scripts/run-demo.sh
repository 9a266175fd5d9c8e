#!/usr/bin/env bash
# `make run`: an engine on the embedded broker, the example audiences, sample events, and the
# deltas as they happen. Ctrl-C stops both.
set -euo pipefail
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/audience-engine/target}/release"
mkdir -p .data
# The embedded broker starts empty every time, so the state that recorded positions in the
# previous one's topics starts empty too (state and log positions belong together).
rm -rf .data/dev-engine
"$BIN/audience-engine" --config deploy/engine.dev.toml > .data/engine.log 2>&1 &
engine=$!
trap 'kill -TERM $engine 2>/dev/null; wait $engine 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do
  "$BIN/audiencectl" status >/dev/null 2>&1 && break
  kill -0 $engine 2>/dev/null || { cat .data/engine.log; exit 1; }
  sleep 0.2
done
echo "engine up (log: .data/engine.log); gRPC on 127.0.0.1:50051, metrics on http://127.0.0.1:9898/metrics"
# Said here, not only in the log: the demo runs without tokens.
if grep -q "auth.allow_unauthenticated" .data/engine.log; then
  echo "authentication is off (auth.allow_unauthenticated in deploy/engine.dev.toml): every process"
  echo "of this machine may call the API, which the engine binds to loopback only"
fi
"$BIN/audiencectl" demo --audiences deploy/audiences --seconds "${DEMO_SECONDS:-0}"
echo
"$BIN/audiencectl" audience list
