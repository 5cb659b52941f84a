#!/usr/bin/env bash
# Migration as a workload's client sees it: notice → 503 at the router, notice →
# serving again on the replacement with its checkpoint restored, and what else the
# client saw in between. See tests/bench/migration.py; docs/benchmarks.md
# ("Migration") holds a run.
#
# Usage: scripts/bench-migration.sh [--short]
#   --short   CI mode: the debug binaries of the test build, 2 migrations.
#             Otherwise the release binaries are built and used, 10 migrations.
# Needs .tools/ (scripts/install-test-tools.sh: grpcio).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
case "${1:-}" in
  --short) bin_dir="${CA_BIN_DIR:-$root/target/debug}"; runs=2 ;;
  "") cargo build --release --locked -p computearbitrage -p computearbitrage-agent >&2
      bin_dir="$root/target/release"; runs=10 ;;
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
exec .tools/venv/bin/python tests/bench/migration.py --bin-dir "$bin_dir" --runs "$runs"
