#!/usr/bin/env bash
# Runs a command and prints the peak resident set size of that process itself (VmHWM from
# /proc/PID/status, read every 50 ms until it exits), in KiB, on standard error as
# `peak-rss: N KiB`. /usr/bin/time -v reports the largest of the process and its children
# (apt, dpkg, qemu-img run by kib), which is not kib's own.
#   scripts/lib/peak-rss.sh COMMAND [ARG...]
set -u
"$@" &
pid=$!
peak=0
while kill -0 "$pid" 2>/dev/null; do
  hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null)
  [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ] && peak=$hwm
  sleep 0.05
done
wait "$pid"
rc=$?
echo "peak-rss: $peak KiB" >&2
exit "$rc"
