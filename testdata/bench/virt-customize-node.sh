#!/usr/bin/env bash
# virt-customize (Debian's libguestfs-tools) doing the node manifest's work, for
# `scripts/bench.sh compare`: sparse copy of the base image, `virt-customize --run
# node-in-guest.sh` (apt, the node's files, sysprep: the same script the chroot baseline runs),
# `virt-sparsify --in-place` (libguestfs's fstrim), `qemu-img convert` to qcow2.
#
#   testdata/bench/virt-customize-node.sh BASE.raw OUT.qcow2     (as root)
#   testdata/bench/virt-customize-node.sh --check                 (only boots the appliance once)
#
# libguestfs boots a small appliance VM. On these machines KVM guests hang at kernel start, so it
# runs under TCG (LIBGUESTFS_BACKEND_SETTINGS=force_tcg), and the host has no kernel in /boot:
# supermin then uses Debian's linux-image-cloud-amd64, unpacked once (not installed, modules
# indexed with depmod) under $KIB_GUESTFS_KERNEL_DIR (default /var/tmp/kib-perf/guestfs-kernel).
set -euo pipefail
[ $# -eq 2 ] || [ "${1:-}" = --check ] || { echo "usage: $0 BASE.raw OUT.qcow2 | --check" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
command -v virt-customize >/dev/null || { echo "virt-customize is not installed (libguestfs-tools)" >&2; exit 3; }
export LIBGUESTFS_BACKEND=direct
if [ -e /dev/kvm ] && [ -z "${KIB_GUESTFS_KVM:-}" ]; then
  export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
fi
if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
  kdir=${KIB_GUESTFS_KERNEL_DIR:-/var/tmp/kib-perf/guestfs-kernel}
  if [ ! -e "$kdir/.complete" ]; then
    rm -rf "$kdir"; mkdir -p "$kdir"
    (cd "$kdir" && apt-get download -q "$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)" >/dev/null)
    dpkg-deb -x "$kdir"/linux-image-*.deb "$kdir/root"
    depmod -b "$kdir/root" "$(ls "$kdir/root/lib/modules")"
    touch "$kdir/.complete"
  fi
  SUPERMIN_KERNEL=$(ls "$kdir"/root/boot/vmlinuz-* | head -n1)
  SUPERMIN_MODULES=$(ls -d "$kdir"/root/lib/modules/* | head -n1)
  export SUPERMIN_KERNEL SUPERMIN_MODULES
  # supermin copies the modules below the host's /lib/modules, which must exist (empty here).
  mkdir -p /lib/modules
fi
if [ "$1" = --check ]; then
  exec guestfish -a /dev/null run
fi
base=$1 out=$2
work=$(mktemp -d /var/tmp/kib-virt-customize.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp --sparse=always "$base" "$work/disk.raw"
virt-customize -q --format raw -a "$work/disk.raw" --network --run "$here/node-in-guest.sh"
virt-sparsify -q --in-place --format raw "$work/disk.raw"
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$out"
