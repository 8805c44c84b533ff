#!/usr/bin/env bash
# make-container-image.sh: build kib's container image (the repository's Containerfile) with podman, where no
# registry is reachable.
#
# 1. Base: a Debian 12 (bookworm) minbase root made with mmdebstrap from Debian's archive, with the Containerfile's
#    package list (its `packages='...'` line) preinstalled, stored as a tarball in the cache folder
#    (default /var/cache/kib/container/base-<key>.tar, key = sha256 of this script and that list) and
#    `podman import`ed as localhost/kib-base:<key>. It stands in for docker.io/library/debian:12-slim, which is what
#    the Containerfile names by default; the Containerfile's RUN line then finds every package installed.
# 2. Image: `podman build` of the Containerfile on that base, with a build context staged from the host: the kib
#    binary (default target/release/kib, built with `cargo build --release --locked`), manifests/, phases/ and the
#    man page ($KIB_MAN_PAGE when that file exists, else `kib man`'s; the Containerfile's "man/" folder). It is
#    tagged <name>:<key> (default name localhost/kib), key = sha256 of the Containerfile, this script, the kib binary,
#    manifests/, phases/ and the man page, and also <name>:latest. When <name>:<key> exists already nothing is built.
#    Older <name>:<key> and localhost/kib-base:<key> images are removed (unless a container uses them).
#
# Usage: make-container-image.sh [--kib PATH] [--name NAME] [--cache-dir DIR] [--force]
# The image name with its tag is the LAST line of stdout; progress goes to stderr. Must run as root (rootful podman:
# kib needs real root for loop devices). CONTAINERS_CONF defaults to scripts/containers.conf (see that file).
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
PROG="$(basename "$SELF")"
REPO="$(cd "$(dirname "$SELF")/.." && pwd)"

KIB="$REPO/target/release/kib"
NAME="localhost/kib"
CACHE_DIR="/var/cache/kib/container"
FORCE=0
MAN_PAGE="${KIB_MAN_PAGE:-$REPO/target/man/kib.1}"

SUITE="bookworm"
MIRROR="http://deb.debian.org/debian"
SECURITY_MIRROR="http://deb.debian.org/debian-security"

log() { printf "%s: [%3ds] %s\n" "$PROG" "$SECONDS" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $PROG [--kib PATH] [--name NAME] [--cache-dir DIR] [--force]

Build kib's container image from the repository's Containerfile with podman, on a Debian 12 base made locally
with mmdebstrap (no registry needed).

  --kib PATH        the kib binary to put in the image (default: target/release/kib)
  --name NAME       image name without tag (default: localhost/kib); tagged :<content hash> and :latest
  --cache-dir DIR   where the mmdebstrap base tarball is kept (default: /var/cache/kib/container)
  --force           rebuild the image even when one with the same content hash exists
  -h, --help        show this help

The image name with its tag is printed as the last line of stdout.
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --kib) [[ $# -ge 2 ]] || die "--kib needs a value"; KIB="$2"; shift 2 ;;
        --kib=*) KIB="${1#*=}"; shift ;;
        --name) [[ $# -ge 2 ]] || die "--name needs a value"; NAME="$2"; shift 2 ;;
        --name=*) NAME="${1#*=}"; shift ;;
        --cache-dir) [[ $# -ge 2 ]] || die "--cache-dir needs a value"; CACHE_DIR="$2"; shift 2 ;;
        --cache-dir=*) CACHE_DIR="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ "$(id -u)" -eq 0 ]] || die "must run as root (rootful podman; kib in the container needs real root for loop devices)"
command -v podman >/dev/null || die "podman is missing (scripts/deps.sh installs it)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (scripts/deps.sh installs it)"
[[ -x "$KIB" ]] || die "no kib binary at $KIB: build it first with 'cargo build --release --locked' (or give --kib)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/scripts/containers.conf}"

# From here on, stdout carries only the final image name (fd 3); everything else goes to stderr.
exec 3>&1 1>&2

# One run at a time: two runs side by side (tests/container.rs and tests/matrix.rs, which the test
# runner may start together) race in podman's storage when one removes an older image below while
# the other looks images up ("image not known").
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.make-container-image.lock"
flock 9

CONTAINERFILE="$REPO/Containerfile"
PACKAGES="$(sed -n "s/^ *packages='\([^']*\)'.*/\1/p" "$CONTAINERFILE")"
[[ -n "$PACKAGES" ]] || die "found no packages='...' line in $CONTAINERFILE"

sha() { sha256sum | cut -c1-16; }

# --- 1. the base ---------------------------------------------------------------------------------------------------
BASE_KEY="$( { cat "$SELF"; echo "$PACKAGES"; } | sha)"
BASE_REF="localhost/kib-base:$BASE_KEY"
BASE_TAR="$CACHE_DIR/base-$BASE_KEY.tar"

if podman image exists "$BASE_REF"; then
    log "base $BASE_REF is there"
else
    mkdir -p "$CACHE_DIR"
    if [[ -f "$BASE_TAR" ]]; then
        log "base tarball $BASE_TAR is cached"
    else
        log "mmdebstrap $SUITE minbase with: $PACKAGES"
        tmp="$(mktemp "$CACHE_DIR/.base-$BASE_KEY.XXXXXX.tar")"
        trap 'rm -f "$tmp"' EXIT
        # Trimmed like debian:12-slim: no man pages, docs (but the copyright files) or translations.
        mmdebstrap --mode=root --variant=minbase --format=tar \
            --include="$(echo "$PACKAGES" | tr ' ' ',')" \
            --aptopt='Acquire::Languages "none"' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --customize-hook='rm -f "$1"/etc/apt/apt.conf.d/99mmdebstrap' \
            "$SUITE" "$tmp" \
            "deb $MIRROR $SUITE main" \
            "deb $MIRROR $SUITE-updates main" \
            "deb $SECURITY_MIRROR $SUITE-security main" >&2
        mv -f "$tmp" "$BASE_TAR"
        trap - EXIT
        # Older bases made by earlier versions of this script are of no further use.
        for old in "$CACHE_DIR"/base-*.tar; do
            [[ "$old" == "$BASE_TAR" || ! -f "$old" ]] || { log "removing the stale base $old"; rm -f "$old"; }
        done
        log "base tarball: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
    fi
    podman import --quiet "$BASE_TAR" "$BASE_REF" >/dev/null
    log "imported $BASE_REF"
fi

# --- 2. the image --------------------------------------------------------------------------------------------------
CTX="$(mktemp -d /var/tmp/kib-container-ctx.XXXXXX)"
trap 'rm -rf "$CTX"' EXIT
cp "$KIB" "$CTX/kib"
cp -r "$REPO/manifests" "$REPO/phases" "$CTX/"
mkdir "$CTX/man"
if [[ -f "$MAN_PAGE" ]]; then
    cp "$MAN_PAGE" "$CTX/man/kib.1"
    log "man page: $MAN_PAGE"
else
    "$KIB" man > "$CTX/man/kib.1"
    log "man page: generated with \`kib man\`"
fi
cp "$CONTAINERFILE" "$CTX/Containerfile"

# The key covers everything that goes into the image: the staged context (every file, by path and content), this
# script (its base) and, through the context, the Containerfile.
IMAGE_KEY="$( { cat "$SELF"; cd "$CTX" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; } | sha)"
IMAGE_REF="$NAME:$IMAGE_KEY"

if [[ "$FORCE" -eq 0 ]] && podman image exists "$IMAGE_REF"; then
    log "$IMAGE_REF is up to date"
else
    log "building $IMAGE_REF"
    podman build --quiet --network=host --build-arg "BASE=$BASE_REF" -f "$CTX/Containerfile" -t "$IMAGE_REF" "$CTX" >/dev/null
    log "built $IMAGE_REF"
fi
podman tag "$IMAGE_REF" "$NAME:latest"

# Older images this script made under the same names (another kib binary, another base): each holds a
# copy of kib, so they would pile up in podman's storage. One that a container still uses stays.
remove_older() {  # repository, the tag to keep
    local ref
    podman images --format '{{.Repository}}:{{.Tag}}' | while read -r ref; do
        [[ "${ref%:*}" == "$1" && "${ref##*:}" =~ ^[0-9a-f]{16}$ && "${ref##*:}" != "$2" ]] || continue
        if podman rmi "$ref" >/dev/null 2>&1; then log "removed the older image $ref"; fi
    done
}
remove_older "$NAME" "$IMAGE_KEY"
remove_older localhost/kib-base "$BASE_KEY"
echo "$IMAGE_REF" >&3
