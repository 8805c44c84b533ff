#!/usr/bin/env bash
# Prepares this host, once and as root, for kib's guestfs backend (`kib customize --backend guestfs`,
# which normal users run without root; README "Without root"):
#   - libguestfs-tools (guestfish), libguestfs-xfs (xfsprogs in the appliance) and uidmap
#     (newuidmap/newgidmap), from Debian. libguestfs0 pulls in
#     qemu-system-x86; Debian 12's own (7.2) would replace the host's qemu-utils 10 and qemu-img would
#     disappear (DESIGN §6), so qemu-system-x86 and qemu-utils come from bookworm-backports first
#     (scripts/deps.sh does that), and this script refuses to go on if apt would still touch a qemu package;
#   - a kernel the appliance can boot: the host's /boot/vmlinuz-* when a normal user can read it, else
#     Debian's linux-image-cloud-amd64 unpacked (not installed) under /var/cache/kib/guestfs/kernel;
#   - a fixed appliance (libguestfs-make-fixed-appliance) in /var/cache/kib/guestfs/appliance, readable by
#     every user: kib uses it when LIBGUESTFS_PATH is not set, so that no user needs a readable kernel or
#     builds a supermin appliance of their own. Rebuilt when this script, libguestfs or the kernel changes.
#   - a subordinate id range for USER (each argument), if it has none: `usermod --add-subuids/--add-subgids`.
#
#   scripts/guestfs-setup.sh [USER...]        (as root; idempotent, quiet when everything is there)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "guestfs-setup.sh: run as root" >&2; exit 1; }
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

need=()
# libguestfs-xfs: xfsprogs in the appliance, for xfs_growfs (disk.size on an xfs root or LV).
for p in libguestfs-tools libguestfs-xfs uidmap; do have_pkg "$p" || need+=("$p"); done
if [ "${#need[@]}" -gt 0 ]; then
  command -v qemu-system-x86_64 >/dev/null || bash scripts/deps.sh
  if apt-get -s install --no-install-recommends "${need[@]}" 2>/dev/null | grep -E '^(Inst|Remv) qemu'; then
    echo "guestfs-setup.sh: installing ${need[*]} would replace the qemu packages above (DESIGN §6); install qemu-system-x86 and qemu-utils from bookworm-backports first" >&2
    exit 1
  fi
  echo "guestfs-setup.sh: installing ${need[*]}" >&2
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${need[@]}" >/dev/null
  qemu-img --version >/dev/null || { echo "guestfs-setup.sh: qemu-img broke installing ${need[*]}" >&2; exit 1; }
fi

base=/var/cache/kib/guestfs
mkdir -p "$base"
kernel= modules=
for k in /boot/vmlinuz-*; do
  # A kernel a normal user can read, with its modules.
  if [ -e "$k" ] && [ "$(stat -c %a "$k" | cut -c3)" -ge 4 ] && [ -d "/lib/modules/${k#/boot/vmlinuz-}" ]; then
    kernel=$k modules=/lib/modules/${k#/boot/vmlinuz-}
  fi
done
if [ -z "$kernel" ]; then
  kdir=$base/kernel
  if [ ! -e "$kdir/.complete" ]; then
    rm -rf "$kdir"; mkdir -p "$kdir"
    pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)
    (cd "$kdir" && apt-get download -q "$pkg" >/dev/null)
    dpkg-deb -x "$kdir"/linux-image-*.deb "$kdir/root"
    rm -f "$kdir"/linux-image-*.deb
    depmod -b "$kdir/root" "$(ls "$kdir/root/lib/modules")"
    touch "$kdir/.complete"
  fi
  kernel=$(ls "$kdir"/root/boot/vmlinuz-* | head -n1)
  modules=$(ls -d "$kdir"/root/lib/modules/* | head -n1)
  # supermin copies modules below the host's /lib/modules, which must exist.
  mkdir -p /lib/modules
fi

key=$( { sha256sum "$0" | cut -c1-64; dpkg-query -W -f='${Version}' libguestfs0; echo "$kernel"; } | sha256sum | cut -c1-16)
app=$base/appliance
if [ "$(cat "$app/.key" 2>/dev/null)" != "$key" ]; then
  echo "guestfs-setup.sh: building a fixed appliance in $app (kernel $kernel)" >&2
  rm -rf "$app.tmp"
  # It starts the appliance once: under TCG, which works everywhere (KVM guests hang on some hosts).
  LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg SUPERMIN_KERNEL=$kernel SUPERMIN_MODULES=$modules \
    libguestfs-make-fixed-appliance "$app.tmp" >/dev/null
  echo "$key" > "$app.tmp/.key"
  chmod -R a+rX "$app.tmp"
  rm -rf "$app"; mv "$app.tmp" "$app"
fi

for u in "$@"; do
  for f in subuid subgid; do
    if ! grep -qE "^($u|$(id -u "$u")):" /etc/$f; then
      # The next free 65536 ids above every range already given.
      start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' /etc/subuid /etc/subgid)
      usermod "--add-${f}s" "$start-$((start + 65535))" "$u"
    fi
  done
done
