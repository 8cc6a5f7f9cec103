#!/usr/bin/env bash
# Runs Weir's fuzz targets (cargo fuzz, libFuzzer with AddressSanitizer and its leak check).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 30 s each, every target
#
# Targets are in fuzz/fuzz_targets; seeds in fuzz/corpus/<target> (in the repo). What
# libFuzzer finds grows a working corpus in $WEIR_CACHE/fuzz-corpus/<target>, never the
# repo. A crash, hang (-timeout, 10 s per input) or leak fails the run, and the input that
# caused it is left in $WEIR_CACHE/fuzz-artifacts/<target>/ for `cargo fuzz run T FILE`.
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`); prints why and exits 3
# when either is missing, so that scripts/test.sh can tell "not available" from "failed".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
repo="$(dirname "$here")"
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(avro_decode json_event definition envelope)
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 3
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 3
fi
# A target dir of its own: sanitizer flags would otherwise rebuild the main one.
export CARGO_TARGET_DIR="$WEIR_CACHE/fuzz-target"
cd "$repo/fuzz"
echo "== cargo fuzz build (log: $WEIR_CACHE/fuzz-build.log)"
if ! cargo +nightly fuzz build -O >"$WEIR_CACHE/fuzz-build.log" 2>&1; then
    tail -n 40 "$WEIR_CACHE/fuzz-build.log" >&2
    exit 1
fi
for t in "${targets[@]}"; do
    work="$WEIR_CACHE/fuzz-corpus/$t"
    artifacts="$WEIR_CACHE/fuzz-artifacts/$t"
    mkdir -p "$work" "$artifacts"
    echo "== fuzz $t for ${seconds}s"
    log="$WEIR_CACHE/fuzz-$t.log"
    if ! cargo +nightly fuzz run -O "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz.sh: $t found a problem; the input is in $artifacts/" >&2
        exit 1
    fi
    grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|cov:" "$log" | tail -n 2
done
