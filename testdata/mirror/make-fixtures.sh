#!/usr/bin/env bash
# make-fixtures.sh OUTDIR [VERSION...]
#
# Builds kib's offline TEST FIXTURE mirror under OUTDIR: stand-ins for pkgs.k8s.io's flat
# Debian repositories, dl.k8s.io's release files, the GitHub release downloads of cri-tools
# and the CNI plugins, and container image archives for registry.k8s.io images; and, through
# make-rpm-fixtures.sh beside it, pkgs.k8s.io's RPM repositories and Rocky Linux / SUSE
# repository stand-ins (set KIB_FIXTURES_RPM=0 to leave those out). Nothing in it is real
# Kubernetes: every program is a tiny shell script that prints its version, every package and
# image says it is a kib test fixture. Made from Debian 12 packages and tools only, offline.
# See README.md beside this script.
#
# VERSION (default 1.30.0) is a Kubernetes version X.Y.Z; several may be given.
# Runs as root; installs its missing Debian dependencies with apt-get. Wipes and rebuilds
# OUTDIR/{pkgs,dl,github,images,badsig,rocky,suse}, OUTDIR/FIXTURES.json and
# OUTDIR/RPM-FIXTURES.json, and nothing else in OUTDIR.
# SOURCE_DATE_EPOCH (default 2024-01-01) fixes every timestamp: all files except the ones
# that depend on the throw-away signing key (Release.key, InRelease, Release.gpg) come out
# byte-identical from one run to the next.
set -euo pipefail

readonly CNI_VERSION=1.4.0
readonly ARCHES=(amd64 arm64)
readonly IMAGE_ARCH=amd64
readonly EPOCH="${SOURCE_DATE_EPOCH:-1704067200}"
export SOURCE_DATE_EPOCH="$EPOCH"
export LC_ALL=C TZ=UTC
umask 022

die() { echo "make-fixtures: $*" >&2; exit 1; }
log() { echo "make-fixtures: $*" >&2; }

usage() {
    echo "usage: $0 OUTDIR [VERSION...]   (VERSION like 1.30.0; default 1.30.0)" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
[[ $1 != -h && $1 != --help ]] || usage
[[ $EUID -eq 0 ]] || die "run as root (dpkg-deb ownership, umoci unpack, apt-get install)"
OUTARG=$1
shift
VERSIONS=("$@")
[[ ${#VERSIONS[@]} -gt 0 ]] || VERSIONS=(1.30.0)
for v in "${VERSIONS[@]}"; do
    [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "bad VERSION '$v' (want X.Y.Z, such as 1.30.0)"
done
mapfile -t VERSIONS < <(printf '%s\n' "${VERSIONS[@]}" | sort -uV)
mapfile -t MINORS < <(printf '%s\n' "${VERSIONS[@]}" | cut -d. -f1,2 | sort -uV)

START=$SECONDS

# --- Debian dependencies ------------------------------------------------------------------
ensure_deps() {
    local missing=() pkg
    for pkg in dpkg dpkg-dev apt-utils gnupg gpgv umoci skopeo python3 gzip tar coreutils; do
        if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
ensure_deps
PYTHON=/usr/bin/python3

# --- OUTDIR and the work area -------------------------------------------------------------
mkdir -p -- "$OUTARG"
OUTDIR=$(cd -- "$OUTARG" && pwd -P)
[[ $OUTDIR != / ]] || die "OUTDIR must not be /"

WORK=$(mktemp -d /tmp/kib-fixtures.XXXXXX)
export GNUPGHOME="$WORK/gnupg"
cleanup() {
    if [[ -d $GNUPGHOME ]]; then
        gpgconf --homedir "$GNUPGHOME" --kill all >/dev/null 2>&1 || true
    fi
    rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf -- "$OUTDIR/pkgs" "$OUTDIR/dl" "$OUTDIR/github" "$OUTDIR/images" "$OUTDIR/FIXTURES.json" \
    "$OUTDIR/badsig" "$OUTDIR/rocky" "$OUTDIR/suse" "$OUTDIR/RPM-FIXTURES.json"
RECORDS="$WORK/records.tsv"
: >"$RECORDS"

ISO_TIME=$(date -u -d "@$EPOCH" '+%Y-%m-%dT%H:%M:%SZ')
RFC_TIME=$(date -u -d "@$EPOCH" '+%a, %d %b %Y %H:%M:%S UTC')

# record REL STANDS_FOR KIND: lists OUTDIR/REL in FIXTURES.json.
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RECORDS"; }

# stamp PATH...: fixed timestamps (files and folders, recursively).
stamp() { find "$@" -exec touch -h -d "@$EPOCH" {} +; }

# sha256_bare FILE: writes FILE.sha256 holding the bare digest (no newline, as dl.k8s.io).
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
sha256_bare() { printf '%s' "$(sha256_of "$1")" >"$1.sha256"; }

# fixture_script PATH WHAT ARCH LINE: a tiny shell script that prints LINE.
fixture_script() {
    local path=$1 what=$2 arch=$3 line=$4
    mkdir -p -- "$(dirname -- "$path")"
    cat >"$path" <<EOF
#!/bin/sh
# kib TEST FIXTURE standing in for ${what} (linux/${arch}).
# Not the real program: made by kib's testdata/mirror/make-fixtures.sh; it only prints its version.
echo '${line}'
EOF
    chmod 0755 "$path"
    touch -d "@$EPOCH" "$path"
}

# deterministic tar of a folder's listed entries: tarball OUT.tar.gz DIR ENTRY...
tarball() {
    local out=$1 dir=$2
    shift 2
    stamp "$dir"
    tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
        -C "$dir" -cf - "$@" | gzip -n -9 >"$out"
}

# --- container images ---------------------------------------------------------------------
POLICY="$WORK/policy.json"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$POLICY"

# make_image OUT.tar REF ARCH ENTRYPOINT ROOTFS_DIR: a docker-archive with one fixture layer
# (ROOTFS_DIR's content), tagged REF, labelled org.kib.fixture=true.
make_image() {
    local out=$1 ref=$2 arch=$3 entry=$4 src=$5
    local oci bundle
    oci=$(mktemp -d "$WORK/oci.XXXXXX")
    bundle="$oci.bundle"
    rmdir "$oci"
    umoci init --layout "$oci"
    umoci new --image "$oci:fixture"
    umoci unpack --image "$oci:fixture" "$bundle" >/dev/null
    cp -a "$src/." "$bundle/rootfs/"
    stamp "$bundle/rootfs"
    umoci repack --image "$oci:fixture" --history.created "$ISO_TIME" \
        --history.created_by "kib make-fixtures.sh: one layer of fixture files" \
        --history.comment "kib test fixture" "$bundle"
    umoci config --image "$oci:fixture" --created "$ISO_TIME" --author "kib test fixtures" \
        --os linux --architecture "$arch" --config.entrypoint "$entry" \
        --config.label org.kib.fixture=true \
        --config.label "org.opencontainers.image.title=${ref}" \
        --config.label "org.opencontainers.image.description=kib TEST FIXTURE standing in for ${ref}; not the real image" \
        --history.created "$ISO_TIME" --history.created_by "kib make-fixtures.sh: config" \
        --history.comment "kib test fixture"
    mkdir -p -- "$(dirname -- "$out")"
    skopeo --policy "$POLICY" copy -q "oci:$oci:fixture" "docker-archive:$out:$ref"
    touch -d "@$EPOCH" "$out"
    rm -rf -- "$oci" "$bundle"
}

IMAGES_JSON="$WORK/images.tsv"
: >"$IMAGES_JSON"
# image_fixture REL REF ARCH STANDS_FOR INPATH...: one image whose files are fixture scripts.
image_fixture() {
    local rel=$1 ref=$2 arch=$3 stands=$4
    shift 4
    local root p
    root=$(mktemp -d "$WORK/root.XXXXXX")
    for p in "$@"; do
        fixture_script "$root$p" "${p##*/} in the image ${ref}" "$arch" "${p##*/} from ${ref} (kib test fixture; never runs)"
    done
    make_image "$OUTDIR/$rel" "$ref" "$arch" "$1" "$root"
    rm -rf -- "$root"
    sha256_bare "$OUTDIR/$rel"
    record "$rel" "$stands" image
    record "$rel.sha256" "$stands.sha256" sha256
    printf '%s\t%s\t%s\n' "$rel" "$ref" "$arch" >>"$IMAGES_JSON"
}

# --- 1. pkgs.k8s.io: flat, signed Debian repositories ---------------------------------------
log "generating the throw-away signing key"
mkdir -m 0700 "$GNUPGHOME"
KEY_UID="kib test fixture signing key (THROW-AWAY, NOT Kubernetes) <kib-fixtures@example.invalid>"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
    --quick-generate-key "$KEY_UID" ed25519 sign never 2>/dev/null
FPR=$(gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
[[ -n $FPR ]] || die "no key generated"
gpg --batch --export "$FPR" >"$WORK/keyring.gpg"

# build_deb OUTDIR NAME VERSION ARCH DEPENDS SUMMARY ROOT: builds NAME_VERSION_ARCH.deb.
build_deb() {
    local outdir=$1 name=$2 version=$3 arch=$4 depends=$5 summary=$6 root=$7
    mkdir -p "$root/DEBIAN" "$outdir"
    {
        echo "Package: $name"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: kib test fixtures <kib-fixtures@example.invalid>"
        echo "Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)"
        [[ -z $depends ]] || echo "Depends: $depends"
        echo "Section: admin"
        echo "Priority: optional"
        echo "Homepage: https://kubernetes.io"
        echo "Description: kib TEST FIXTURE standing in for $summary"
        echo " This is not the real package: it is a test fixture made by kib's"
        echo " testdata/mirror/make-fixtures.sh for offline integration tests. It stands"
        echo " in for the package of the same name on pkgs.k8s.io; its programs are tiny"
        echo " shell scripts that only print their version."
    } >"$root/DEBIAN/control"
    stamp "$root"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$outdir/${name}_${version}_${arch}.deb" >/dev/null
}

kubelet_unit() {
    cat <<'EOF'
# kib TEST FIXTURE: stands in for the kubelet.service of the kubelet package on pkgs.k8s.io.
[Unit]
Description=kubelet: The Kubernetes Node Agent (kib test fixture)
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
}

kubeadm_dropin() {
    cat <<'EOF'
# kib TEST FIXTURE: a copy of the kubeadm package's drop-in, as on pkgs.k8s.io.
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
}

APT_JSON="$WORK/apt.tsv"
: >"$APT_JSON"
for minor in "${MINORS[@]}"; do
    mm="v$minor"
    rel="pkgs/core:/stable:/$mm/deb"
    repo="$OUTDIR/$rel"
    upstream="https://pkgs.k8s.io/core:/stable:/$mm/deb"
    log "pkgs.k8s.io $mm: building packages"
    for v in "${VERSIONS[@]}"; do
        [[ $v == "$minor".* ]] || continue
        for arch in "${ARCHES[@]}"; do
            r="$WORK/deb/kubelet-$v-$arch"
            fixture_script "$r/usr/bin/kubelet" "kubelet v$v" "$arch" "Kubernetes v$v (kib test fixture)"
            mkdir -p "$r/lib/systemd/system"
            kubelet_unit >"$r/lib/systemd/system/kubelet.service"
            build_deb "$repo/$arch" kubelet "$v-1.1" "$arch" "kubernetes-cni (>= $CNI_VERSION)" \
                "kubelet $v, the Kubernetes node agent" "$r"

            r="$WORK/deb/kubeadm-$v-$arch"
            fixture_script "$r/usr/bin/kubeadm" "kubeadm v$v" "$arch" "kubeadm version: v$v (kib test fixture)"
            mkdir -p "$r/usr/lib/systemd/system/kubelet.service.d"
            kubeadm_dropin >"$r/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"
            build_deb "$repo/$arch" kubeadm "$v-1.1" "$arch" "cri-tools (>= $minor.0)" \
                "kubeadm $v, the Kubernetes cluster bootstrapping tool" "$r"

            r="$WORK/deb/kubectl-$v-$arch"
            fixture_script "$r/usr/bin/kubectl" "kubectl v$v" "$arch" "Client Version: v$v (kib test fixture)"
            build_deb "$repo/$arch" kubectl "$v-1.1" "$arch" "" "kubectl $v, the Kubernetes command-line tool" "$r"

            r="$WORK/deb/cri-tools-$v-$arch"
            fixture_script "$r/usr/bin/crictl" "crictl v$v" "$arch" "crictl version v$v (kib test fixture)"
            build_deb "$repo/$arch" cri-tools "$v-1.1" "$arch" "" "cri-tools $v (crictl), the CRI command-line tools" "$r"
        done
    done
    for arch in "${ARCHES[@]}"; do
        r="$WORK/deb/kubernetes-cni-$minor-$arch"
        for plugin in bridge loopback; do
            fixture_script "$r/opt/cni/bin/$plugin" "the CNI $plugin plugin v$CNI_VERSION" "$arch" \
                "CNI $plugin plugin v$CNI_VERSION (kib test fixture)"
        done
        build_deb "$repo/$arch" kubernetes-cni "$CNI_VERSION-1.1" "$arch" "" \
            "kubernetes-cni $CNI_VERSION, the Kubernetes CNI plugins" "$r"
    done

    (
        cd "$repo"
        for arch in "${ARCHES[@]}"; do apt-ftparchive packages "$arch"; done >Packages
        gzip -n -9 -k Packages
        apt-ftparchive \
            -o APT::FTPArchive::Release::Origin="kib test fixture" \
            -o APT::FTPArchive::Release::Label="kib test fixture: core:stable:$mm (NOT pkgs.k8s.io)" \
            -o APT::FTPArchive::Release::Architectures="${ARCHES[*]}" \
            -o APT::FTPArchive::Release::Date="$RFC_TIME" \
            -o APT::FTPArchive::Release::Description="kib TEST FIXTURE standing in for pkgs.k8s.io core:/stable:/$mm; not real Kubernetes packages" \
            release . >"$WORK/Release"
        mv "$WORK/Release" Release
        gpg --batch --quiet --yes --local-user "$FPR" --digest-algo SHA512 --clearsign -o InRelease Release
        gpg --batch --quiet --yes --local-user "$FPR" --digest-algo SHA512 --armor --detach-sign -o Release.gpg Release
        gpg --batch --armor --export "$FPR" >Release.key
        gpgv --quiet --keyring "$WORK/keyring.gpg" InRelease 2>/dev/null || die "$rel/InRelease does not verify"
        gpgv --quiet --keyring "$WORK/keyring.gpg" Release.gpg Release 2>/dev/null || die "$rel/Release.gpg does not verify"
        touch -d "@$EPOCH" Packages Packages.gz Release InRelease Release.gpg Release.key "${ARCHES[@]}"
    )
    for f in Packages Packages.gz Release InRelease Release.gpg Release.key; do
        record "$rel/$f" "$upstream/$f" apt-index
    done
    for deb in "$repo"/*/*.deb; do
        record "${deb#"$OUTDIR"/}" "$upstream/${deb#"$repo"/}" deb
    done
    printf '%s\t%s\t%s\n' "$mm" "$rel" "$upstream/" >>"$APT_JSON"
done

# --- 2. dl.k8s.io -----------------------------------------------------------------------------
for v in "${VERSIONS[@]}"; do
    log "dl.k8s.io v$v"
    for arch in "${ARCHES[@]}"; do
        rel="dl/release/v$v/bin/linux/$arch"
        d="$OUTDIR/$rel"
        fixture_script "$d/kubelet" "kubelet v$v" "$arch" "Kubernetes v$v (kib test fixture)"
        fixture_script "$d/kubeadm" "kubeadm v$v" "$arch" "kubeadm version: v$v (kib test fixture)"
        fixture_script "$d/kubectl" "kubectl v$v" "$arch" "Client Version: v$v (kib test fixture)"
        for b in kubelet kubeadm kubectl; do
            sha256_bare "$d/$b"
            record "$rel/$b" "https://dl.k8s.io/release/v$v/bin/linux/$arch/$b" binary
            record "$rel/$b.sha256" "https://dl.k8s.io/release/v$v/bin/linux/$arch/$b.sha256" sha256
        done
    done
    for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
        rel="dl/release/v$v/bin/linux/$IMAGE_ARCH/$c.tar"
        image_fixture "$rel" "registry.k8s.io/$c-$IMAGE_ARCH:v$v" "$IMAGE_ARCH" \
            "https://dl.k8s.io/release/v$v/bin/linux/$IMAGE_ARCH/$c.tar" "/usr/local/bin/$c"
    done
done
for minor in "${MINORS[@]}"; do
    latest=
    for v in "${VERSIONS[@]}"; do [[ $v != "$minor".* ]] || latest=$v; done
    printf 'v%s' "$latest" >"$OUTDIR/dl/release/stable-$minor.txt"
    record "dl/release/stable-$minor.txt" "https://dl.k8s.io/release/stable-$minor.txt" version-marker
done
printf 'v%s' "${VERSIONS[-1]}" >"$OUTDIR/dl/release/stable.txt"
record "dl/release/stable.txt" "https://dl.k8s.io/release/stable.txt" version-marker

# --- 3. GitHub release downloads ------------------------------------------------------------
for v in "${VERSIONS[@]}"; do
    log "cri-tools v$v"
    rel="github/kubernetes-sigs/cri-tools/releases/download/v$v"
    mkdir -p "$OUTDIR/$rel"
    for arch in "${ARCHES[@]}"; do
        name="crictl-v$v-linux-$arch.tar.gz"
        src="$WORK/crictl-$v-$arch"
        fixture_script "$src/crictl" "crictl v$v" "$arch" "crictl version v$v (kib test fixture)"
        tarball "$OUTDIR/$rel/$name" "$src" crictl
        sha256_of "$OUTDIR/$rel/$name" >"$OUTDIR/$rel/$name.sha256"
        record "$rel/$name" "https://github.com/kubernetes-sigs/cri-tools/releases/download/v$v/$name" archive
        record "$rel/$name.sha256" "https://github.com/kubernetes-sigs/cri-tools/releases/download/v$v/$name.sha256" sha256
    done
done
log "CNI plugins v$CNI_VERSION"
rel="github/containernetworking/plugins/releases/download/v$CNI_VERSION"
mkdir -p "$OUTDIR/$rel"
for arch in "${ARCHES[@]}"; do
    name="cni-plugins-linux-$arch-v$CNI_VERSION.tgz"
    src="$WORK/cni-$arch"
    for plugin in bridge host-local loopback portmap; do
        fixture_script "$src/$plugin" "the CNI $plugin plugin v$CNI_VERSION" "$arch" \
            "CNI $plugin plugin v$CNI_VERSION (kib test fixture)"
    done
    tarball "$OUTDIR/$rel/$name" "$src" .
    (cd "$OUTDIR/$rel" && sha256sum "$name" >"$name.sha256")
    record "$rel/$name" "https://github.com/containernetworking/plugins/releases/download/v$CNI_VERSION/$name" archive
    record "$rel/$name.sha256" "https://github.com/containernetworking/plugins/releases/download/v$CNI_VERSION/$name.sha256" sha256
done

# --- 4. images for containerd -----------------------------------------------------------------
log "images"
image_fixture images/pause-3.9.tar registry.k8s.io/pause:3.9 "$IMAGE_ARCH" \
    "docker-archive of registry.k8s.io/pause:3.9" /pause
image_fixture images/etcd-3.5.15-0.tar registry.k8s.io/etcd:3.5.15-0 "$IMAGE_ARCH" \
    "docker-archive of registry.k8s.io/etcd:3.5.15-0" /usr/local/bin/etcd /usr/local/bin/etcdctl
image_fixture images/coredns-v1.11.3.tar registry.k8s.io/coredns/coredns:v1.11.3 "$IMAGE_ARCH" \
    "docker-archive of registry.k8s.io/coredns/coredns:v1.11.3" /coredns

# --- 5. RPM repositories (make-rpm-fixtures.sh, cached under /var/cache/kib/el) -------------
if [[ ${KIB_FIXTURES_RPM:-1} != 0 ]]; then
    log "RPM repositories"
    bash "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/make-rpm-fixtures.sh" "$OUTDIR" "${VERSIONS[@]}"
fi

# --- FIXTURES.json ----------------------------------------------------------------------------
log "FIXTURES.json"
KEY_SHA=$(sha256_of "$OUTDIR/pkgs/core:/stable:/v${MINORS[0]}/deb/Release.key")
"$PYTHON" - "$OUTDIR" "$RECORDS" "$APT_JSON" "$IMAGES_JSON" "$FPR" "$KEY_UID" "$CNI_VERSION" "$EPOCH" "${VERSIONS[@]}" <<'EOF'
import hashlib, json, os, sys, tarfile

outdir, records, apt_tsv, images_tsv, fpr, uid, cni, epoch = sys.argv[1:9]
versions = sys.argv[9:]

def rows(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

files, seen = [], set()
for rel, stands_for, kind in rows(records):
    if rel in seen:
        sys.exit(f"make-fixtures: {rel} recorded twice")
    seen.add(rel)
    p = os.path.join(outdir, rel)
    files.append({"path": rel, "sha256": sha256(p), "size": os.path.getsize(p),
                  "kind": kind, "stands_for": stands_for})
files.sort(key=lambda f: f["path"])

# The RPM side (make-rpm-fixtures.sh) lists its own files in RPM-FIXTURES.json.
rpm = None
rpm_json = os.path.join(outdir, "RPM-FIXTURES.json")
if os.path.exists(rpm_json):
    with open(rpm_json) as f:
        rpm = json.load(f)
    for entry in rpm.pop("files"):
        if entry["path"] in seen:
            sys.exit(f"make-fixtures: {entry['path']} recorded twice")
        seen.add(entry["path"])
        files.append(entry)
    files.sort(key=lambda f: f["path"])

# Every file under the folders this script owns must be listed.
for top in ("pkgs", "dl", "github", "images", "badsig", "rocky", "suse"):
    for d, _, names in os.walk(os.path.join(outdir, top)):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), outdir)
            if rel not in seen:
                sys.exit(f"make-fixtures: {rel} was produced but not recorded")

apt = {}
for minor, rel, url in rows(apt_tsv):
    key = os.path.join(outdir, rel, "Release.key")
    apt[minor] = {
        "path": rel + "/",
        "url": url,
        "apt_line": f"deb [signed-by=/etc/apt/keyrings/kubernetes.asc] {url} /",
        "key_url": url + "Release.key",
        "key_path": "/etc/apt/keyrings/kubernetes.asc",
        "key_sha256": sha256(key),
        "key_fingerprint": fpr,
        "key_uid": uid,
    }

images = []
for rel, ref, arch in rows(images_tsv):
    with tarfile.open(os.path.join(outdir, rel)) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
    images.append({"path": rel, "ref": ref, "arch": arch,
                   "sha256": sha256(os.path.join(outdir, rel)),
                   "repo_tags": manifest["RepoTags"],
                   "config_digest": "sha256:" + manifest["Config"].split(".")[0],
                   "labels": {"org.kib.fixture": "true"}})

doc = {
    "note": "TEST FIXTURES for kib's integration tests, made by testdata/mirror/make-fixtures.sh. "
            "Not real Kubernetes: every program is a shell script that prints its version, "
            "and the apt repositories are signed with a throw-away key made for each run.",
    "generator": "testdata/mirror/make-fixtures.sh",
    "source_date_epoch": int(epoch),
    "kubernetes_versions": versions,
    "cni_plugins_version": cni,
    "mirrors": {
        "https://pkgs.k8s.io": "pkgs",
        "https://dl.k8s.io": "dl",
        "https://github.com": "github",
        **({"https://dl.rockylinux.org": "rocky", "https://updates.suse.com": "suse"} if rpm else {}),
    },
    "apt": apt,
    "rpm": rpm,
    "images": images,
    "files": files,
}
with open(os.path.join(outdir, "FIXTURES.json"), "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
EOF

log "done in $((SECONDS - START)) s: $OUTDIR"
log "signing key $FPR; Release.key sha256 $KEY_SHA"
echo "Release.key sha256: $KEY_SHA"
