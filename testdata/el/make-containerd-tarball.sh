#!/usr/bin/env bash
# make-containerd-tarball.sh: a TEST FIXTURE standing in for upstream's containerd release
# tarball and runc release binary, for kib's RPM-image tests.
#
# RHEL-family distributions do not ship containerd, so kib's RPM node installs it from upstream's
# release tarball (phases/runtime/containerd-upstream.yaml). github.com is not reachable from
# kib's test machines; Debian's archive is. This script takes Debian sid's containerd and runc
# packages (containerd 2.1.x, runc 1.3.x: the newest Debian has, fetched with apt-get from a
# private apt state, never touching the host's) and repacks their programs with upstream's
# layout:
#
#   github/containerd/containerd/releases/download/vV/containerd-V-linux-amd64.tar.gz
#       bin/containerd bin/containerd-shim-runc-v2 bin/ctr   (upstream's tarball has these, plus
#                                                             containerd-stress, which Debian
#                                                             does not package)
#   github/containerd/containerd/releases/download/vV/containerd-V-linux-amd64.tar.gz.sha256sum
#   github/opencontainers/runc/releases/download/vR/runc.amd64, runc.arm64
#   github/opencontainers/runc/releases/download/vR/runc.sha256sum
#
# NOTHING here is upstream's build: the programs are Debian's (dynamically linked against
# glibc, runc against libseccomp), the tarball is kib's. The versions are Debian's upstream
# versions (2.1.9 → containerd-2.1.9-linux-amd64.tar.gz). amd64 and arm64.
#
# Usage: make-containerd-tarball.sh OUTDIR        (copies the files into OUTDIR/github/...)
#        make-containerd-tarball.sh --cache-only  (builds the cache, copies nothing)
# Cache: /var/cache/kib/el/containerd-<sha256 of this script>/ (KIB_EL_CACHE overrides the
# parent), with a stamp; a folder without its stamp is rebuilt. Prints the containerd and runc
# versions as the last line of stdout: "CONTAINERD_VERSION RUNC_VERSION".
set -euo pipefail

OUT=${1:?usage: make-containerd-tarball.sh OUTDIR}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE_ROOT="${KIB_EL_CACHE:-/var/cache/kib/el}"
HASH=$(sha256sum "$SELF" | cut -c1-12)
CACHE="$CACHE_ROOT/containerd-$HASH"
log() { echo "make-containerd-tarball: $*" >&2; }

build() {
    local tmp
    tmp=$(mktemp -d /var/tmp/kib-containerd.XXXXXX)
    trap 'rm -rf "$tmp"' RETURN
    mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial" "$tmp/debs" "$tmp/x"
    cat >"$tmp/sources.list" <<'SRC'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
SRC
    local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$tmp/apt/lists"
        -o "Dir::Cache=$tmp/apt/cache" -o "Dir::State::status=/dev/null" -o "APT::Architecture=amd64"
        -o "APT::Architectures::=amd64" -o "APT::Architectures::=arm64" -o "Debug::NoLocking=1")
    log "fetching Debian sid's containerd and runc packages (amd64, arm64)"
    apt-get -q "${opts[@]}" update >&2
    (cd "$tmp/debs" && apt-get -q "${opts[@]}" download containerd:amd64 runc:amd64 containerd:arm64 runc:arm64 >&2)
    local cv rv arch c r
    cv=$(dpkg-deb -f "$(ls "$tmp/debs"/containerd_*_amd64.deb)" Version | sed -E 's/^[0-9]+://; s/[~+-].*//')
    rv=$(dpkg-deb -f "$(ls "$tmp/debs"/runc_*_amd64.deb)" Version | sed -E 's/^[0-9]+://; s/[~+-].*//')
    local cdir="$tmp/out/github/containerd/containerd/releases/download/v$cv"
    local rdir="$tmp/out/github/opencontainers/runc/releases/download/v$rv"
    mkdir -p "$cdir" "$rdir"
    for arch in amd64 arm64; do
        c=$(ls "$tmp/debs"/containerd_*_"$arch".deb)
        r=$(ls "$tmp/debs"/runc_*_"$arch".deb)
        dpkg-deb -x "$c" "$tmp/x/c-$arch"
        dpkg-deb -x "$r" "$tmp/x/r-$arch"
        mkdir -p "$tmp/t-$arch/bin"
        for b in containerd containerd-shim-runc-v2 ctr; do
            install -m 0755 "$tmp/x/c-$arch/usr/bin/$b" "$tmp/t-$arch/bin/$b"
        done
        local tgz="containerd-$cv-linux-$arch.tar.gz"
        tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1704067200 -C "$tmp/t-$arch" -czf "$cdir/$tgz" bin
        (cd "$cdir" && sha256sum "$tgz" >"$tgz.sha256sum")
        install -m 0755 "$(readlink -f "$tmp/x/r-$arch/usr/sbin/runc" 2>/dev/null || readlink -f "$tmp/x/r-$arch/usr/bin/runc")" "$rdir/runc.$arch"
    done
    # Upstream's runc.sha256sum lists every architecture's binary.
    (cd "$rdir" && sha256sum runc.amd64 runc.arm64 >runc.sha256sum)
    echo "$cv $rv" >"$tmp/out/VERSIONS"
    rm -rf "$CACHE.tmp"
    mv "$tmp/out" "$CACHE.tmp"
    echo "built by $SELF ($HASH) from $(cd "$tmp/debs" && echo *.deb)" >"$CACHE.tmp/STAMP"
    rm -rf "$CACHE"
    mv "$CACHE.tmp" "$CACHE"
    log "built $CACHE (containerd $cv, runc $rv) in ${SECONDS}s"
}

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.containerd.lock"
flock 9
[[ -f $CACHE/STAMP ]] || build
if [[ $OUT != --cache-only ]]; then
    mkdir -p "$OUT"
    cp -a "$CACHE/github" "$OUT/"
fi
cat "$CACHE/VERSIONS"
