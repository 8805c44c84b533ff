#!/usr/bin/env bash
# Benchmark harness: times whole `kib customize` runs with hyperfine on the cached base image.
#   overhead   testdata/bench/overhead.yaml: kib's own cost (no package installs)
#   node       manifests/k8s-node-debian.yaml: the real job (needs Debian's archive)
#   formats    the overhead manifest with --format qcow2,ova,vhd,gce,raw.zst (conversions in parallel)
#   formats-serial  the same with --convert-jobs 1 (one conversion at a time)
#   node-arm64 manifests/k8s-node-debian.yaml on the arm64 test fixture (testdata/arm64/make-image.sh), under
#              qemu-user: the cost of emulation, to compare with node. The fixture is a minbase tree, not a cloud
#              image: apt also installs the dependencies a cloud image already has, and sysprep has no cloud-init
#              to clean, so this is not the time of the same job on Debian's arm64 cloud image
#   conversions  one node build into the five formats, one conversion at a time, printing each one's
#              time from kib's log (target/bench/conversions.txt)
# Usage: sudo scripts/bench.sh [overhead|node|formats|formats-serial]... (default: overhead node)
# Each conversion's own time is in kib's log ("converted to ... in ...s").
# Results go to target/bench/<name>.json (hyperfine's export) and are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.cargo/bin:/root/.cargo/bin"
bash scripts/deps.sh
command -v hyperfine >/dev/null || { apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release --locked -q
image=$(bash scripts/make-base-image.sh | tail -n 1)
mkdir -p target/bench
out=$(mktemp -d /var/tmp/kib-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
kib="./target/release/kib -q customize --disk-image $image --output-dir $out"
# Warm the input checksum cache and the page cache once, as an image factory's steady state is.
$kib --manifest testdata/bench/overhead.yaml >/dev/null
for b in "${@:-overhead node}"; do
  for name in $b; do
    warmup=0
    if [ "$name" = conversions ]; then
      ./target/release/kib customize --disk-image "$image" --output-dir "$out" --manifest manifests/k8s-node-debian.yaml \
        --format qcow2,ova,vhd,gce,raw.zst --qcow2-compression zstd --convert-jobs 1 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'converted to|packed the ova|phase [012] done in|done in .*\(phase' \
        | sed 's/^.*INFO *//' | tee target/bench/conversions.txt
      continue
    fi
    case "$name" in
      overhead) cmd="$kib --manifest testdata/bench/overhead.yaml"; runs=10 ;;
      node) cmd="$kib --manifest manifests/k8s-node-debian.yaml --format qcow2"; runs=3 ;;
      formats) cmd="$kib --manifest testdata/bench/overhead.yaml --format qcow2,ova,vhd,gce,raw.zst"; runs=3 ;;
      node-arm64)
        arm64=$(bash testdata/arm64/make-image.sh | tail -n 1)
        cmd="./target/release/kib -q customize --disk-image $arm64 --output-dir $out --manifest manifests/k8s-node-debian.yaml --format qcow2"; runs=3; warmup=1 ;;
      formats-serial) cmd="$kib --manifest testdata/bench/overhead.yaml --format qcow2,ova,vhd,gce,raw.zst --convert-jobs 1"; runs=3 ;;
      *) echo "unknown benchmark $name" >&2; exit 2 ;;
    esac
    hyperfine --runs "$runs" --warmup "$warmup" --export-json "target/bench/$name.json" -n "$name" "$cmd"
  done
done
