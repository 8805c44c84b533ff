#!/usr/bin/env bash
# Fuzzes kib's input parsers with cargo-fuzz (libFuzzer): the manifest loader, `${var}`
# expansion and the partition-table reader (targets in fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    # default: 60 seconds for each of every target
#
# KIB_FUZZ_BUILD_ONLY=1 stops after the build.
#
# Installs cargo-fuzz if it is missing (`cargo install cargo-fuzz --locked`, about 3 minutes
# cold), builds the targets once (with debug assertions and overflow checks, and AddressSanitizer
# unless KIB_FUZZ_SANITIZER=none), then runs each for SECONDS from its committed seeds
# (fuzz/corpus/<target>/) plus what earlier runs found (fuzz/work-corpus/<target>/, not
# committed). A panic, an input that takes more than 10 s, or a single allocation above 512 MiB
# is a crash: the script then names the input libFuzzer saved under fuzz/artifacts/<target>/,
# finishes the other targets, and exits 1.
#
# The first build compiles kib and all its dependencies with fuzzing instrumentation (about 8 min
# of CPU); KIB_FUZZ_TARGET_DIR keeps that build somewhere lasting (scripts/test.sh uses
# /var/cache/kib/fuzz-target) so later runs only rebuild kib.
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module, ...); the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, which is set for the fuzz build only.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$PATH:$HOME/.cargo/bin:/root/.cargo/bin"

seconds=${1:-60}
[ $# -gt 0 ] && shift
all=(manifest vars partition)
targets=("${@:-${all[@]}}")
sanitizer=${KIB_FUZZ_SANITIZER:-address}
case $seconds in '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a number, got '$seconds'" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    start=$(date +%s)
    cargo install cargo-fuzz --locked
    echo "fuzz.sh: cargo-fuzz installed in $(( $(date +%s) - start ))s" >&2
fi

# The committed fuzz/Cargo.lock must be current (cargo fuzz has no --locked of its own).
cargo metadata --locked --format-version 1 >/dev/null

export RUSTC_BOOTSTRAP=1
build=(-a -s "$sanitizer")
if [ -n "${KIB_FUZZ_TARGET_DIR:-}" ]; then
    mkdir -p "$KIB_FUZZ_TARGET_DIR"
    build+=(--target-dir "$KIB_FUZZ_TARGET_DIR")
fi
start=$(date +%s)
cargo fuzz build "${build[@]}" >&2 # every target: they share the instrumented kib
echo "fuzz.sh: targets built in $(( $(date +%s) - start ))s" >&2
# KIB_FUZZ_BUILD_ONLY=1: only build (scripts/test.sh builds beside the tests, then runs).
[ -n "${KIB_FUZZ_BUILD_ONLY:-}" ] && exit 0

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "work-corpus/$t" "artifacts/$t"
    log=$(mktemp)
    set +e
    cargo fuzz run "${build[@]}" "$t" "work-corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=512 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
    corpus=$(find "work-corpus/$t" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        summary+=("$t: ok, ${execs:-?} inputs in ${seconds}s (${rate:-?}/s), peak RSS ${rss:-?} MB, work corpus $corpus")
    else
        artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|==[0-9]+==' "$log" | head -n 20 >&2 || true
        summary+=("$t: CRASH (exit $rc) after ${execs:-?} inputs; input saved as fuzz/${artifact:-artifacts/$t/}; reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -a $t ${artifact:-artifacts/$t/crash-...})")
        failed+=("$t")
    fi
    rm -f "$log"
done

printf 'fuzz.sh: %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
