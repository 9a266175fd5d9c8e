#!/usr/bin/env bash
# Installs what building and testing need, once: Debian packages for RocksDB (libclang),
# librdkafka (cmake, libcurl, libsasl2, zlib), protoc, and the tansu broker for the tests.
# Fast when everything is there.
set -euo pipefail

packages=(libclang-dev clang protobuf-compiler cmake pkg-config build-essential libssl-dev libsasl2-dev libcurl4-openssl-dev zlib1g-dev liblz4-dev libzstd-dev python3 python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null 2>&1 || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "setup: installing the tansu $TANSU_VERSION broker (about 15 minutes, once per machine)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
