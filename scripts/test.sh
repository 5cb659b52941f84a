#!/usr/bin/env bash
# Runs every test of the project. Installs the test tools it needs (.tools/, from
# PyPI) on the way, so it works on a fresh clone of a machine with cargo and python3.
#
#   1. Rust: unit and integration tests of every crate, and the benchmarks in test
#      mode (each benchmark runs once, as a smoke test).
#   2. Acceptance: real Terraform 1.15.5 and 1.0.3 against the built provider and a
#      real service (tests/acceptance, pytest).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export RUST_LIB_BACKTRACE=0
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== installing test tools"
./scripts/install-test-tools.sh

echo "== building"
cargo build --workspace --bins --locked

echo "== rust tests"
cargo test --workspace --locked --all-targets

echo "== acceptance tests (real Terraform)"
.tools/venv/bin/python -m pytest tests/acceptance -q -p no:cacheprovider "$@"
