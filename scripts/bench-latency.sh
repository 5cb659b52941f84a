#!/usr/bin/env bash
# Per-call latency as real clients see it, on loopback: a grpcio client against the
# service, and real Terraform plans (wall time of an empty plan against a plan with one
# data source, and each provider call's time from a TF_LOG=trace run). See
# tests/bench/latency.py; docs/benchmarks.md ("Call latency") holds a run.
#
# Usage: scripts/bench-latency.sh [--short] [--strict]
#   --short   CI mode: the debug binaries of the test build, 200 calls, 3 plans.
#             Otherwise the release binaries are built and used, 500 calls, 10 plans.
#   --strict  exit 1 when a target is missed.
# Needs .tools/ (scripts/install-test-tools.sh: Terraform, grpcio).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
short=0
args=()
for arg in "$@"; do
  case "$arg" in
    --short) short=1 ;;
    --strict) args+=(--strict) ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$short" = 1 ]; then
  bin_dir="${CA_BIN_DIR:-$root/target/debug}"
  args+=(--calls 200 --plans 3)
else
  cargo build --release --locked -p computearbitrage -p terraform-provider-computearbitrage >&2
  bin_dir="$root/target/release"
fi
export CHECKPOINT_DISABLE=1
exec .tools/venv/bin/python tests/bench/latency.py --bin-dir "$bin_dir" "${args[@]}"
