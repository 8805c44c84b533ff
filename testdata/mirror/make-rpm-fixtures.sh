#!/usr/bin/env bash
# make-rpm-fixtures.sh: the RPM side of kib's offline TEST FIXTURE mirror.
#
#   make-rpm-fixtures.sh OUTDIR [VERSION...]   copy the RPM fixture repositories into OUTDIR
#   make-rpm-fixtures.sh --distro-cache        print the folder holding the distribution
#                                              fixtures (what make-el-image.sh installs)
#
# No RPM distribution's repository and not pkgs.k8s.io are reachable from kib's test machines, so
# this script builds stand-ins for them from Debian 12 packages only (rpmbuild and rpmsign from
# Debian's `rpm`, createrepo_c from `createrepo-c`, gpg from `gnupg`). NOTHING here is a real
# Rocky Linux, SUSE or Kubernetes package: every package is a kib test fixture that installs a
# marker file under /usr/share/kib-fixture/rpm/ (and, for the Kubernetes ones, tiny shell scripts
# that print their version); every summary, description, key and repository says so.
#
# It makes, under OUTDIR (which make-fixtures.sh serves on 127.0.0.1 in kib's tests):
#   pkgs/core:/stable:/v1.MM/rpm/      pkgs.k8s.io's RPM repository layout for each minor 1.MM
#                                      of VERSION (default 1.30.0): {x86_64,aarch64}/*.rpm and one
#                                      repodata/ for both, with repomd.xml.asc (signed) and
#                                      repomd.xml.key (the public key), as pkgs.k8s.io serves
#                                      them. kubelet, kubeadm, kubectl at each VERSION plus one
#                                      older (patch-1, when patch > 0) and one newer (patch+1)
#                                      release, so that pins and version locks are exercised;
#                                      cri-tools MM.0 and MM.1; kubernetes-cni at the CNI version
#                                      of that minor's manifest. Release 150500.1.1, as
#                                      pkgs.k8s.io's (OBS-built) RPMs have.
#   badsig/core:/stable:/v1.MM/rpm/    the same packages and metadata, signed by a ROGUE key,
#                                      while repomd.xml.key still serves the pkgs.k8s.io fixture
#                                      key: "a repository whose key does not match its
#                                      signatures" (map https://pkgs.k8s.io to .../badsig).
#   rocky/pub/rocky/9/{BaseOS,AppStream}/x86_64/os/
#                                      stand-ins for Rocky Linux 9's repositories at
#                                      https://dl.rockylinux.org (Packages/<letter>/*.rpm and
#                                      repodata/): the release packages, the packages a real EL
#                                      image has installed, and upstream image-builder's node
#                                      role rpm list with their dependencies (see PACKAGES below).
#   rocky/pub/rocky/RPM-GPG-KEY-kib-fixture-distro
#                                      the distribution fixture key (where Rocky publishes its
#                                      RPM-GPG-KEY-Rocky-9).
#   suse/SUSE/Products/SLE-Module-Basesystem/15-SP6/x86_64/product/
#                                      a stand-in for SLES 15 SP6's Basesystem module at
#                                      https://updates.suse.com ({x86_64,noarch}/*.rpm, signed
#                                      repodata as SUSE's).
#   RPM-FIXTURES.json                  every file with its sha256, size and the upstream URL it
#                                      stands for; every package's name, epoch, version,
#                                      release, arch, source RPM, licence and requirements; the
#                                      repositories, their .repo files and key fingerprints.
# It deletes and rebuilds exactly those (pkgs/*/rpm, badsig, rocky, suse, RPM-FIXTURES.json).
#
# Keys: three throw-away RSA keys, made once and kept in the cache (they must survive between
# this script and make-el-image.sh, whose image trusts the distribution key): "distro" signs
# the Rocky and SUSE stand-ins, "k8s" the pkgs.k8s.io stand-ins, "rogue" the badsig copies.
# Their fingerprints are in RPM-FIXTURES.json; never pin them, they change when the cache is
# rebuilt.
#
# Cache: everything is built once into /var/cache/kib/el (KIB_EL_CACHE overrides) and copied
# from there: keys-v1/ (the keys), distro-<h>/ (keyed by this script's sha256 and the keys),
# k8s-<h>/ (keyed by this script's sha256, the keys and the VERSION list). A stamp file in each
# says what it was built from; a folder without its stamp is rebuilt. flock serialises builds.
#
# Runs as root (installs rpm, createrepo-c and gnupg with apt-get when missing).
# SOURCE_DATE_EPOCH (default 2024-01-01) is every package's build time and file mtime; the
# unsigned packages are reproducible, the signatures and metadata checksums are not.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF
readonly EPOCH_TIME="${SOURCE_DATE_EPOCH:-1704067200}"
export SOURCE_DATE_EPOCH="$EPOCH_TIME"
export LC_ALL=C TZ=UTC
umask 022

readonly K8S_RELEASE=150500.1.1
readonly K8S_ARCHES=(x86_64 aarch64)
readonly DISTRO_ARCH=x86_64
readonly KEYS_FORMAT=v1
CACHE_ROOT="${KIB_EL_CACHE:-/var/cache/kib/el}"

die() { echo "make-rpm-fixtures: $*" >&2; exit 1; }
log() { echo "make-rpm-fixtures: $*" >&2; }
usage() {
    echo "usage: $0 OUTDIR [VERSION...]   (VERSION like 1.30.0; default 1.30.0)" >&2
    echo "       $0 --distro-cache        (prints the distribution fixture folder)" >&2
    exit 2
}

MODE=copy
[[ $# -ge 1 ]] || usage
case $1 in
    -h | --help) usage ;;
    --distro-cache) MODE=distro; shift; [[ $# -eq 0 ]] || usage ;;
    -*) usage ;;
esac
[[ $EUID -eq 0 ]] || die "run as root (apt-get install, the shared cache in $CACHE_ROOT)"

# --- Debian dependencies ------------------------------------------------------------------
ensure_deps() {
    local missing=() pkg
    for pkg in rpm createrepo-c gnupg gpgv python3 coreutils; do
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

mkdir -p "$CACHE_ROOT"
exec 8>"$CACHE_ROOT/.rpm-fixtures.lock"
flock 8

WORK=$(mktemp -d /tmp/kib-rpm-fixtures.XXXXXX)
cleanup() {
    local h
    for h in "$WORK"/gnupg "$CACHE_ROOT/keys-$KEYS_FORMAT/gnupg"; do
        [[ -d $h ]] && gpgconf --homedir "$h" --kill all >/dev/null 2>&1 || true
    done
    rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
START=$SECONDS
SCRIPT_SHA=$(sha256sum "$SELF" | cut -d' ' -f1)

# --- keys -----------------------------------------------------------------------------------
KEYS="$CACHE_ROOT/keys-$KEYS_FORMAT"
declare -A KEY_UID=(
    [distro]="kib test fixture DISTRIBUTION key for the Rocky/SUSE stand-ins (THROW-AWAY, NOT Rocky Linux, NOT SUSE) <kib-fixtures-distro@example.invalid>"
    [k8s]="kib test fixture signing key for the pkgs.k8s.io RPM stand-ins (THROW-AWAY, NOT Kubernetes) <kib-fixtures-k8s@example.invalid>"
    [rogue]="kib test fixture ROGUE key: signs the badsig repositories, trusted by nothing (THROW-AWAY) <kib-fixtures-rogue@example.invalid>"
)
ensure_keys() {
    [[ -f $KEYS/stamp ]] && return 0
    log "generating the throw-away RPM signing keys in $KEYS"
    rm -rf -- "$KEYS"
    local tmp="$KEYS.tmp.$$" k fpr
    rm -rf -- "$tmp"
    mkdir -p "$tmp"
    mkdir -m 0700 "$tmp/gnupg"
    for k in distro k8s rogue; do
        gpg --homedir "$tmp/gnupg" --batch --quiet --pinentry-mode loopback --passphrase '' \
            --quick-generate-key "${KEY_UID[$k]}" rsa3072 sign never 2>/dev/null
        fpr=$(gpg --homedir "$tmp/gnupg" --batch --with-colons --list-secret-keys "${KEY_UID[$k]}" 2>/dev/null |
            awk -F: '$1 == "fpr" { print $10; exit }')
        [[ -n $fpr ]] || die "no $k key generated"
        echo "$fpr" >"$tmp/$k.fpr"
        gpg --homedir "$tmp/gnupg" --batch --armor --export "$fpr" >"$tmp/$k.asc"
    done
    gpgconf --homedir "$tmp/gnupg" --kill all >/dev/null 2>&1 || true
    echo "keys=$KEYS_FORMAT" >"$tmp/stamp"
    mv -- "$tmp" "$KEYS"
}
ensure_keys
export GNUPGHOME="$KEYS/gnupg"
FPR_DISTRO=$(cat "$KEYS/distro.fpr")
FPR_K8S=$(cat "$KEYS/k8s.fpr")
FPR_ROGUE=$(cat "$KEYS/rogue.fpr")
# SUSE names key files gpg-pubkey-<last 8 hex digits of the fingerprint, lower case>.asc.
DISTRO_KEYID=$(tr 'A-F' 'a-f' <<<"${FPR_DISTRO: -8}")
KEYS_ID=$(cat "$KEYS/distro.fpr" "$KEYS/k8s.fpr" "$KEYS/rogue.fpr" | sha256sum | cut -c1-12)

# --- building one source package ----------------------------------------------------------
# A package is described by lines of the PACKAGES tables below, one per binary package:
#   source|epoch|version|release|name|arch|license|requires|provides|recommends|unit|post|summary
# arch: "noarch" or "arch" (built for the target architecture). requires, provides and
# recommends are ';'-separated ("-" for none). unit: a systemd unit the package ships ("-").
# post: what its %post scriptlet does with the unit, as real packages' scriptlets do:
#   enable  systemctl enable UNIT            (acts offline: creates the symlinks)
#   preset  systemctl --no-reload preset UNIT (what %systemd_post did before systemd 252)
#   reload  systemctl daemon-reload           (a no-op without a running systemd)
#   -       no scriptlet
# Every package has `AutoReqProv: no`: nothing in the fixture image's rpmdb provides the
# libraries and interpreters rpmbuild would find (DESIGN.md section 6). Requires(post): /bin/sh
# is still added for a scriptlet: the installed "bash" fixture provides /bin/sh.

# marker NAME: the text of the marker file every fixture package installs.
marker() {
    printf 'kib TEST FIXTURE standing in for the %s package. Not the real package: made by\n' "$1"
    printf "kib's testdata/mirror/make-rpm-fixtures.sh for offline integration tests.\n"
}

# fixture_script NAME LINE: a tiny /bin/sh script printing LINE.
fixture_script_text() {
    printf '#!/bin/sh\n# kib TEST FIXTURE standing in for %s; it only prints its version.\necho %q\n' "$1" "$2"
}

# Content beyond the marker file for some packages: extra_install NAME VERSION prints %install
# shell lines, extra_files NAME prints %files lines.
extra_install() {
    local name=$1 version=$2 rel=${3:-}
    case $name in
        kubelet)
            echo "mkdir -p %{buildroot}/usr/bin %{buildroot}/var/lib/kubelet %{buildroot}/etc/kubernetes/manifests %{buildroot}/etc/sysconfig"
            echo "cat >%{buildroot}/usr/bin/kubelet <<'KIBEOF'"
            fixture_script_text "kubelet v$version" "Kubernetes v$version (kib test fixture)"
            echo "KIBEOF"
            echo "chmod 0755 %{buildroot}/usr/bin/kubelet"
            echo "printf 'KUBELET_EXTRA_ARGS=\\n' >%{buildroot}/etc/sysconfig/kubelet"
            ;;
        kubeadm)
            echo "mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib/systemd/system/kubelet.service.d"
            echo "cat >%{buildroot}/usr/bin/kubeadm <<'KIBEOF'"
            fixture_script_text "kubeadm v$version" "kubeadm version: v$version (kib test fixture)"
            echo "KIBEOF"
            echo "chmod 0755 %{buildroot}/usr/bin/kubeadm"
            echo "cat >%{buildroot}/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf <<'KIBEOF'"
            kubeadm_dropin
            echo "KIBEOF"
            ;;
        kubectl | cri-tools)
            local bin=$name line="Client Version: v$version (kib test fixture)"
            [[ $name == cri-tools ]] && bin=crictl line="crictl version v$version (kib test fixture)"
            echo "mkdir -p %{buildroot}/usr/bin"
            echo "cat >%{buildroot}/usr/bin/$bin <<'KIBEOF'"
            fixture_script_text "$bin v$version" "$line"
            echo "KIBEOF"
            echo "chmod 0755 %{buildroot}/usr/bin/$bin"
            ;;
        kubernetes-cni)
            local p
            echo "mkdir -p %{buildroot}/opt/cni/bin %{buildroot}/etc/cni/net.d"
            for p in bridge host-local loopback portmap; do
                echo "cat >%{buildroot}/opt/cni/bin/$p <<'KIBEOF'"
                fixture_script_text "the CNI $p plugin v$version" "CNI $p plugin v$version (kib test fixture)"
                echo "KIBEOF"
                echo "chmod 0755 %{buildroot}/opt/cni/bin/$p"
            done
            ;;
        rocky-release)
            echo "mkdir -p %{buildroot}/etc %{buildroot}/usr/lib"
            echo "cat >%{buildroot}/usr/lib/os-release <<'KIBEOF'"
            os_release_el
            echo "KIBEOF"
            echo "ln -s ../usr/lib/os-release %{buildroot}/etc/os-release"
            echo "echo 'Rocky Linux release 9.4 (Blue Onyx) (kib test fixture)' >%{buildroot}/etc/rocky-release"
            echo "ln -s rocky-release %{buildroot}/etc/system-release"
            echo "ln -s rocky-release %{buildroot}/etc/redhat-release"
            echo "echo 'cpe:/o:rocky:rocky:9::baseos' >%{buildroot}/etc/system-release-cpe"
            ;;
        rocky-repos)
            echo "mkdir -p %{buildroot}/etc/yum.repos.d %{buildroot}/etc/dnf/vars"
            echo "cat >%{buildroot}/etc/yum.repos.d/rocky.repo <<'KIBEOF'"
            rocky_repo_file
            echo "KIBEOF"
            echo "echo pub/rocky >%{buildroot}/etc/dnf/vars/contentdir"
            echo ": >%{buildroot}/etc/dnf/vars/rltype"
            ;;
        rocky-gpg-keys)
            echo "mkdir -p %{buildroot}/etc/pki/rpm-gpg"
            echo "cat >%{buildroot}/etc/pki/rpm-gpg/RPM-GPG-KEY-kib-fixture-distro <<'KIBEOF'"
            cat "$KEYS/distro.asc"
            echo "KIBEOF"
            ;;
        sles-release)
            echo "mkdir -p %{buildroot}/usr/lib/rpm/gnupg/keys %{buildroot}/etc/products.d %{buildroot}/etc/zypp/repos.d"
            echo "cat >%{buildroot}/usr/lib/rpm/gnupg/keys/gpg-pubkey-$DISTRO_KEYID.asc <<'KIBEOF'"
            cat "$KEYS/distro.asc"
            echo "KIBEOF"
            echo "cat >%{buildroot}/usr/lib/os-release <<'KIBEOF'"
            os_release_suse
            echo "KIBEOF"
            echo "ln -s ../usr/lib/os-release %{buildroot}/etc/os-release"
            echo "cat >%{buildroot}/etc/products.d/SLES.prod <<'KIBEOF'"
            sles_prod
            echo "KIBEOF"
            echo "ln -s SLES.prod %{buildroot}/etc/products.d/baseproduct"
            echo "cat >%{buildroot}/etc/zypp/repos.d/SLE-Module-Basesystem15-SP6-Pool.repo <<'KIBEOF'"
            suse_repo_file
            echo "KIBEOF"
            ;;
    esac
    return 0
}

extra_files() {
    case $1 in
        kubelet)
            echo "/usr/bin/kubelet"
            echo "%dir /var/lib/kubelet"
            echo "%dir /etc/kubernetes"
            echo "%dir /etc/kubernetes/manifests"
            echo "%config(noreplace) /etc/sysconfig/kubelet"
            ;;
        kubeadm)
            echo "/usr/bin/kubeadm"
            echo "%dir /usr/lib/systemd/system/kubelet.service.d"
            echo "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"
            ;;
        kubectl) echo "/usr/bin/kubectl" ;;
        cri-tools) echo "/usr/bin/crictl" ;;
        kubernetes-cni)
            echo "/opt/cni"
            echo "%dir /etc/cni"
            echo "%dir /etc/cni/net.d"
            ;;
        rocky-release)
            echo "/usr/lib/os-release"
            echo "/etc/os-release"
            echo "/etc/rocky-release"
            echo "/etc/system-release"
            echo "/etc/redhat-release"
            echo "/etc/system-release-cpe"
            ;;
        rocky-repos)
            echo "%config(noreplace) /etc/yum.repos.d/rocky.repo"
            echo "%config(noreplace) /etc/dnf/vars/contentdir"
            echo "%config(noreplace) /etc/dnf/vars/rltype"
            ;;
        rocky-gpg-keys) echo "/etc/pki/rpm-gpg/RPM-GPG-KEY-kib-fixture-distro" ;;
        sles-release)
            echo "/usr/lib/rpm/gnupg/keys/gpg-pubkey-$DISTRO_KEYID.asc"
            echo "/usr/lib/os-release"
            echo "/etc/os-release"
            echo "/etc/products.d/SLES.prod"
            echo "/etc/products.d/baseproduct"
            echo "%config(noreplace) /etc/zypp/repos.d/SLE-Module-Basesystem15-SP6-Pool.repo"
            ;;
    esac
    return 0
}
# (The SUSE key file name uses the lower-case short key id, as SUSE's gpg-pubkey-<id>.asc.)

kubeadm_dropin() {
    cat <<'EOF'
# kib TEST FIXTURE: the kubeadm RPM's drop-in as pkgs.k8s.io ships it (EnvironmentFile is
# /etc/sysconfig/kubelet on RPM systems, /etc/default/kubelet on Debian ones).
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/sysconfig/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
}

unit_text() {
    if [[ $1 == kubelet.service ]]; then
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
        return 0
    fi
    cat <<EOF
# kib TEST FIXTURE: stands in for $1 of the $2 package. It never runs anything real.
[Unit]
Description=$1 (kib test fixture from the $2 package)

[Service]
Type=oneshot
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
EOF
}

os_release_el() {
    cat <<'EOF'
NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="kib test fixture: Rocky Linux 9.4 (Blue Onyx) stand-in, a Debian 12 userland with dnf"
ANSI_COLOR="0;32"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:rocky:rocky:9::baseos"
HOME_URL="https://rockylinux.org/"
BUG_REPORT_URL="https://bugs.rockylinux.org/"
SUPPORT_END="2032-05-31"
ROCKY_SUPPORT_PRODUCT="Rocky-Linux-9"
ROCKY_SUPPORT_PRODUCT_VERSION="9.4"
REDHAT_SUPPORT_PRODUCT="Rocky Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
KIB_FIXTURE="yes"
EOF
}

os_release_suse() {
    cat <<'EOF'
NAME="SLES"
VERSION="15-SP6"
VERSION_ID="15.6"
PRETTY_NAME="kib test fixture: SUSE Linux Enterprise Server 15 SP6 stand-in, a Debian 12 userland with zypper"
ID="sles"
ID_LIKE="suse"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:suse:sles:15:sp6"
DOCUMENTATION_URL="https://documentation.suse.com/"
KIB_FIXTURE="yes"
EOF
}

sles_prod() {
    cat <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- kib TEST FIXTURE: a stand-in for SLES 15 SP6's product file (zypper reads the base
     product from /etc/products.d/baseproduct). -->
<product schemeversion="0">
  <vendor>kib test fixtures</vendor>
  <name>SLES</name>
  <version>15.6</version>
  <release>0</release>
  <endoflife>2031-07-31</endoflife>
  <arch>x86_64</arch>
  <cpeid>cpe:/o:suse:sles:15:sp6</cpeid>
  <productline>sles</productline>
  <summary>kib test fixture: SUSE Linux Enterprise Server 15 SP6 stand-in</summary>
  <shortsummary>SLES15-SP6 (kib fixture)</shortsummary>
  <description>Not SUSE Linux Enterprise Server: a kib test fixture.</description>
</product>
EOF
}

# The distribution repository files, pointing at the REAL upstream URLs: kib's mirror map is what
# sends them to the fixture mirror during a build.
rocky_repo_file() {
    cat <<'EOF'
# kib TEST FIXTURE: shaped like Rocky Linux 9's rocky.repo, with the fixture distribution key.
# Rocky's own file uses `mirrorlist=`; this one uses the `baseurl=` it carries commented out,
# so that a mirror map on https://dl.rockylinux.org redirects it.
[baseos]
name=Rocky Linux $releasever - BaseOS
#mirrorlist=https://mirrors.rockylinux.org/mirrorlist?arch=$basearch&repo=BaseOS-$releasever$rltype
baseurl=https://dl.rockylinux.org/$contentdir/$releasever/BaseOS/$basearch/os/
gpgcheck=1
enabled=1
countme=1
metadata_expire=6h
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kib-fixture-distro

[appstream]
name=Rocky Linux $releasever - AppStream
#mirrorlist=https://mirrors.rockylinux.org/mirrorlist?arch=$basearch&repo=AppStream-$releasever$rltype
baseurl=https://dl.rockylinux.org/$contentdir/$releasever/AppStream/$basearch/os/
gpgcheck=1
enabled=1
countme=1
metadata_expire=6h
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-kib-fixture-distro
EOF
}

suse_repo_file() {
    cat <<EOF
# kib TEST FIXTURE: shaped like a SLES 15 SP6 module repository (which SUSEConnect normally
# writes with an access token in the URL), with the fixture distribution key.
[SLE-Module-Basesystem15-SP6-Pool]
name=SLE-Module-Basesystem15-SP6-Pool (kib test fixture)
enabled=1
autorefresh=0
baseurl=https://updates.suse.com/SUSE/Products/SLE-Module-Basesystem/15-SP6/x86_64/product/
type=rpm-md
gpgcheck=1
repo_gpgcheck=1
pkg_gpgcheck=1
gpgkey=file:///usr/lib/rpm/gnupg/keys/gpg-pubkey-$DISTRO_KEYID.asc
keeppackages=0
EOF
}

# write_spec FILE: writes the spec of one source package from the table lines in $SPEC_LINES.
write_spec() {
    local out=$1
    local source epoch version release name arch license requires provides recommends unit post summary
    local -a bins=()
    local main= subs= preamble= first_license= spec_version=
    # tags NAME ARCH LICENSE REQUIRES PROVIDES RECOMMENDS SUMMARY: a package's preamble tags.
    tags() {
        local x
        echo "Summary: kib TEST FIXTURE standing in for $1: $7"
        echo "License: $3"
        [[ $2 == noarch ]] && echo "BuildArch: noarch"
        local IFS=';'
        set -f
        for x in $4; do [[ $x == - ]] || echo "Requires: $x"; done
        for x in $5; do [[ $x == - ]] || echo "Provides: $x"; done
        for x in $6; do [[ $x == - ]] || echo "Recommends: $x"; done
        set +f
    }
    description() {
        echo "This is not the real $1 package: it is a test fixture made by kib's"
        echo "testdata/mirror/make-rpm-fixtures.sh for offline integration tests, standing in"
        echo "for $1 ($2). It installs a marker file and nothing that runs."
    }
    while IFS='|' read -r source epoch version release name arch license requires provides recommends unit post summary; do
        [[ -n $source ]] || continue
        if [[ -z $preamble ]]; then
            preamble="# kib TEST FIXTURE spec, generated by testdata/mirror/make-rpm-fixtures.sh."$'\n'
            preamble+="Name: $source"$'\n'
            [[ $epoch == 0 ]] || preamble+="Epoch: $epoch"$'\n'
            preamble+="Version: $version"$'\n'"Release: $release"$'\n'
            spec_version=$version
            preamble+="URL: https://example.invalid/kib-fixtures/$source"$'\n'
            preamble+="Vendor: kib test fixtures"$'\n'
            preamble+="Packager: kib test fixtures <kib-fixtures@example.invalid>"$'\n'
            preamble+="AutoReqProv: no"$'\n'
            first_license=$license
        fi
        bins+=("$name|$arch|$unit|$post")
        if [[ $name == "$source" ]]; then
            # The binary package named like the source is the spec's main package.
            main=$(tags "$name" "$arch" "$license" "$requires" "$provides" "$recommends" "$summary")$'\n'
            main+="%description"$'\n'$(description "$name" "$summary")$'\n'
        else
            subs+=$'\n'"%package -n $name"$'\n'
            subs+=$(tags "$name" "$arch" "$license" "$requires" "$provides" "$recommends" "$summary")$'\n'
            subs+="%description -n $name"$'\n'$(description "$name" "$summary")$'\n'
        fi
    done <<<"$SPEC_LINES"
    if [[ -z $main ]]; then
        # No binary package carries the source's name: the main package has no %files, so
        # rpmbuild makes no package of it, as with real sources like iptables.
        main="Summary: kib TEST FIXTURE source package $source"$'\n'"License: $first_license"$'\n'
        main+="%description"$'\n'"kib TEST FIXTURE: the source of the fixture packages below."$'\n'
    fi
    {
        printf '%s%s%s\n' "$preamble" "$main" "$subs"
        echo "%install"
        echo "mkdir -p %{buildroot}/usr/share/kib-fixture/rpm %{buildroot}/usr/lib/systemd/system"
        local b
        for b in "${bins[@]}"; do
            IFS='|' read -r name arch unit post <<<"$b"
            echo "cat >%{buildroot}/usr/share/kib-fixture/rpm/$name <<'KIBEOF'"
            marker "$name"
            echo "KIBEOF"
            if [[ $unit != - ]]; then
                echo "cat >%{buildroot}/usr/lib/systemd/system/$unit <<'KIBEOF'"
                unit_text "$unit" "$name"
                echo "KIBEOF"
            fi
            extra_install "$name" "$spec_version"
        done

        for b in "${bins[@]}"; do
            IFS='|' read -r name arch unit post <<<"$b"
            echo
            echo "%files -n $name"
            echo "/usr/share/kib-fixture/rpm/$name"
            [[ $unit == - ]] || echo "/usr/lib/systemd/system/$unit"
            extra_files "$name"
            case $post in
                enable)
                    echo "%post -n $name"
                    echo "# As the real package's scriptlet: enable the unit (offline, symlinks only)."
                    echo "systemctl enable $unit >/dev/null 2>&1 || :"
                    ;;
                preset)
                    echo "%post -n $name"
                    echo "# As %systemd_post did before systemd 252: preset on first install."
                    echo "if [ \$1 -eq 1 ]; then systemctl --no-reload preset $unit >/dev/null 2>&1 || :; fi"
                    ;;
                reload)
                    echo "%post -n $name"
                    echo "systemctl daemon-reload >/dev/null 2>&1 || :"
                    ;;
                -) ;;
                *) die "unknown post '$post' for $name" ;;
            esac
        done
    } >"$out"
}

# build_source SPEC_LINES ARCH OUTDIR: rpmbuild one source package for ARCH into OUTDIR
# (unsigned; RPMS/<arch>/ and RPMS/noarch/ below it).
build_source() {
    local lines=$1 arch=$2 out=$3 source spec top
    source=${lines%%|*}
    top=$(mktemp -d "$WORK/top.XXXXXX")
    spec="$top/$source.spec"
    SPEC_LINES=$lines write_spec "$spec"
    if ! rpmbuild -bb --quiet --target "$arch" \
        --define "_topdir $top" --define "_rpmdir $out" \
        --define '__os_install_post %{nil}' --define '_build_id_links none' \
        --define 'use_source_date_epoch_as_buildtime 1' --define 'clamp_mtime_to_source_date_epoch 1' \
        --define '_buildhost kib-fixtures.example.invalid' \
        "$spec" >"$top/log" 2>&1; then
        cat "$top/log" >&2
        die "rpmbuild of $source ($arch) failed; spec: $spec"
    fi
    rm -rf -- "$top"
}

# sign KEYNAME RPM...: rpmsign with the named cache key.
sign() {
    local key=$1
    shift
    local fpr
    fpr=$(cat "$KEYS/$key.fpr")
    rpmsign --addsign --define "__gpg /usr/bin/gpg" --define "_gpg_name $fpr" \
        --define "_gpg_path $GNUPGHOME" --define "_gpg_digest_algo sha256" "$@" >"$WORK/rpmsign.log" 2>&1 ||
        { cat "$WORK/rpmsign.log" >&2; die "rpmsign with the $key key failed"; }
}

# make_repo DIR KEYNAME PUBKEYNAME: createrepo_c, then repomd.xml.asc signed by KEYNAME and
# repomd.xml.key holding PUBKEYNAME's public key.
make_repo() {
    local dir=$1 key=$2 pub=$3
    createrepo_c --quiet --no-database --general-compress-type=gz --revision "$EPOCH_TIME" \
        --set-timestamp-to-revision "$dir" >/dev/null
    gpg --batch --quiet --yes --local-user "$(cat "$KEYS/$key.fpr")" --digest-algo SHA256 \
        --armor --detach-sign -o "$dir/repodata/repomd.xml.asc" "$dir/repodata/repomd.xml"
    cp "$KEYS/$pub.asc" "$dir/repodata/repomd.xml.key"
}

# check_sigs KEYNAME WANT RPM...: rpmkeys --checksig against only KEYNAME's public key, in a
# throw-away rpmdb; WANT is "ok" (every package must verify) or "bad" (none may).
check_sigs() {
    local key=$1 want=$2 db f out
    shift 2
    db=$(mktemp -d "$WORK/rpmdb.XXXXXX")
    rpmkeys --dbpath "$db" --import "$KEYS/$key.asc"
    for f in "$@"; do
        if out=$(rpmkeys --dbpath "$db" --checksig "$f" 2>&1); then
            [[ $want == ok ]] || die "$f verifies with the $key key but must not: $out"
        else
            [[ $want == bad ]] || die "$f does not verify with the $key key: $out"
        fi
    done
    rm -rf -- "$db"
}

# check_repomd DIR KEYNAME: repomd.xml.asc must verify with KEYNAME's key (gpgv).
check_repomd() {
    local dir=$1 key=$2 ring
    ring=$(mktemp "$WORK/ring.XXXXXX")
    gpg --batch --quiet --dearmor <"$KEYS/$key.asc" >"$ring"
    gpgv --quiet --keyring "$ring" "$dir/repodata/repomd.xml.asc" "$dir/repodata/repomd.xml" 2>/dev/null ||
        die "$dir/repodata/repomd.xml.asc does not verify with the $key key"
    rm -f -- "$ring"
}

# build_table TABLE ARCH UNSIGNED_DIR: builds every source package of TABLE (lines as above,
# grouped by source, in order) for ARCH in parallel (2 jobs).
build_table() {
    local table=$1 arch=$2 out=$3 src prev= group= i=0
    local -a groups=()
    while IFS= read -r line; do
        [[ -z $line || $line == \#* ]] && continue
        src=${line%%|*}
        if [[ $src != "$prev" && -n $group ]]; then groups+=("$group"); group=; fi
        group+="$line"$'\n'
        prev=$src
    done <<<"$table"
    [[ -z $group ]] || groups+=("$group")
    local pids=() g
    # rpmbuild's own mkdir of %{_rpmdir}/<arch> is not safe against a second rpmbuild making it
    # at the same moment ("File exists"): make the folders before the parallel builds.
    mkdir -p "$out/$arch" "$out/noarch"
    for g in "${groups[@]}"; do
        build_source "$g" "$arch" "$out" &
        pids+=($!)
        if [[ ${#pids[@]} -ge 2 ]]; then wait "${pids[0]}" || die "a build failed"; pids=("${pids[@]:1}"); fi
    done
    for g in "${pids[@]}"; do wait "$g" || die "a build failed"; done
}

# --- the package tables -----------------------------------------------------------------------
# Names follow upstream image-builder's node role (images/capi/ansible/roles/node/defaults/main.yml:
# common_rpms, rh8_rpms, common_virt_rpms; roles/containerd/tasks/redhat.yml: libseccomp) and
# what those packages need. Versions and releases are shaped like Rocky Linux 9.4's / SLES 15
# SP6's but are fixture choices, as are the licences (SPDX expressions like Fedora's; two EL
# packages keep a legacy pre-SPDX tag, "GPLv2", as many RHEL 9 packages still do, so that kib's
# licence handling meets both). Group "installed" is what make-el-image.sh puts into the image's
# rpmdb (what a real EL image has installed); everything is also in the repositories.
#
# source|epoch|version|release|name|arch|license|requires|provides|recommends|unit|post|summary
EL_INSTALLED='
rocky-release|0|9.4|1.7.el9|rocky-gpg-keys|noarch|BSD-3-Clause|-|-|-|-|-|Rocky Linux RPM keys
rocky-release|0|9.4|1.7.el9|rocky-repos|noarch|BSD-3-Clause|rocky-gpg-keys|system-repos = 9.4-1.7.el9;rocky-repos(9) = 9.4-1.7.el9|-|-|-|Rocky Linux package repositories
rocky-release|0|9.4|1.7.el9|rocky-release|noarch|BSD-3-Clause|rocky-repos(9)|system-release = 9.4-1.7.el9;system-release(releasever) = 9;redhat-release = 9.4-1.7.el9;centos-release = 9.4-1.7.el9;base-module(platform:el9)|-|-|-|Rocky Linux release files
bash|0|5.1.8|9.el9|bash|arch|GPL-3.0-or-later|-|/bin/sh;/usr/bin/sh;/bin/bash;/usr/bin/bash|-|-|-|The GNU Bourne Again shell
glibc|0|2.34|100.el9_4.2|glibc|arch|LGPL-2.1-or-later AND SunPro AND LGPL-2.1-or-later WITH GCC-exception-2.0 AND BSD-3-Clause AND GPL-2.0-or-later AND LGPL-2.1-or-later WITH GNU-compiler-exception AND GPL-2.0-only AND ISC AND LicenseRef-Fedora-Public-Domain AND HPND AND CMU-Mach AND LGPL-2.0-or-later AND Unicode-3.0 AND GFDL-1.1-or-later AND GPL-1.0-or-later AND FSFUL AND MIT AND Inner-Net AND X11 AND GPL-2.0-or-later WITH GCC-exception-2.0 AND GFDL-1.3-only AND GFDL-1.1-only|-|-|-|-|-|The GNU libc libraries
coreutils|0|8.32|35.el9|coreutils|arch|GPL-3.0-or-later|-|-|-|-|-|A set of basic GNU tools
util-linux|0|2.37.4|18.el9|util-linux|arch|GPL-2.0-only AND GPL-2.0-or-later AND LGPL-2.1-or-later AND BSD-3-Clause AND BSD-4-Clause-UC AND LicenseRef-Fedora-Public-Domain|-|-|-|-|-|Collection of basic system utilities
systemd|0|252|32.el9_4.7|systemd|arch|LGPL-2.1-or-later AND MIT AND GPL-2.0-or-later|-|-|-|-|-|System and Service Manager
rpm|0|4.16.1.3|29.el9|rpm|arch|GPL-2.0-or-later|-|-|-|-|-|The RPM package management system
python3|0|3.9.18|3.el9_4.5|python3|arch|Python-2.0.1|-|-|-|-|-|Python 3.9 interpreter
dnf|0|4.14.0|9.el9|dnf|noarch|GPL-2.0-or-later AND GPL-1.0-only|python3|-|-|-|-|Package manager
dnf|0|4.14.0|9.el9|dnf-data|noarch|GPL-2.0-or-later AND GPL-1.0-only|-|-|-|-|-|Common data and configuration files for DNF
ca-certificates|0|2023.2.60_v7.0.306|90.1.el9_2|ca-certificates|noarch|MIT AND GPL-2.0-or-later|-|-|-|-|-|The Mozilla CA root certificate bundle
gnupg2|0|2.3.3|4.el9|gnupg2|arch|GPL-3.0-or-later|-|-|-|-|-|Utility for secure communication and data storage
dnf-plugins-core|0|4.3.0|13.el9|dnf-plugins-core|noarch|GPL-2.0-or-later|dnf|-|-|-|-|Core Plugins for DNF
dnf-plugins-core|0|4.3.0|13.el9|python3-dnf-plugin-versionlock|noarch|GPL-2.0-or-later|dnf-plugins-core|yum-plugin-versionlock = 4.3.0-13.el9|-|-|-|Version Lock Plugin for DNF
'
EL_BASEOS='
audit|0|3.1.2|2.el9|audit|arch|GPL-2.0-or-later|audit-libs(x86-64) = 3.1.2-2.el9|-|-|auditd.service|enable|User space tools for kernel auditing
audit|0|3.1.2|2.el9|audit-libs|arch|LGPL-2.1-or-later|-|-|-|-|-|Dynamic library for libaudit
conntrack-tools|0|1.4.7|2.el9|conntrack-tools|arch|GPL-2.0-only|libnetfilter_cttimeout;libnetfilter_cthelper;libnetfilter_queue|-|-|conntrackd.service|preset|Manipulate netfilter connection tracking table and run High Availability
libnetfilter_cttimeout|0|1.0.0|19.el9|libnetfilter_cttimeout|arch|GPL-2.0-or-later|-|-|-|-|-|Timeout policy tuning for Netfilter/conntrack
libnetfilter_cthelper|0|1.0.0|22.el9|libnetfilter_cthelper|arch|GPL-2.0-only|-|-|-|-|-|User-space infrastructure for connection tracking helpers
libnetfilter_queue|0|1.0.5|1.el9|libnetfilter_queue|arch|GPL-2.0-or-later|-|-|-|-|-|Netfilter queue userspace library
chrony|0|4.5|1.el9|chrony|arch|GPL-2.0-only|-|-|-|chronyd.service|enable|An NTP client/server
jq|0|1.6|16.el9|jq|arch|MIT AND ICU AND CC-BY-3.0|oniguruma|-|-|-|-|Command-line JSON processor
oniguruma|0|6.9.6|1.el9.5|oniguruma|arch|BSD-2-Clause|-|-|-|-|-|Regular expressions library
ethtool|2|6.2|1.el9|ethtool|arch|GPLv2|-|-|-|-|-|Settings tool for Ethernet NICs
iptables|0|1.8.10|4.el9_4|iptables-nft|arch|GPL-2.0-only AND Artistic-2.0|iptables-libs(x86-64) = 1.8.10-4.el9_4|iptables = 1.8.10-4.el9_4|-|-|-|nftables compatibility for iptables, arptables and ebtables
iptables|0|1.8.10|4.el9_4|iptables-libs|arch|GPL-2.0-only AND Artistic-2.0|-|-|-|-|-|iptables libraries
nftables|1|1.0.9|1.el9|nftables|arch|GPL-2.0-only|-|-|-|nftables.service|preset|Netfilter Tables userspace utillites
libseccomp|0|2.5.2|2.el9|libseccomp|arch|LGPL-2.1-only|-|-|-|-|-|Enhanced seccomp library
curl|0|7.76.1|29.el9_4.1|curl|arch|curl|libcurl(x86-64) >= 7.76.1-29.el9_4.1|-|-|-|-|A utility for getting files from remote servers (FTP, HTTP, and others)
curl|0|7.76.1|29.el9_4.1|libcurl|arch|curl|-|-|-|-|-|A library for getting files from web servers
dnf-plugins-core|0|4.3.0|13.el9|yum-utils|noarch|GPL-2.0-or-later|dnf-plugins-core = 4.3.0-13.el9|-|-|-|-|Yum-utils CLI compatibility layer
python-requests|0|2.25.1|8.el9|python3-requests|noarch|Apache-2.0|python3|-|-|-|-|HTTP library, written in Python, for human beings
'
EL_APPSTREAM='
socat|0|1.7.4.1|5.el9_4.2|socat|arch|GPLv2|-|-|-|-|-|Bidirectional data relay between two data channels (netcat++)
sysstat|0|12.5.4|7.el9|sysstat|arch|GPL-2.0-or-later|-|-|-|sysstat.service|preset|Collection of performance monitoring tools for Linux
python-pip|0|21.2.3|8.el9|python3-pip|noarch|MIT AND Python-2.0.1 AND Apache-2.0 AND BSD-2-Clause AND BSD-3-Clause AND ISC AND LGPL-2.1-only AND MPL-2.0 AND (Apache-2.0 OR BSD-2-Clause)|python3|-|python3-setuptools|-|-|A tool for installing and managing Python3 packages
python-setuptools|0|53.0.0|12.el9_4.1|python3-setuptools|noarch|MIT AND (BSD-2-Clause OR Apache-2.0) AND Python-2.0.1|python3|-|-|-|-|Easily build and distribute Python 3 packages
python-netifaces|0|0.10.6|15.el9|python3-netifaces|arch|MIT|python3|-|-|-|-|Python library to retrieve information about network interfaces
container-selinux|3|2.229.0|1.el9|container-selinux|noarch|GPL-2.0-only|-|-|-|-|reload|SELinux policies for container runtimes
open-vm-tools|0|12.3.5|2.el9|open-vm-tools|arch|GPL-2.0-only AND LGPL-2.1-only|-|-|-|vmtoolsd.service|enable|Open Virtual Machine Tools for virtual machines hosted on VMware
'
# SUSE names (libseccomp2, libnetfilter_cttimeout1, ...) and release numbers shaped like SLES 15
# SP6's. Upstream image-builder has no SUSE role; this is common_rpms plus what the node needs.
SUSE_INSTALLED='
sles-release|0|15.6|150600.64.3|sles-release|noarch|BSD-3-Clause|-|product() = SLES;product(SLES) = 15.6-0;system-installation() = SLES;distribution-release = 15.6-150600.64.3|-|-|-|SUSE Linux Enterprise Server
bash|0|4.4|150400.27.3.2|bash|arch|GPL-3.0-or-later|-|/bin/sh;/usr/bin/sh;/bin/bash;/usr/bin/bash|-|-|-|The GNU Bourne-Again Shell
glibc|0|2.38|150600.14.8.2|glibc|arch|LGPL-2.1-or-later AND LGPL-2.1-or-later WITH GCC-exception-2.0 AND GPL-2.0-or-later|-|-|-|-|-|Standard Shared Libraries (from the GNU C Library)
coreutils|0|8.32|150400.9.6.1|coreutils|arch|GPL-3.0-or-later|-|-|-|-|-|GNU Core Utilities
util-linux|0|2.39.3|150600.4.6.2|util-linux|arch|GPL-2.0-or-later|-|-|-|-|-|A collection of basic system utilities
systemd|0|254.13|150600.4.5.1|systemd|arch|LGPL-2.1-or-later|-|-|-|-|-|A System and Session Manager
rpm|0|4.14.3|150400.59.16.1|rpm|arch|GPL-2.0-or-later|-|-|-|-|-|The RPM Package Manager
libzypp|0|17.35.8|150600.3.25.1|libzypp|arch|GPL-2.0-or-later|-|-|-|-|-|Library for package, patch, pattern and product management
zypper|0|1.14.76|150600.10.10.1|zypper|arch|GPL-2.0-or-later|libzypp|-|-|-|-|Command line software manager using libzypp
ca-certificates|0|2+git20240416.98ae794|150300.4.3.3|ca-certificates|noarch|GPL-2.0-or-later|-|-|-|-|-|Utilities for system wide CA certificate installation
gpg2|0|2.4.4|150600.3.6.1|gpg2|arch|GPL-3.0-or-later|-|-|-|-|-|File encryption, decryption, signature creation and verification utility
'
SUSE_POOL='
audit|0|3.1.1|150600.1.4|audit|arch|GPL-2.0-or-later|libaudit1 = 3.1.1-150600.1.4|-|-|auditd.service|enable|Linux kernel audit subsystem utilities
audit|0|3.1.1|150600.1.4|libaudit1|arch|LGPL-2.1-or-later|-|-|-|-|-|Library for the Linux audit subsystem
conntrack-tools|0|1.4.7|150500.1.5|conntrack-tools|arch|GPL-2.0-only|libnetfilter_cttimeout1;libnetfilter_queue1|-|-|conntrackd.service|preset|Userspace tools for interacting with the Connection Tracking System
libnetfilter_cttimeout|0|1.0.0|150000.3.3.1|libnetfilter_cttimeout1|arch|GPL-2.0-or-later|-|-|-|-|-|Netfilter conntrack timeout library
libnetfilter_queue|0|1.0.5|150400.1.5|libnetfilter_queue1|arch|GPL-2.0-or-later|-|-|-|-|-|Netfilter packet queueing library
chrony|0|4.1|150400.21.5.1|chrony|arch|GPL-2.0-only|-|-|-|chronyd.service|enable|System Clock Synchronization Client and Server
jq|0|1.6|3.3.1|jq|arch|CC-BY-3.0 AND MIT|libjq1|-|-|-|-|A lightweight and flexible command-line JSON processor
jq|0|1.6|3.3.1|libjq1|arch|CC-BY-3.0 AND MIT|-|-|-|-|-|Library for the jq command-line JSON processor
socat|0|1.8.0.0|150400.14.6.1|socat|arch|GPL-2.0-only|-|-|-|-|-|Multipurpose relay for bidirectional data transfer
sysstat|0|12.0.2|150400.3.12.1|sysstat|arch|GPL-2.0-or-later|-|-|-|sysstat.service|preset|Sar and Iostat Commands for Linux
python-pip|0|20.0.2|150400.17.3.1|python3-pip|noarch|MIT|-|-|python3-setuptools|-|-|A Python package management system
python-setuptools|0|44.1.1|150400.9.9.1|python3-setuptools|noarch|MIT|-|-|-|-|-|Download, build, install, upgrade, and uninstall Python packages
curl|0|8.6.0|150600.4.9.1|curl|arch|curl|libcurl4 = 8.6.0-150600.4.9.1|-|-|-|-|A Tool for Transferring Data from URLs
curl|0|8.6.0|150600.4.9.1|libcurl4|arch|curl|-|-|-|-|-|Version 4 of cURL shared library
iptables|0|1.8.7|1.1|iptables|arch|GPL-2.0-only AND Artistic-2.0|-|-|-|-|-|IP packet filter administration utilities
ethtool|0|6.7|150600.1.2|ethtool|arch|GPL-2.0-only|-|-|-|-|-|Utility for examining and tuning Ethernet-based network interfaces
libseccomp|0|2.5.4|150400.2.3.1|libseccomp2|arch|LGPL-2.1-only|-|-|-|-|-|An enhanced Seccomp (mode 2) helper library
'

# --- the distribution repositories (cached) ---------------------------------------------------
DISTRO_CACHE="$CACHE_ROOT/rpm-distro-${SCRIPT_SHA:0:12}-$KEYS_ID"
build_distro() {
    local tmp="$DISTRO_CACHE.tmp.$$"
    rm -rf -- "$tmp"
    mkdir -p "$tmp/unsigned-el" "$tmp/unsigned-suse"
    log "building the Rocky and SUSE stand-in packages ($DISTRO_ARCH)"
    build_table "$EL_INSTALLED$EL_BASEOS" "$DISTRO_ARCH" "$tmp/unsigned-el/BaseOS"
    build_table "$EL_APPSTREAM" "$DISTRO_ARCH" "$tmp/unsigned-el/AppStream"
    build_table "$SUSE_INSTALLED$SUSE_POOL" "$DISTRO_ARCH" "$tmp/unsigned-suse/pool"

    local repo f base letter
    for repo in BaseOS AppStream; do
        base="$tmp/rocky/pub/rocky/9/$repo/$DISTRO_ARCH/os"
        mkdir -p "$base/Packages"
        for f in "$tmp/unsigned-el/$repo"/*/*.rpm; do
            base_name=${f##*/}
            letter=${base_name:0:1}
            letter=${letter,,}
            mkdir -p "$base/Packages/$letter"
            cp -- "$f" "$base/Packages/$letter/"
        done
        sign distro "$base"/Packages/*/*.rpm
        check_sigs distro ok "$base"/Packages/*/*.rpm
        make_repo "$base" distro distro
        check_repomd "$base" distro
    done
    cp "$KEYS/distro.asc" "$tmp/rocky/pub/rocky/RPM-GPG-KEY-kib-fixture-distro"

    base="$tmp/suse/SUSE/Products/SLE-Module-Basesystem/15-SP6/$DISTRO_ARCH/product"
    mkdir -p "$base"
    cp -r -- "$tmp/unsigned-suse/pool"/* "$base/"
    sign distro "$base"/*/*.rpm
    check_sigs distro ok "$base"/*/*.rpm
    make_repo "$base" distro distro
    check_repomd "$base" distro

    # What make-el-image.sh installs into the image's rpmdb, by variant (paths relative to here).
    local name
    : >"$tmp/installed-el.list"
    while IFS='|' read -r _ _ _ _ name _; do
        [[ -n $name ]] || continue
        (cd "$tmp" && ls rocky/pub/rocky/9/BaseOS/$DISTRO_ARCH/os/Packages/*/"$name"-[0-9]*.rpm) >>"$tmp/installed-el.list"
    done <<<"$EL_INSTALLED"
    : >"$tmp/installed-suse.list"
    while IFS='|' read -r _ _ _ _ name _; do
        [[ -n $name ]] || continue
        (cd "$tmp" && ls suse/SUSE/Products/SLE-Module-Basesystem/15-SP6/$DISTRO_ARCH/product/*/"$name"-[0-9]*.rpm) >>"$tmp/installed-suse.list"
    done <<<"$SUSE_INSTALLED"
    mkdir -p "$tmp/keys"
    cp "$KEYS"/{distro,k8s,rogue}.{asc,fpr} "$tmp/keys/"
    rm -rf -- "$tmp/unsigned-el" "$tmp/unsigned-suse"
    find "$tmp/rocky" "$tmp/suse" -exec touch -h -d "@$EPOCH_TIME" {} +
    printf 'script-sha256=%s\nkeys=%s\n' "$SCRIPT_SHA" "$KEYS_ID" >"$tmp/stamp"
    rm -rf -- "$DISTRO_CACHE"
    mv -- "$tmp" "$DISTRO_CACHE"
}
if [[ ! -f $DISTRO_CACHE/stamp ]]; then
    build_distro
fi
if [[ $MODE == distro ]]; then
    log "distribution fixtures: $DISTRO_CACHE ($((SECONDS - START)) s)"
    echo "$DISTRO_CACHE"
    exit 0
fi

# --- pkgs.k8s.io stand-ins (cached per VERSION list) --------------------------------------
OUTARG=$1
shift
VERSIONS=("$@")
[[ ${#VERSIONS[@]} -gt 0 ]] || VERSIONS=(1.30.0)
for v in "${VERSIONS[@]}"; do
    [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "bad VERSION '$v' (want X.Y.Z, such as 1.30.0)"
done
mapfile -t VERSIONS < <(printf '%s\n' "${VERSIONS[@]}" | sort -uV)
mapfile -t MINORS < <(printf '%s\n' "${VERSIONS[@]}" | cut -d. -f1,2 | sort -uV)

# The CNI plugins version of each minor's manifest (manifests/k8s-1.MM.yaml `cni_version`).
cni_for() {
    case $1 in
        1.30) echo 1.4.0 ;; 1.31) echo 1.5.1 ;; 1.32 | 1.33) echo 1.6.0 ;; 1.34) echo 1.7.1 ;;
        1.35) echo 1.8.0 ;; 1.36 | 1.37) echo 1.9.1 ;; *) echo 1.4.0 ;;
    esac
}

K8S_CACHE="$CACHE_ROOT/rpm-k8s-${SCRIPT_SHA:0:12}-$KEYS_ID-$(printf '%s\n' "${VERSIONS[@]}" | sha256sum | cut -c1-12)"
build_k8s() {
    local tmp="$K8S_CACHE.tmp.$$" minor arch v p patch
    rm -rf -- "$tmp"
    mkdir -p "$tmp"
    for minor in "${MINORS[@]}"; do
        local -a kube=()
        for v in "${VERSIONS[@]}"; do
            [[ $v == "$minor".* ]] || continue
            patch=${v##*.}
            kube+=("$v" "$minor.$((patch + 1))")
            ((patch == 0)) || kube+=("$minor.$((patch - 1))")
        done
        mapfile -t kube < <(printf '%s\n' "${kube[@]}" | sort -uV)
        local cni
        cni=$(cni_for "$minor")
        log "pkgs.k8s.io v$minor: kubelet/kubeadm/kubectl ${kube[*]}, cri-tools $minor.0 $minor.1, kubernetes-cni $cni"
        local table=
        for v in "${kube[@]}"; do
            patch=${v#*.*.}
            # kubeadm 1.30 and 1.31 require cri-tools >= 1.30.0; later ones nothing (kubernetes/
            # release cmd/krel/templates/latest/metadata.yaml). kubelet: its spec's iptables
            # and util-linux, metadata.yaml's kubernetes-cni >= 1.2.0.
            local kubeadm_req=-
            case $minor in 1.30 | 1.31) kubeadm_req="cri-tools >= 1.30.0" ;; esac
            table+="kubelet|0|$v|$K8S_RELEASE|kubelet|arch|Apache-2.0|iptables >= 1.4.21;kubernetes-cni >= 1.2.0;util-linux|-|-|kubelet.service|reload|Node agent for Kubernetes clusters"$'\n'
            table+="kubeadm|0|$v|$K8S_RELEASE|kubeadm|arch|Apache-2.0|$kubeadm_req|-|-|-|-|Command-line utility for administering a Kubernetes cluster"$'\n'
            table+="kubectl|0|$v|$K8S_RELEASE|kubectl|arch|Apache-2.0|-|-|-|-|-|Command-line utility for interacting with a Kubernetes cluster"$'\n'
        done
        for v in "$minor.0" "$minor.1"; do
            table+="cri-tools|0|$v|$K8S_RELEASE|cri-tools|arch|Apache-2.0|-|-|-|-|-|Command-line utility for interacting with a container runtime"$'\n'
        done
        table+="kubernetes-cni|0|$cni|$K8S_RELEASE|kubernetes-cni|arch|Apache-2.0|-|-|-|-|-|Binaries required to provision kubernetes container networking"$'\n'
        for arch in "${K8S_ARCHES[@]}"; do
            # One source package per (name, version): build_table groups consecutive lines of a
            # source, so give each version its own group by building line by line.
            local line
            mkdir -p "$tmp/unsigned/$minor/$arch" "$tmp/unsigned/$minor/noarch"
            while IFS= read -r line; do
                [[ -n $line ]] || continue
                build_source "$line" "$arch" "$tmp/unsigned/$minor" &
                [[ $(jobs -rp | wc -l) -lt 2 ]] || wait -n || die "a build failed"
            done <<<"$table"
            wait || die "a build failed"
        done
        local rel="pkgs/core:/stable:/v$minor/rpm" bad="badsig/core:/stable:/v$minor/rpm"
        mkdir -p "$tmp/$rel" "$tmp/$bad"
        for arch in "${K8S_ARCHES[@]}"; do
            mkdir -p "$tmp/$rel/$arch" "$tmp/$bad/$arch"
            cp -- "$tmp/unsigned/$minor/$arch"/*.rpm "$tmp/$rel/$arch/"
            cp -- "$tmp/unsigned/$minor/$arch"/*.rpm "$tmp/$bad/$arch/"
        done
        sign k8s "$tmp/$rel"/*/*.rpm
        sign rogue "$tmp/$bad"/*/*.rpm
        check_sigs k8s ok "$tmp/$rel"/*/*.rpm
        check_sigs k8s bad "$tmp/$bad"/*/*.rpm
        check_sigs rogue ok "$tmp/$bad"/*/*.rpm
        make_repo "$tmp/$rel" k8s k8s
        make_repo "$tmp/$bad" rogue k8s
        check_repomd "$tmp/$rel" k8s
        check_repomd "$tmp/$bad" rogue
    done
    rm -rf -- "$tmp/unsigned"
    find "$tmp" -mindepth 1 -exec touch -h -d "@$EPOCH_TIME" {} +
    printf 'script-sha256=%s\nkeys=%s\nversions=%s\n' "$SCRIPT_SHA" "$KEYS_ID" "${VERSIONS[*]}" >"$tmp/stamp"
    rm -rf -- "$K8S_CACHE"
    mv -- "$tmp" "$K8S_CACHE"
}
if [[ ! -f $K8S_CACHE/stamp ]]; then
    build_k8s
fi

# --- copy into OUTDIR and describe it -------------------------------------------------------
mkdir -p -- "$OUTARG"
OUTDIR=$(cd -- "$OUTARG" && pwd -P)
[[ $OUTDIR != / ]] || die "OUTDIR must not be /"
rm -rf -- "$OUTDIR/badsig" "$OUTDIR/rocky" "$OUTDIR/suse" "$OUTDIR/RPM-FIXTURES.json"
rm -rf -- "$OUTDIR"/pkgs/core:/stable:/v*/rpm
cp -a -- "$DISTRO_CACHE/rocky" "$DISTRO_CACHE/suse" "$OUTDIR/"
mkdir -p "$OUTDIR/pkgs" "$OUTDIR/badsig"
cp -a -- "$K8S_CACHE/pkgs/." "$OUTDIR/pkgs/"
cp -a -- "$K8S_CACHE/badsig/." "$OUTDIR/badsig/"

"$PYTHON" - "$OUTDIR" "$EPOCH_TIME" "$FPR_DISTRO" "$FPR_K8S" "$FPR_ROGUE" "$(rocky_repo_file)" "${MINORS[@]}" <<'EOF'
import hashlib, json, os, subprocess, sys

outdir, epoch, fpr_distro, fpr_k8s, fpr_rogue, rocky_repo = sys.argv[1:7]
minors = sys.argv[7:]

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

UPSTREAM = {
    "pkgs": "https://pkgs.k8s.io",
    "badsig": "https://pkgs.k8s.io",
    "rocky": "https://dl.rockylinux.org",
    "suse": "https://updates.suse.com",
}
QF = "%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\t%{SOURCERPM}\t%{LICENSE}\t[%{REQUIRENAME} %{REQUIREFLAGS:depflags} %{REQUIREVERSION},]\t[%{RECOMMENDNAME},]\t%{RSAHEADER:pgpsig}\n"

files, packages = [], []
for top in ("pkgs", "badsig", "rocky", "suse"):
    for d, dirs, names in os.walk(os.path.join(outdir, top)):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(d, n)
            rel = os.path.relpath(p, outdir)
            if top == "pkgs" and "/rpm/" not in rel:
                continue  # the deb side: make-fixtures.sh records those
            kind = "rpm" if n.endswith(".rpm") else ("rpm-key" if n.endswith(".key") or "GPG-KEY" in n else "rpm-metadata")
            files.append({"path": rel, "sha256": sha256(p), "size": os.path.getsize(p), "kind": kind,
                          "stands_for": UPSTREAM[top] + rel[len(top):]})
            if n.endswith(".rpm"):
                out = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", QF, p], check=True,
                                     capture_output=True, text=True).stdout.rstrip("\n")
                name, ep, ver, rel_, arch, srpm, lic, req, rec, sig = out.split("\t")
                reqs = [r.strip() for r in req.split(",") if r.strip() and not r.startswith("rpmlib(")]
                packages.append({"path": rel, "repo": top, "name": name, "epoch": int(ep), "version": ver,
                                 "release": rel_, "arch": arch, "sourcerpm": srpm, "license": lic,
                                 "requires": reqs, "recommends": [r for r in rec.split(",") if r],
                                 "nevra": f"{name}-{ep}:{ver}-{rel_}.{arch}", "signature": sig})

def key_text(name):
    with open(os.path.join(outdir, name)) as f:
        return f.read()

repos = {}
for m in minors:
    url = f"https://pkgs.k8s.io/core:/stable:/v{m}/rpm/"
    repos[f"v{m}"] = {
        "path": f"pkgs/core:/stable:/v{m}/rpm/",
        "bad_signature_path": f"badsig/core:/stable:/v{m}/rpm/",
        "url": url,
        "key_url": url + "repodata/repomd.xml.key",
        "key_fingerprint": fpr_k8s,
        "key_sha256": sha256(os.path.join(outdir, f"pkgs/core:/stable:/v{m}/rpm/repodata/repomd.xml.key")),
        # What kubernetes.io's install page and upstream image-builder write.
        "repo_file": "[kubernetes]\nname=Kubernetes\nbaseurl=" + url + "\nenabled=1\ngpgcheck=1\n"
                     "gpgkey=" + url + "repodata/repomd.xml.key\n"
                     "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n",
    }

doc = {
    "note": "RPM TEST FIXTURES for kib's integration tests, made by testdata/mirror/make-rpm-fixtures.sh. "
            "Nothing here is a real Rocky Linux, SUSE or Kubernetes package: each installs a marker file "
            "under /usr/share/kib-fixture/rpm/ (the Kubernetes ones also print-their-version scripts). "
            "Signed with throw-away keys kept in kib's cache; do not pin their fingerprints.",
    "generator": "testdata/mirror/make-rpm-fixtures.sh",
    "source_date_epoch": int(epoch),
    "mirrors": {
        "https://pkgs.k8s.io": "pkgs",
        "https://dl.rockylinux.org": "rocky",
        "https://updates.suse.com": "suse",
        "bad signatures (map https://pkgs.k8s.io here)": "badsig",
    },
    "keys": {
        "distro": {"fingerprint": fpr_distro, "url": "https://dl.rockylinux.org/pub/rocky/RPM-GPG-KEY-kib-fixture-distro",
                   "path": "rocky/pub/rocky/RPM-GPG-KEY-kib-fixture-distro",
                   "image_path_el": "/etc/pki/rpm-gpg/RPM-GPG-KEY-kib-fixture-distro",
                   "image_path_suse": "/usr/lib/rpm/gnupg/keys/gpg-pubkey-" + fpr_distro[-8:].lower() + ".asc"},
        "k8s": {"fingerprint": fpr_k8s},
        "rogue": {"fingerprint": fpr_rogue, "signs": "badsig/"},
    },
    "kubernetes_rpm_release": "150500.1.1",
    "pkgs_k8s_io": repos,
    "distro_repositories": {
        "rocky-baseos": {"path": "rocky/pub/rocky/9/BaseOS/x86_64/os/",
                          "url": "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
                          "repo_file_url": "https://dl.rockylinux.org/$contentdir/$releasever/BaseOS/$basearch/os/"},
        "rocky-appstream": {"path": "rocky/pub/rocky/9/AppStream/x86_64/os/",
                             "url": "https://dl.rockylinux.org/pub/rocky/9/AppStream/x86_64/os/",
                             "repo_file_url": "https://dl.rockylinux.org/$contentdir/$releasever/AppStream/$basearch/os/"},
        "sle-basesystem-pool": {"path": "suse/SUSE/Products/SLE-Module-Basesystem/15-SP6/x86_64/product/",
                                 "url": "https://updates.suse.com/SUSE/Products/SLE-Module-Basesystem/15-SP6/x86_64/product/"},
    },
    "rocky_repo_file": rocky_repo + "\n",
    "packages": sorted(packages, key=lambda p: p["path"]),
    "files": sorted(files, key=lambda f: f["path"]),
}
with open(os.path.join(outdir, "RPM-FIXTURES.json"), "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
EOF
log "done in $((SECONDS - START)) s: $OUTDIR (RPM-FIXTURES.json)"
