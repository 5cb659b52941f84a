#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input for a while, each target in turn, and fails if
# one finds a crash or a broken invariant:
#   parse_request  Host, X-Workload-Id, /w/{id}/, bearer and ?token= credentials,
#                  traceparent (fuzz/fuzz_targets/parse_request.rs)
#   fast_head      the fast path's request and response heads as forwarded
#                  (fuzz/fuzz_targets/fast_head.rs)
#   response_framing  a backend's response head and chunked body framing as the
#                  fast path relays it (fuzz/fuzz_targets/response_framing.rs)
#   spot_advisor   the AWS Spot Instance Advisor feed parser
#                  (fuzz/fuzz_targets/spot_advisor.rs)
#   storage_url    signed storage URLs and storage keys as the service receives them
#                  (fuzz/fuzz_targets/storage_url.rs)
#   cloud_notices  the agent's parsers of AWS, GCP and Azure interruption notices
#                  (fuzz/fuzz_targets/cloud_notices.rs)
#   checkpoint_manifest  the agent's check of a checkpoint manifest before restoring
#                  (fuzz/fuzz_targets/checkpoint_manifest.rs)
#
#   scripts/fuzz.sh [SECONDS [TARGET...]]   # SECONDS per target: $FUZZ_SECONDS, else 30
#
# Installs cargo-fuzz into .tools/cargo on the first run; works with stable Rust (see
# FUZZ_SANITIZER below). The first build takes a few minutes. Each corpus grows in
# fuzz/corpus/<target> (git-ignored), starting from fuzz/seeds/<target>; a crashing
# input is saved in fuzz/artifacts/<target> and printed in hex.
# FUZZ_VERBOSE=1 shows every libFuzzer line (new coverage, pulses). FUZZ_SANITIZER
# picks a cargo-fuzz sanitizer (default: none).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

seconds="${1:-${FUZZ_SECONDS:-30}}"
targets=("${@:2}")
[ ${#targets[@]} -gt 0 ] || targets=(parse_request fast_head response_framing spot_advisor storage_url cloud_notices checkpoint_manifest)
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS] (a positive whole number; got '$seconds')" >&2
    exit 2
fi
cargo_fuzz_version=0.13.2
tools="$root/.tools/cargo"
export PATH="$tools/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_LIB_BACKTRACE=0

if ! cargo fuzz --version 2>/dev/null | grep -qF " $cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into .tools/cargo"
    cargo install cargo-fuzz --version "=$cargo_fuzz_version" --locked --root "$tools" --quiet
fi

# No sanitizer by default: the parser is safe Rust, so ASan would add nothing but
# slowness, and cargo-fuzz then needs no nightly flags. FUZZ_SANITIZER=address (etc.)
# needs `-Zsanitizer`, which stable rustc only takes with RUSTC_BOOTSTRAP=1.
# Debug assertions (overflow checks) are on.
sanitizer="${FUZZ_SANITIZER:-none}"
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
fuzz_flags=(--sanitizer "$sanitizer" --debug-assertions)

echo "== building fuzz targets ${targets[*]}"
start=$(date +%s)
for target in "${targets[@]}"; do
    CARGO_TERM_QUIET=true cargo fuzz build "${fuzz_flags[@]}" "$target"
done
echo "   built in $(($(date +%s) - start)) s"

fuzz_one() {
    local target="$1"
    local corpus="fuzz/corpus/$target"
    local seeds="fuzz/seeds/$target"
    local artifacts="fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true

    echo "== fuzzing $target for $seconds s"
    # Crash files written from now on are reported below.
    local marker
    marker="$(mktemp)"
    local status=0
    CARGO_TERM_QUIET=true cargo fuzz run "${fuzz_flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>&1 \
        | sed -E "$quiet" || status=$?

    if [ "$status" -ne 0 ]; then
        echo "== FAILED: fuzzing $target exited with $status" >&2
        find "$artifacts" -type f -newer "$marker" | while read -r file; do
            echo "-- $file ($(wc -c <"$file") bytes), hex:" >&2
            od -An -v -tx1 "$file" | tr -d ' \n' >&2
            echo >&2
            echo "   reproduce: PATH=.tools/cargo/bin:\$PATH${RUSTC_BOOTSTRAP:+ RUSTC_BOOTSTRAP=1} cargo fuzz run ${fuzz_flags[*]} $target $file" >&2
        done
        rm -f "$marker"
        exit 1
    fi
    rm -f "$marker"
    echo "== no crash in $seconds s (corpus: $(ls "$corpus" | wc -l) inputs in $corpus)"
}

# Drop libFuzzer's progress lines, its recommended dictionary and the warnings it
# prints without a sanitizer; keep the crash report, the DONE line and the stats.
quiet='/^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)[[:space:]]/d
/^WARNING: Failed to find function "__sanitizer_/d
/^[[:space:]]+NEW_FUNC\[/d
/^###### Recommended dictionary/,/^###### End of recommended dictionary/d'
if [ "${FUZZ_VERBOSE:-0}" = 1 ]; then quiet=''; fi
for target in "${targets[@]}"; do
    fuzz_one "$target"
done
