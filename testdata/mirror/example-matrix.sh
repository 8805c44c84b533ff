#!/usr/bin/env bash
# example-matrix.sh: runs manifests/matrix-example.yaml (Debian 12 amd64 and arm64 × Kubernetes
# 1.30 and 1.37 × qcow2 and ova: four builds) on this host against a local FIXTURE mirror, since
# pkgs.k8s.io and GitHub releases are out of reach here, and times it: `kib matrix run -j 1`,
# `-j 2`, and the idempotent re-run. A by-hand harness for the README's matrix figures, not a test.
#
# What stands in for what (nothing here is upstream's build):
#   - testdata/mirror/make-fixtures.sh builds pkgs.k8s.io's apt repositories for exactly the
#     manifests' versions (1.30.14 and 1.37.1: fixture kubelet, kubeadm, kubectl, cri-tools,
#     kubernetes-cni, amd64 and arm64), signed with a throw-away key;
#   - testdata/el/make-containerd-tarball.sh repacks Debian sid's containerd and runc (amd64, arm64)
#     with upstream's release layout, for 1.37's `containerd_source: upstream`. Its versions are
#     Debian's (containerd 2.1.9, runc 1.3.6, not the manifest's 2.3.2 and 1.4.3), so the matrix
#     run here is the example plus one override, `when: {manifest: k8s-1.37}`, setting them;
#   - python3's http.server serves both on 127.0.0.1, and a kib configuration file in the work
#     folder maps https://pkgs.k8s.io, https://dl.k8s.io and https://github.com onto it
#     (`kib matrix run --config`); Debian's archive is the real one.
#
# Needs root, the two base images of the example (scripts/make-base-image.sh and
# scripts/make-base-image.sh --arch arm64) and a built kib (cargo build --release).
# Usage: sudo testdata/mirror/example-matrix.sh [WORKDIR]   (default: a new /var/tmp/kib-example-matrix.*)
# Each -j run starts with an empty kib cache of its own (the package cache included), so the two
# are comparable; the re-run reuses the -j 2 run's outputs and cache.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $(id -u) == 0 ]] || { echo "example-matrix.sh: run as root (kib matrix run attaches loop devices)" >&2; exit 1; }
KIB=${KIB:-$PWD/target/release/kib}
[[ -x $KIB ]] || { echo "example-matrix.sh: no $KIB: cargo build --release first" >&2; exit 1; }
for arch in amd64 arm64; do
    img=/var/cache/kib/base/debian-12-genericcloud-$arch.raw
    [[ -f $img ]] || { echo "example-matrix.sh: $img missing: scripts/make-base-image.sh --arch $arch" >&2; exit 1; }
done
WORK=${1:-$(mktemp -d /var/tmp/kib-example-matrix.XXXXXX)}
mkdir -p "$WORK"
log() { echo "example-matrix: $*" >&2; }
server=
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; true' EXIT

log "fixture mirror in $WORK/www"
KIB_FIXTURES_RPM=0 bash testdata/mirror/make-fixtures.sh "$WORK/www" 1.30.14 1.37.1 >&2
read -r containerd runc < <(bash testdata/el/make-containerd-tarball.sh "$WORK/www" | tail -n 1)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/www" "$port" >"$WORK/http.log" 2>&1 &
server=$!
for _ in $(seq 50); do curl -fsS -o /dev/null "http://127.0.0.1:$port/FIXTURES.json" 2>/dev/null && break; sleep 0.1; done
cat >"$WORK/config.yaml" <<EOF
# The fixture mirror (testdata/mirror/example-matrix.sh); Debian's archive is the real one.
mirrors:
  https://pkgs.k8s.io: http://127.0.0.1:$port/pkgs
  https://dl.k8s.io: http://127.0.0.1:$port/dl
  https://github.com: http://127.0.0.1:$port/github
EOF
{
    cat manifests/matrix-example.yaml
    cat <<EOF
# example-matrix.sh: the fixture containerd release tarball's versions (Debian's).
overrides:
  - when: {manifest: k8s-1.37}
    variables: {containerd_version: "$containerd", runc_version: "$runc"}
EOF
} >"$WORK/matrix.yaml"

run() { # NAME JOBS OUT CACHE
    local t0=$SECONDS
    if "$KIB" matrix run "$WORK/matrix.yaml" --config "$WORK/config.yaml" -j "$2" --output-dir "$3" --cache-dir "$4" --work-dir "$WORK/work"; then
        log "$1: $((SECONDS - t0)) s"
    else
        log "$1: FAILED after $((SECONDS - t0)) s (logs in $3/logs)"
        return 1
    fi
}
"$KIB" matrix plan "$WORK/matrix.yaml" --config "$WORK/config.yaml" --output-dir "$WORK/out-j1" --cache-dir "$WORK/cache-j1"
run "-j 1" 1 "$WORK/out-j1" "$WORK/cache-j1"
run "-j 2" 2 "$WORK/out-j2" "$WORK/cache-j2"
t0=$(date +%s.%N)
run "re-run -j 2 (all up to date)" 2 "$WORK/out-j2" "$WORK/cache-j2"
log "re-run: $(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')") s"
log "outputs: $WORK/out-j1, $WORK/out-j2 (rm -rf $WORK when done)"
