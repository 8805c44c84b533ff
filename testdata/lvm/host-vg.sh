#!/usr/bin/env bash
# host-vg.sh: a FIXTURE "host" volume group for kib's LVM tests: a VG named like the image's (default rootvg) on a
# loop device of its own, made with metadata-only lvm commands (nothing is activated, no device-mapper needed), so
# that a test can prove kib never reads, locks or writes the host's VG of the same name.
#
# Usage:
#   host-vg.sh create DIR [VG]   make DIR/host-pv.img (64 MiB sparse), attach it, pvcreate + vgcreate VG + lvcreate
#                                rootlv; record the PV's first 4 MiB hash, VG UUID and seqno in DIR/state; print
#                                the loop device on stdout
#   host-vg.sh check DIR         exit 0 when the PV's bytes, its VG UUID and seqno are what create recorded
#   host-vg.sh remove DIR        check, then detach the loop device and delete DIR's files (exit 1 if check failed,
#                                after cleaning up all the same)
#
# create refuses when the host already has an active VG of that name (/dev/VG or /dev/mapper/VG-* exists): a second
# VG of the same name would make the host's own lvm commands on it fail ("Multiple VGs found with the same name")
# for as long as the loop device is attached. Every lvm command here names only this loop device (--devices), uses
# a private LVM_SYSTEM_DIR and locking_dir, and writes no backup or archive.
set -euo pipefail

PROG="$(basename "${BASH_SOURCE[0]}")"
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
[[ $# -ge 2 ]] || die "usage: $PROG create DIR [VG] | check DIR | remove DIR"
CMD=$1
DIR=$2
VG=${3:-rootvg}
[[ "$(id -u)" -eq 0 ]] || die "must run as root"

lvm_() { # SUBCOMMAND ARGS... on the loop device in $LOOP only
    local sub=$1
    shift
    LVM_SYSTEM_DIR="$DIR/lvm-etc" LVM_SUPPRESS_FD_WARNINGS=1 lvm "$sub" --devices "$LOOP" --config "devices {
use_devicesfile=0 obtain_device_list_from_udev=0 hints=\"none\" } activation { udev_sync=0 udev_rules=0 monitoring=0 }
global { use_lvmpolld=0 event_activation=0 locking_dir=\"$DIR/lvm-lock\" } backup { backup=0 archive=0 }" "$@"
}
fingerprint() { # the PV label and metadata area, and the VG's identity
    printf 'head=%s\n' "$(head -c 4M "$DIR/host-pv.img" | sha256sum | cut -d' ' -f1)"
    printf 'vg=%s\n' "$(lvm_ vgs --readonly --noheadings -o vg_name,vg_uuid,vg_seqno "$VG" | xargs)"
}

case "$CMD" in
    create)
        if [[ -e "/dev/$VG" ]] || compgen -G "/dev/mapper/${VG//-/--}-*" >/dev/null; then
            die "this host already has an active VG named $VG; refusing to create a second one"
        fi
        mkdir -p "$DIR/lvm-etc" "$DIR/lvm-lock"
        : >"$DIR/lvm-etc/lvm.conf"
        [[ ! -e "$DIR/state" ]] || die "$DIR/state exists: remove the previous host VG first"
        truncate -s 64M "$DIR/host-pv.img"
        LOOP="$(losetup --find --show "$DIR/host-pv.img")"
        printf 'loop=%s\nvg_name=%s\n' "$LOOP" "$VG" >"$DIR/state"
        {
            lvm_ pvcreate --quiet "$LOOP"
            lvm_ vgcreate --quiet -s 4M "$VG" "$LOOP"
            lvm_ lvcreate --quiet --driverloaded n -an -Zn -Wn -l 4 -n rootlv "$VG"
        } 2>&1 | grep -vE 'Activation disabled|not zeroed|NOT backed up' >&2 || true
        lvm_ vgs --readonly --noheadings -o vg_name "$VG" >/dev/null || die "vgcreate $VG on $LOOP failed"
        fingerprint >>"$DIR/state"
        echo "$LOOP"
        ;;
    check|remove)
        [[ -f "$DIR/state" ]] || die "no $DIR/state: nothing was created there"
        LOOP="$(sed -n 's/^loop=//p' "$DIR/state")"
        VG="$(sed -n 's/^vg_name=//p' "$DIR/state")"
        [[ "$(losetup -n -O BACK-FILE "$LOOP" 2>/dev/null)" == "$(readlink -f "$DIR/host-pv.img")"* ]] ||
            die "$LOOP is no longer attached to $DIR/host-pv.img"
        rc=0
        want="$(grep -E '^(head|vg)=' "$DIR/state")"
        have="$(fingerprint)"
        if [[ "$want" != "$have" ]]; then
            printf '%s: the host VG %s changed:\nbefore:\n%s\nafter:\n%s\n' "$PROG" "$VG" "$want" "$have" >&2
            rc=1
        fi
        if [[ "$CMD" == remove ]]; then
            losetup -d "$LOOP"
            rm -rf "$DIR/host-pv.img" "$DIR/state" "$DIR/lvm-etc" "$DIR/lvm-lock"
        fi
        exit "$rc"
        ;;
    *) die "unknown command $CMD (create, check, remove)" ;;
esac
