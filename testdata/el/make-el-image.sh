#!/usr/bin/env bash
# make-el-image.sh: kib's EL-shaped (and SUSE-shaped) TEST FIXTURE disk images.
#
# No RPM distribution's image or repository is reachable from kib's test machines. This script
# builds stand-ins from Debian's archive: a Debian 12 (bookworm) userland, made with mmdebstrap,
# with Debian's own rpm, dnf and dnf-plugins-core (or zypper), systemd and ca-certificates, dressed
# as an RPM-based distribution:
#
#   --variant el (default)  /etc/os-release says ID=rocky, ID_LIKE="rhel centos fedora",
#                           VERSION_ID=9.4, PLATFORM_ID=platform:el9 and a PRETTY_NAME naming it
#                           a kib test fixture. The rpmdb (/var/lib/rpm, sqlite) holds fixture
#                           packages standing in for what a real Rocky 9 image has installed,
#                           among them rocky-release, which provides system-release(releasever)
#                           = 9, so that dnf finds $releasever as on a real EL image.
#                           /etc/yum.repos.d/rocky.repo points at https://dl.rockylinux.org with
#                           gpgcheck=1 and the fixture distribution key (kib's mirror map is what
#                           sends it to the fixture mirror). dnf.conf is EL 9's; the versionlock
#                           plugin works; apt-get and the other apt front ends are removed.
#   --variant suse          ID=sles, ID_LIKE="suse", VERSION_ID=15.6; zypper instead of dnf; the
#                           rpmdb in /usr/lib/sysimage/rpm (with /var/lib/rpm a symlink to it, as
#                           on SUSE); sles-release; /etc/zypp/repos.d/ pointing at
#                           https://updates.suse.com; /etc/products.d/baseproduct.
#
# The fixture packages and their signed repositories come from
# testdata/mirror/make-rpm-fixtures.sh (its cached distribution part: the same throw-away keys
# sign the repositories the image trusts). NOTHING in the rpmdb is a real Rocky or SUSE package:
# each installs only a marker file under /usr/share/kib-fixture/rpm/. The programs that run are
# Debian's. The Debian userland keeps its dpkg database (/var/lib/dpkg/status) and dpkg itself:
# kib must read the rpmdb on this image, not dpkg's status (see testdata/el/NOTES.md).
#
# The disk: raw, sparse, 2 GiB, GPT with ONE partition (1 MiB .. end), ext4, type "Linux root
# (x86-64)", mounted by UUID in /etc/fstab. There is NO boot loader, kernel or initramfs: this is a
# fixture for kib's offline steps, not a bootable image (a real Rocky image has a BIOS boot
# partition, an ESP, an xfs /boot and an xfs root; kib reads the fstab, so the layout differs
# harmlessly).
#
# Usage: make-el-image.sh [--variant el|suse] [--output-dir DIR] [--force]
#
# The image is cached in the output directory (default /var/cache/kib/el) with a stamp file
# recording this script's sha256, make-rpm-fixtures.sh's sha256, the distribution key's
# fingerprint and the image's own sha256/size/mtime/inode; when they all match, nothing is
# rebuilt. The image path is always the LAST line of stdout; progress goes to stderr. amd64 only.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
PROG="$(basename "$SELF")"
RPM_FIXTURES="$(dirname "$SELF")/../mirror/make-rpm-fixtures.sh"

VARIANT=el
OUTPUT_DIR="${KIB_EL_CACHE:-/var/cache/kib/el}"
FORCE=0
SUITE=bookworm
MIRROR="http://deb.debian.org/debian"
SECURITY_MIRROR="http://deb.debian.org/debian-security"
DISK_SIZE_MIB=2048
ROOT_START=2048                                        # sectors: 1 MiB
ROOT_PARTTYPE="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"   # Linux root (x86-64)

log() { printf "%s: [%3ds] %s\n" "$PROG" "$SECONDS" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage() {
    cat <<EOF
Usage: $PROG [--variant el|suse] [--output-dir DIR] [--force]

Build kib's EL-shaped (Rocky 9.4 stand-in, dnf) or SUSE-shaped (SLES 15 SP6 stand-in, zypper)
TEST FIXTURE disk image from Debian's archive. Not bootable: no boot loader, no kernel.

  --variant V       el (default) or suse
  --output-dir DIR  where the image and its stamp go (default: /var/cache/kib/el)
  --force           rebuild even when a valid cached image exists
  -h, --help        show this help

The image path is printed as the last line of stdout. Must run as root.
EOF
}

ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) [[ $# -ge 2 ]] || die "--variant needs a value"; VARIANT="$2"; shift 2 ;;
        --variant=*) VARIANT="${1#*=}"; shift ;;
        --output-dir) [[ $# -ge 2 ]] || die "--output-dir needs a value"; OUTPUT_DIR="$2"; shift 2 ;;
        --output-dir=*) OUTPUT_DIR="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

case "$VARIANT" in
    el)
        IMAGE_NAME="kib-fixture-rocky-9.4-amd64.raw"
        # dnf-plugins-core (versionlock) and zypper cannot be installed together: Debian's
        # dnf-plugins-core declares Breaks/Replaces: zypper.
        DEB_PACKAGES=(rpm dnf dnf-plugins-core systemd ca-certificates gnupg)
        HOSTNAME_DEFAULT="rocky-fixture"
        ;;
    suse)
        IMAGE_NAME="kib-fixture-sles-15.6-amd64.raw"
        DEB_PACKAGES=(rpm zypper systemd ca-certificates gnupg)
        HOSTNAME_DEFAULT="sles-fixture"
        ;;
    *) die "unsupported --variant '$VARIANT' (supported: el, suse)" ;;
esac
STAMP_NAME="${IMAGE_NAME%.raw}.stamp"

[[ "$(id -u)" -eq 0 ]] || die "must run as root"
[[ "$(dpkg --print-architecture)" == amd64 ]] || die "this fixture is amd64 only; the host is $(dpkg --print-architecture)"
[[ -f "$RPM_FIXTURES" ]] || die "$RPM_FIXTURES is missing"

# A private mount namespace: the /proc this script mounts in the tree goes away with it, even
# on SIGKILL.
if [[ -z "${KIB_MAKE_EL_IMAGE_NS:-}" ]]; then
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    export KIB_MAKE_EL_IMAGE_NS=1
    exec unshare --mount --propagation private -- bash "$SELF" "${ORIG_ARGS[@]}"
fi

# stdout carries only the final image path (fd 3).
exec 3>&1 1>&2

mkdir -p "$OUTPUT_DIR"
OUTPUT_DIR="$(readlink -f "$OUTPUT_DIR")"
IMAGE="$OUTPUT_DIR/$IMAGE_NAME"
STAMP="$OUTPUT_DIR/$STAMP_NAME"

exec 9>"$OUTPUT_DIR/.$IMAGE_NAME.lock"
if ! flock -n 9; then
    log "waiting for another build of $IMAGE_NAME to finish"
    flock 9
fi

# The distribution fixtures (cached by make-rpm-fixtures.sh): the packages to install and the key.
DISTRO="$(bash "$RPM_FIXTURES" --distro-cache | tail -n 1)"
[[ -d "$DISTRO" && -f "$DISTRO/keys/distro.fpr" ]] || die "make-rpm-fixtures.sh gave no distribution folder"
DISTRO_FPR="$(cat "$DISTRO/keys/distro.fpr")"

STAMP_CONTENT="script-sha256=$(sha256sum "$SELF" | cut -d' ' -f1)
rpm-fixtures-sha256=$(sha256sum "$RPM_FIXTURES" | cut -d' ' -f1)
distro-key=$DISTRO_FPR
variant=$VARIANT
suite=$SUITE"

file_identity() { stat -c '%s %.9Y %i' "$1"; }
cache_valid() {
    [[ -f "$IMAGE" && -f "$STAMP" ]] || return 1
    [[ "$(grep -v '^image=' "$STAMP")" == "$STAMP_CONTENT" ]] || { log "cache stamp is for another script, key or variant"; return 1; }
    local want
    want="$(sed -n 's/^image=//p' "$STAMP")"
    [[ -n "$want" && "$want" == "${want%% *} $(file_identity "$IMAGE")" ]] || { log "cached image changed since it was built"; return 1; }
}
if [[ "$FORCE" -eq 0 ]] && cache_valid; then
    log "cached image is up to date"
    echo "$IMAGE" >&3
    exit 0
fi

# --- tools -----------------------------------------------------------------------------------
need=()
for pkg in mmdebstrap fdisk e2fsprogs util-linux debian-archive-keyring openssl; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == "install ok installed" ]] || need+=("$pkg")
done
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${need[@]}" >/dev/null
fi

# --- work area -------------------------------------------------------------------------------
WORK=""
CHILD_PID=""
run_child() {
    setsid "$@" </dev/null &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}
cleanup() {
    local rc=$?
    set +e
    if [[ -n "$CHILD_PID" ]]; then
        kill -TERM -- "-$CHILD_PID" 2>/dev/null
        wait "$CHILD_PID" 2>/dev/null
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        local m
        findmnt -rn -o TARGET | awk -v w="$WORK" 'index($0, w "/") == 1' | sort -r |
            while read -r m; do umount -l "$m" || log "warning: could not unmount $m"; done
        if findmnt -rn -o TARGET | awk -v w="$WORK" 'index($0, w "/") == 1 { found = 1 } END { exit !found }'; then
            log "warning: mounts remain below $WORK; not removing it"
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    [[ $rc -eq 0 ]] || log "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

WORK="$(mktemp -d "$OUTPUT_DIR/.build-$VARIANT.XXXXXX")"
ROOT="$WORK/root"
DISK="$WORK/$IMAGE_NAME"
START_TIME=$SECONDS
ROOT_UUID="$(cat /proc/sys/kernel/random/uuid)"

# --- 1. the Debian userland ------------------------------------------------------------------
log "mmdebstrap $SUITE with ${DEB_PACKAGES[*]} into $ROOT"
mkdir -p "$ROOT"
# shellcheck disable=SC2016 # the hooks are run by mmdebstrap with the chroot path as $1
run_child mmdebstrap \
    --mode=root \
    --variant=minbase \
    --include="$(IFS=,; echo "${DEB_PACKAGES[*]}")" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='rm -f "$1"/etc/apt/apt.conf.d/99mmdebstrap' \
    "$SUITE" "$ROOT" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main"
log "mmdebstrap done after $((SECONDS - START_TIME)) s"

in_root() { chroot "$ROOT" "$@"; }
mount -t proc proc "$ROOT/proc"

# --- 2. RPM: the database, the key, the installed fixture packages ---------------------------
# Debian's rpm keeps its database in ~/.rpmdb (a per-user database, so that rpm does not pretend
# to manage a Debian system). An RPM distribution's is system-wide: EL 9's /var/lib/rpm, SUSE's
# /usr/lib/sysimage/rpm (with /var/lib/rpm a symlink to it). Both sqlite here: Debian's rpm
# 4.18 has no ndb backend (SUSE's default).
mkdir -p "$ROOT/usr/lib/rpm/macros.d"
if [[ "$VARIANT" == el ]]; then
    DBPATH=/var/lib/rpm
else
    DBPATH=/usr/lib/sysimage/rpm
fi
cat >"$ROOT/usr/lib/rpm/macros.d/macros.kib-fixture" <<EOF
# kib TEST FIXTURE ($PROG): the system-wide rpm database, as on the distribution this image
# stands in for (Debian's rpm defaults to a per-user ~/.rpmdb).
%_dbpath $DBPATH
EOF
rm -rf "$ROOT/var/lib/rpm"
mkdir -p "$ROOT$DBPATH"
if [[ "$VARIANT" == suse ]]; then
    ln -s ../../usr/lib/sysimage/rpm "$ROOT/var/lib/rpm"
fi
in_root rpm --initdb

LIST="$DISTRO/installed-$VARIANT.list"
[[ -s "$LIST" ]] || die "$LIST is missing or empty"
mkdir -p "$ROOT/tmp/kib-fixture-rpms"
while read -r rel; do
    cp -- "$DISTRO/$rel" "$ROOT/tmp/kib-fixture-rpms/"
done <"$LIST"
cp -- "$DISTRO/keys/distro.asc" "$ROOT/tmp/kib-fixture-rpms/distro.asc"
log "installing $(wc -l <"$LIST") fixture packages into the rpmdb ($DBPATH)"
in_root rpm --import /tmp/kib-fixture-rpms/distro.asc
# --force-debian: Debian's rpm otherwise warns that rpm should not install packages on Debian.
in_root rpm -i --force-debian --quiet /tmp/kib-fixture-rpms/*.rpm
in_root rpm -Va --nodeps >/dev/null ||
    die "rpm -V found problems in the fixture packages"
rm -rf "$ROOT/tmp/kib-fixture-rpms"

# --- 3. distribution-specific configuration ---------------------------------------------------
mkdir -p "$ROOT/usr/lib/systemd/system-preset"
if [[ "$VARIANT" == el ]]; then
    # EL 9's /etc/dnf/dnf.conf (Debian's has best=False and skip_if_unavailable=True, which
    # would hide a broken mirror).
    cat >"$ROOT/etc/dnf/dnf.conf" <<'EOF'
[main]
gpgcheck=1
installonly_limit=3
clean_requirements_on_remove=True
best=True
skip_if_unavailable=False
EOF
    # Plugins Debian's dnf-plugins-core enables that an EL image does not have installed: "local"
    # adds a _dnf_local repository, "show-leaves" prints "New leaves:" after each transaction.
    # versionlock stays (EL: python3-dnf-plugin-versionlock, installed here per the rpmdb).
    sed -i 's/^enabled *= *.*/enabled = false/' "$ROOT/etc/dnf/plugins/local.conf"
    sed -i 's/^enabled *= *.*/enabled = 0/' "$ROOT/etc/dnf/plugins/post-transaction-actions.conf"
    printf '[main]\nenabled = 0\n' >"$ROOT/etc/dnf/plugins/show-leaves.conf"
    # EL has yum as a link to dnf-3 (Debian's dnf has none); kib's detection looks for both.
    ln -sf dnf-3 "$ROOT/usr/bin/yum"
    # EL's presets: Debian's systemd enables everything by default, EL 9 disables what its
    # 90-default.preset does not name (systemd's own presets stay).
    cat >"$ROOT/usr/lib/systemd/system-preset/90-default.preset" <<'EOF'
# kib TEST FIXTURE: an excerpt of EL 9's 90-default.preset.
enable auditd.service
enable chronyd.service
enable crond.service
enable sshd.service
enable sssd.service
enable rsyslog.service
enable vmtoolsd.service
enable nfs-convert.service
EOF
    echo "disable *" >"$ROOT/usr/lib/systemd/system-preset/99-default-disable.preset"
else
    cat >"$ROOT/usr/lib/systemd/system-preset/90-default-SLE.preset" <<'EOF'
# kib TEST FIXTURE: an excerpt of SLES 15's default presets.
enable auditd.service
enable chronyd.service
enable sshd.service
enable wicked.service
enable vmtoolsd.service
EOF
    echo "disable *" >"$ROOT/usr/lib/systemd/system-preset/99-default.preset"
fi

# apt must not look like this image's package manager: kib detects the backend by os-release
# and by which of apt-get, dnf, yum, microdnf, tdnf, zypper exist. dpkg stays (it is the
# Debian userland's, and its database is the userland's inventory).
for b in apt apt-get apt-cache apt-cdrom apt-config apt-key apt-mark; do
    rm -f "$ROOT/usr/bin/$b"
done
rm -rf "$ROOT/etc/apt" "$ROOT/var/lib/apt" "$ROOT/var/cache/apt" "$ROOT/var/log/apt"

# --- 4. identity, files, caches ---------------------------------------------------------------
cat >"$WORK/fstab" <<EOF
# /etc/fstab (kib TEST FIXTURE: one ext4 root, mounted by UUID).
UUID=$ROOT_UUID	/	ext4	defaults	0	1
EOF
install -m 0644 "$WORK/fstab" "$ROOT/etc/fstab"
rm -f "$ROOT/etc/hostname" "$ROOT/etc/hosts"
echo "$HOSTNAME_DEFAULT" >"$ROOT/etc/hostname"
printf '127.0.0.1   localhost localhost.localdomain\n::1         localhost localhost.localdomain\n' >"$ROOT/etc/hosts"
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/etc/resolv.conf"
: >"$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/usr/share/kib-fixture"
cat >"$ROOT/usr/share/kib-fixture/README" <<EOF
This is a kib TEST FIXTURE image, not $(. "$ROOT/usr/lib/os-release"; echo "$NAME $VERSION_ID"): a Debian 12
userland (mmdebstrap) with Debian's rpm and $([[ $VARIANT == el ]] && echo "dnf" || echo "zypper"), dressed as an RPM distribution
by kib's testdata/el/make-el-image.sh. The packages in its rpmdb are fixtures made by
testdata/mirror/make-rpm-fixtures.sh; each installs only a marker in /usr/share/kib-fixture/rpm/.
EOF

umount "$ROOT/proc"
rm -rf "$ROOT"/var/cache/dnf/* "$ROOT"/var/cache/zypp/* "$ROOT"/tmp/* "$ROOT"/var/tmp/*
find "$ROOT/var/log" -type f -exec truncate -s 0 {} +
# The os-release the rpmdb's release package installed must be what kib reads.
grep -q '^KIB_FIXTURE="yes"' "$ROOT/usr/lib/os-release" || die "os-release is not the fixture's"

# --- 5. the disk: GPT, one ext4 partition, written without mounting ---------------------------
log "partitioning a $DISK_SIZE_MIB MiB disk"
truncate -s "${DISK_SIZE_MIB}M" "$DISK"
printf 'label: gpt\nunit: sectors\n\n%s1 : start=%s, type=%s, name="root"\n' "$DISK" "$ROOT_START" "$ROOT_PARTTYPE" |
    sfdisk --quiet --no-reread --no-tell-kernel "$DISK"
ROOT_SECTORS="$(sfdisk -d "$DISK" | sed -nE "s|^${DISK}1 :.*size= *([0-9]+).*|\1|p")"
[[ "$ROOT_SECTORS" =~ ^[0-9]+$ ]] || die "could not read the root partition size from sfdisk"
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
log "making the root filesystem (ext4 $ROOT_UUID)"
ROOT_IMG="$WORK/root.img"
ROOT_BLOCKS=$((ROOT_SECTORS / 8))
truncate -s $((ROOT_BLOCKS * 4096)) "$ROOT_IMG"
MKE2FS_CONFIG="$WORK/mke2fs.conf" mkfs.ext4 -q -F -t ext4 -b 4096 -L root -U "$ROOT_UUID" -d "$ROOT" "$ROOT_IMG" "$ROOT_BLOCKS"
if ! fsck_out="$(e2fsck -fn "$ROOT_IMG" 2>&1)"; then
    printf '%s\n' "$fsck_out" >&2
    die "e2fsck found problems in the new root filesystem"
fi
dd if="$ROOT_IMG" of="$DISK" bs=512 seek="$ROOT_START" conv=notrunc,sparse status=none
rm -f "$ROOT_IMG"

# --- 6. stamp, atomic rename ------------------------------------------------------------------
# openssl uses the CPU's SHA extensions (about 1 GB/s here), coreutils' sha256sum does not.
IMAGE_SHA="$(openssl dgst -sha256 -r "$DISK" | cut -d' ' -f1)"
printf '%s\nimage=%s %s\n' "$STAMP_CONTENT" "$IMAGE_SHA" "$(file_identity "$DISK")" >"$WORK/stamp"
rm -f "$STAMP"
mv -f "$DISK" "$IMAGE"
mv -f "$WORK/stamp" "$STAMP"
log "built $IMAGE ($VARIANT) in $((SECONDS - START_TIME)) s; sha256 $IMAGE_SHA"
echo "$IMAGE" >&3
