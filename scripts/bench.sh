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
#   compare    the issue-14 benchmark, in one hyperfine session on the same base image and node manifest with qcow2
#              output: kib (package cache warm, as an image factory runs it), kib --no-package-cache, the hand-written
#              baseline testdata/bench/baseline-node.sh (sparse copy, loop device at an offset, mount, chroot apt, the
#              node's files, sysprep, fstrim, qemu-img convert) and virt-customize (testdata/bench/virt-customize-node.sh)
#              where libguestfs-tools installs without touching qemu-img (DESIGN §6; KIB_BENCH_VIRT_CUSTOMIZE=0 skips it).
#              Then kib's peak RSS (/usr/bin/time -v) and kib at 2, 8 and 32 GiB disks holding the same data
#              (--disk-size). Prints medians, ratios to the baseline, kib's overhead (kib − baseline) and phase shares
#              (scripts/lib/bench-report.py) into target/bench/compare.txt. KIB_BENCH_RUNS (default 3) runs each.
#              The same session times the build cache (its manifest is generated into target/bench/incr/: the node
#              manifest's steps between a first and a last step whose file sources change before each run): an
#              unchanged rebuild, a rebuild whose last step changed, and one whose first step changed (every step runs
#              again; the package cache is warm).
#   incremental  only those three build-cache figures (absolute times, no baseline)
#   memory     not timed: kib's peak RSS (/usr/bin/time -v) for a build whose download step fetches a 1 GiB
#              archive (a tar of incompressible data, served from 127.0.0.1) and both unpacks it and writes it whole
#              into the image (the images step copies its archives with the same streaming write); also for the
#              overhead build. The limit is 100 MiB; it fails above. Results in target/bench/memory.txt
#   guestfs    the guestfs backend (issue 17): the node manifest built by a normal user (kibbench, made with a
#              subordinate id range by scripts/guestfs-setup.sh) with --backend guestfs, beside kib's loop backend
#              (both --no-package-cache: every run downloads), the baseline and virt-customize, in one
#              hyperfine session (KIB_BENCH_RUNS, default 3). compare includes the guestfs row too
#              (KIB_BENCH_GUESTFS=0 leaves it out there).
# Usage: scripts/bench.sh [compare|incremental|guestfs|overhead|node|formats|formats-serial|conversions|memory]... (default: overhead node), as root
# Each conversion's own time is in the `end` events of `kib customize --output json`.
# Results go to target/bench/<name>.json (hyperfine's export) and are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.cargo/bin:/root/.cargo/bin"
bash scripts/deps.sh
# hyperfine is Debian's (bookworm has 1.15). Where a distribution lacks it:
#   cargo install --locked hyperfine --root /var/tmp/kib-perf/tools   and put /var/tmp/kib-perf/tools/bin on PATH.
export PATH="$PATH:/var/tmp/kib-perf/tools/bin"
command -v hyperfine >/dev/null || { apt-get install -y -qq hyperfine >/dev/null; }
# KIB_BENCH_KIB: another kib binary to time (an older build, for before/after figures).
if [ -n "${KIB_BENCH_KIB:-}" ]; then KIB=$KIB_BENCH_KIB; else cargo build --release --locked -q; KIB=./target/release/kib; fi
image=$(bash scripts/make-base-image.sh | tail -n 1)
mkdir -p target/bench
out=$(mktemp -d /var/tmp/kib-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
# --no-cache: each timed run does the whole work; the build cache's own figures are `incremental`'s.
kib="$KIB -q customize --no-cache --disk-image $image --output-dir $out"
# Warm the input checksum cache and the page cache once, as an image factory's steady state is.
$kib --manifest testdata/bench/overhead.yaml >/dev/null

# The build cache's figures: the node manifest's steps (the same includes and steps as
# manifests/k8s-node-debian.yaml) between a first and a last step whose file sources change
# before each run of "first/last step changed". One priming build fills the build cache and the
# package cache; then incr_cmds holds hyperfine's --prepare/-n/command for the three rebuilds:
# unchanged, last step changed, first step changed (every step runs again, package cache warm).
incr_setup() {
  local d=target/bench/incr
  mkdir -p "$d" "$out/incr"
  printf '%s\n' 'apiVersion: kib/v1' 'kind: Phase' 'metadata: {description: "bench: a first step whose source changes"}' \
    'steps:' '  - name: bench first step' '    file: {path: /etc/kib-bench-first, source: first.txt, mode: "0644"}' >"$d/bench-first.yaml"
  printf '%s\n' 'apiVersion: kib/v1' 'kind: ImageManifest' 'metadata: {name: bench-incremental}' \
    'variables: {pause_image: "registry.k8s.io/pause:3.9"}' \
    'include: [bench-first.yaml, phases/node/kernel.yaml, phases/node/no-auto-updates.yaml, phases/node/base-packages-debian.yaml, phases/runtime/containerd-debian.yaml]' \
    'steps:' '  - name: kubelet defaults' '    file: {path: /etc/default/kubelet, content: "KUBELET_EXTRA_ARGS=\n"}' \
    '  - name: bench last step' '    file: {path: /etc/kib-bench-last, source: last.txt, mode: "0644"}' \
    'output: {formats: [qcow2]}' >"$d/incremental.yaml"
  echo first >"$d/first.txt"
  echo last >"$d/last.txt"
  local ki="$KIB -q customize --disk-image $image --manifest $d/incremental.yaml --format qcow2 --output-dir $out/incr"
  $ki >/dev/null
  incr_cmds=(--prepare true -n "kib, unchanged rebuild (build cache)" "$ki"
             --prepare "date +%s%N > $d/last.txt" -n "kib, last step changed (build cache)" "$ki"
             --prepare "date +%s%N > $d/first.txt" -n "kib, first step changed (package cache warm)" "$ki")
}
# The guestfs backend's command: kib as the normal user kibbench (made on first use, with a
# subordinate id range), into folders it owns under $out. Sets guestfs_cmd.
guestfs_setup() {
  id kibbench >/dev/null 2>&1 || useradd --create-home --shell /bin/bash kibbench
  bash scripts/guestfs-setup.sh kibbench
  chmod 755 "$out"
  mkdir -p "$out/gfs"
  chown kibbench: "$out/gfs"
  # --no-cache: the build cache would publish the first run's outputs again; --no-package-cache:
  # beside the loop backend's run without it (every run downloads its packages).
  guestfs_cmd="runuser -u kibbench -- env HOME=$out/gfs $KIB -q customize --backend guestfs --no-cache --no-package-cache \
    --disk-image $image --manifest manifests/k8s-node-debian.yaml --format qcow2 --output-dir $out/gfs/out --work-dir $out/gfs/work"
}
# virt-customize, where it installs without touching qemu-img. Sets vc_why (empty: usable).
virt_customize_setup() {
  vc_why=
  if [ "${KIB_BENCH_VIRT_CUSTOMIZE:-1}" = 0 ]; then
    vc_why="KIB_BENCH_VIRT_CUSTOMIZE=0"
  elif ! command -v virt-customize >/dev/null; then
    # DESIGN §6: Debian's qemu-system-x86 replaces qemu-utils 10 and qemu-img disappears. Install
    # libguestfs-tools only when apt would leave every qemu package alone.
    if apt-get -s install --no-install-recommends libguestfs-tools 2>/dev/null | grep -qE '^(Inst|Remv) qemu'; then
      vc_why="installing libguestfs-tools would replace this host's qemu packages (and qemu-img; DESIGN §6)"
    else
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libguestfs-tools >/dev/null
      qemu-img --version >/dev/null || { echo "bench: qemu-img broke installing libguestfs-tools" >&2; exit 1; }
    fi
  fi
  if [ -z "$vc_why" ] && ! testdata/bench/virt-customize-node.sh --check > target/bench/virt-customize.log 2>&1; then
    vc_why="it fails on this host (target/bench/virt-customize.log: $(tail -n 1 target/bench/virt-customize.log))"
  fi
}
for b in "${@:-overhead node}"; do
  for name in $b; do
    warmup=0
    if [ "$name" = conversions ]; then
      $KIB customize --no-cache --output json --disk-image "$image" --output-dir "$out" --manifest manifests/k8s-node-debian.yaml \
        --format qcow2,ova,vhd,gce,raw.zst --qcow2-compression zstd --convert-jobs 1 \
        | grep -E '"event":"(end|result)"' | grep -E '"kind":"(phase|task)"|"event":"result"' \
        | grep -vE '"label":"(sha256 of|hashing|working copy)' \
        | sed -E 's/.*"label":"([^"]*)".*"seconds":([0-9.]+).*/\1: \2 s/; s/.*"event":"result".*"seconds":([0-9.]+).*/total: \1 s/' \
        | tee target/bench/conversions.txt
      continue
    fi
    if [ "$name" = compare ]; then
      runs=${KIB_BENCH_RUNS:-3}
      node=manifests/k8s-node-debian.yaml
      # --no-cache: every run does the whole work (the build cache's rebuilds are timed apart, below).
      k="$KIB -q customize --no-cache --disk-image $image --manifest $node --format qcow2"
      mkdir -p "$out/kib" "$out/sizes"
      # An image factory's steady state: kib's package cache and input checksum cache are warm.
      $k --output-dir "$out/kib" >/dev/null
      cmds=(--prepare true -n kib "$k --output-dir $out/kib"
            --prepare true -n "kib --no-package-cache" "$k --no-package-cache --output-dir $out/kib"
            --prepare true -n baseline "testdata/bench/baseline-node.sh $image $out/baseline.qcow2")
      virt_customize_setup
      if [ -z "$vc_why" ]; then
        cmds+=(--prepare true -n virt-customize "testdata/bench/virt-customize-node.sh $image $out/vc.qcow2")
        if [ "${KIB_BENCH_GUESTFS:-1}" != 0 ]; then
          guestfs_setup
          cmds+=(--prepare true -n "kib --backend guestfs (normal user, --no-package-cache)" "$guestfs_cmd")
        fi
      else
        echo "compare: virt-customize is left out: $vc_why" | tee target/bench/virt-customize.txt
      fi
      incr_setup
      cmds+=("${incr_cmds[@]}")
      hyperfine --runs "$runs" --export-json target/bench/compare.json "${cmds[@]}"
      # kib's own peak RSS (VmHWM), and /usr/bin/time's, which is the largest of kib and its children.
      /usr/bin/time -v -o target/bench/compare-time.txt scripts/lib/peak-rss.sh $k --output-dir "$out/kib" \
        2> target/bench/compare-rss.txt >/dev/null
      grep '^peak-rss:' target/bench/compare-rss.txt >> target/bench/compare-time.txt
      cp "$out/kib/bom.json" target/bench/compare-bom.json   # phase shares of this warm-cache run
      hyperfine --runs "$runs" --export-json target/bench/disk-sizes.json -L size 2GiB,8GiB,32GiB -n "kib, {size} disk" \
        "$k --disk-size {size} --output-dir $out/sizes"
      python3 scripts/lib/bench-report.py target/bench/compare.json target/bench/disk-sizes.json \
        target/bench/compare-bom.json target/bench/compare-time.txt | tee target/bench/compare.txt
      [ -z "$vc_why" ] || echo "virt-customize: left out: $vc_why" | tee -a target/bench/compare.txt
      continue
    fi
    if [ "$name" = guestfs ]; then
      k="$KIB -q customize --no-cache --no-package-cache --disk-image $image --manifest manifests/k8s-node-debian.yaml --format qcow2"
      mkdir -p "$out/kib"
      $k --output-dir "$out/kib" >/dev/null
      guestfs_setup
      cmds=(-n "kib (loop backend, --no-package-cache)" "$k --output-dir $out/kib"
            -n baseline "testdata/bench/baseline-node.sh $image $out/baseline.qcow2"
            -n "kib --backend guestfs (normal user, --no-package-cache)" "$guestfs_cmd")
      virt_customize_setup
      if [ -z "$vc_why" ]; then
        cmds+=(-n virt-customize "testdata/bench/virt-customize-node.sh $image $out/vc.qcow2")
      else
        echo "guestfs: virt-customize is left out: $vc_why"
      fi
      hyperfine --runs "${KIB_BENCH_RUNS:-3}" --export-json target/bench/guestfs.json "${cmds[@]}"
      continue
    fi
    if [ "$name" = incremental ]; then
      incr_setup
      hyperfine --runs "${KIB_BENCH_RUNS:-3}" --export-json target/bench/incremental.json "${incr_cmds[@]}"
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
        /usr/bin/time -v -o "$srv/time.txt" $KIB -q customize --no-cache --disk-image "$image" --output-dir "$out" \
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
        cmd="$KIB -q customize --no-cache --disk-image $arm64 --output-dir $out --manifest manifests/k8s-node-debian.yaml --format qcow2"; runs=3; warmup=1 ;;
      formats-serial) cmd="$kib --manifest testdata/bench/overhead.yaml --format qcow2,ova,vhd,gce,raw.zst --convert-jobs 1"; runs=3 ;;
      *) echo "unknown benchmark $name" >&2; exit 2 ;;
    esac
    hyperfine --runs "$runs" --warmup "$warmup" --export-json "target/bench/$name.json" -n "$name" "$cmd"
  done
done
