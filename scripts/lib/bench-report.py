#!/usr/bin/env python3
"""Prints `scripts/bench.sh compare`'s table from hyperfine's JSON exports and kib's records.

  bench-report.py compare.json disk-sizes.json bom.json time.txt [conversions.txt]

Medians of the runs; each figure as a ratio to the hand-written baseline; kib's overhead as its
wall time minus the baseline's; each phase's share of kib's wall time (bom.json's phase_seconds
of the last run); kib's peak RSS (/usr/bin/time -v); wall time by disk size at the same data.
"""
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    compare, sizes, bom, timev = sys.argv[1:5]
    rows = {r["command"]: r for r in load(compare)["results"]}
    med = {name: statistics.median(r["times"]) for name, r in rows.items()}
    base = med.get("baseline")
    cpus = os.cpu_count()
    mem = ""
    with open("/proc/meminfo") as f:
        kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
        mem = f"{kb / 1024 / 1024:.0f} GiB RAM"
    print(f"machine: {cpus}-core VM, {mem}, {os.uname().release}")
    print(f"runs per command: {len(next(iter(rows.values()))['times'])} (median shown)\n")
    print(f"| {'build (same base image, node manifest, qcow2)':<48} | {'median':>8} | {'÷ baseline':>10} | {'− baseline':>10} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 12}|{'-' * 12}|")
    for name, m in med.items():
        ratio = f"{m / base:.2f}" if base else "-"
        over = f"{m - base:+.1f} s" if base else "-"
        print(f"| {name:<48} | {m:>6.1f} s | {ratio:>10} | {over:>10} |")
    b = load(bom)
    ph = b.get("phase_seconds", {})
    total = sum(ph.values())
    if total:
        shares = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in ph.items())
        print(f"\nkib's phases (the RSS run, package cache warm): {shares}")
    with open(timev) as f:
        t = f.read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
    own = re.search(r"peak-rss: (\d+) KiB", t)
    if own:
        kib = int(own.group(1))
        print(f"kib's peak RSS: {kib / 1024:.0f} MiB itself (VmHWM); {rss / 1024:.0f} MiB for the largest of kib and the tools it runs (/usr/bin/time -v)")
    else:
        print(f"peak RSS (/usr/bin/time -v, kib or a tool it runs): {rss / 1024:.0f} MiB")
    print("\nwall time by disk size (same data):")
    for r in load(sizes)["results"]:
        print(f"  {r['command']}: {statistics.median(r['times']):.1f} s (median of {len(r['times'])})")


if __name__ == "__main__":
    main()
