#!/usr/bin/env bash
# verify-el-fixtures.sh [--variant el|suse]...   (default: both)
#
# Checks kib's EL- and SUSE-shaped TEST FIXTURE images (make-el-image.sh) against the RPM fixture
# repositories (testdata/mirror/make-fixtures.sh, RPM side), the way kib's RPM backends will use
# them, with the command lines recorded in NOTES.md:
#  - builds (or reuses) the image and a fixture mirror for Kubernetes 1.30.0, serves the mirror
#    with python3's http.server on 127.0.0.1;
#  - mounts the image's root filesystem read-only (loop device, private mount namespace) under a
#    tmpfs overlay, and runs every command the way kib's session does: `unshare --pid --fork --kill-child
#    --mount-proc --root=TREE` with a tmpfs /dev, read-only /sys and an empty /run;
#  - checks os-release and what backend detection sees, the rpmdb, $releasever;
#  - writes pkgs.k8s.io's repository file with its real URL, rewrites the repository URLs to the
#    mirror (standing in for kib's mirror map), imports the key with rpm --import;
#  - installs the draft phases/node/base-packages-el.yaml list and kubelet, kubeadm, kubectl
#    pinned to 1.30.0 while 1.30.1 is offered, holds them (dnf versionlock / zypper addlock) and
#    checks that the newer version is then refused, that scriptlets enabled their units offline,
#    and that a missing package and a repository signed with the wrong key fail as NOTES.md says.
# Runs as root. Leaves no process, mount, loop device or temp dir behind. Takes about a minute per
# variant once the image and the mirror are cached.
set -euo pipefail
export LC_ALL=C SYSTEMD_COLORS=0

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
die() { echo "verify-el-fixtures: FAILED: $*" >&2; exit 1; }
log() { echo "verify-el-fixtures: $*" >&2; }

VARIANTS=()
ORIG_ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case $1 in
        --variant) [[ $# -ge 2 ]] || die "--variant needs a value"; VARIANTS+=("$2"); shift 2 ;;
        -h | --help) sed -n '2,20p' "$SELF" >&2; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ ${#VARIANTS[@]} -gt 0 ]] || VARIANTS=(el suse)
for v in "${VARIANTS[@]}"; do [[ $v == el || $v == suse ]] || die "unknown variant $v"; done
[[ $EUID -eq 0 ]] || die "run as root"

if [[ -z ${KIB_VERIFY_EL_NS:-} ]]; then
    export KIB_VERIFY_EL_NS=1
    exec unshare --mount --propagation private -- bash "$SELF" "${ORIG_ARGS[@]}"
fi
START=$SECONDS

T=$(mktemp -d /var/tmp/kib-verify-el.XXXXXX)
HTTP_PID=
cleanup() {
    set +e
    if [[ -n $HTTP_PID ]] && kill -0 "$HTTP_PID" 2>/dev/null; then
        kill "$HTTP_PID"
        wait "$HTTP_PID" 2>/dev/null
    fi
    awk -v t="$T" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
    losetup -n -l -O NAME,BACK-FILE | awk -v t="$T" 'index($2, t) == 1 { print $1 }' | while read -r l; do losetup -d "$l"; done
    rm -rf --one-file-system -- "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the mirror -------------------------------------------------------------------------------
log "making the fixture mirror (Kubernetes 1.30.0)"
bash "$HERE/../mirror/make-fixtures.sh" "$T/www" 1.30.0 >/dev/null 2>"$T/fixtures.log" || { cat "$T/fixtures.log" >&2; die "make-fixtures.sh"; }
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$T/www" >"$T/http.log" 2>&1 &
HTTP_PID=$!
PORT=
for _ in $(seq 100); do
    PORT=$(sed -n 's/^Serving HTTP on 127\.0\.0\.1 port \([0-9]*\).*/\1/p' "$T/http.log")
    [[ -z $PORT ]] || break
    sleep 0.05
done
[[ -n $PORT ]] || die "http.server did not start: $(cat "$T/http.log")"
MIRROR="http://127.0.0.1:$PORT"

# --- helpers ----------------------------------------------------------------------------------
# extract IMAGE TREE: partition 1's filesystem (at 1 MiB), read-only through a loop device, under
# a tmpfs overlay at TREE: the cached image is never written, and nothing is copied.
extract() {
    local img=$1 tree=$2 loop
    mkdir -p "$tree" "$tree.lower" "$tree.rw"
    loop=$(losetup -f --show -r -o $((2048 * 512)) "$img")
    mount -o ro,noload "$loop" "$tree.lower"
    losetup -d "$loop"  # autoclear: the loop device goes with the mount
    mount -t tmpfs -o mode=0755 tmpfs "$tree.rw"
    mkdir -p "$tree.rw/upper" "$tree.rw/work"
    mount -t overlay overlay -o "lowerdir=$tree.lower,upperdir=$tree.rw/upper,workdir=$tree.rw/work" "$tree"
}
# session TREE: the API file systems of kib's chroot session.
session() {
    local r=$1 n
    mount -t tmpfs -o mode=0755 tmpfs "$r/dev"
    for n in null zero full random urandom tty; do
        touch "$r/dev/$n"
        mount --bind "/dev/$n" "$r/dev/$n"
    done
    mkdir -p "$r/dev/pts" "$r/dev/shm"
    mount -t tmpfs tmpfs "$r/dev/shm"
    mount -t sysfs -o ro sysfs "$r/sys"
    mount -t tmpfs tmpfs "$r/run"
}
# run_in TREE CMD...: runs CMD as kib does; its output goes to $T/out (shown on failure).
run_in() {
    local r=$1
    shift
    unshare --pid --fork --kill-child --mount-proc --root="$r" env SYSTEMD_OFFLINE=1 "$@" >"$T/out" 2>&1
}
ok() { run_in "$@" || { cat "$T/out" >&2; die "$*"; }; }
# fails WANT_RC TEXT TREE CMD...: CMD must exit WANT_RC and print TEXT.
fails() {
    local want=$1 text=$2 rc=0
    shift 2
    run_in "$@" || rc=$?
    [[ $rc == "$want" ]] || { cat "$T/out" >&2; die "$* exited $rc, not $want"; }
    grep -qF -- "$text" "$T/out" || { cat "$T/out" >&2; die "$* did not say: $text"; }
}
has() { grep -qF -- "$1" "$T/out" || { cat "$T/out" >&2; die "expected: $1"; }; }
left_processes() {
    local r=$1 p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/root" 2>/dev/null) == "$r" ]] && echo "${p#/proc/}"
    done
    return 0
}
KEY_URL_PATH="pkgs/core:/stable:/v1.30/rpm/repodata/repomd.xml.key"

verify_el() {
    local img tree
    img=$(bash "$HERE/make-el-image.sh" --variant el 2>"$T/el-build.log" | tail -n 1) || { cat "$T/el-build.log" >&2; die "make-el-image.sh --variant el"; }
    tree=$T/el
    log "el: $img"
    extract "$img" "$tree"
    session "$tree"
    grep -qx 'ID="rocky"' "$tree/etc/os-release" && grep -qx 'ID_LIKE="rhel centos fedora"' "$tree/etc/os-release" &&
        grep -qx 'PLATFORM_ID="platform:el9"' "$tree/etc/os-release" || die "el: os-release"
    for b in dnf yum rpm; do [[ -e $tree/usr/bin/$b ]] || die "el: /usr/bin/$b missing"; done
    for b in apt-get apt microdnf tdnf zypper; do [[ ! -e $tree/usr/bin/$b ]] || die "el: /usr/bin/$b present"; done
    ok "$tree" rpm -q --whatprovides 'system-release(releasever)'; has rocky-release-9.4

    # pkgs.k8s.io's repository as kib's repository step will write it, then the mirror map.
    mkdir -p "$tree/etc/pki/rpm-gpg"
    cp "$T/www/$KEY_URL_PATH" "$tree/etc/pki/rpm-gpg/kubernetes.asc"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rpm"]["pkgs_k8s_io"]["v1.30"]["repo_file"], end="")' \
        "$T/www/FIXTURES.json" | sed 's#^gpgkey=.*#gpgkey=file:///etc/pki/rpm-gpg/kubernetes.asc#' >"$tree/etc/yum.repos.d/kubernetes.repo"
    sed -i "s#https://pkgs.k8s.io#$MIRROR/pkgs#; s#https://dl.rockylinux.org#$MIRROR/rocky#" "$tree"/etc/yum.repos.d/*.repo
    ok "$tree" rpm --import /etc/pki/rpm-gpg/kubernetes.asc
    ok "$tree" dnf -y makecache; has "Rocky Linux 9 - BaseOS"

    local base
    base=$(python3 - "$HERE/../../phases/node/base-packages-el.yaml" <<'EOF'
import re, sys
# The first packages.install list of the draft phase (the EL one), without a YAML library.
text = open(sys.argv[1]).read().split("- name: base node packages (EL)")[1].split("- name:")[0]
print(" ".join(re.findall(r"^\s+- ([A-Za-z0-9_.+-]+)\s*$", text, re.M)))
EOF
)
    [[ $(wc -w <<<"$base") -ge 15 ]] || die "el: could not read the draft's EL list ($base)"
    # shellcheck disable=SC2086
    ok "$tree" dnf -y install --setopt=install_weak_deps=False $base; has "Complete!"
    if run_in "$tree" rpm -q python3-setuptools; then die "el: a weak dependency was installed"; fi
    ok "$tree" dnf -y install --setopt=install_weak_deps=False --disableexcludes=kubernetes \
        kubelet-1.30.0 kubeadm-1.30.0 kubectl-1.30.0 kubernetes-cni cri-tools
    has "Running scriptlet: kubelet-1.30.0-150500.1.1.x86_64"
    ok "$tree" rpm -q kubelet kubeadm kubectl; has kubelet-1.30.0-150500.1.1.x86_64; has kubectl-1.30.0-150500.1.1.x86_64
    ok "$tree" dnf versionlock add kubelet kubeadm kubectl; has "Adding versionlock on: kubelet-0:1.30.0-150500.1.1.*"
    fails 1 "All matches were filtered out by exclude filtering for argument: kubelet-1.30.1" \
        "$tree" dnf -y install --disableexcludes=all kubelet-1.30.1
    for u in chronyd auditd vmtoolsd; do
        [[ -L $tree/etc/systemd/system/multi-user.target.wants/$u.service ]] || die "el: $u not enabled by its scriptlet"
    done
    [[ ! -e $tree/etc/systemd/system/multi-user.target.wants/conntrackd.service ]] || die "el: conntrackd enabled despite EL's presets"
    fails 1 "Error: Unable to find a match: no-such-package" "$tree" dnf -y install no-such-package
    ok "$tree" rpm -qa --qf '%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\t%{SOURCERPM}\t%{LICENSE}\n'
    has $'ethtool\t2\t6.2\t1.el9\tx86_64\tethtool-6.2-1.el9.src.rpm\tGPLv2'
    has $'kubelet\t0\t1.30.0\t150500.1.1\tx86_64\tkubelet-1.30.0-150500.1.1.src.rpm\tApache-2.0'

    # A repository whose signatures do not match its key.
    sed -i "s#$MIRROR/pkgs#$MIRROR/badsig#" "$tree/etc/yum.repos.d/kubernetes.repo"
    ok "$tree" dnf versionlock delete kubectl
    fails 1 "Error: GPG check FAILED" "$tree" dnf -y --refresh install --disableexcludes=kubernetes kubectl-1.30.1
    ok "$tree" rpm -q kubectl; has kubectl-1.30.0-150500.1.1.x86_64
    ok "$tree" dnf clean all
    [[ -z $(left_processes "$tree") ]] || die "el: processes left in the tree: $(left_processes "$tree")"
    log "el: ok"
}

verify_suse() {
    local img tree
    img=$(bash "$HERE/make-el-image.sh" --variant suse 2>"$T/suse-build.log" | tail -n 1) || { cat "$T/suse-build.log" >&2; die "make-el-image.sh --variant suse"; }
    tree=$T/suse
    log "suse: $img"
    extract "$img" "$tree"
    session "$tree"
    grep -qx 'ID="sles"' "$tree/etc/os-release" && grep -qx 'ID_LIKE="suse"' "$tree/etc/os-release" || die "suse: os-release"
    [[ -e $tree/usr/bin/zypper ]] || die "suse: no zypper"
    for b in apt-get dnf yum microdnf tdnf; do [[ ! -e $tree/usr/bin/$b ]] || die "suse: /usr/bin/$b present"; done
    [[ -L $tree/var/lib/rpm && -f $tree/usr/lib/sysimage/rpm/rpmdb.sqlite ]] || die "suse: rpmdb layout"
    ok "$tree" rpm -q sles-release

    mkdir -p "$tree/etc/pki/rpm-gpg"
    cp "$T/www/$KEY_URL_PATH" "$tree/etc/pki/rpm-gpg/kubernetes.asc"
    printf '[kubernetes]\nname=Kubernetes\nenabled=1\nautorefresh=1\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\ntype=rpm-md\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/kubernetes.asc\n' \
        >"$tree/etc/zypp/repos.d/kubernetes.repo"
    sed -i "s#https://pkgs.k8s.io#$MIRROR/pkgs#; s#https://updates.suse.com#$MIRROR/suse#" "$tree"/etc/zypp/repos.d/*.repo
    fails 4 "Signature verification failed for repomd.xml" "$tree" zypper --non-interactive refresh
    ok "$tree" rpm --import /etc/pki/rpm-gpg/kubernetes.asc
    ok "$tree" zypper --non-interactive refresh; has "All repositories have been refreshed."
    ok "$tree" zypper --non-interactive install --no-recommends audit ca-certificates conntrack-tools chrony jq \
        python3-pip socat sysstat curl iptables ethtool libseccomp2
    if run_in "$tree" rpm -q python3-setuptools; then die "suse: a recommended package was installed"; fi
    ok "$tree" zypper --non-interactive install --no-recommends kubelet=1.30.0 kubeadm-1.30.0 kubectl=1.30.0 kubernetes-cni cri-tools
    ok "$tree" rpm -q kubelet kubeadm kubectl; has kubelet-1.30.0-150500.1.1.x86_64
    ok "$tree" zypper --non-interactive addlock kubelet kubeadm kubectl
    grep -q '^solvable_name: kubelet$' "$tree/etc/zypp/locks" || die "suse: /etc/zypp/locks"
    fails 4 "remove lock to allow installation of kubelet-1.30.1" "$tree" zypper --non-interactive install kubelet=1.30.1
    fails 104 "No provider of 'no-such-package' found." "$tree" zypper --non-interactive install no-such-package
    for u in chronyd auditd; do
        [[ -L $tree/etc/systemd/system/multi-user.target.wants/$u.service ]] || die "suse: $u not enabled by its scriptlet"
    done
    sed -i "s#$MIRROR/pkgs#$MIRROR/badsig#" "$tree/etc/zypp/repos.d/kubernetes.repo"
    fails 4 "Signature verification failed for repomd.xml" "$tree" zypper --non-interactive refresh --force kubernetes
    ok "$tree" zypper --non-interactive clean --all
    [[ -z $(left_processes "$tree") ]] || die "suse: processes left in the tree: $(left_processes "$tree")"
    log "suse: ok"
}

for v in "${VARIANTS[@]}"; do
    "verify_$v"
done
log "all checks passed in $((SECONDS - START)) s"
