#!/usr/bin/env bash
# make-image.sh: build kib's arm64 TEST FIXTURE disk image: a Debian 12 (bookworm) arm64 userland, mmdebstrap's
# minbase variant plus systemd and ca-certificates, as the root filesystem of a GPT disk. It is NOT a bootable cloud
# image: no kernel, no initramfs, no boot loader, no ESP, no cloud-init, no ssh. It stands in for Debian's arm64
# genericcloud image in tests/arm64.rs and `scripts/bench.sh node-arm64`, which customize it on an amd64 host with
# every program of the image running under qemu-user through binfmt_misc. Everything those need is there: a GPT
# with the root partition typed "Linux root (ARM-64)", ext4 mounted by UUID from /etc/fstab, /etc/os-release,
# /bin/sh, dpkg and apt with Debian's sources, systemctl (for `systemd` steps) and CA certificates.
#
# For a full arm64 cloud image (kernel, GRUB, cloud-init; 15-25 min under qemu-user here) use
# scripts/make-base-image.sh --arch arm64. This fixture takes about 3 minutes of CPU time (measured on the shared 2-core
# VM: 6.5-8 minutes wall while other jobs kept the load average at 6-7), 0.05 s when cached.
#
#   raw, sparse, 1 GiB, GPT:
#     partition 1  ext4 root  (1 MiB .. end)  type B921B045-1DF0-41C3-AF44-4C6F280D3FAE, Linux root (ARM-64)
#
# Usage: make-image.sh [--output-dir DIR] [--force] [--verify]
#
# The image, a SHA256SUMS beside it and a stamp are cached in the output directory (default
# /var/cache/kib/fixtures/arm64). The stamp records the sha256 of this script and of scripts/lib/qemu-binfmt.sh (and
# the image's hash, size, mtime and inode); when the image, a matching SHA256SUMS and a stamp for these script
# versions are all there, nothing is rebuilt. The image path is always the LAST line of stdout; progress goes to
# stderr. Must run as root. Nothing is mounted and no loop device is used: the filesystem is made with
# `mkfs.ext4 -d` from the mmdebstrap tree and copied into the disk at its partition offset.
#
# On an amd64 host the arm64 packages' scripts run under qemu-user: the host's binfmt handler qemu-aarch64 when it is
# enabled with the F flag, otherwise one this script registers (F flag) as kib-fixture-qemu-aarch64-<pid> and removes
# when it ends. Both layouts of Debian's qemu-user packages (7.2 in Debian 12, 10 in bookworm-backports and Debian 13)
# work; see scripts/lib/qemu-binfmt.sh.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
PROG="kib-arm64-fixture"
LIB="$(dirname "$SELF")/../../scripts/lib/qemu-binfmt.sh"
LIB="$(readlink -f "$LIB")"

ARCH="arm64"
QEMU_CPU="aarch64"
OUTPUT_DIR="/var/cache/kib/fixtures/arm64"
FORCE=0
VERIFY=0

SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
SECURITY_MIRROR="http://deb.debian.org/debian-security"
DISK_SIZE_MIB=1024
ROOT_START=2048                                          # sectors: 1 MiB
ROOT_PARTTYPE="B921B045-1DF0-41C3-AF44-4C6F280D3FAE"     # Linux root (ARM-64)
HOSTNAME_DEFAULT="debian"
# On top of minbase (which has dpkg, apt, dash as /bin/sh, coreutils): systemctl for `systemd` steps, CA
# certificates as a cloud image has them.
PACKAGES=(systemd ca-certificates)

IMAGE_NAME="kib-fixture-debian-12-minbase-arm64.raw"
STAMP_NAME="kib-fixture-debian-12-minbase-arm64.stamp"

log() { printf "%s: [%3ds] %s\n" "$PROG" "$SECONDS" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $0 [--output-dir DIR] [--force] [--verify]

Build kib's arm64 TEST FIXTURE: a Debian 12 arm64 minbase tree (plus systemd, ca-certificates) on a 1 GiB GPT
disk, root partition typed "Linux root (ARM-64)". Not bootable: no kernel, boot loader or cloud-init.

  --output-dir DIR   where the image, SHA256SUMS and stamp go (default: /var/cache/kib/fixtures/arm64)
  --force            rebuild even when a valid cached image exists
  --verify           re-hash a cached image against SHA256SUMS even when its size, mtime and inode are unchanged
  -h, --help         show this help

The image path is printed as the last line of stdout. Must run as root.
EOF
}

ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --output-dir) [[ $# -ge 2 ]] || die "--output-dir needs a value"; OUTPUT_DIR="$2"; shift 2 ;;
        --output-dir=*) OUTPUT_DIR="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --verify) VERIFY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ "$(id -u)" -eq 0 ]] || die "must run as root"
[[ -f "$LIB" ]] || die "$LIB is missing (this script runs from a kib checkout)"
# shellcheck source=../../scripts/lib/qemu-binfmt.sh
source "$LIB"

# A private mount namespace: whatever mmdebstrap mounts in its chroot, and a binfmt_misc mount made here, go with it
# even if this script is killed with SIGKILL.
if [[ -z "${KIB_ARM64_FIXTURE_NS:-}" ]]; then
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    export KIB_ARM64_FIXTURE_NS=1
    exec unshare --mount --propagation private -- bash "$SELF" "${ORIG_ARGS[@]}"
fi

# From here on, stdout carries only the final image path (fd 3); everything else goes to stderr.
exec 3>&1 1>&2

mkdir -p "$OUTPUT_DIR"
OUTPUT_DIR="$(readlink -f "$OUTPUT_DIR")"
IMAGE="$OUTPUT_DIR/$IMAGE_NAME"
SUMS="$OUTPUT_DIR/SHA256SUMS"
STAMP="$OUTPUT_DIR/$STAMP_NAME"
STAMP_CONTENT="script-sha256=$(sha256sum "$SELF" | cut -d' ' -f1)
lib-sha256=$(sha256sum "$LIB" | cut -d' ' -f1)
arch=$ARCH
suite=$SUITE"

# One build at a time per output directory; a cache check waits for a running build.
exec 9>"$OUTPUT_DIR/.lock"
if ! flock -n 9; then
    log "waiting for another build in $OUTPUT_DIR to finish"
    flock 9
fi

sha256_of() {
    if command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha256 -r "$1" | cut -d' ' -f1
    else
        sha256sum "$1" | cut -d' ' -f1
    fi
}
file_identity() { stat -c '%s %.9Y %i' "$1"; }

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
    log "cached fixture is up to date"
    echo "$IMAGE" >&3
    exit 0
fi

# --- dependencies --------------------------------------------------------------------------------------------------
ensure_tools() {
    local -A need=(
        [mmdebstrap]=mmdebstrap [sfdisk]=fdisk [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs [flock]=util-linux
        [findmnt]=util-linux [ldd]=libc-bin
    )
    local foreign=0
    [[ "$ARCH" == "$(dpkg --print-architecture)" ]] || foreign=1
    [[ "$foreign" -eq 0 ]] || need[arch-test]=arch-test
    local -a missing=()
    local cmd
    for cmd in "${!need[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
    done
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
    # qemu-user: either layout will do (qemu_binfmt_find); qemu-user-static is the package name in both Debian 12
    # (the static binaries) and Debian 13 (a transitional package pulling qemu-user and qemu-user-binfmt).
    if [[ "$foreign" -eq 1 ]] && ! qemu_binfmt_find "$QEMU_CPU"; then
        missing+=(qemu-user-static)
    fi
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
        die "building an $ARCH tree on this $(dpkg --print-architecture) host needs qemu-user: $QEMU_BINFMT_ERROR"
    fi
}
ensure_tools

# --- work area and cleanup -----------------------------------------------------------------------------------------
WORK=""
CHILD_PID=""
# Long commands run in their own process group, in the background, so that a signal runs the trap at once and the
# trap can stop the whole group.
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
        local m
        findmnt -rn -o TARGET | awk -v w="$WORK" 'index($0, w "/") == 1 || $0 == w' | sort -r |
            while read -r m; do umount -l "$m" || log "warning: could not unmount $m"; done
        if findmnt -rn -o TARGET | awk -v w="$WORK" 'index($0, w "/") == 1 { found = 1 } END { exit !found }'; then
            log "warning: mounts remain below $WORK; not removing it"
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    qemu_binfmt_remove
    [[ $rc -eq 0 ]] || log "FAILED (exit $rc)"
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
ROOT_UUID="$(cat /proc/sys/kernel/random/uuid)"

# --- 1. the tree ---------------------------------------------------------------------------------------------------
cat >"$WORK/fstab" <<EOF
# /etc/fstab: static file system information.
# <file system>	<mount point>	<type>	<options>	<dump>	<pass>
UUID=$ROOT_UUID	/	ext4	rw,discard,errors=remount-ro	0	1
# kib test fixture: no ESP and no swap. An example of a swap file entry:
#/swapfile	none	swap	sw	0	0
EOF

SKIP=()
if [[ "$ARCH" != "$(dpkg --print-architecture)" ]]; then
    qemu_binfmt_ensure "$QEMU_CPU" kib-fixture
    # mmdebstrap's own check would copy /usr/bin/qemu-aarch64-static into the tree unless a handler named
    # qemu-aarch64 has the F flag; ours has F under another name, and Debian 13 has no such file. So check here and
    # skip mmdebstrap's check.
    at="$(arch-test "$ARCH" 2>&1)" || die "the kernel does not run $ARCH programs through binfmt_misc: $at"
    SKIP+=(--skip=check/qemu)
fi

log "mmdebstrap $SUITE ($ARCH, minbase + ${PACKAGES[*]}) into $ROOT"
mkdir -p "$ROOT"
# shellcheck disable=SC2016 # the hooks are run by mmdebstrap with the chroot path as $1
run_child mmdebstrap \
    --mode=root \
    --variant=minbase \
    --arch="$ARCH" \
    "${SKIP[@]}" \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --aptopt='Acquire::Languages "none"' \
    --setup-hook="install -D -m 0644 '$WORK/fstab' \"\$1/etc/fstab\"" \
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
cmp -s "$WORK/fstab" "$ROOT/etc/fstab" || die "/etc/fstab was changed during the package installation"

rm -f "$ROOT/etc/hostname" "$ROOT/etc/hosts"
echo "$HOSTNAME_DEFAULT" >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_DEFAULT

::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
rm -f "$ROOT/etc/resolv.conf"
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/machine-id"
echo "LANG=C.UTF-8" >"$ROOT/etc/default/locale"
cat >"$ROOT/etc/kib-test-fixture" <<EOF
kib TEST FIXTURE, made by testdata/arm64/make-image.sh: Debian $SUITE $ARCH minbase + ${PACKAGES[*]}.
Not a bootable image: no kernel, no boot loader, no cloud-init.
EOF

# The facts kib's Phase 0 reads, checked here so that a broken tree fails the build, not a test.
[[ -f "$ROOT/etc/os-release" || -L "$ROOT/etc/os-release" ]] || die "the tree has no /etc/os-release"
for f in /bin/sh /usr/bin/dpkg /usr/bin/apt-get /usr/bin/systemctl /usr/bin/true; do
    [[ -e "$ROOT$f" ]] || die "the tree has no $f"
done
[[ "$(od -An -tx1 -j18 -N2 "$ROOT/usr/bin/dash" | tr -d ' ')" == "b700" ]] || die "/usr/bin/dash is not an aarch64 ELF file"

rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb
mkdir -p "$ROOT/var/lib/apt/lists/partial"
find "$ROOT/var/log" -type f -exec truncate -s 0 {} +
rm -rf "${ROOT:?}"/tmp/* "${ROOT:?}"/var/tmp/*

# --- 3. disk, partition table, root filesystem ---------------------------------------------------------------------
log "partitioning $DISK_SIZE_MIB MiB disk"
truncate -s "${DISK_SIZE_MIB}M" "$DISK"
printf 'label: gpt\nunit: sectors\n\n%s1 : start=%s, type=%s\n' "$DISK" "$ROOT_START" "$ROOT_PARTTYPE" |
    sfdisk --quiet --no-reread --no-tell-kernel "$DISK"
ROOT_LINE="$(sfdisk -d "$DISK" | grep -E "^${DISK}1 :")"
ROOT_SECTORS="$(sed -E 's/.*size= *([0-9]+).*/\1/' <<<"$ROOT_LINE")"
[[ "$ROOT_SECTORS" =~ ^[0-9]+$ ]] || die "could not read the root partition size from sfdisk"

# The same explicit feature list as scripts/make-base-image.sh: what bookworm's own tools read.
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
ROOT_BLOCKS=$((ROOT_SECTORS / 8))
truncate -s $((ROOT_BLOCKS * 4096)) "$ROOT_IMG"
MKE2FS_CONFIG="$WORK/mke2fs.conf" mkfs.ext4 -q -F -t ext4 -b 4096 -U "$ROOT_UUID" -d "$ROOT" "$ROOT_IMG" "$ROOT_BLOCKS"
if ! fsck_out="$(e2fsck -fn "$ROOT_IMG" 2>&1)"; then
    printf '%s\n' "$fsck_out" >&2
    die "e2fsck found problems in the new root filesystem"
fi
dd if="$ROOT_IMG" of="$DISK" bs=512 seek="$ROOT_START" conv=notrunc,sparse status=none
rm -f "$ROOT_IMG"

# --- 4. checksum, stamp, atomic rename -----------------------------------------------------------------------------
log "checksumming"
IMAGE_SHA="$(sha256_of "$DISK")"
if [[ -f "$SUMS" ]]; then
    awk -v n="$IMAGE_NAME" '!($2 == n || $2 == "*" n)' "$SUMS" >"$WORK/SHA256SUMS"
fi
printf '%s  %s\n' "$IMAGE_SHA" "$IMAGE_NAME" >>"$WORK/SHA256SUMS"
printf '%s\nimage=%s %s\n' "$STAMP_CONTENT" "$IMAGE_SHA" "$(file_identity "$DISK")" >"$WORK/stamp"
rm -f "$STAMP"
mv -f "$DISK" "$IMAGE"
mv -f "$WORK/SHA256SUMS" "$SUMS"
mv -f "$WORK/stamp" "$STAMP"
log "built $IMAGE in $((SECONDS - START_TIME)) s"
echo "$IMAGE" >&3
