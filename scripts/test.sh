#!/usr/bin/env bash
# Runs every test of the project. Installs the test tools it needs on the way (into
# .tools/: Terraform and pytest from PyPI, cargo-fuzz from crates.io; wrk, nginx and
# haproxy with apt-get), so it works on a fresh clone of a machine with cargo, python3
# and a C++ compiler.
#
#   1. Rust: unit and integration tests of every crate, and the benchmarks in test
#      mode (each benchmark runs once, as a smoke test).
#   2. The router benchmark in short mode (wrk, nginx and haproxy from Debian packages,
#      installed by the script), the call-latency benchmark in short mode (grpcio and
#      Terraform against the debug build), the migration benchmark and the moves-under-
#      load benchmark (wrk during a rebalance and a migration) and the large-checkpoint
#      benchmark in short mode, and 30 s runs of each fuzz target.
#   3. Acceptance: real Terraform 1.15.5 and 1.0.3 against the built provider and a
#      real service (tests/acceptance, pytest).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export RUST_LIB_BACKTRACE=0
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Tests that kill -9 a service can leave an instance's network namespace behind (the
# driver removes it when the instance ends, or at its next start); at the end, remove
# the ones of ours that no process uses any more.
sweep_namespaces() {
  command -v ip >/dev/null && [ "$(id -u)" = 0 ] || return 0
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^ca-local-/ {print $1}'); do
    [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && ip netns del "$ns" 2>/dev/null || true
  done
}
trap sweep_namespaces EXIT

echo "== installing test tools"
./scripts/install-test-tools.sh

echo "== building"
cargo build --workspace --bins --locked

echo "== rust tests"
cargo test --workspace --locked --all-targets

echo "== router benchmark, short mode (numbers are reported, not asserted)"
./scripts/bench-router.sh --short

echo "== call-latency benchmark, short mode (numbers are reported, not asserted)"
./scripts/bench-latency.sh --short

echo "== migration benchmark, short mode (numbers are reported, not asserted)"
./scripts/bench-migration.sh --short

echo "== moves under load, short mode (numbers are reported, not asserted)"
./scripts/bench-moves.sh --short

echo "== large checkpoint through the agent, short mode (numbers are reported, not asserted)"
./scripts/bench-checkpoint.sh --short

echo "== fuzzing the router's request parsing"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" ./scripts/fuzz.sh

echo "== acceptance tests (real Terraform)"
.tools/venv/bin/python -m pytest tests/acceptance -q -p no:cacheprovider "$@"
