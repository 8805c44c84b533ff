#!/usr/bin/env bash
# The hand-written baseline of `scripts/bench.sh compare`: what a careful engineer writes in
# shell to do the node manifest's work without kib, on the same base image, with the same qcow2
# output. Sparse copy of the base image, a loop device at the root partition's offset, mount,
# /proc /sys /dev /dev/pts and resolv.conf for the chroot, node-in-guest.sh in the chroot (apt,
# the node's files, sysprep), fstrim, unmount, detach, `qemu-img convert` to qcow2.
#
#   testdata/bench/baseline-node.sh BASE.raw OUT.qcow2     (as root)
#
# No checksums, BOM, SBOM or checks: only the work itself. It runs in a private mount namespace,
# so its mounts go with it if it dies; the loop device is attached with autoclear.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BASE.raw OUT.qcow2" >&2; exit 2; }
if [ -z "${BASELINE_IN_NS:-}" ]; then
  BASELINE_IN_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi
base=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /var/tmp/kib-baseline.XXXXXX)
root=$work/root
loop=
cleanup() {
  set +e
  for m in dev/pts dev proc sys run; do umount "$root/$m" 2>/dev/null; done
  umount "$root" 2>/dev/null
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cp --sparse=always "$base" "$work/disk.raw"
# The root partition: the largest Linux filesystem or x86-64 root one (GPT types), from sfdisk's dump.
read -r start size < <(sfdisk -J "$work/disk.raw" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
p = max((p for p in t["partitions"] if p["type"].upper() in ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "83")), key=lambda p: p["size"])
print(p["start"] * t.get("sectorsize", 512), p["size"] * t.get("sectorsize", 512))')
loop=$(losetup --find --show --offset "$start" --sizelimit "$size" "$work/disk.raw")
mkdir -p "$root"
mount "$loop" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
mount -t tmpfs tmpfs "$root/run"
resolv_saved=
if [ -e "$root/etc/resolv.conf" ] || [ -L "$root/etc/resolv.conf" ]; then
  mv "$root/etc/resolv.conf" "$root/etc/resolv.conf.baseline"; resolv_saved=1
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"

cp "$here/node-in-guest.sh" "$root/run/node-in-guest.sh"   # /run: our tmpfs, not the image
chroot "$root" /bin/sh -e /run/node-in-guest.sh < /dev/null

rm -f "$root/etc/resolv.conf"
[ -n "$resolv_saved" ] && mv "$root/etc/resolv.conf.baseline" "$root/etc/resolv.conf"
for m in dev/pts dev proc sys run; do umount "$root/$m"; done
fstrim "$root"
umount "$root"
losetup -d "$loop"; loop=
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$out"
