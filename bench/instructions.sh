#!/usr/bin/env bash
# Instructions per proxied chat request (callgrind) for nginx, the bare forwarder and llmux at
# --log info and --log warn, as a table. Reproducible whatever else the machine is doing.
# Options go to bench/instructions.py (--requests N, --connections C, --targets, --profile, --keep DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --profile profiling --bin llmux --example mock_upstream --example bench_client --example forwarder
exec python3 bench/instructions.py "$@"
