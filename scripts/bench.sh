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
#              time from kib's JSON-lines events (target/bench/conversions.txt)
#   memory     not timed: kib's peak RSS (/usr/bin/time -v) for a build whose download step fetches a 1 GiB
#              archive (a tar of incompressible data, served from 127.0.0.1) and both unpacks it and writes it whole
#              into the image (the images step copies its archives with the same streaming write); also for the
#              overhead build. The limit is 100 MiB; it fails above. Results in target/bench/memory.txt
# Usage: scripts/bench.sh [overhead|node|formats|formats-serial|conversions|memory]... (default: overhead node), as root
# Each conversion's own time is in the `end` events of `kib customize --output json`.
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
      ./target/release/kib customize --output json --disk-image "$image" --output-dir "$out" --manifest manifests/k8s-node-debian.yaml \
        --format qcow2,ova,vhd,gce,raw.zst --qcow2-compression zstd --convert-jobs 1 \
        | grep -E '"event":"(end|result)"' | grep -E '"kind":"(phase|task)"|"event":"result"' \
        | grep -vE '"label":"(sha256 of|hashing|working copy)' \
        | sed -E 's/.*"label":"([^"]*)".*"seconds":([0-9.]+).*/\1: \2 s/; s/.*"event":"result".*"seconds":([0-9.]+).*/total: \1 s/' \
        | tee target/bench/conversions.txt
      continue
    fi
    if [ "$name" = memory ]; then
      srv=$(mktemp -d /var/tmp/kib-bench-mem.XXXXXX)
      head -c 1G /dev/urandom > "$srv/blob"
      tar -C "$srv" -cf "$srv/archive.tar" blob && rm "$srv/blob"
      sum=$(sha256sum "$srv/archive.tar" | cut -d' ' -f1)
      port=$((20000 + RANDOM % 20000))
      python3 -m http.server -b 127.0.0.1 -d "$srv" "$port" >/dev/null 2>&1 &
      server=$!
      trap 'kill $server 2>/dev/null; rm -rf "$out" "$srv"' EXIT
      printf '%s\n' 'apiVersion: kib/v1' 'kind: ImageManifest' 'metadata: {name: bench-memory}' 'steps:' \
        '  - name: a 1 GiB archive, unpacked' \
        "    download: {url: \"http://127.0.0.1:$port/archive.tar\", sha256: \"$sum\", extract: /opt/kib-bench}" \
        '  - name: the same archive, whole' \
        "    download: {url: \"http://127.0.0.1:$port/archive.tar\", sha256: \"$sum\", path: /opt/kib-bench.tar, mode: \"0644\"}" \
        'output: {formats: [qcow2]}' > "$srv/memory.yaml"
      sleep 1
      : > target/bench/memory.txt
      for m in testdata/bench/overhead.yaml "$srv/memory.yaml"; do
        /usr/bin/time -v -o "$srv/time.txt" ./target/release/kib -q customize --disk-image "$image" --output-dir "$out" \
          --manifest "$m" --disk-size 5GiB --cache-dir "$srv/cache" >/dev/null
        kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$srv/time.txt")
        wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$srv/time.txt")
        echo "$(basename "$m"): peak RSS $((kb / 1024)) MiB ($kb KiB), wall $wall" | tee -a target/bench/memory.txt
        [ "$kb" -lt $((100 * 1024)) ] || { echo "memory: peak RSS above 100 MiB" >&2; exit 1; }
      done
      kill $server; rm -rf "$srv"
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
