#!/usr/bin/env bash
# The README's second command, and what CI runs: every test, as root.
# Installs the host packages, builds (or reuses) the cached Debian 12 base image, then runs the
# unit and integration tests. The integration tests attach loop devices and mount filesystems;
# each cleans up after itself, even when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.cargo/bin:/root/.cargo/bin"

bash scripts/deps.sh
KIB_BASE_IMAGE=$(bash scripts/make-base-image.sh | tail -n 1)
export KIB_BASE_IMAGE
cargo test --release --locked "$@"
