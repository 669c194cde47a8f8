#!/usr/bin/env bash
# Benchmark llmux against a direct connection and nginx in one run. `--quick` takes about a minute.
# Installs what it needs (nginx, wrk) through apt, builds release, then runs bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bin llmux --example mock_upstream --example bench_client --example forwarder
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/run.py "$@"
