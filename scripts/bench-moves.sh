#!/usr/bin/env bash
# Moves under load: wrk through the router while a workload rebalances
# (make-before-break: target zero failed requests) and while it migrates after a
# notice (target: only 503 with Retry-After in the gap, no connection errors). See
# tests/bench/moves_under_load.py; docs/benchmarks.md ("Moves under load") holds a run.
#
# Usage: scripts/bench-moves.sh [--short]
#   --short   CI mode: the debug binaries of the test build, 8 s of wrk per move.
#             Otherwise the release binaries are built and used, 20 s per move.
# Needs .tools/ (scripts/install-test-tools.sh: grpcio) and wrk (scripts/bench-router.sh
# installs it; so does this script, with apt-get, when it is missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
case "${1:-}" in
  --short) bin_dir="${CA_BIN_DIR:-$root/target/debug}"; seconds=8 ;;
  "") cargo build --release --locked -p computearbitrage -p computearbitrage-agent >&2
      bin_dir="$root/target/release"; seconds=20 ;;
  -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
if ! command -v wrk >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y -qq wrk >&2
fi
exec .tools/venv/bin/python tests/bench/moves_under_load.py --bin-dir "$bin_dir" --seconds "$seconds"
