#!/usr/bin/env bash
# make-lvm-image.sh: FIXTURE disk images for kib's LVM and SELinux support, built from Debian's archive.
#
# These are test fixtures standing in for enterprise golden images (RHEL on Azure, Oracle Linux, CIS-hardened
# images) that cannot be downloaded here. They are real Debian 12 systems with real LVM2 metadata, real xfs and a
# real SELinux policy, built without device-mapper and without activating anything on the build host.
#
# Variants (--variant NAME, repeatable; default: lvm):
#   lvm            debian-12-lvm-amd64.raw: raw, sparse, 3 GiB, GPT, boots with SeaBIOS:
#                    partition 1  BIOS boot  (1 MiB .. 4 MiB)      grub-pc's core.img
#                    partition 2  ext4 /boot (4 MiB .. 260 MiB)    kernel, initrd, grub.cfg, GRUB modules
#                    partition 3  LVM2 PV    (260 MiB .. end)      VG "rootvg": LV "rootlv" (xfs, /) then
#                                                                   LV "varlv" (xfs, /var, the rest of the PV)
#                  fstab mounts /dev/mapper/rootvg-rootlv and /dev/mapper/rootvg-varlv, /boot by UUID; the kernel
#                  command line has root=/dev/mapper/rootvg-rootlv. The guest's own initramfs (initramfs-tools with
#                  lvm2's hook and udev rules) activates the VG at boot. The names are the ones of RHEL's Azure
#                  images, on purpose: "rootvg" is a name that collides with real hosts' VGs, and kib's tests create
#                  a host VG of the same name (testdata/lvm/host-vg.sh) to prove kib never touches it.
#   lvm-selinux    debian-12-lvm-selinux-amd64.raw: the same, plus selinux-policy-default, /etc/selinux/config
#                  SELINUX=permissive SELINUXTYPE=default, security=selinux on the kernel command line, and every
#                  file labelled with setfiles and the image's own file_contexts.
#   selinux        debian-12-selinux-amd64.raw: SELinux as above, but no LVM: partition 3 is a plain xfs root
#                  (fstab by UUID), so that SELinux labelling can be tested on its own.
#   selinux-no-file-contexts
#                  debian-12-selinux-no-file-contexts-amd64.raw (bad input): the selinux image with its policy's
#                  contexts/files/file_contexts (and file_contexts.bin) removed.
#   tiny-NAME      tiny-lvm-NAME.raw: 80 MiB sparse GPT disks holding only LVM metadata (no filesystems), for
#                  kib's refusals and for unit tests of the extent arithmetic. VG "rootvg" with a linear LV
#                  "rootlv", and an LV "varlv" laid out as NAME says:
#                    odd-geometry  (good) pe_start 3 MiB, 2 MiB extents, varlv linear but not at extent 0
#                    missing-pv    the VG has two PVs; the disk holds only the first; varlv is on the missing one
#                    striped       varlv striped over the disk's two PVs (-i2)
#                    spanned       varlv linear, one segment on each of the two PVs
#                    noncontig     varlv linear, two segments on the same PV with a gap between them
#                    raid1         varlv raid1 over the two PVs (rmeta/rimage sub-LVs)
#                    mirror        varlv of the old "mirror" type, core log, over the two PVs
#                    thin          a thin pool "pool" and a thin LV "varlv" in it
#                    snapshot      a COW snapshot "varsnap" of rootlv (rootlv becomes an origin)
#                  Layouts that lvcreate cannot make without device-mapper (raid1, mirror, thin, snapshot) are
#                  written with vgcfgbackup + an added LV section + vgcfgrestore, all metadata only.
#   all-tiny       every tiny-NAME variant.
#
# Beside each image: NAME.pvs.json and NAME.lvs.json, the lvm reports (see testdata/lvm/NOTES.md for the command
# lines) taken at build time, and NAME.stamp. Images are cached in the output directory (default
# /var/cache/kib/lvm) under a stamp holding this script's sha256; a cached image is rebuilt only when the script
# changed, the stamp or SHA256SUMS does not match, or --force. The LAST line of stdout is the path of the last image
# asked for (one line per image); progress goes to stderr.
#
# Host safety: every lvm command runs with --devices naming only this script's own loop devices, a private
# LVM_SYSTEM_DIR (so no /etc/lvm/backup or archive is written), a private locking_dir (the host's /run/lock/lvm
# V_rootvg lock is never taken), no udev, no lvmpolld, no monitoring, and --driverloaded n / -an: nothing is ever
# activated. The whole build runs in a private mount namespace; filesystems are mounted with `mount -o loop` (loop
# devices with autoclear), and the loop devices used for mkfs and lvm are detached as soon as they are done.
#
# Usage: make-lvm-image.sh [--variant NAME]... [--output-dir DIR] [--force] [--verify]
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
PROG="$(basename "$SELF")"

OUTPUT_DIR="/var/cache/kib/lvm"
FORCE=0
VERIFY=0
VARIANTS=()

SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
SECURITY_MIRROR="http://deb.debian.org/debian-security"
KERNEL_CMDLINE="console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"
HOSTNAME_DEFAULT="debian"

VG="rootvg"
ROOT_LV="rootlv"
VAR_LV="varlv"
EXTENT_MIB=4

DISK_SIZE_MIB=3072
# Layout in 512-byte sectors.
BIOSBOOT_START=2048;  BIOSBOOT_SIZE=6144      # 1 MiB .. 4 MiB
BOOT_START=8192;      BOOT_SIZE=524288        # 4 MiB .. 260 MiB
DATA_START=532480                             # 260 MiB .. end: the PV (lvm) or the xfs root (selinux)
ROOT_LV_MIB=1792                              # rootlv; varlv takes the rest of the PV (about 1 GiB)

BIOSBOOT_PARTTYPE="21686148-6449-6E6F-744E-656564454649"
LINUXFS_PARTTYPE="0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LVM_PARTTYPE="E6D6D379-F507-44C2-A23C-238F2A3DF928"
ROOT_PARTTYPE="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"   # Linux root (x86-64)

TINY_NAMES=(odd-geometry missing-pv striped spanned noncontig raid1 mirror thin snapshot)

log() { printf "%s: [%3ds] %s\n" "$PROG" "$SECONDS" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $PROG [--variant NAME]... [--output-dir DIR] [--force] [--verify]

Build FIXTURE disk images with LVM (no device-mapper needed) and/or SELinux labels from Debian's archive.

  --variant NAME     lvm (default), lvm-selinux, selinux, selinux-no-file-contexts, tiny-NAME or all-tiny
                     (tiny names: ${TINY_NAMES[*]}); repeatable
  --output-dir DIR   where images, reports, stamps and SHA256SUMS go (default: /var/cache/kib/lvm)
  --force            rebuild even when a valid cached image exists
  --verify           re-hash cached images against SHA256SUMS even when size, mtime and inode are unchanged
  -h, --help         show this help

Prints one image path per variant on stdout, the last one last. Must run as root.
EOF
}

ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) [[ $# -ge 2 ]] || die "--variant needs a value"; VARIANTS+=("$2"); shift 2 ;;
        --variant=*) VARIANTS+=("${1#*=}"); shift ;;
        --output-dir) [[ $# -ge 2 ]] || die "--output-dir needs a value"; OUTPUT_DIR="$2"; shift 2 ;;
        --output-dir=*) OUTPUT_DIR="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --verify) VERIFY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ ${#VARIANTS[@]} -gt 0 ]] || VARIANTS=(lvm)
EXPANDED=()
for v in "${VARIANTS[@]}"; do
    case "$v" in
        all-tiny) for t in "${TINY_NAMES[@]}"; do EXPANDED+=("tiny-$t"); done ;;
        lvm|lvm-selinux|selinux|selinux-no-file-contexts) EXPANDED+=("$v") ;;
        tiny-*)
            [[ " ${TINY_NAMES[*]} " == *" ${v#tiny-} "* ]] || die "unknown tiny variant '$v' (known: ${TINY_NAMES[*]})"
            EXPANDED+=("$v") ;;
        *) die "unknown variant '$v' (known: lvm, lvm-selinux, selinux, selinux-no-file-contexts, tiny-NAME, all-tiny)" ;;
    esac
done
VARIANTS=("${EXPANDED[@]}")

[[ "$(id -u)" -eq 0 ]] || die "must run as root"

# A private mount namespace: whatever is mounted here (the filesystems being filled, mmdebstrap's /proc and /dev)
# disappears with it, even on SIGKILL; the loop devices behind `mount -o loop` then autoclear.
if [[ -z "${KIB_MAKE_LVM_IMAGE_NS:-}" ]]; then
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    export KIB_MAKE_LVM_IMAGE_NS=1
    exec unshare --mount --propagation private -- bash "$SELF" "${ORIG_ARGS[@]}"
fi

# From here on, stdout carries only image paths (fd 3); everything else goes to stderr.
exec 3>&1 1>&2

mkdir -p "$OUTPUT_DIR"
OUTPUT_DIR="$(readlink -f "$OUTPUT_DIR")"
SUMS="$OUTPUT_DIR/SHA256SUMS"
SCRIPT_SHA="$(sha256sum "$SELF" | cut -d' ' -f1)"

exec 9>"$OUTPUT_DIR/.lock"
if ! flock -n 9; then
    log "waiting for another build in $OUTPUT_DIR to finish"
    flock 9
fi

image_name() {
    case "$1" in
        tiny-*) echo "tiny-lvm-${1#tiny-}.raw" ;;
        *) echo "debian-12-$1-amd64.raw" ;;
    esac
}

sha256_of() {
    if command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha256 -r "$1" | cut -d' ' -f1
    else
        sha256sum "$1" | cut -d' ' -f1
    fi
}
file_identity() { stat -c '%s %.9Y %i' "$1"; }
stamp_content() { printf 'script-sha256=%s\nvariant=%s\nsuite=%s' "$SCRIPT_SHA" "$1" "$SUITE"; }

# Same scheme as scripts/make-base-image.sh: the stamp vouches for the image while its size, mtime and inode are
# the ones recorded; otherwise (or with --verify) the image is hashed against SHA256SUMS.
cache_valid() { # VARIANT
    local name image stamp want have stamp_fixed stamp_image
    name="$(image_name "$1")"; image="$OUTPUT_DIR/$name"; stamp="$OUTPUT_DIR/${name%.raw}.stamp"
    [[ -f "$image" && -f "$SUMS" && -f "$stamp" ]] || return 1
    stamp_fixed="$(grep -v '^image=' "$stamp")"
    stamp_image="$(sed -n 's/^image=//p' "$stamp")"
    [[ "$stamp_fixed" == "$(stamp_content "$1")" ]] || { log "$name: cache stamp is for another script version"; return 1; }
    want="$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$SUMS")"
    [[ -n "$want" ]] || { log "SHA256SUMS has no entry for $name"; return 1; }
    if [[ "$VERIFY" -eq 0 && "$stamp_image" == "$want $(file_identity "$image")" ]]; then
        return 0
    fi
    log "hashing the cached $name"
    have="$(sha256_of "$image")"
    [[ "$want" == "$have" ]] || { log "cached $name does not match SHA256SUMS"; return 1; }
}

# --- dependencies --------------------------------------------------------------------------------------------------
ensure_tools() {
    local -A need=(
        [mmdebstrap]=mmdebstrap [sfdisk]=fdisk [mkfs.ext4]=e2fsprogs [mkfs.xfs]=xfsprogs [xfs_repair]=xfsprogs
        [lvm]=lvm2 [losetup]=mount [flock]=util-linux [findmnt]=util-linux [setfiles]=policycoreutils
        [matchpathcon]=selinux-utils [getfattr]=attr
    )
    local -a missing=()
    local cmd
    for cmd in "${!need[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
    done
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing missing tools: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"; then
        apt-get update
        apt-get install -y -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"
    fi
    for cmd in "${!need[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd is still missing after apt-get install"
    done
}

# --- work area and cleanup -----------------------------------------------------------------------------------------
WORK=""
CHILD_PID=""
LOOPS=()              # loop devices this script attached with losetup (not the autoclear ones of mount -o loop)
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
unmount_below() { # DIR: unmount everything at or below DIR, deepest first
    local m
    findmnt -rn -o TARGET | awk -v w="$1" 'index($0, w "/") == 1 || $0 == w' | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || log "warning: could not unmount $m"; done
}
cleanup() {
    local rc=$?
    set +e
    stop_child
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        log "cleaning up $WORK"
        unmount_below "$WORK"
        local d
        for d in "${LOOPS[@]}"; do losetup -d "$d" 2>/dev/null; done
        # Anything else backed by a file below WORK (normally nothing).
        losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK" 'index($2, w "/") == 1 { print $1 }' |
            while read -r d; do losetup -d "$d" || log "warning: could not detach $d"; done
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

# attach FILE OFFSET_BYTES SIZE_BYTES: a loop device over that byte range, printed; detached by detach or cleanup.
attach() {
    local dev
    dev="$(losetup --find --show --offset "$2" --sizelimit "$3" "$1")" || die "losetup failed on $1 at offset $2"
    LOOPS+=("$dev")
    echo "$dev"
}
detach() {
    local d keep=()
    losetup -d "$1" || die "could not detach $1"
    for d in "${LOOPS[@]}"; do [[ "$d" == "$1" ]] || keep+=("$d"); done
    LOOPS=("${keep[@]}")
}
# mount_range FILE OFFSET SIZE FSTYPE TARGET: mount a byte range of FILE through an autoclear loop device.
mount_range() {
    mount -t "$4" -o "loop,offset=$2,sizelimit=$3" "$1" "$5" || die "could not mount $4 at offset $2 of $1 on $5"
}

# --- lvm, confined to our own loop devices -------------------------------------------------------------------------
# lvm_ DEVICES SUBCOMMAND ARGS...: DEVICES is a comma-separated list of this script's loop devices; nothing else is
# ever scanned or opened. LVM_SYSTEM_DIR is private (an empty lvm.conf: none of the host's settings apply, and no
# backup or archive lands in /etc/lvm); locks go to a private directory.
LVM_CONFIG=""
lvm_() {
    local devs=$1 sub=$2
    shift 2
    LVM_SYSTEM_DIR="$WORK/lvm-etc" LVM_SUPPRESS_FD_WARNINGS=1 \
        lvm "$sub" --devices "$devs" --config "$LVM_CONFIG" "$@"
}
lvm_setup() {
    mkdir -p "$WORK/lvm-etc" "$WORK/lvm-lock"
    : >"$WORK/lvm-etc/lvm.conf"
    LVM_CONFIG="devices { use_devicesfile=0 obtain_device_list_from_udev=0 external_device_info_source=\"none\" hints=\"none\" }
activation { udev_sync=0 udev_rules=0 monitoring=0 }
global { use_lvmpolld=0 event_activation=0 locking_dir=\"$WORK/lvm-lock\" }
backup { backup=0 archive=0 }"
}
# The reports kib reads (testdata/lvm/NOTES.md): read-only (no locks, no device-mapper), bytes, JSON.
PVS_FIELDS="pv_name,pv_uuid,dev_size,pe_start,pv_size,pv_pe_count,pv_pe_alloc_count,pv_missing,vg_name,vg_uuid,vg_extent_size,vg_extent_count,vg_free_count,vg_seqno,pv_count,vg_missing_pv_count,vg_attr"
LVS_FIELDS="vg_name,vg_uuid,vg_extent_size,vg_seqno,lv_name,lv_uuid,lv_full_name,lv_path,lv_dm_path,lv_layout,lv_role,lv_attr,lv_size,seg_count,segtype,stripes,stripe_size,seg_start,seg_start_pe,seg_size,seg_size_pe,seg_pe_ranges,devices,origin,pool_lv"
lvm_reports() { # DEVICES OUT_PREFIX
    lvm_ "$1" pvs --readonly --reportformat json --units b --nosuffix -o "$PVS_FIELDS" >"$2.pvs.json"
    lvm_ "$1" lvs --readonly --reportformat json --units b --nosuffix -a --segments -o "$LVS_FIELDS" >"$2.lvs.json"
}

# --- GRUB's BIOS boot code -----------------------------------------------------------------------------------------
le_bytes() {
    local v=$1 n=$2 i out=""
    for ((i = 0; i < n; i++)); do
        out+="$(printf '\\x%02x' $(((v >> (8 * i)) & 255)))"
    done
    printf '%s' "$out"
}
put_bytes() {
    printf '%b' "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# What grub-bios-setup does for a GPT disk with a BIOS boot partition, done on an image file; the same as in
# scripts/make-base-image.sh (see there for the layout of boot.img and core.img's blocklist).
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

# --- publishing ----------------------------------------------------------------------------------------------------
# publish VARIANT FILE [REPORT_PREFIX]: checksum FILE, move it (and its reports) into the output directory with a
# fresh stamp, and print its path on stdout.
publish() {
    local variant=$1 file=$2 reports=${3:-}
    local name sha stamp base
    name="$(image_name "$variant")"; base="${name%.raw}"; stamp="$OUTPUT_DIR/$base.stamp"
    sha="$(sha256_of "$file")"
    if [[ -f "$SUMS" ]]; then
        awk -v n="$name" '!($2 == n || $2 == "*" n)' "$SUMS" >"$WORK/SHA256SUMS"
    else
        : >"$WORK/SHA256SUMS"
    fi
    printf '%s  %s\n' "$sha" "$name" >>"$WORK/SHA256SUMS"
    printf '%s\nimage=%s %s\n' "$(stamp_content "$variant")" "$sha" "$(file_identity "$file")" >"$WORK/stamp"
    rm -f "$stamp"
    if [[ -n "$reports" ]]; then
        mv -f "$reports.pvs.json" "$OUTPUT_DIR/$base.pvs.json"
        mv -f "$reports.lvs.json" "$OUTPUT_DIR/$base.lvs.json"
    fi
    mv -f "$file" "$OUTPUT_DIR/$name"
    mv -f "$WORK/SHA256SUMS" "$SUMS"
    mv -f "$WORK/stamp" "$stamp"
    log "built $OUTPUT_DIR/$name"
}

# === full images: lvm, lvm-selinux, selinux ========================================================================
build_full() { # VARIANT
    local variant=$1
    local use_lvm=1 selinux=0
    case "$variant" in
        lvm) ;;
        lvm-selinux) selinux=1 ;;
        selinux) use_lvm=0; selinux=1 ;;
        *) die "build_full: unexpected variant $variant" ;;
    esac
    local t0=$SECONDS
    local dir="$WORK/$variant"
    local root="$dir/tree" disk="$dir/disk.raw" mnt="$dir/mnt"
    mkdir -p "$dir" "$mnt"

    local boot_uuid root_uuid
    boot_uuid="$(cat /proc/sys/kernel/random/uuid)"
    root_uuid="$(cat /proc/sys/kernel/random/uuid)"
    local cmdline="$KERNEL_CMDLINE" root_spec
    if [[ $use_lvm -eq 1 ]]; then
        root_spec="/dev/mapper/$VG-$ROOT_LV"
    else
        root_spec="UUID=$root_uuid"
    fi
    if [[ $selinux -eq 1 ]]; then cmdline+=" security=selinux"; fi

    # --- 1. tree ---
    local -a packages=(
        linux-image-cloud-amd64 grub-pc
        systemd-sysv dbus
        cloud-init cloud-guest-utils
        openssh-server sudo ca-certificates
        ifupdown isc-dhcp-client netbase iproute2
        e2fsprogs xfsprogs procps
    )
    if [[ $use_lvm -eq 1 ]]; then packages+=(lvm2); fi
    if [[ $selinux -eq 1 ]]; then packages+=(selinux-policy-default policycoreutils selinux-utils); fi

    # fstab and the initramfs settings go in before any package, so that the initramfs is built for them: the fsck
    # hook gets fsck.xfs, lvm2's hook (always on once lvm2 is installed) brings lvm, dm-mod and the udev rules that
    # activate complete VGs ("vgchange -aay --autoactivation event").
    {
        echo "# /etc/fstab: static file system information."
        echo "# <file system>	<mount point>	<type>	<options>	<dump>	<pass>"
        if [[ $use_lvm -eq 1 ]]; then
            echo "/dev/mapper/$VG-$ROOT_LV	/	xfs	defaults	0	0"
            echo "UUID=$boot_uuid	/boot	ext4	defaults	0	2"
            echo "/dev/mapper/$VG-$VAR_LV	/var	xfs	defaults	0	0"
        else
            echo "UUID=$root_uuid	/	xfs	defaults	0	0"
            echo "UUID=$boot_uuid	/boot	ext4	defaults	0	2"
        fi
    } >"$dir/fstab"
    mkdir -p "$dir/initramfs-conf.d"
    echo "RESUME=none" >"$dir/initramfs-conf.d/resume"
    printf '%s\n' "# Root filesystem type, for the fsck hook when the root device cannot be probed (e.g. in a chroot)." \
        "FSTYPE=xfs" >"$dir/initramfs-conf.d/fstype"

    log "$variant: mmdebstrap $SUITE"
    mkdir -p "$root"
    # shellcheck disable=SC2016 # the hooks are run by mmdebstrap with the chroot path as $1
    run_child mmdebstrap \
        --mode=root \
        --variant=minbase \
        --include="$(IFS=,; echo "${packages[*]}")" \
        --aptopt='Acquire::Languages "none"' \
        --setup-hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\" && cp '$dir'/initramfs-conf.d/* \"\$1/etc/initramfs-tools/conf.d/\"" \
        --setup-hook="install -m 0644 '$dir/fstab' \"\$1/etc/fstab\"" \
        --customize-hook='chroot "$1" debconf-set-selections <<EOF
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
EOF' \
        --customize-hook='rm -f "$1"/etc/apt/apt.conf.d/99mmdebstrap' \
        "$SUITE" "$root" \
        "deb $MIRROR $SUITE main" \
        "deb $MIRROR $SUITE-updates main" \
        "deb $SECURITY_MIRROR $SUITE-security main"
    log "$variant: mmdebstrap done after $((SECONDS - t0)) s"

    # --- 2. configuration (as in scripts/make-base-image.sh) ---
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    rm -f "$root/etc/hostname" "$root/etc/hosts"
    echo "$HOSTNAME_DEFAULT" >"$root/etc/hostname"
    cat >"$root/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_DEFAULT

# The following lines are desirable for IPv6 capable hosts
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
    cmp -s "$dir/fstab" "$root/etc/fstab" || die "/etc/fstab was changed during the package installation"
    cat >"$root/etc/network/interfaces" <<'EOF'
# interfaces(5) file used by ifup(8) and ifdown(8)
# Include files from /etc/network/interfaces.d:
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
    mkdir -p "$root/etc/network/interfaces.d" "$root/etc/default/grub.d"
    cat >"$root/etc/default/grub.d/10_cloud.cfg" <<EOF
# Written by $PROG: serial console for cloud VMs.
GRUB_CMDLINE_LINUX_DEFAULT="$cmdline"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB_TIMEOUT=1
EOF
    echo "LANG=C.UTF-8" >"$root/etc/default/locale"
    mkdir -p "$root/etc/cloud/cloud.cfg.d"
    printf '# Written by %s.\nlocale: C.UTF-8\n' "$PROG" >"$root/etc/cloud/cloud.cfg.d/01_kib_base.cfg"
    rm -f "$root/etc/resolv.conf"
    : >"$root/etc/resolv.conf"
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    ln -s /etc/machine-id "$root/var/lib/dbus/machine-id"
    rm -f "$root"/etc/ssh/ssh_host_*
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    mkdir -p "$root/var/lib/apt/lists/partial"
    find "$root/var/log" -type f -exec truncate -s 0 {} +
    rm -rf "${root:?}"/tmp/* "${root:?}"/var/tmp/*
    if [[ $selinux -eq 1 ]]; then
        cat >"$root/etc/selinux/config" <<'EOF'
# This file controls the state of SELinux on the system.
# SELINUX= can take one of these three values:
#   enforcing - SELinux security policy is enforced.
#   permissive - SELinux prints warnings instead of enforcing.
#   disabled - No SELinux policy is loaded.
SELINUX=permissive
# SELINUXTYPE= can take one of these two values:
#   default - equivalent to the old strict and targeted policies
#   mls     - Multi-Level Security (for military and educational use)
#   src     - Custom policy built from source
SELINUXTYPE=default
EOF
        [[ -f "$root/etc/selinux/default/contexts/files/file_contexts" ]] ||
            die "selinux-policy-default left no /etc/selinux/default/contexts/files/file_contexts"
    fi

    # --- 3. kernel, initramfs, GRUB ---
    local -a kernels
    mapfile -t kernels < <(cd "$root/boot" && ls vmlinuz-* 2>/dev/null)
    [[ ${#kernels[@]} -eq 1 ]] || die "expected exactly one kernel in /boot, found: ${kernels[*]:-none}"
    local kver="${kernels[0]#vmlinuz-}"
    [[ -f "$root/boot/initrd.img-$kver" ]] || die "no initrd for kernel $kver"
    grep -qE '^CONFIG_XFS_FS=[ym]' "$root/boot/config-$kver" || die "kernel $kver has no xfs"
    if [[ $use_lvm -eq 1 ]]; then
        grep -qE '^CONFIG_BLK_DEV_DM=[ym]' "$root/boot/config-$kver" || die "kernel $kver has no device-mapper"
        local listing
        listing="$(chroot "$root" lsinitramfs "/boot/initrd.img-$kver")"
        local f
        for f in usr/sbin/lvm 'dm-mod.ko' 'xfs.ko' 'lib/udev/rules.d/69-lvm.rules' 'etc/lvm/lvm.conf'; do
            grep -qE "(^|/)$f" <<<"$listing" || die "the initramfs of $kver lacks $f: it could not activate LVM"
        done
    fi
    log "$variant: kernel $kver"

    mkdir -p "$root/boot/grub"
    cat >"$root/boot/grub/grub.cfg" <<EOF
# Written by $PROG. Run update-grub on the booted system to regenerate it from /etc/default/grub.
set default=0
set timeout=1
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root $boot_uuid
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os {
	insmod gzio
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root $boot_uuid
	echo	'Loading Linux $kver ...'
	linux	/vmlinuz-$kver root=$root_spec ro $cmdline
	echo	'Loading initial ramdisk ...'
	initrd	/initrd.img-$kver
}
EOF
    # /boot is its own filesystem: GRUB finds it by UUID and its prefix is /grub there.
    printf 'search.fs_uuid %s root\nset prefix=($root)/grub\n' "$boot_uuid" >"$root/tmp/kib-early.cfg"
    mkdir -p "$root/boot/grub/i386-pc"
    find "$root/usr/lib/grub/i386-pc" -maxdepth 1 -type f \( -name '*.mod' -o -name '*.lst' -o -name '*.o' \) \
        -exec cp -t "$root/boot/grub/i386-pc" {} +
    chroot "$root" grub-mkimage -O i386-pc -o /tmp/kib-core.img -c /tmp/kib-early.cfg -p /grub \
        biosdisk part_gpt ext2 search_fs_uuid
    cp "$root/tmp/kib-core.img" "$root/boot/grub/i386-pc/core.img"
    cp "$root/usr/lib/grub/i386-pc/boot.img" "$root/boot/grub/i386-pc/boot.img"
    cp "$root/tmp/kib-core.img" "$dir/core.img"
    cp "$root/usr/lib/grub/i386-pc/boot.img" "$dir/boot.img"
    rm -f "$root"/tmp/kib-*
    if [[ -f "$root/usr/share/grub/unicode.pf2" ]]; then
        mkdir -p "$root/boot/grub/fonts"
        cp "$root/usr/share/grub/unicode.pf2" "$root/boot/grub/fonts/"
    fi

    # --- 4. disk and partition table ---
    log "$variant: partitioning $DISK_SIZE_MIB MiB disk"
    truncate -s "${DISK_SIZE_MIB}M" "$disk"
    local data_type=$LVM_PARTTYPE
    [[ $use_lvm -eq 1 ]] || data_type=$ROOT_PARTTYPE
    {
        echo "label: gpt"
        echo "unit: sectors"
        echo
        echo "${disk}1 : start=$BIOSBOOT_START, size=$BIOSBOOT_SIZE, type=$BIOSBOOT_PARTTYPE, name=\"bios\""
        echo "${disk}2 : start=$BOOT_START, size=$BOOT_SIZE, type=$LINUXFS_PARTTYPE, name=\"boot\""
        echo "${disk}3 : start=$DATA_START, type=$data_type, name=\"$([[ $use_lvm -eq 1 ]] && echo lvm || echo root)\""
    } | sfdisk --quiet --no-reread --no-tell-kernel "$disk"
    local data_sectors
    data_sectors="$(sfdisk -d "$disk" | sed -nE "s|^${disk}3 : .*size= *([0-9]+).*|\1|p")"
    [[ "$data_sectors" =~ ^[0-9]+$ ]] || die "could not read partition 3's size from sfdisk"
    local data_off=$((DATA_START * 512)) data_bytes=$((data_sectors * 512))

    # --- 5. LVM metadata, no device-mapper ---
    # root_off/root_bytes, var_off/var_bytes: byte ranges inside the disk image.
    local root_off root_bytes var_off=0 var_bytes=0 pv_at_build=""
    if [[ $use_lvm -eq 1 ]]; then
        local pv
        pv="$(attach "$disk" "$data_off" "$data_bytes")"
        log "$variant: LVM metadata on $pv (partition 3): VG $VG, LVs $ROOT_LV and $VAR_LV"
        lvm_ "$pv" pvcreate --quiet "$pv"
        lvm_ "$pv" vgcreate --quiet -s "${EXTENT_MIB}M" "$VG" "$pv"
        lvm_ "$pv" lvcreate --quiet --driverloaded n -an -Zn -Wn -L "${ROOT_LV_MIB}M" -n "$ROOT_LV" "$VG" 2>&1 |
            grep -vE 'Activation disabled|not zeroed' >&2 || true
        lvm_ "$pv" lvcreate --quiet --driverloaded n -an -Zn -Wn -l 100%FREE -n "$VAR_LV" "$VG" 2>&1 |
            grep -vE 'Activation disabled|not zeroed' >&2 || true
        lvm_reports "$pv" "$dir/report"
        pv_at_build=$pv
        # The byte ranges, from lvm's own report: partition start + pe_start + first PE x extent size.
        local pe_start extent
        read -r pe_start extent < <(lvm_ "$pv" pvs --readonly --noheadings --units b --nosuffix -o pe_start,vg_extent_size "$pv")
        lv_range() { # LV -> "offset_bytes size_bytes"
            local segs first count
            segs="$(lvm_ "$pv" lvs --readonly --noheadings --segments --separator : -o seg_pe_ranges,seg_size_pe "$VG/$1")"
            [[ "$(wc -l <<<"$segs")" -eq 1 ]] || die "$VG/$1 has more than one segment: $segs"
            # " /dev/loopN:FIRST-LAST:COUNT"
            first="$(sed -E 's/.*:([0-9]+)-[0-9]+:[0-9]+ *$/\1/' <<<"$segs")"
            count="$(sed -E 's/.*:([0-9]+) *$/\1/' <<<"$segs")"
            [[ "$first" =~ ^[0-9]+$ && "$count" =~ ^[0-9]+$ ]] || die "cannot read the extents of $VG/$1: $segs"
            echo "$((data_off + pe_start + first * extent)) $((count * extent))"
        }
        read -r root_off root_bytes < <(lv_range "$ROOT_LV")
        read -r var_off var_bytes < <(lv_range "$VAR_LV")
        unset -f lv_range
        log "$variant: $ROOT_LV at byte $root_off ($((root_bytes >> 20)) MiB), $VAR_LV at byte $var_off ($((var_bytes >> 20)) MiB)"
        detach "$pv"
    else
        root_off=$data_off
        root_bytes=$data_bytes
    fi

    # --- 6. filesystems: made on loop devices at their offsets, then mounted (autoclear) and filled ---
    local dev
    cat >"$dir/mke2fs.conf" <<'EOF'
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
    dev="$(attach "$disk" $((BOOT_START * 512)) $((BOOT_SIZE * 512)))"
    MKE2FS_CONFIG="$dir/mke2fs.conf" mkfs.ext4 -q -F -T default -t ext4 -b 4096 -U "$boot_uuid" "$dev"
    detach "$dev"
    dev="$(attach "$disk" "$root_off" "$root_bytes")"
    mkfs.xfs -q -f -m uuid="$root_uuid" "$dev"
    detach "$dev"
    if [[ $use_lvm -eq 1 ]]; then
        dev="$(attach "$disk" "$var_off" "$var_bytes")"
        mkfs.xfs -q -f "$dev"
        detach "$dev"
    fi
    log "$variant: filling the filesystems"
    mount_range "$disk" "$root_off" "$root_bytes" xfs "$mnt"
    mkdir -p "$mnt/boot" "$mnt/var"
    mount_range "$disk" $((BOOT_START * 512)) $((BOOT_SIZE * 512)) ext4 "$mnt/boot"
    if [[ $use_lvm -eq 1 ]]; then mount_range "$disk" "$var_off" "$var_bytes" xfs "$mnt/var"; fi
    # cp -a keeps hard links, ownership, modes, times, ACLs and xattrs; /boot and /var land in their filesystems.
    cp -a "$root/." "$mnt/"
    rm -rf "$root"
    log "$variant: copied the tree ($(du -sm "$mnt" | cut -f1) MiB) after $((SECONDS - t0)) s"

    # --- 7. SELinux labels, with the image's own policy and the host's setfiles ---
    if [[ $selinux -eq 1 ]]; then
        local fc="$mnt/etc/selinux/default/contexts/files/file_contexts" policy t_label
        policy="$(ls "$mnt"/etc/selinux/default/policy/policy.* | sort -V | tail -n1)"
        [[ -f "$policy" ]] || die "no binary policy in /etc/selinux/default/policy"
        # setfiles never crosses into another filesystem (it sets SELINUX_RESTORECON_XDEV, and -m does not change
        # that), so each filesystem is labelled on its own: the root filesystem through a non-recursive bind mount
        # (where the directories /boot and /var are mounted on are visible, and get labelled too: a booted system
        # looks at them before it mounts anything), the others where they are mounted.
        local -a others
        mapfile -t others < <(findmnt -rn -o TARGET | awk -v w="$mnt" 'index($0, w "/") == 1' | sort)
        local fsroot="$dir/fsroot"
        mkdir -p "$fsroot"
        mount --bind "$mnt" "$fsroot"
        local nfiles
        nfiles="$(find "$fsroot" "${others[@]}" -xdev | wc -l)"
        t_label=$EPOCHREALTIME
        # -r: the tree's root; -c: validate every context against the image's binary policy.
        setfiles -r "$fsroot" -c "$policy" "$fc" "$fsroot"
        setfiles -r "$mnt" -c "$policy" "$fc" "${others[@]}"
        log "$variant: setfiles labelled $nfiles files on $((1 + ${#others[@]})) filesystems in $(awk -v a="$t_label" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
        # A dry run must now change nothing: setfiles -n -v prints "Would relabel PATH from OLD to NEW" per file.
        local would
        would="$( { setfiles -n -v -r "$fsroot" "$fc" "$fsroot"; setfiles -n -v -r "$mnt" "$fc" "${others[@]}"; } 2>&1 |
            grep -c 'Would relabel' || true)"
        [[ "$would" -eq 0 ]] || die "setfiles -n -v would still relabel $would files"
        # Spot checks, one per filesystem and the mount points: the label on disk is what file_contexts gives.
        local want have f
        for f in /etc/passwd /boot/grub/grub.cfg /var/lib/dpkg/status "$fsroot:/var" "$fsroot:/boot"; do
            local base=$mnt
            if [[ "$f" == *:* ]]; then base=${f%%:*}; f=${f#*:}; fi
            want="$(matchpathcon -n -f "$fc" "$f")"
            have="$(getfattr --absolute-names --only-values -n security.selinux "$base$f" | tr -d '\0')"
            [[ "$want" == "$have" ]] || die "$f (in $base) is labelled '$have', file_contexts says '$want'"
        done
        umount "$fsroot"
        log "$variant: labels check out: a dry run changes nothing; /etc/passwd, /boot/grub/grub.cfg, /var/lib/dpkg/status and the /boot and /var mount points match file_contexts"
    fi

    # --- 8. unmount and check the filesystems ---
    unmount_below "$mnt"
    log "$variant: checking the filesystems"
    dev="$(attach "$disk" $((BOOT_START * 512)) $((BOOT_SIZE * 512)))"
    e2fsck -fn "$dev" >/dev/null 2>&1 || { e2fsck -fn "$dev" >&2 || true; die "e2fsck found problems in /boot"; }
    detach "$dev"
    local r
    for r in "$root_off:$root_bytes" "$var_off:$var_bytes"; do
        [[ "${r#*:}" -gt 0 ]] || continue
        dev="$(attach "$disk" "${r%%:*}" "${r#*:}")"
        xfs_repair -n "$dev" >/dev/null 2>&1 || { xfs_repair -n "$dev" >&2 || true; die "xfs_repair -n found problems at byte ${r%%:*}"; }
        detach "$dev"
    done

    # --- 9. GRUB boot code ---
    install_grub_bios "$disk" "$dir/boot.img" "$dir/core.img" "$BIOSBOOT_START" "$BIOSBOOT_SIZE"

    # --- 10. the LVM metadata is still what lvcreate wrote (mkfs and the copy stayed inside the LVs) ---
    if [[ $use_lvm -eq 1 ]]; then
        local pv
        pv="$(attach "$disk" "$data_off" "$data_bytes")"
        lvm_reports "$pv" "$dir/after"
        detach "$pv"
        # The same but for the name of the loop device, which may differ from the one the VG was made on.
        local k
        for k in pvs lvs; do
            sed -i "s|\"$pv\"|\"$pv_at_build\"|g; s|$pv\([:(]\)|$pv_at_build\1|g" "$dir/after.$k.json"
            cmp -s "$dir/report.$k.json" "$dir/after.$k.json" ||
                die "the LVM $k report changed while the filesystems were made: $(diff "$dir/report.$k.json" "$dir/after.$k.json")"
        done
        publish "$variant" "$disk" "$dir/report"
    else
        publish "$variant" "$disk"
    fi
    log "$variant: done in $((SECONDS - t0)) s"
}

# === selinux-no-file-contexts: the selinux image without its policy's file_contexts =================================
build_no_file_contexts() {
    local variant=selinux-no-file-contexts t0=$SECONDS
    local src="$OUTPUT_DIR/$(image_name selinux)"
    local dir="$WORK/$variant" disk="$WORK/$variant/disk.raw"
    mkdir -p "$dir/mnt"
    cp --sparse=always "$src" "$disk"
    local sectors
    sectors="$(sfdisk -d "$disk" | sed -nE "s|^${disk}3 : .*size= *([0-9]+).*|\1|p")"
    mount_range "$disk" $((DATA_START * 512)) $((sectors * 512)) xfs "$dir/mnt"
    local fcdir="$dir/mnt/etc/selinux/default/contexts/files"
    [[ -f "$fcdir/file_contexts" ]] || die "$src has no file_contexts to remove"
    rm -f "$fcdir/file_contexts" "$fcdir/file_contexts.bin"
    unmount_below "$dir/mnt"
    publish "$variant" "$disk"
    log "$variant: done in $((SECONDS - t0)) s"
}

# === tiny-NAME: metadata-only disks ================================================================================
TINY_MIB=80
TINY_P1_START=2048;   TINY_P_SIZE=73728      # 36 MiB each
TINY_P2_START=75776
# lv_section NAME UUID_SUFFIX STATUS EXTENTS SEGMENT_BODY: one LV in lvm2's text metadata format (one segment).
lv_section() {
    printf '\t\t%s {\n\t\t\tid = "kibfix-0000-0000-0000-0000-0000-%06d"\n\t\t\tstatus = [%s]\n\t\t\tflags = []\n' "$1" "$2" "$3"
    printf '\t\t\tcreation_time = 1700000000\n\t\t\tcreation_host = "kib-fixture"\n\t\t\tsegment_count = 1\n\n'
    printf '\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = %s\n\n%s\n\t\t\t}\n\t\t}\n\n' "$4" "$5"
}
linear_body() { # PV_KEY FIRST_PE
    printf '\t\t\t\ttype = "striped"\n\t\t\t\tstripe_count = 1\t# linear\n\n\t\t\t\tstripes = [\n\t\t\t\t\t"%s", %s\n\t\t\t\t]' "$1" "$2"
}
RW='"READ", "WRITE"'
RWV='"READ", "WRITE", "VISIBLE"'
# add_lvs DEVICES FILE [--force]: vgcfgbackup, insert the LV sections in FILE into logical_volumes, vgcfgrestore.
add_lvs() {
    local devs=$1 add=$2 force=${3:-}
    lvm_ "$devs" vgcfgbackup --quiet -f "$add.vg" "$VG" >/dev/null
    # The last line that is exactly one tab and "}" closes logical_volumes (the VG has at least one LV here).
    awk 'NR == FNR { add = add $0 "\n"; next } { l[++n] = $0 } $0 == "\t}" { last = n }
         END { for (i = 1; i <= n; i++) { if (i == last) printf "%s", add; print l[i] } }' "$add" "$add.vg" >"$add.new"
    lvm_ "$devs" vgcfgrestore --quiet $force -f "$add.new" "$VG" 2>&1 |
        grep -vE 'device-mapper|/dev/mapper/control|Failure to communicate|Check that device-mapper|Incompatible libdevmapper|Failed to check for active volumes|Forced restore' >&2 || true
}
build_tiny() { # VARIANT
    local variant=$1 name=${1#tiny-}
    local dir="$WORK/$variant" disk="$WORK/$variant/disk.raw"
    mkdir -p "$dir"
    local two=0
    case "$name" in striped|spanned|raid1|mirror) two=1 ;; esac
    truncate -s "${TINY_MIB}M" "$disk"
    {
        echo "label: gpt"
        echo "unit: sectors"
        echo
        echo "${disk}1 : start=$TINY_P1_START, size=$TINY_P_SIZE, type=$LVM_PARTTYPE, name=\"lvm1\""
        if [[ $two -eq 1 ]]; then echo "${disk}2 : start=$TINY_P2_START, size=$TINY_P_SIZE, type=$LVM_PARTTYPE, name=\"lvm2\""; fi
    } | sfdisk --quiet --no-reread --no-tell-kernel "$disk"
    local a b="" devs
    a="$(attach "$disk" $((TINY_P1_START * 512)) $((TINY_P_SIZE * 512)))"
    devs=$a
    if [[ $two -eq 1 ]]; then
        b="$(attach "$disk" $((TINY_P2_START * 512)) $((TINY_P_SIZE * 512)))"
        devs="$a,$b"
    elif [[ $name == missing-pv ]]; then
        # The second PV lives in a scratch file that is thrown away: the disk holds one PV of two.
        truncate -s $((TINY_P_SIZE * 512)) "$dir/other-pv.img"
        b="$(attach "$dir/other-pv.img" 0 $((TINY_P_SIZE * 512)))"
        devs="$a,$b"
    fi
    local lvc=(lvcreate --quiet --driverloaded n -an -Zn -Wn)
    local quiet='Activation disabled|not zeroed|default stripesize'
    if [[ $name == odd-geometry ]]; then
        lvm_ "$devs" pvcreate --quiet --dataalignment 3m "$a"
        lvm_ "$devs" vgcreate --quiet -s 2M "$VG" "$a"
    else
        lvm_ "$devs" pvcreate --quiet ${b:+"$b"} "$a"
        lvm_ "$devs" vgcreate --quiet -s "${EXTENT_MIB}M" "$VG" "$a" ${b:+"$b"}
    fi
    lvm_ "$devs" "${lvc[@]}" -l 2 -n "$ROOT_LV" "$VG" "$a:0-1" 2>&1 | grep -vE "$quiet" >&2 || true
    local add="$dir/add.txt"
    case "$name" in
        odd-geometry)
            lvm_ "$devs" "${lvc[@]}" -l 3 -n "$VAR_LV" "$VG" "$a:4-6" 2>&1 | grep -vE "$quiet" >&2 || true ;;
        missing-pv)
            lvm_ "$devs" "${lvc[@]}" -l 2 -n "$VAR_LV" "$VG" "$b:0-1" 2>&1 | grep -vE "$quiet" >&2 || true ;;
        striped)
            lvm_ "$devs" "${lvc[@]}" -i 2 -I 64k -l 4 -n "$VAR_LV" "$VG" "$a:2-3" "$b:0-1" 2>&1 | grep -vE "$quiet" >&2 || true ;;
        spanned)
            lvm_ "$devs" "${lvc[@]}" -l 3 -n "$VAR_LV" "$VG" "$a:2-3" "$b:0-0" 2>&1 | grep -vE "$quiet" >&2 || true ;;
        noncontig)
            lvm_ "$devs" "${lvc[@]}" -l 3 -n "$VAR_LV" "$VG" "$a:2-3" "$a:6-6" 2>&1 | grep -vE "$quiet" >&2 || true ;;
        raid1)
            {
                lv_section "$VAR_LV" 1 "$RWV" 2 "$(printf '\t\t\t\ttype = "raid1"\n\t\t\t\tdevice_count = 2\n\t\t\t\tregion_size = 1024\n\n\t\t\t\traids = [\n\t\t\t\t\t"%s_rmeta_0", "%s_rimage_0",\n\t\t\t\t\t"%s_rmeta_1", "%s_rimage_1"\n\t\t\t\t]' "$VAR_LV" "$VAR_LV" "$VAR_LV" "$VAR_LV")"
                lv_section "${VAR_LV}_rmeta_0" 2 "$RW" 1 "$(linear_body pv0 2)"
                lv_section "${VAR_LV}_rimage_0" 3 "$RW" 2 "$(linear_body pv0 3)"
                lv_section "${VAR_LV}_rmeta_1" 4 "$RW" 1 "$(linear_body pv1 0)"
                lv_section "${VAR_LV}_rimage_1" 5 "$RW" 2 "$(linear_body pv1 1)"
            } >"$add"
            add_lvs "$devs" "$add" ;;
        mirror)
            {
                lv_section "$VAR_LV" 1 "$RWV" 2 "$(printf '\t\t\t\ttype = "mirror"\n\t\t\t\tmirror_count = 2\n\t\t\t\tregion_size = 1024\n\n\t\t\t\tmirrors = [\n\t\t\t\t\t"%s_mimage_0", 0,\n\t\t\t\t\t"%s_mimage_1", 0\n\t\t\t\t]' "$VAR_LV" "$VAR_LV")"
                lv_section "${VAR_LV}_mimage_0" 2 "$RW" 2 "$(linear_body pv0 2)"
                lv_section "${VAR_LV}_mimage_1" 3 "$RW" 2 "$(linear_body pv1 0)"
            } >"$add"
            add_lvs "$devs" "$add" ;;
        thin)
            {
                lv_section pool 1 "$RWV" 2 "$(printf '\t\t\t\ttype = "thin-pool"\n\t\t\t\tmetadata = "pool_tmeta"\n\t\t\t\tpool = "pool_tdata"\n\t\t\t\ttransaction_id = 1\n\t\t\t\tchunk_size = 128\n\t\t\t\tdiscards = "passdown"\n\t\t\t\tzero_new_blocks = 1')"
                lv_section "$VAR_LV" 2 "$RWV" 4 "$(printf '\t\t\t\ttype = "thin"\n\t\t\t\tthin_pool = "pool"\n\t\t\t\ttransaction_id = 0\n\t\t\t\tdevice_id = 1')"
                lv_section pool_tmeta 3 "$RW" 1 "$(linear_body pv0 2)"
                lv_section pool_tdata 4 "$RW" 2 "$(linear_body pv0 3)"
                lv_section lvol0_pmspare 5 "$RW" 1 "$(linear_body pv0 5)"
            } >"$add"
            add_lvs "$devs" "$add" --force ;;
        snapshot)
            {
                lv_section varsnap 1 "$RWV" 1 "$(linear_body pv0 2)"
                lv_section snapshot0 2 '"READ"' 2 "$(printf '\t\t\t\ttype = "snapshot"\n\t\t\t\tchunk_size = 8\n\t\t\t\torigin = "%s"\n\t\t\t\tcow_store = "varsnap"' "$ROOT_LV")"
            } >"$add"
            add_lvs "$devs" "$add" ;;
        *) die "build_tiny: unexpected variant $variant" ;;
    esac
    # The reports as kib sees them: only the disk's own PVs (for missing-pv, the scratch PV is not there).
    local seen=$a
    if [[ $two -eq 1 ]]; then seen="$a,$b"; fi
    lvm_reports "$seen" "$dir/report"
    detach "$a"
    if [[ -n "$b" ]]; then detach "$b"; fi
    rm -f "$dir/other-pv.img"
    publish "$variant" "$disk" "$dir/report"
}

# === main ==========================================================================================================
TODO=()
for v in "${VARIANTS[@]}"; do
    if [[ "$FORCE" -eq 0 ]] && cache_valid "$v"; then
        log "$(image_name "$v") is up to date"
    else
        TODO+=("$v")
    fi
done
if [[ ${#TODO[@]} -gt 0 ]]; then
    ensure_tools
    mkdir -p /var/tmp/kib-make-lvm
    WORK="$(mktemp -d /var/tmp/kib-make-lvm/work.XXXXXX)"
    lvm_setup
    for v in "${TODO[@]}"; do
        case "$v" in
            lvm|lvm-selinux|selinux) build_full "$v" ;;
            selinux-no-file-contexts)
                if [[ "$FORCE" -eq 1 ]] || ! cache_valid selinux; then
                    build_full selinux
                fi
                build_no_file_contexts ;;
            tiny-*) build_tiny "$v" ;;
        esac
    done
fi
for v in "${VARIANTS[@]}"; do
    echo "$OUTPUT_DIR/$(image_name "$v")" >&3
done
