#!/usr/bin/env bash
# run-tests.sh: runs kib's test binaries (the unit tests and each tests/*.rs), KIB_TEST_JOBS
# (default 2) binaries at a time, longest first, each with cargo test's own harness and threads.
# Used by scripts/test.sh; takes the arguments of `cargo test` that select the build (not test
# filters), builds with `--no-run`, and runs what cargo lists.
#
# Why not `cargo test`: it runs one binary at a time, so a binary with one long test (the TCG
# boot in tests/build.rs, the qemu-user build in tests/arm64.rs) leaves the second core idle for
# minutes. The tests are written to run beside each other: each uses its own temp and work
# folders, and checks only its own loop devices and mounts (tests/common's leftovers).
# Why not cargo-nextest: it runs every test in its own process, which would repeat the builds
# that tests in one binary share (tests/container.rs's OnceLock) and break the locks tests take
# inside a binary (tests/arm64.rs's binfmt lock).
#
# Each binary's output goes to target/test-logs/<name>.log and is printed whole when it ends,
# with its wall time. Durations are kept in /var/cache/kib/test-times.txt (or
# $KIB_TEST_TIMES) to order the next run; scripts/lib/test-times.txt has the figures of a cold
# run for a machine without them; a binary with no time at all starts first. Every
# binary runs even when one fails (cargo test's --no-fail-fast); the exit status is 101 if any
# failed, as cargo's.
set -euo pipefail

jobs=${KIB_TEST_JOBS:-2}
times=${KIB_TEST_TIMES:-/var/cache/kib/test-times.txt}
logs=target/test-logs
mkdir -p "$logs" "$(dirname "$times")"
touch "$times"

# name<TAB>executable<TAB>source, for every test binary of the build.
list=$(cargo test "$@" --no-run --message-format=json 2>target/test-list.log | python3 -c '
import json, sys, os
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test") or not m.get("executable"):
        continue
    t = m["target"]
    name = t["name"] if "test" in t["kind"] else "unit-" + t["name"]
    print("%s\t%s\t%s" % (name, m["executable"], os.path.relpath(t["src_path"])))
') || list=""
[ -n "$list" ] || { tail -n 40 target/test-list.log >&2; echo "run-tests.sh: cargo listed no test binaries (its log: target/test-list.log)" >&2; exit 1; }

# Longest first, by the recorded times, else the figures shipped beside this script, else first
# of all (a new binary).
defaults="$(dirname "${BASH_SOURCE[0]}")/test-times.txt"
order=$(while IFS=$'\t' read -r name exe src; do
    t=$(awk -v n="$name" '$1 == n { print $2 }' "$times" | tail -n 1)
    [ -n "$t" ] || t=$(awk -v n="$name" '$1 == n { print $2 }' "$defaults" | tail -n 1)
    printf '%s\t%s\t%s\t%s\n' "${t:-999999}" "$name" "$exe" "$src"
done <<<"$list" | sort -t $'\t' -k1,1nr)

pids=()
declare -A started name_of src_of
failed=()
new_times=$(mktemp)
trap 'rm -f "$new_times"; for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done' EXIT

finish() { # PID STATUS
    local pid=$1 rc=$2 name=${name_of[$1]} secs=$(( $(date +%s) - ${started[$1]} ))
    printf '\n     Running %s (%s)\n' "${src_of[$1]}" "$name"
    cat "$logs/$name.log"
    if [ "$rc" -eq 0 ]; then
        printf 'run-tests.sh: %s passed in %d s\n' "$name" "$secs"
    else
        printf 'run-tests.sh: %s FAILED (exit %d) in %d s\n' "$name" "$rc" "$secs"
        failed+=("$name")
    fi
    printf '%s %d\n' "$name" "$secs" >>"$new_times"
}

wait_one() {
    local rc=0 done_pid=""
    wait -n -p done_pid "${pids[@]}" || rc=$?
    finish "$done_pid" "$rc"
    local keep=() p
    for p in "${pids[@]}"; do [ "$p" = "$done_pid" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

t0=$(date +%s)
while IFS=$'\t' read -r _ name exe src; do
    while [ "${#pids[@]}" -ge "$jobs" ]; do wait_one; done
    setsid -w "$exe" >"$logs/$name.log" 2>&1 </dev/null &
    pid=$!
    pids+=("$pid")
    started[$pid]=$(date +%s)
    name_of[$pid]=$name
    src_of[$pid]=$src
done <<<"$order"
while [ "${#pids[@]}" -gt 0 ]; do wait_one; done

# Keep the newest time of each binary.
cat "$times" "$new_times" | awk '{ t[$1] = $2 } END { for (n in t) print n, t[n] }' | sort >"$times.new"
mv -f "$times.new" "$times"
printf '\nrun-tests.sh: %d test binaries, %d at a time, in %d s\n' "$(wc -l <<<"$order")" "$jobs" "$(( $(date +%s) - t0 ))"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-tests.sh: failed: ${failed[*]}" >&2
    exit 101
fi
