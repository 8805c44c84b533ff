#!/usr/bin/env bash
# Regenerates the committed seed corpora in fuzz/corpus/ (small files, < 64 KiB each):
#   manifest/  the repository's manifests and phases (phases turned into ImageManifests, since the
#              fuzz entry point refuses includes), and one hand-written manifest using every step kind
#   vars/      `name=value` lines, NUL, a template (the format of fuzz_targets/vars.rs)
#   partition/ disks in the format of fuzz_targets/partition.rs: the base image's real GPT (its
#              first 34 sectors and last 33 sectors, standing for the whole 2 GiB disk), tables
#              written by sfdisk (GPT, 4096-byte-sector GPT, MBR with logical partitions), not a disk
# Needs sfdisk and python3; the base image is taken from KIB_BASE_IMAGE or the default cache path.
set -euo pipefail
cd "$(dirname "$0")"
base=${KIB_BASE_IMAGE:-/var/cache/kib/base/debian-12-genericcloud-amd64.raw}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p corpus/manifest corpus/vars corpus/partition
cp ../manifests/k8s-node-debian.yaml corpus/manifest/k8s-node-debian.yaml
cp ../manifests/k8s-1.30.yaml corpus/manifest/k8s-1.30.yaml
for f in ../phases/*/*.yaml; do
    name=$(basename "$(dirname "$f")")-$(basename "$f")
    sed 's/^kind: Phase$/kind: ImageManifest/' "$f" > "corpus/manifest/$name"
done
cat > corpus/manifest/every-step-kind.yaml <<'YAML'
apiVersion: kib/v1
kind: ImageManifest
metadata: {name: every-kind, description: "one step of each kind"}
variables: {v: "1.30.0", file_name: k8s.conf}
steps:
  - name: pkgs
    timeout: 90s
    packages: {update: true, install: [jq, "chrony=4.3-2"], remove: [nano], purge: [vim], hold: [chrony], recommends: false}
  - name: file
    when: {os: [debian], arch: [amd64], variables: {v: "1.30.0"}}
    file: {path: "/etc/kib-${v}", content: "x=$${literal}\n", mode: "0644", owner: "root:root"}
  - name: run
    run: {script: "echo $v", shell: /bin/sh}
  - name: systemd
    systemd: {enable: [a.service], disable: [b], mask: [c], unmask: [d]}
  - name: sysctl
    sysctl: {file: 99-k8s.conf, settings: {net.ipv4.ip_forward: "1"}}
  - name: modules
    kernel-modules: {file: "${file_name}", load: [overlay], options: {br_netfilter: "x=1"}}
  - name: download
    timeout: 10m
    download: {url: "https://dl.k8s.io/v${v}/${arch}/kubectl", sha256: {amd64: "0000000000000000000000000000000000000000000000000000000000000000"}, path: /usr/bin/kubectl, mode: "0755"}
  - name: tarball
    download: {url: "https://x/${arch}.tgz", sha256_url: "https://x/${arch}.tgz.sha256", extract: /opt/cni/bin, strip_components: 1}
  - name: repo
    repository: {name: k8s, url: "https://pkgs.k8s.io/core:/stable:/v1.30/deb/", suite: /, components: [], key_url: "https://pkgs.k8s.io/Release.key", key_sha256: "00"}
  - name: images
    images: {namespace: k8s.io, archives: [{url: "https://x/pause.tar", sha256: "00", tag: "registry.k8s.io/pause:3.9"}]}
output: {formats: [qcow2, raw], qcow2_compression: zstd}
sysprep: {enabled: true, skip: [tmp]}
YAML

printf 'arch=amd64\nv=1.30.0\n\0https://dl.k8s.io/v${v}/bin/linux/${arch}/kubectl' > corpus/vars/url
printf 'a=${b}\nb=$$\n\0$${a} $a ${a}$ ${b}${' > corpus/vars/escapes
printf 'x=1\n\0${missing} ${x' > corpus/vars/undefined

# The fuzz target's disk format: flags, u64 disk length, u32 head length, head, tail.
disk_seed() { # out flags len head-file tail-file
    python3 - "$@" <<'PY'
import struct, sys
out, flags, length, head, tail = sys.argv[1:]
h = open(head, 'rb').read()
t = open(tail, 'rb').read() if tail != '-' else b''
open(out, 'wb').write(struct.pack('<BQI', int(flags), int(length), len(h)) + h + t)
PY
}
from_disk() { # out disk sector-size
    local ss=$3 len; len=$(stat -c %s "$2")
    dd if="$2" of="$tmp/head" bs="$ss" count=34 status=none
    dd if="$2" of="$tmp/tail" bs="$ss" skip=$((len / ss - 33)) status=none
    disk_seed "$1" 0 "$len" "$tmp/head" "$tmp/tail"
}
if [ -f "$base" ]; then
    from_disk corpus/partition/debian-12-genericcloud-gpt "$base" 512
fi
truncate -s 24M "$tmp/d"
printf 'label: gpt\nstart=2048, size=4096, type=21686148-6449-6E6F-744E-656564454649, name=bios\nstart=8192, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=16384, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n' | sfdisk --quiet "$tmp/d"
from_disk corpus/partition/gpt-three-partitions "$tmp/d" 512
rm "$tmp/d"; truncate -s 64M "$tmp/d"
# sfdisk takes the sector size from the device: a loop device with 4096-byte sectors.
loop=$(losetup --find --show --sector-size 4096 "$tmp/d")
printf 'label: gpt\nstart=256, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n' | sfdisk --quiet --no-reread --no-tell-kernel "$loop" || { losetup -d "$loop"; exit 1; }
losetup -d "$loop"
python3 - "$tmp/d" "$tmp/head" "$tmp/tail" <<'PY'
import sys
d = open(sys.argv[1], 'rb').read()
open(sys.argv[2], 'wb').write(d[:6 * 4096])
open(sys.argv[3], 'wb').write(d[-5 * 4096:])
PY
disk_seed corpus/partition/gpt-4096-byte-sectors 0 $((64 << 20)) "$tmp/head" "$tmp/tail"
rm "$tmp/d"; truncate -s 16M "$tmp/d"
# An extended partition near the start, so that the EBRs lie in the first few KiB.
printf 'label: dos\nlabel-id: 0x12345678\nstart=8, size=120, type=5\nstart=16, size=16, type=83\nstart=40, size=16, type=82\nstart=2048, type=83\n' | sfdisk --quiet "$tmp/d"
# Keep the sectors up to the last one that holds a table (boot signature); zeros follow.
python3 - "$tmp/d" "$tmp/head" <<'PY'
import sys
d = open(sys.argv[1], 'rb').read()
keep = bytearray(len(d))
for s in range(0, len(d), 512):
    if d[s + 510:s + 512] == b'\x55\xaa':
        keep[s:s + 512] = d[s:s + 512]
end = max(i for i in range(len(keep)) if keep[i]) + 1
open(sys.argv[2], 'wb').write(bytes(keep[:end]))
PY
if [ "$(stat -c %s "$tmp/head")" -lt 65536 ]; then
    disk_seed corpus/partition/mbr-with-logical-partitions 0 $((16 << 20)) "$tmp/head" -
fi
printf 'just some text, not a disk\n' > "$tmp/head"
disk_seed corpus/partition/not-a-disk 0 0 "$tmp/head" -
ls -l corpus/*/
