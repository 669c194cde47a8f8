#!/usr/bin/env bash
# Scaling curves (bench/curves.py): models, streams, bodies, pool, keys, workers, or all. `--quick` for a
# shorter run. Installs valgrind, nginx and wrk through apt when missing, builds the profiling build.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --profile profiling --bin llmux --example mock_upstream --example bench_client --example forwarder
# 10,000 streams hold 20,000 sockets in llmux and 10,000 in the client and the mock.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/curves.py "$@"
