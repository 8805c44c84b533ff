#!/usr/bin/env bash
# boot-test.sh: boot a raw or qcow2 disk image under QEMU (TCG) and wait for a login prompt on the serial console.
#
# Usage: boot-test.sh [--uefi] [--no-seed] [--no-net] [--memory MIB] [--log FILE] [--expect REGEX]
#                     [--expect-mounts MOUNT=SOURCE,...] IMAGE [TIMEOUT_SECONDS]
#        boot-test.sh --lvm-fixture [options] [IMAGE] [TIMEOUT_SECONDS]
#
# The image is never modified (-snapshot). By default a small NoCloud seed disk (vfat, label CIDATA) is attached so
# that cloud-init finds its data source at once instead of probing for cloud metadata services, and the guest gets
# QEMU user-mode networking with restrict=on (DHCP from QEMU itself, no traffic leaves this machine).
# Succeeds when "login:" (or --expect REGEX) appears on the serial console; fails after TIMEOUT_SECONDS (default 300) or when QEMU exits,
# printing the tail of the console log. KVM guests hang on these machines, so this always uses TCG.
#
# --expect-mounts checks, from inside the booted guest, which device each mount point came from: the seed's
# cloud-init runs `findmnt` at its last stage and prints "kib-boot-test mounts: /=SOURCE /var=SOURCE ..." on the
# serial console; the test succeeds when that line is the expected one. --lvm-fixture boots the LVM fixture
# (testdata/lvm/make-lvm-image.sh, built or taken from its cache when no IMAGE is given) and expects / and /var on
# their logical volumes, activated by the guest's own initramfs: /=/dev/mapper/rootvg-rootlv,/var=/dev/mapper/rootvg-varlv.
set -euo pipefail

PROG="$(basename "${BASH_SOURCE[0]}")"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $PROG [options] IMAGE [TIMEOUT_SECONDS]

Boot IMAGE (raw or qcow2) with qemu-system-x86_64 -machine accel=tcg and wait for "login:" on the serial console.

  --uefi          boot with OVMF (UEFI) instead of SeaBIOS (installs ovmf if missing)
  --no-seed       attach no NoCloud seed disk
  --user-data F   use cloud-config file F as the seed's user-data (default: an empty cloud-config)
  --no-net        give the guest no network card
  --memory MIB    guest memory (default 1024)
  --log FILE      keep the serial console log in FILE (default: a temporary file, removed on exit)
  --expect REGEX  succeed when this extended regular expression appears on the console instead of "login:"
                  (e.g. 'Cloud-init v\. .* finished' to wait for cloud-init's last stage)
  --expect-mounts MOUNT=SOURCE,...
                  succeed when the booted guest reports these mount sources (findmnt, run by the seed's
                  cloud-init), e.g. /=/dev/mapper/rootvg-rootlv,/var=/dev/mapper/rootvg-varlv
  --lvm-fixture   boot the LVM fixture (testdata/lvm/make-lvm-image.sh; built when IMAGE is not given) and
                  expect its root and /var logical volumes mounted
  -h, --help      show this help

TIMEOUT_SECONDS defaults to 300.
EOF
}

UEFI=0
SEED=1
USER_DATA=
NET=1
MEMORY=1024
LOG_FILE=""
EXPECT="login:"
EXPECT_MOUNTS=""
LVM_FIXTURE=0
POSITIONAL=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --uefi) UEFI=1; shift ;;
        --no-seed) SEED=0; shift ;;
        --user-data) USER_DATA=$2; shift 2 ;;
        --no-net) NET=0; shift ;;
        --memory) [[ $# -ge 2 ]] || die "--memory needs a value"; MEMORY="$2"; shift 2 ;;
        --log) [[ $# -ge 2 ]] || die "--log needs a value"; LOG_FILE="$2"; shift 2 ;;
        --expect) [[ $# -ge 2 ]] || die "--expect needs a value"; EXPECT="$2"; shift 2 ;;
        --expect-mounts) [[ $# -ge 2 ]] || die "--expect-mounts needs a value"; EXPECT_MOUNTS="$2"; shift 2 ;;
        --lvm-fixture) LVM_FIXTURE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; POSITIONAL+=("$@"); break ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) POSITIONAL+=("$1"); shift ;;
    esac
done
if [[ "$LVM_FIXTURE" -eq 1 ]]; then
    EXPECT_MOUNTS="${EXPECT_MOUNTS:-/=/dev/mapper/rootvg-rootlv,/var=/dev/mapper/rootvg-varlv}"
    if [[ ${#POSITIONAL[@]} -eq 0 || "${POSITIONAL[0]}" =~ ^[0-9]+$ ]]; then
        log "building (or taking from its cache) the LVM fixture image"
        fixture="$("$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../testdata/lvm/make-lvm-image.sh" --variant lvm | tail -n1)"
        POSITIONAL=("$fixture" "${POSITIONAL[@]}")
    fi
fi
[[ ${#POSITIONAL[@]} -ge 1 && ${#POSITIONAL[@]} -le 2 ]] || { usage >&2; exit 2; }
IMAGE="${POSITIONAL[0]}"
TIMEOUT="${POSITIONAL[1]:-300}"
if [[ -n "$EXPECT_MOUNTS" ]]; then
    [[ -z "$USER_DATA" && "$SEED" -eq 1 ]] || die "--expect-mounts needs the seed's own user-data (no --no-seed, no --user-data)"
    [[ "$EXPECT_MOUNTS" =~ ^/[A-Za-z0-9/_.:+@-]*=[A-Za-z0-9/_.:+@-]+(,/[A-Za-z0-9/_.:+@-]*=[A-Za-z0-9/_.:+@-]+)*$ ]] ||
        die "--expect-mounts wants MOUNT=SOURCE,... (absolute mount points; letters, digits and /_.:+@- only): $EXPECT_MOUNTS"
    # The guest prints the sources it sees; the expected line is matched literally (escaped for grep -E), up to the
    # end of the console line.
    EXPECT="$(sed -E 's/[][\\.^$*+?(){}|]/\\&/g' <<<"kib-boot-test mounts: ${EXPECT_MOUNTS//,/ }")[[:space:]]*$"
fi
[[ -f "$IMAGE" ]] || die "no such image: $IMAGE"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "TIMEOUT_SECONDS must be a whole number: $TIMEOUT"
[[ "$MEMORY" =~ ^[0-9]+$ ]] || die "--memory must be a whole number of MiB: $MEMORY"

# --- QEMU ----------------------------------------------------------------------------------------------------------
# Debian's bookworm qemu-system-x86 (7.2) would replace the preinstalled qemu-utils 10.0 from bookworm-backports and
# qemu-img would disappear; so both come from bookworm-backports, together.
ensure_qemu() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 && return 0
    [[ "$(id -u)" -eq 0 ]] || die "qemu-system-x86_64 is missing and installing it needs root"
    log "installing qemu-system-x86 and qemu-utils from bookworm-backports"
    local list=/etc/apt/sources.list.d/backports.list
    if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$list"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >&2
    command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 is still missing"
    qemu-img --version >/dev/null 2>&1 || die "qemu-img no longer works after installing qemu-system-x86"
}
ensure_qemu

# SeaBIOS and the option ROMs come with qemu-system-x86's recommends; make sure the BIOS is there.
ensure_firmware() {
    local pkgs=()
    if [[ "$UEFI" -eq 1 ]]; then
        [[ -f /usr/share/OVMF/OVMF_CODE.fd || -f /usr/share/OVMF/OVMF_CODE_4M.fd ]] || pkgs+=(ovmf)
    fi
    [[ -f /usr/share/seabios/bios-256k.bin || -f /usr/share/qemu/bios-256k.bin ]] || pkgs+=(seabios)
    [[ ${#pkgs[@]} -eq 0 ]] && return 0
    [[ "$(id -u)" -eq 0 ]] || die "missing firmware (${pkgs[*]}) and installing it needs root"
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${pkgs[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "${pkgs[@]}" >&2; }
}
ensure_firmware

# --- cleanup -------------------------------------------------------------------------------------------------------
TMP="$(mktemp -d /tmp/kib-boot-test.XXXXXX)"
QEMU_PID=""
cleanup() {
    local rc=$?
    set +e
    if [[ -n "$QEMU_PID" ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$QEMU_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$QEMU_PID" 2>/dev/null
        wait "$QEMU_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

CONSOLE="${LOG_FILE:-$TMP/console.log}"
: >"$CONSOLE"

# --- image format --------------------------------------------------------------------------------------------------
if [[ "$(head -c 4 "$IMAGE" | od -An -tx1 | tr -d ' \n')" == "514649fb" ]]; then
    FORMAT=qcow2
else
    FORMAT=raw
fi

QEMU_ARGS=(
    -machine "pc,accel=tcg"
    -cpu max
    -smp 2
    -m "$MEMORY"
    -display none
    -monitor none
    -serial "file:$CONSOLE"
    -no-reboot
    -snapshot
    -drive "file=$IMAGE,format=$FORMAT,if=virtio,cache=unsafe"
)

if [[ "$UEFI" -eq 1 ]]; then
    code=""; vars=""
    for c in /usr/share/OVMF/OVMF_CODE_4M.fd:/usr/share/OVMF/OVMF_VARS_4M.fd \
             /usr/share/OVMF/OVMF_CODE.fd:/usr/share/OVMF/OVMF_VARS.fd; do
        if [[ -f "${c%%:*}" && -f "${c##*:}" ]]; then code="${c%%:*}"; vars="${c##*:}"; break; fi
    done
    [[ -n "$code" ]] || die "no OVMF firmware found in /usr/share/OVMF"
    cp "$vars" "$TMP/vars.fd"
    QEMU_ARGS+=(
        -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code"
        -drive "if=pflash,format=raw,unit=1,file=$TMP/vars.fd"
    )
fi

if [[ "$SEED" -eq 1 ]]; then
    if ! command -v mkfs.vfat >/dev/null || ! command -v mcopy >/dev/null; then
        die "a NoCloud seed needs mkfs.vfat and mcopy (dosfstools, mtools); or pass --no-seed"
    fi
    cat >"$TMP/meta-data" <<'EOF'
instance-id: kib-boot-test
local-hostname: kib-boot-test
EOF
    if [[ -n "$USER_DATA" ]]; then
        cp "$USER_DATA" "$TMP/user-data"
    elif [[ -n "$EXPECT_MOUNTS" ]]; then
        mounts=""
        for m in ${EXPECT_MOUNTS//,/ }; do mounts+=" ${m%%=*}"; done
        cat >"$TMP/user-data" <<EOF
#cloud-config
runcmd:
  - [sh, -c, 'line="kib-boot-test mounts:"; for m in$mounts; do line="\$line \$m=\$(findmnt -n -o SOURCE --mountpoint \$m)"; done; echo "\$line" >/dev/ttyS0']
EOF
    else
        cat >"$TMP/user-data" <<'EOF'
#cloud-config
{}
EOF
    fi
    mkfs.vfat -n CIDATA -C "$TMP/seed.img" 2048 >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -i "$TMP/seed.img" "$TMP/meta-data" "$TMP/user-data" ::/
    QEMU_ARGS+=(-drive "file=$TMP/seed.img,format=raw,if=virtio,readonly=on")
fi

if [[ "$NET" -eq 1 ]]; then
    QEMU_ARGS+=(-nic "user,model=virtio-net-pci,restrict=on")
else
    QEMU_ARGS+=(-nic none)
fi

# The end of the console log, without carriage returns and terminal escape sequences (GRUB's menu is full of them).
console_tail() {
    tail -n 60 "$CONSOLE" | sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\r//g' >&2
}

# --- boot ----------------------------------------------------------------------------------------------------------
log "booting $IMAGE ($FORMAT, $([[ "$UEFI" -eq 1 ]] && echo UEFI || echo BIOS)), timeout ${TIMEOUT}s"
START=$SECONDS
qemu-system-x86_64 "${QEMU_ARGS[@]}" </dev/null >"$TMP/qemu.out" 2>&1 &
QEMU_PID=$!

while :; do
    if grep -aqE -- "$EXPECT" "$CONSOLE"; then
        log "'$EXPECT' on the console after $((SECONDS - START)) s:"
        grep -aE -m1 -- "$EXPECT" "$CONSOLE" | tr -d '\r' >&2 || true
        exit 0
    fi
    if ! kill -0 "$QEMU_PID" 2>/dev/null; then
        wait "$QEMU_PID" 2>/dev/null && qrc=0 || qrc=$?
        QEMU_PID=""
        log "qemu exited (status $qrc) after $((SECONDS - START)) s without '$EXPECT' on the console"
        sed 's/^/qemu: /' "$TMP/qemu.out" >&2
        log "last lines of the console:"
        console_tail
        exit 1
    fi
    if ((SECONDS - START >= TIMEOUT)); then
        log "no '$EXPECT' on the console after ${TIMEOUT}s; last lines of the console:"
        console_tail
        exit 1
    fi
    sleep 2
done
