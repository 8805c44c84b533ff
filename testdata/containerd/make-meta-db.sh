#!/usr/bin/env bash
# Fixture: a real containerd metadata store, made by containerd itself (Debian's containerd and
# ctr, with umoci for two empty OCI images), for the unit tests of kib's bbolt reader
# (src/bolt.rs) and `kib check`'s containerd checks. It holds:
#   namespace k8s.io:  registry.k8s.io/pause:3.9
#   namespace default: example.com/k8s.io/mirror:1   (a name that contains "k8s.io": a byte search
#                                                    for the namespace would wrongly find it)
# Usage: testdata/containerd/make-meta-db.sh [OUT]   (default: testdata/containerd/meta.db). Needs root.
set -euo pipefail
out=${1:-$(dirname "$0")/meta.db}
work=$(mktemp -d /var/tmp/kib-meta-db.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
image() { # image TAG TAR: an empty OCI image tagged TAG, as an OCI archive
    umoci init --layout "$work/oci-$1"
    umoci new --image "$work/oci-$1:$1"
    tar -C "$work/oci-$1" -cf "$2" .
}
image 3.9 "$work/pause.tar"
image 1 "$work/mirror.tar"
printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' >"$work/config.toml"
containerd --config "$work/config.toml" --root "$work/root" --state "$work/state" --address "$work/sock" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do ctr -a "$work/sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr -a "$work/sock" -n k8s.io images import --base-name registry.k8s.io/pause "$work/pause.tar" >/dev/null
ctr -a "$work/sock" -n default images import --base-name example.com/k8s.io/mirror "$work/mirror.tar" >/dev/null
ctr -a "$work/sock" -n k8s.io images ls -q
ctr -a "$work/sock" -n default images ls -q
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
cp "$work/root/io.containerd.metadata.v1.bolt/meta.db" "$out"
echo "wrote $out ($(stat -c %s "$out") bytes)"
