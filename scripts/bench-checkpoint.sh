#!/usr/bin/env bash
# A large checkpoint through the agent, end to end: a checkpoint task packing, hashing
# and uploading $CHECKPOINT_DIR through signed URLs, and its restore on a replacement
# after a notice, against `cp` of the same bytes on the same disk. See
# tests/bench/checkpoint_gib.py; docs/benchmarks.md holds a run.
#
# Usage: scripts/bench-checkpoint.sh [--short]
#   --short   CI mode: the debug binaries of the test build, 64 MiB.
#             Otherwise the release binaries are built and used, 1 GiB.
# Needs .tools/ (scripts/install-test-tools.sh: grpcio).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
case "${1:-}" in
  --short) bin_dir="${CA_BIN_DIR:-$root/target/debug}"; mib=64 ;;
  "") cargo build --release --locked -p computearbitrage -p computearbitrage-agent >&2
      bin_dir="$root/target/release"; mib=1024 ;;
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
exec .tools/venv/bin/python tests/bench/checkpoint_gib.py --bin-dir "$bin_dir" --mib "$mib"
