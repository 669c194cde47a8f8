#!/usr/bin/env bash
# Admission benchmark: llmux with 100,000 client keys and minute limits vs without access control.
# `--quick` takes about half a minute. Installs wrk through apt when missing, builds release.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bin llmux --example mock_upstream
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/access.py "$@"
