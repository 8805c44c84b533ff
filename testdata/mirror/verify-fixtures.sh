#!/usr/bin/env bash
# verify-fixtures.sh OUTDIR
#
# Checks a tree made by make-fixtures.sh the way kib's integration tests use it:
#  - serves OUTDIR with python3's http.server on 127.0.0.1 and fetches every file listed in
#    FIXTURES.json over HTTP, comparing SHA-256s, and checks every .sha256 companion;
#  - for each pkgs.k8s.io stand-in: apt-get update (signed-by the served Release.key, errors on
#    any warning), apt-cache policy, a simulated install of kubelet kubeadm kubectl for amd64
#    and arm64, apt-get download of every package, and runs the unpacked fixture scripts;
#  - unpacks the crictl and CNI tarballs and runs their scripts;
#  - imports every image archive into a throw-away containerd (Debian's, installed if missing)
#    with `ctr -n k8s.io images import`, lists them and checks their fixture label.
# Runs as root. Leaves no process, mount or temp dir behind. Set SKIP_CONTAINERD=1 to skip
# the containerd part.
set -euo pipefail
export LC_ALL=C

die() { echo "verify-fixtures: FAILED: $*" >&2; exit 1; }
log() { echo "verify-fixtures: $*" >&2; }

[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
[[ $EUID -eq 0 ]] || die "run as root"
OUTDIR=$(cd -- "$1" && pwd -P)
[[ -f $OUTDIR/FIXTURES.json ]] || die "$OUTDIR/FIXTURES.json is missing: run make-fixtures.sh first"
PYTHON=/usr/bin/python3
START=$SECONDS

need=()
for pkg in python3 apt gpgv skopeo jq; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == "install ok installed" ]] || need+=("$pkg")
done
if [[ ${SKIP_CONTAINERD:-0} != 1 ]] && ! command -v containerd >/dev/null; then
    need+=(containerd)
fi
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

T=$(mktemp -d /tmp/kib-fixtures-verify.XXXXXX)
chmod 0755 "$T"   # apt drops to the _apt user to download
HTTP_PID=
CTRD_PID=
cleanup() {
    local pid
    for pid in "$CTRD_PID" "$HTTP_PID"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    # containerd unmounts its snapshots' temporary mounts itself; be sure anyway.
    if [[ -d $T ]]; then
        awk -v t="$T" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
            umount -l "$m" || true
        done
    fi
    rm -rf -- "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- HTTP server on 127.0.0.1 -------------------------------------------------------------------
"$PYTHON" -u -m http.server 0 --bind 127.0.0.1 --directory "$OUTDIR" >"$T/http.log" 2>&1 &
HTTP_PID=$!
PORT=
for _ in $(seq 100); do
    PORT=$(sed -n 's/^Serving HTTP on 127\.0\.0\.1 port \([0-9]*\).*/\1/p' "$T/http.log")
    [[ -z $PORT ]] || break
    sleep 0.05
done
[[ -n $PORT ]] || die "http.server did not start: $(cat "$T/http.log")"
BASE="http://127.0.0.1:$PORT"
log "serving $OUTDIR at $BASE"

# --- every listed file over HTTP, and the .sha256 companions -----------------------------------
"$PYTHON" - "$OUTDIR" "$BASE" <<'EOF'
import hashlib, json, os, sys, urllib.parse, urllib.request
outdir, base = sys.argv[1:]
doc = json.load(open(os.path.join(outdir, "FIXTURES.json")))
by_path = {f["path"]: f for f in doc["files"]}
for f in doc["files"]:
    url = base + "/" + urllib.parse.quote(f["path"])
    data = urllib.request.urlopen(url).read()
    if hashlib.sha256(data).hexdigest() != f["sha256"] or len(data) != f["size"]:
        sys.exit(f"{url}: content differs from FIXTURES.json")
    if f["path"].endswith(".sha256"):
        target = by_path[f["path"][: -len(".sha256")]]
        words = data.decode().split()
        if words[0] != target["sha256"] or (len(words) > 1 and words[1] != os.path.basename(target["path"])):
            sys.exit(f"{f['path']}: does not publish the sum of {target['path']}")
print(f"verify-fixtures: {len(doc['files'])} files fetched over HTTP match FIXTURES.json and their .sha256", file=sys.stderr)
EOF

# --- apt ------------------------------------------------------------------------------------------
expect_output() { # expect_output FILE LINE
    local got
    got=$(sh "$1")
    [[ $got == "$2" ]] || die "$1 printed '$got', expected '$2'"
}

for rel in $(jq -r '.apt[] | .path' "$OUTDIR/FIXTURES.json"); do
    minor=$(basename "$(dirname "$rel")")
    A="$T/apt-$minor"
    mkdir -p "$A/etc" "$A/state/lists/partial" "$A/cache/archives/partial" "$A/get"
    : >"$A/status"
    "$PYTHON" -c 'import sys, urllib.request; open(sys.argv[2], "wb").write(urllib.request.urlopen(sys.argv[1]).read())' \
        "$BASE/${rel}Release.key" "$A/kubernetes.asc"
    echo "deb [signed-by=$A/kubernetes.asc] $BASE/$rel /" >"$A/etc/sources.list"
    APT=(-o Dir::Etc::sourcelist="$A/etc/sources.list" -o Dir::Etc::sourceparts=/nonexistent
        -o Dir::State="$A/state" -o Dir::State::status="$A/status" -o Dir::Cache="$A/cache"
        -o Debug::NoLocking=1 -o Acquire::Languages=none -o APT::Architecture=amd64
        -o APT::Architectures::=amd64 -o APT::Architectures::=arm64)
    log "apt $minor: update"
    apt-get "${APT[@]}" --error-on=any update >"$A/update.log" 2>&1 || { cat "$A/update.log" >&2; die "apt-get update for $minor"; }
    ! grep -E '^(W|E):' "$A/update.log" || die "apt-get update for $minor warned"
    apt-cache "${APT[@]}" policy kubelet kubeadm kubectl cri-tools kubernetes-cni >"$A/policy.log"
    grep -A2 '^kubelet:' "$A/policy.log" >&2
    for arch in amd64 arm64; do
        apt-get "${APT[@]}" -s install "kubelet:$arch" "kubeadm:$arch" "kubectl:$arch" >"$A/sim-$arch.log" \
            || { cat "$A/sim-$arch.log" >&2; die "simulated install for $minor/$arch"; }
        [[ $(grep -c '^Inst ' "$A/sim-$arch.log") == 5 ]] || { cat "$A/sim-$arch.log" >&2; die "expected 5 packages for $minor/$arch"; }
    done
    mapfile -t pkgs < <(awk '/^Package:/ { p = $2 } /^Architecture:/ { print p ":" $2 }' "$OUTDIR/${rel}Packages" | sort -u)
    chown _apt "$A/get" 2>/dev/null || true
    (cd "$A/get" && apt-get "${APT[@]}" -qq download "${pkgs[@]}") || die "apt-get download for $minor"
    log "apt $minor: downloaded and hash-checked ${#pkgs[@]} packages: ${pkgs[*]}"
    for deb in "$A/get"/*.deb; do
        dpkg-deb -x "$deb" "$A/root"
        [[ $(dpkg-deb -f "$deb" Description) == *"kib TEST FIXTURE"* ]] || die "$deb does not say it is a fixture"
    done
    kubelet=$(printf '%s\n' "$A/get"/kubelet_*_amd64.deb | sort -V | tail -n1)
    dpkg-deb -x "$kubelet" "$A/kubelet"
    v=$(dpkg-deb -f "$kubelet" Version)
    expect_output "$A/kubelet/usr/bin/kubelet" "Kubernetes v${v%-1.1} (kib test fixture)"
    [[ -f $A/root/lib/systemd/system/kubelet.service && -f $A/root/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf ]] \
        || die "unit files missing in $minor packages"
    [[ -x $A/root/opt/cni/bin/bridge && -x $A/root/opt/cni/bin/loopback && -x $A/root/usr/bin/crictl && -x $A/root/usr/bin/kubectl ]] \
        || die "programs missing in $minor packages"
done

# --- tarballs -------------------------------------------------------------------------------------
for tgz in "$OUTDIR"/github/*/*/releases/download/*/*.t*gz; do
    d="$T/x/$(basename "$tgz")"
    mkdir -p "$d"
    tar -C "$d" -xzf "$tgz"
    case $tgz in
        */crictl-*) [[ $(tar -tzf "$tgz") == crictl ]] || die "$tgz: expected only crictl"
                    [[ $(sh "$d/crictl") == *"kib test fixture"* ]] || die "$tgz: crictl" ;;
        */cni-plugins-*) [[ $(tar -tzf "$tgz" | tr '\n' ' ') == "./ ./bridge ./host-local ./loopback ./portmap " ]] || die "$tgz: entries"
                         for p in bridge host-local loopback portmap; do [[ $(sh "$d/$p") == *"kib test fixture"* ]] || die "$tgz: $p"; done ;;
    esac
done
log "tarballs: entries and scripts as expected"

# --- images -------------------------------------------------------------------------------------
mapfile -t archives < <(jq -r '.images[] | .path' "$OUTDIR/FIXTURES.json")
for a in "${archives[@]}"; do
    label=$(skopeo inspect --config "docker-archive:$OUTDIR/$a" | jq -r '.config.Labels["org.kib.fixture"]')
    [[ $label == true ]] || die "$a lacks the label org.kib.fixture=true"
done
log "images: ${#archives[@]} archives carry org.kib.fixture=true"

if [[ ${SKIP_CONTAINERD:-0} == 1 ]]; then
    log "SKIP_CONTAINERD=1: not importing into containerd"
else
    C="$T/ctrd"
    mkdir -p "$C"
    cat >"$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$C/containerd.sock"
[ttrpc]
  address = "$C/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
    containerd --config "$C/config.toml" >"$C/log" 2>&1 &
    CTRD_PID=$!
    CTR=(ctr --address "$C/containerd.sock" -n k8s.io)
    for _ in $(seq 100); do
        "${CTR[@]}" version >/dev/null 2>&1 && break
        kill -0 "$CTRD_PID" 2>/dev/null || { cat "$C/log" >&2; die "containerd exited"; }
        sleep 0.1
    done
    log "containerd $("${CTR[@]}" version | awk '/Server:/ { s = 1 } s && /Version:/ { print $2; exit }') running (pid $CTRD_PID)"
    for a in "${archives[@]}"; do
        "${CTR[@]}" images import "$OUTDIR/$a" >&2 || die "ctr images import $a"
    done
    "${CTR[@]}" images ls
    listed=$("${CTR[@]}" images ls -q)
    for ref in $(jq -r '.images[] | .ref' "$OUTDIR/FIXTURES.json"); do
        grep -qxF "$ref" <<<"$listed" || die "$ref not in containerd after import"
    done
    log "containerd: all ${#archives[@]} images imported under their names"
    kill "$CTRD_PID"
    wait "$CTRD_PID" || true
    CTRD_PID=
fi

kill "$HTTP_PID"
wait "$HTTP_PID" 2>/dev/null || true
HTTP_PID=
log "all checks passed in $((SECONDS - START)) s"
