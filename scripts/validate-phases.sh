#!/bin/sh
# Validates every provider profile (phases/providers/*.yaml) and every knob phase by loading each
# one with `kib validate` inside a small wrapper manifest that first includes the Kubernetes 1.30
# phases, the way a manifest would use it. Needs no root and no image.
#
#   scripts/validate-phases.sh [KIB_BINARY]      (default: target/release/kib)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
kib=${1:-$repo/target/release/kib}
[ -x "$kib" ] || { echo "no kib binary at $kib (build it, or pass its path)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
for phase in "$repo"/phases/providers/*.yaml \
             "$repo"/phases/node/kernel-args.yaml "$repo"/phases/node/containerd-audit.yaml \
             "$repo"/phases/node/etcd-network-tuning.yaml "$repo"/phases/node/repos-disable.yaml \
             "$repo"/phases/node/repos-reenable.yaml "$repo"/phases/node/image-builder-release.yaml \
             "$repo"/phases/runtime/containerd-registry-mirror.yaml \
             "$repo"/phases/kubernetes/ecr-credential-provider.yaml \
             "$repo"/phases/kubernetes/additional-components.yaml; do
  name=$(basename "$phase" .yaml)
  cat > "$tmp/$name.yaml" <<EOM
apiVersion: kib/v1
kind: ImageManifest
metadata: {name: validate-$name}
variables:
  kubernetes_version: "1.30.14"
  kubernetes_series: "1.30"
  kubernetes_deb_version: "1.30.14-1.1"
  pause_version: "3.9"
  etcd_version: "3.5.15-0"
  coredns_version: v1.11.3
  containerd_version: "2.3.2"
  runc_version: "1.4.3"
  crictl_version: "1.30.1"
  cni_version: "1.4.0"
include:
  - $repo/phases/node/kernel.yaml
  - $repo/phases/runtime/containerd-debian.yaml
  - $repo/phases/runtime/containerd-upstream.yaml
  - $repo/phases/kubernetes/pkgs.yaml
  - $repo/phases/kubernetes/http.yaml
  - $repo/phases/kubernetes/common.yaml
  - $phase
EOM
  if out=$("$kib" validate --manifest "$tmp/$name.yaml" 2>&1); then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAIL ${phase#$repo/}:"
    echo "$out" | sed 's/^/  /'
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
