#!/usr/bin/env bash
# make-base-image.sh: build a Debian 12 (bookworm) cloud disk image from Debian's archive, offline-style
# (mmdebstrap into a directory, then filesystems written straight into image files: no VM, no mount).
#
# The result is shaped like Debian's own "genericcloud" image:
#   raw, sparse, 2 GiB, GPT (amd64; arm64 has no BIOS boot partition, boots from EFI/BOOT/BOOTAA64.EFI and has root
#   partition type "Linux root (ARM-64)", with the serial console on ttyAMA0):
#     partition 14  BIOS boot   (1 MiB .. 4 MiB)       grub-pc's core.img is embedded here
#     partition 15  ESP, vfat   (4 MiB .. 128 MiB)     /EFI/BOOT/BOOTX64.EFI (grub, no shim)
#     partition  1  ext4 root   (128 MiB .. end)       type "Linux root (x86-64)"
#   /etc/fstab mounts / and /boot/efi by UUID; kernel command line has console=tty0 console=ttyS0,115200.
#
# Usage: make-base-image.sh [--arch amd64|arm64] [--output-dir DIR] [--force] [--verify]
#
# A foreign --arch (arm64 on an amd64 host) runs the image's packages under qemu-user through binfmt_misc: the host's
# enabled handler qemu-<cpu> when it has the F flag, otherwise a handler this script registers with the F flag under
# the name kib-mkbase-qemu-<cpu>-<pid> and removes when it ends (scripts/lib/qemu-binfmt.sh, which accepts both
# Debian 12's qemu-user-static and qemu 10's layout). That build takes about 15-25 minutes here (everything the
# packages run in the chroot is emulated). The tests do not need it: tests/arm64.rs runs on a much smaller arm64 test
# fixture, testdata/arm64/make-image.sh.
#
# The image and its SHA256SUMS are cached in the output directory (default /var/cache/kib/base). A stamp file
# records the sha256 of this script (and the image's hash, size, mtime and inode); when the image, a matching
# SHA256SUMS and a stamp for this script version are all there, nothing is rebuilt. The image path is always the
# LAST line of stdout; progress goes to stderr.
#
# Host facts this script is written for (see shared/DESIGN.md section 6): the kernel cannot mount vfat, and
# `losetup -P` creates no partition nodes. So nothing is mounted and no loop device is used: the ESP is made with
# mkfs.vfat + mtools in a file, the root filesystem with `mkfs.ext4 -d` from the mmdebstrap tree, both are copied into
# the disk at their partition offsets with dd, and GRUB's BIOS boot code is patched in the way grub-bios-setup does.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
PROG="$(basename "$SELF")"

ARCH="amd64"
OUTPUT_DIR="/var/cache/kib/base"
FORCE=0
VERIFY=0

SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
SECURITY_MIRROR="http://deb.debian.org/debian-security"
DISK_SIZE_MIB=2048
HOSTNAME_DEFAULT="debian"
KERNEL_CMDLINE="console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"

log() { printf "%s: [%3ds] %s\n" "$PROG" "$SECONDS" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $PROG [--arch amd64|arm64] [--output-dir DIR] [--force] [--verify]

Build a Debian 12 (bookworm) genericcloud-style raw disk image with mmdebstrap.

  --arch ARCH        target architecture: amd64 (default) or arm64 (through qemu-user-static on other hosts)
  --output-dir DIR   where the image, SHA256SUMS and stamp go (default: /var/cache/kib/base)
  --force            rebuild even when a valid cached image exists
  --verify           re-hash a cached image against SHA256SUMS even when its size, mtime and inode are unchanged
  -h, --help         show this help

The image path is printed as the last line of stdout. Must run as root.
EOF
}

ORIG_ARGS=("$@")
LIB="$(dirname "$SELF")/lib/qemu-binfmt.sh"
[[ -f "$LIB" ]] || die "$LIB is missing (this script runs from a kib checkout)"
# shellcheck source=lib/qemu-binfmt.sh
source "$LIB"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) [[ $# -ge 2 ]] || die "--arch needs a value"; ARCH="$2"; shift 2 ;;
        --arch=*) ARCH="${1#*=}"; shift ;;
        --output-dir) [[ $# -ge 2 ]] || die "--output-dir needs a value"; OUTPUT_DIR="$2"; shift 2 ;;
        --output-dir=*) OUTPUT_DIR="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --verify) VERIFY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# --- per-architecture settings -------------------------------------------------------------------------------------
# Everything that differs between architectures is set here, so that arm64 is one more case below:
#   KERNEL_PKG=linux-image-cloud-arm64, BOOT_PKGS=(grub-efi-arm64), BIOS_BOOT=0, ROOT_PARTTYPE=B921B045-1DF0-41C3-
#   AF44-4C6F280D3FAE (Linux root arm64), GRUB_EFI_TARGET=arm64-efi, EFI_BOOT_NAME=BOOTAA64.EFI, and mmdebstrap
#   running the foreign packages through qemu-user-static (binfmt).
case "$ARCH" in
    amd64)
        KERNEL_PKG="linux-image-cloud-amd64"
        BOOT_PKGS=(grub-pc grub-efi-amd64-bin)
        BIOS_BOOT=1                                              # partition 14 + grub-pc in the MBR
        ROOT_PARTTYPE="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"     # Linux root (x86-64)
        GRUB_BIOS_TARGET="i386-pc"
        GRUB_EFI_TARGET="x86_64-efi"
        EFI_BOOT_NAME="BOOTX64.EFI"
        EFI_GRUB_NAME="grubx64.efi"
        QEMU_CPU="x86_64"
        # GRUB's own serial terminal (BIOS and EFI), as in Debian's image.
        GRUB_TERMINAL="console serial"
        ;;
    arm64)
        KERNEL_PKG="linux-image-cloud-arm64"
        BOOT_PKGS=(grub-efi-arm64)
        BIOS_BOOT=0                                              # UEFI only
        ROOT_PARTTYPE="B921B045-1DF0-41C3-AF44-4C6F280D3FAE"     # Linux root (ARM-64)
        GRUB_EFI_TARGET="arm64-efi"
        EFI_BOOT_NAME="BOOTAA64.EFI"
        EFI_GRUB_NAME="grubaa64.efi"
        QEMU_CPU="aarch64"
        # The PL011 UART of arm64 virtual machines; the firmware's console already goes there, so GRUB uses it.
        KERNEL_CMDLINE="console=tty0 console=ttyAMA0,115200 earlycon consoleblank=0"
        GRUB_TERMINAL="console"
        ;;
    *)
        die "unsupported --arch '$ARCH' (supported: amd64, arm64)"
        ;;
esac

BIOSBOOT_PARTTYPE="21686148-6449-6E6F-744E-656564454649"
ESP_PARTTYPE="C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# Layout in 512-byte sectors, as in Debian's genericcloud image.
BIOSBOOT_START=2048;  BIOSBOOT_SIZE=6144      # 1 MiB .. 4 MiB
ESP_START=8192;       ESP_SIZE=253952         # 4 MiB .. 128 MiB
ROOT_START=262144                             # 128 MiB .. end of disk

IMAGE_NAME="debian-12-genericcloud-${ARCH}.raw"
STAMP_NAME="debian-12-genericcloud-${ARCH}.stamp"

[[ "$(id -u)" -eq 0 ]] || die "must run as root"

# Run the rest in a private mount namespace: whatever mmdebstrap mounts in its chroot (proc, sys, dev) disappears
# with the namespace even if this script is killed with SIGKILL.
if [[ -z "${KIB_MAKE_BASE_IMAGE_NS:-}" ]]; then
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    export KIB_MAKE_BASE_IMAGE_NS=1
    exec unshare --mount --propagation private -- bash "$SELF" "${ORIG_ARGS[@]}"
fi

# From here on, stdout carries only the final image path (fd 3); everything else goes to stderr.
exec 3>&1 1>&2

mkdir -p "$OUTPUT_DIR"
OUTPUT_DIR="$(readlink -f "$OUTPUT_DIR")"
IMAGE="$OUTPUT_DIR/$IMAGE_NAME"
SUMS="$OUTPUT_DIR/SHA256SUMS"
STAMP="$OUTPUT_DIR/$STAMP_NAME"
SCRIPT_SHA="$(sha256sum "$SELF" | cut -d' ' -f1)"
STAMP_CONTENT="script-sha256=$SCRIPT_SHA
arch=$ARCH
suite=$SUITE"

# One build at a time per output directory; a cache check waits for a running build.
exec 9>"$OUTPUT_DIR/.lock"
if ! flock -n 9; then
    log "waiting for another build in $OUTPUT_DIR to finish"
    flock 9
fi

# sha256 of a file. openssl uses the CPU's SHA extensions (about 1 GB/s here); coreutils' sha256sum does not
# (about 0.2 GB/s), so it is only the fallback.
sha256_of() {
    if command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha256 -r "$1" | cut -d' ' -f1
    else
        sha256sum "$1" | cut -d' ' -f1
    fi
}
# size, mtime (ns) and inode: unchanged by the final rename, changed by any write to the image.
file_identity() { stat -c '%s %.9Y %i' "$1"; }

# The stamp is STAMP_CONTENT plus a line "image=<sha256> <size> <mtime> <inode>" written at build time. When the
# image's identity still matches that line, the SHA256SUMS entry is compared with the recorded hash and the image is
# not read again (--verify forces a full re-hash). Otherwise the image is hashed and compared with SHA256SUMS.
cache_valid() {
    [[ -f "$IMAGE" && -f "$SUMS" && -f "$STAMP" ]] || return 1
    local want have stamp_fixed stamp_image
    stamp_fixed="$(grep -v '^image=' "$STAMP")"
    stamp_image="$(sed -n 's/^image=//p' "$STAMP")"
    [[ "$stamp_fixed" == "$STAMP_CONTENT" ]] || { log "cache stamp is for another script version"; return 1; }
    want="$(awk -v n="$IMAGE_NAME" '$2 == n || $2 == "*" n { print $1 }' "$SUMS")"
    [[ -n "$want" ]] || { log "SHA256SUMS has no entry for $IMAGE_NAME"; return 1; }
    if [[ "$VERIFY" -eq 0 && "$stamp_image" == "$want $(file_identity "$IMAGE")" ]]; then
        return 0
    fi
    log "hashing the cached image"
    have="$(sha256_of "$IMAGE")"
    [[ "$want" == "$have" ]] || { log "cached image does not match SHA256SUMS"; return 1; }
}

if [[ "$FORCE" -eq 0 ]] && cache_valid; then
    log "cached image is up to date"
    echo "$IMAGE" >&3
    exit 0
fi

# --- dependencies --------------------------------------------------------------------------------------------------
ensure_tools() {
    # command -> Debian package
    local -A need=(
        [mmdebstrap]=mmdebstrap [sfdisk]=fdisk [mkfs.vfat]=dosfstools [mcopy]=mtools [mmd]=mtools
        [mkfs.ext4]=e2fsprogs [flock]=util-linux [findmnt]=util-linux
    )
    local -a missing=()
    local cmd
    for cmd in "${!need[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
    done
    # A foreign architecture runs under qemu-user, in either layout (qemu_binfmt_find); qemu-user-static is the
    # package to install in Debian 12 (the static binaries) and in Debian 13 (a transitional package pulling
    # qemu-user and qemu-user-binfmt). arch-test checks that the kernel runs the architecture's programs.
    local foreign=0
    [[ "$ARCH" == "$(dpkg --print-architecture)" ]] || foreign=1
    if [[ "$foreign" -eq 1 ]]; then
        need[arch-test]=arch-test
        need[ldd]=libc-bin
        qemu_binfmt_find "$QEMU_CPU" || missing+=(qemu-user-static)
    fi
    # mmdebstrap needs the archive keyring to verify bookworm.
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing missing tools: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    for cmd in "${!need[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still missing after apt-get install"
    done
    if [[ "$foreign" -eq 1 ]] && ! qemu_binfmt_find "$QEMU_CPU"; then
        die "building an $ARCH image on this $(dpkg --print-architecture) host needs qemu-user: $QEMU_BINFMT_ERROR"
    fi
}
ensure_tools

# --- work area and cleanup -----------------------------------------------------------------------------------------
WORK=""
CHILD_PID=""
# Run a long command in its own process group, in the background, so that a signal to this script runs the trap at
# once (bash defers traps while a foreground child runs) and the trap can stop the whole group.
run_child() {
    setsid "$@" </dev/null &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}
stop_child() {
    [[ -n "$CHILD_PID" ]] || return 0
    log "stopping process group $CHILD_PID"
    kill -TERM -- "-$CHILD_PID" 2>/dev/null
    local i
    for ((i = 0; i < 30; i++)); do
        kill -0 -- "-$CHILD_PID" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$CHILD_PID" 2>/dev/null
    wait "$CHILD_PID" 2>/dev/null
    CHILD_PID=""
}
cleanup() {
    local rc=$?
    set +e
    stop_child
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        log "cleaning up $WORK"
        # Unmount anything left below WORK, deepest first (normally nothing: mmdebstrap unmounts its own).
        local m
        findmnt -rn -o TARGET | awk -v w="$WORK" 'index($0, w "/") == 1 || $0 == w' | sort -r |
            while read -r m; do umount -l "$m" || log "warning: could not unmount $m"; done
        # Detach any loop device backed by a file below WORK (normally none: this script attaches none).
        losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK" 'index($2, w "/") == 1 { print $1 }' |
            while read -r m; do losetup -d "$m" || log "warning: could not detach $m"; done
        if findmnt -rn -o TARGET | awk -v w="$WORK" 'index($0, w "/") == 1 { found = 1 } END { exit !found }'; then
            log "warning: mounts remain below $WORK; not removing it"
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    qemu_binfmt_remove
    if [[ $rc -ne 0 ]]; then
        log "FAILED (exit $rc)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

WORK="$(mktemp -d "$OUTPUT_DIR/.build.XXXXXX")"
ROOT="$WORK/root"
DISK="$WORK/$IMAGE_NAME"
START_TIME=$SECONDS

new_uuid() { cat /proc/sys/kernel/random/uuid; }
ROOT_UUID="$(new_uuid)"
ESP_SERIAL="$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F')"   # vfat volume id, 8 hex digits
ESP_UUID="${ESP_SERIAL:0:4}-${ESP_SERIAL:4:4}"

# --- helpers ------------------------------------------------------------------------------------------------------
# Little-endian bytes of an integer, as printf %b escapes: le_bytes VALUE NBYTES
le_bytes() {
    local v=$1 n=$2 i out=""
    for ((i = 0; i < n; i++)); do
        out+="$(printf '\\x%02x' $(((v >> (8 * i)) & 255)))"
    done
    printf '%s' "$out"
}
# Write raw bytes (printf %b escapes) into FILE at byte OFFSET: put_bytes FILE OFFSET ESCAPES
put_bytes() {
    printf '%b' "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# What grub-bios-setup does for a GPT disk with a BIOS boot partition (GRUB 2.06 util/setup.c, without
# Reed-Solomon codes), done on an image file. grub-bios-setup itself insists on finding the block device under
# its --directory, which fails for a file-backed target on an unrelated host disk (and in containers).
#   MBR (sector 0): boot.img's code; the disk's own BPB area (0x03..0x5a) and disk signature + partition table
#     (0x1b8..0x1fe) kept; 0x5c = LBA of core.img's first sector (u64); 0x64 = boot drive 0xff (use BIOS's);
#     0x66 = two NOPs over the floppy drive-check jump (a hard disk install).
#   core.img: written to the BIOS boot partition; its first sector's last 12 bytes are the blocklist entry
#     {u64 start, u16 len, u16 segment} naming the rest of core.img: start+1, nsec-1 sectors, segment 0x820;
#     the entry before it is zeroed as the terminator.
install_grub_bios() { # DISK BOOT_IMG CORE_IMG PART_START PART_SECTORS
    local disk=$1 boot=$2 core=$3 start=$4 max=$5
    local size nsec mbr="$WORK/mbr.bin" corebuf="$WORK/core.bin"
    [[ "$(stat -c %s "$boot")" -eq 512 ]] || die "boot.img is not 512 bytes"
    size=$(stat -c %s "$core")
    nsec=$(((size + 511) / 512))
    ((nsec >= 2 && nsec <= max)) || die "core.img ($nsec sectors) does not fit the BIOS boot partition ($max sectors)"

    cp "$boot" "$mbr"
    dd if="$disk" of="$mbr" bs=1 skip=3 seek=3 count=$((0x5a - 3)) conv=notrunc status=none
    dd if="$disk" of="$mbr" bs=1 skip=$((0x1b8)) seek=$((0x1b8)) count=$((0x1fe - 0x1b8)) conv=notrunc status=none
    put_bytes "$mbr" $((0x5c)) "$(le_bytes "$start" 8)"
    put_bytes "$mbr" $((0x64)) '\xff'
    put_bytes "$mbr" $((0x66)) '\x90\x90'
    [[ "$(od -An -tx1 -j510 -N2 "$mbr" | tr -d ' ')" == "55aa" ]] || die "MBR signature missing"

    cp "$core" "$corebuf"
    truncate -s $((nsec * 512)) "$corebuf"
    [[ "$(od -An -tu2 -j$((0x200 - 12 + 8)) -N2 "$corebuf" | tr -d ' ')" -ne 0 ]] ||
        die "core.img has no blocklist length: not an i386-pc core.img from grub-mkimage?"
    put_bytes "$corebuf" $((0x200 - 24)) "$(le_bytes 0 12)"
    put_bytes "$corebuf" $((0x200 - 12)) "$(le_bytes $((start + 1)) 8)$(le_bytes $((nsec - 1)) 2)$(le_bytes $((0x820)) 2)"

    dd if="$corebuf" of="$disk" bs=512 seek="$start" conv=notrunc status=none
    dd if="$mbr" of="$disk" bs=512 count=1 conv=notrunc status=none
    rm -f "$mbr" "$corebuf"
}

# --- 1. root filesystem tree ---------------------------------------------------------------------------------------
PACKAGES=(
    "$KERNEL_PKG" "${BOOT_PKGS[@]}"
    systemd-sysv dbus
    cloud-init cloud-guest-utils
    openssh-server sudo ca-certificates
    ifupdown isc-dhcp-client netbase iproute2
    e2fsprogs procps
)
# fstab goes in before any package: the kernel's initramfs then carries fsck.ext4 for the root filesystem.
cat >"$WORK/fstab" <<EOF
# /etc/fstab: static file system information.
# <file system>	<mount point>	<type>	<options>	<dump>	<pass>
UUID=$ROOT_UUID	/	ext4	rw,discard,errors=remount-ro,x-systemd.growfs	0	1
UUID=$ESP_UUID	/boot/efi	vfat	defaults	0	0
# This image has no swap. An example of a swap file entry:
#/swapfile	none	swap	sw	0	0
EOF

# initramfs-tools settings, also in place before the kernel: no resume device (a cloud image has no swap), and the
# root filesystem type given outright. Its fsck hook otherwise resolves root's UUID= to a device to probe the type,
# which finds nothing in a build chroot, and the initramfs would come without fsck.ext4.
mkdir -p "$WORK/initramfs-conf.d"
echo "RESUME=none" >"$WORK/initramfs-conf.d/resume"
printf '%s\n' "# Root filesystem type, for the fsck hook when the root device cannot be probed (e.g. in a chroot)." \
    "FSTYPE=ext4" >"$WORK/initramfs-conf.d/fstype"

EXTRA_HOOKS=()
if [[ "$BIOS_BOOT" -eq 1 ]]; then
    # shellcheck disable=SC2016
    EXTRA_HOOKS+=(--customize-hook='chroot "$1" debconf-set-selections <<EOF
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF')
fi

SKIP=()
if [[ "$ARCH" != "$(dpkg --print-architecture)" ]]; then
    qemu_binfmt_ensure "$QEMU_CPU" kib-mkbase
    # mmdebstrap's own check would copy /usr/bin/qemu-<cpu>-static into the tree unless a handler named qemu-<cpu>
    # has the F flag; ours has F under another name, and qemu 10 may have no such file. So check here and skip it.
    at="$(arch-test "$ARCH" 2>&1)" || die "the kernel does not run $ARCH programs through binfmt_misc: $at"
    SKIP+=(--skip=check/qemu)
fi
log "mmdebstrap $SUITE ($ARCH) into $ROOT"
mkdir -p "$ROOT"
# shellcheck disable=SC2016 # the hooks are run by mmdebstrap with the chroot path as $1
run_child mmdebstrap \
    --mode=root \
    --variant=minbase \
    --arch="$ARCH" \
    "${SKIP[@]}" \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --aptopt='Acquire::Languages "none"' \
    --setup-hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\" && cp '$WORK'/initramfs-conf.d/* \"\$1/etc/initramfs-tools/conf.d/\"" \
    --setup-hook="install -m 0644 '$WORK/fstab' \"\$1/etc/fstab\"" \
    "${EXTRA_HOOKS[@]}" \
    --customize-hook='rm -f "$1"/etc/apt/apt.conf.d/99mmdebstrap' \
    "$SUITE" "$ROOT" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main"
log "mmdebstrap done after $((SECONDS - START_TIME)) s"

# --- 2. configuration ----------------------------------------------------------------------------------------------
log "configuring the tree"
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF

# mmdebstrap copied the host's hostname and hosts files (with their modes): replace them.
rm -f "$ROOT/etc/hostname" "$ROOT/etc/hosts"
echo "$HOSTNAME_DEFAULT" >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_DEFAULT

# The following lines are desirable for IPv6 capable hosts
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF

cmp -s "$WORK/fstab" "$ROOT/etc/fstab" || die "/etc/fstab was changed during the package installation"
mkdir -p "$ROOT/boot/efi"

# ifupdown: cloud-init renders the network configuration into /etc/network/interfaces.d/50-cloud-init.
cat >"$ROOT/etc/network/interfaces" <<'EOF'
# interfaces(5) file used by ifup(8) and ifdown(8)
# Include files from /etc/network/interfaces.d:
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
mkdir -p "$ROOT/etc/network/interfaces.d"

# GRUB defaults, so that update-grub on the booted system (or in a chroot) keeps the serial console.
mkdir -p "$ROOT/etc/default/grub.d"
cat >"$ROOT/etc/default/grub.d/10_cloud.cfg" <<EOF
# Written by $PROG: serial console for cloud VMs.
GRUB_CMDLINE_LINUX_DEFAULT="$KERNEL_CMDLINE"
GRUB_TERMINAL="$GRUB_TERMINAL"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
cat >"$ROOT/etc/default/grub.d/15_timeout.cfg" <<'EOF'
GRUB_TIMEOUT=1
EOF

# Locale C.UTF-8, which glibc always has. cloud-init's default (en_US.UTF-8) fails here: Debian's locale-gen
# ignores the locale cloud-init names, and update-locale then rejects it.
echo "LANG=C.UTF-8" >"$ROOT/etc/default/locale"
mkdir -p "$ROOT/etc/cloud/cloud.cfg.d"
cat >"$ROOT/etc/cloud/cloud.cfg.d/01_kib_base.cfg" <<'EOF'
# Written by make-base-image.sh.
locale: C.UTF-8
EOF

# A regular, empty resolv.conf: dhclient fills it on boot.
rm -f "$ROOT/etc/resolv.conf"
: >"$ROOT/etc/resolv.conf"

# Identity: empty machine-id (systemd makes one on first boot), no SSH host keys (cloud-init makes them).
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$ROOT/var/lib/dbus/machine-id"
rm -f "$ROOT"/etc/ssh/ssh_host_*

# Caches and logs.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb
mkdir -p "$ROOT/var/lib/apt/lists/partial"
find "$ROOT/var/log" -type f -exec truncate -s 0 {} +
rm -rf "${ROOT:?}"/tmp/* "${ROOT:?}"/var/tmp/*

# --- 3. boot loader files inside the tree --------------------------------------------------------------------------
mapfile -t KERNELS < <(cd "$ROOT/boot" && ls vmlinuz-* 2>/dev/null)
[[ ${#KERNELS[@]} -eq 1 ]] || die "expected exactly one kernel in /boot, found: ${KERNELS[*]:-none}"
KVER="${KERNELS[0]#vmlinuz-}"
[[ -f "$ROOT/boot/initrd.img-$KVER" ]] || die "no initrd for kernel $KVER"
log "kernel $KVER"

# grub.cfg, written like update-grub's output (update-grub cannot probe a device here: there is none).
mkdir -p "$ROOT/boot/grub"
cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# Written by $PROG. Run update-grub on the booted system to regenerate it from /etc/default/grub.
set default=0
set timeout=1
$(if [[ "$GRUB_TERMINAL" == *serial* ]]; then echo "serial --unit=0 --speed=115200"; fi)
terminal_input $GRUB_TERMINAL
terminal_output $GRUB_TERMINAL
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root $ROOT_UUID
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os {
	insmod all_video
	insmod gzio
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root $ROOT_UUID
	echo	'Loading Linux $KVER ...'
	linux	/boot/vmlinuz-$KVER root=UUID=$ROOT_UUID ro $KERNEL_CMDLINE
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-$KVER
}
EOF

# The early config embedded in core.img / BOOTX64.EFI: find the root filesystem by UUID, then load grub.cfg.
cat >"$WORK/early.cfg" <<EOF
search.fs_uuid $ROOT_UUID root
set prefix=(\$root)/boot/grub
EOF
cp "$WORK/early.cfg" "$ROOT/tmp/kib-early.cfg"

copy_grub_modules() { # target
    local src="$ROOT/usr/lib/grub/$1" dst="$ROOT/boot/grub/$1"
    mkdir -p "$dst"
    find "$src" -maxdepth 1 -type f \( -name '*.mod' -o -name '*.lst' -o -name '*.o' \) -exec cp -t "$dst" {} +
}

if [[ "$BIOS_BOOT" -eq 1 ]]; then
    copy_grub_modules "$GRUB_BIOS_TARGET"
    # grub-mkimage from the image itself, so core.img matches the modules it will load.
    chroot "$ROOT" grub-mkimage -O "$GRUB_BIOS_TARGET" -o /tmp/kib-core.img -c /tmp/kib-early.cfg -p /boot/grub \
        biosdisk part_gpt part_msdos ext2 search_fs_uuid
    cp "$ROOT/tmp/kib-core.img" "$ROOT/boot/grub/$GRUB_BIOS_TARGET/core.img"
    cp "$ROOT/usr/lib/grub/$GRUB_BIOS_TARGET/boot.img" "$ROOT/boot/grub/$GRUB_BIOS_TARGET/boot.img"
    mkdir -p "$WORK/grub-bios"
    cp "$ROOT/tmp/kib-core.img" "$WORK/grub-bios/core.img"
    cp "$ROOT/usr/lib/grub/$GRUB_BIOS_TARGET/boot.img" "$WORK/grub-bios/boot.img"
fi
copy_grub_modules "$GRUB_EFI_TARGET"
chroot "$ROOT" grub-mkimage -O "$GRUB_EFI_TARGET" -o /tmp/kib-grub.efi -c /tmp/kib-early.cfg -p /boot/grub \
    part_gpt part_msdos ext2 fat search_fs_uuid
cp "$ROOT/tmp/kib-grub.efi" "$WORK/grub.efi"
if [[ -f "$ROOT/usr/share/grub/unicode.pf2" ]]; then
    mkdir -p "$ROOT/boot/grub/fonts"
    cp "$ROOT/usr/share/grub/unicode.pf2" "$ROOT/boot/grub/fonts/"
fi
rm -f "$ROOT"/tmp/kib-*

# --- 4. disk and partition table -----------------------------------------------------------------------------------
log "partitioning $DISK_SIZE_MIB MiB disk"
truncate -s "${DISK_SIZE_MIB}M" "$DISK"
{
    echo "label: gpt"
    echo "unit: sectors"
    echo
    if [[ "$BIOS_BOOT" -eq 1 ]]; then
        echo "${DISK}14 : start=$BIOSBOOT_START, size=$BIOSBOOT_SIZE, type=$BIOSBOOT_PARTTYPE"
    fi
    echo "${DISK}15 : start=$ESP_START, size=$ESP_SIZE, type=$ESP_PARTTYPE"
    echo "${DISK}1 : start=$ROOT_START, type=$ROOT_PARTTYPE"
} | sfdisk --quiet --no-reread --no-tell-kernel "$DISK"

# Read back where the root partition ended up: "start= N, size= M".
ROOT_LINE="$(sfdisk -d "$DISK" | grep -E "^${DISK}1 :")"
ROOT_SECTORS="$(sed -E 's/.*size= *([0-9]+).*/\1/' <<<"$ROOT_LINE")"
[[ "$ROOT_SECTORS" =~ ^[0-9]+$ ]] || die "could not read the root partition size from sfdisk"

# --- 5. ESP (vfat, populated with mtools) --------------------------------------------------------------------------
log "making the ESP (vfat $ESP_UUID)"
ESP_IMG="$WORK/esp.img"
mkfs.vfat -C -i "$ESP_SERIAL" "$ESP_IMG" $((ESP_SIZE / 2)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$ESP_IMG" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$ESP_IMG" "$WORK/grub.efi" "::/EFI/BOOT/$EFI_BOOT_NAME"
mcopy -i "$ESP_IMG" "$WORK/grub.efi" "::/EFI/debian/$EFI_GRUB_NAME"
dd if="$ESP_IMG" of="$DISK" bs=512 seek="$ESP_START" conv=notrunc,sparse status=none
rm -f "$ESP_IMG"

# --- 6. root filesystem (ext4 from the tree, no mount) -------------------------------------------------------------
# An explicit feature list, so that a newer mke2fs.conf on the host cannot enable features bookworm's GRUB 2.06
# does not read (orphan_file, metadata_csum_seed).
cat >"$WORK/mke2fs.conf" <<'EOF'
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
EOF
log "making the root filesystem (ext4 $ROOT_UUID, $((ROOT_SECTORS / 2048)) MiB)"
ROOT_IMG="$WORK/root.img"
ROOT_BLOCKS=$((ROOT_SECTORS / 8))        # 4 KiB blocks
truncate -s $((ROOT_BLOCKS * 4096)) "$ROOT_IMG"
MKE2FS_CONFIG="$WORK/mke2fs.conf" \
    mkfs.ext4 -q -F -t ext4 -b 4096 -U "$ROOT_UUID" -d "$ROOT" "$ROOT_IMG" "$ROOT_BLOCKS"
if ! fsck_out="$(e2fsck -fn "$ROOT_IMG" 2>&1)"; then
    printf '%s\n' "$fsck_out" >&2
    die "e2fsck found problems in the new root filesystem"
fi
dd if="$ROOT_IMG" of="$DISK" bs=512 seek="$ROOT_START" conv=notrunc,sparse status=none
rm -f "$ROOT_IMG"

# --- 7. BIOS boot code ---------------------------------------------------------------------------------------------
if [[ "$BIOS_BOOT" -eq 1 ]]; then
    log "installing GRUB boot code (MBR + BIOS boot partition)"
    install_grub_bios "$DISK" "$WORK/grub-bios/boot.img" "$WORK/grub-bios/core.img" "$BIOSBOOT_START" "$BIOSBOOT_SIZE"
fi

# --- 8. checksum, stamp, atomic rename -----------------------------------------------------------------------------
log "checksumming"
IMAGE_SHA="$(sha256_of "$DISK")"
# SHA256SUMS lists every image in the output directory (amd64 and arm64): keep the other lines.
if [[ -f "$SUMS" ]]; then
    awk -v n="$IMAGE_NAME" '!($2 == n || $2 == "*" n)' "$SUMS" >"$WORK/SHA256SUMS"
fi
printf '%s  %s\n' "$IMAGE_SHA" "$IMAGE_NAME" >>"$WORK/SHA256SUMS"
printf '%s\nimage=%s %s\n' "$STAMP_CONTENT" "$IMAGE_SHA" "$(file_identity "$DISK")" >"$WORK/stamp"
rm -f "$STAMP"                       # an old stamp must never vouch for a half-replaced image
mv -f "$DISK" "$IMAGE"
mv -f "$WORK/SHA256SUMS" "$SUMS"
mv -f "$WORK/stamp" "$STAMP"
log "built $IMAGE in $((SECONDS - START_TIME)) s"
echo "$IMAGE" >&3
