#!/usr/bin/env bash
# The README's first command: from a fresh Debian 12 machine to a Kubernetes node image.
#   1. install the host packages kib needs (scripts/deps.sh)
#   2. build kib (release)
#   3. build the Debian 12 base image from Debian's archive, or reuse the cached one
#      (/var/cache/kib/base)
#   4. kib customize it with manifests/k8s-node-debian.yaml into ./out
# Extra arguments go to `kib customize` (for example --format qcow2).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.cargo/bin:/root/.cargo/bin"

bash scripts/deps.sh
cargo build --release --locked
image=$(bash scripts/make-base-image.sh | tail -n 1)
exec ./target/release/kib customize \
  --disk-image "$image" \
  --manifest manifests/k8s-node-debian.yaml \
  --output-dir out \
  "$@"
