//! Foreign architectures: kib's arm64 test fixture (testdata/arm64/make-image.sh, env
//! KIB_BASE_IMAGE_ARM64: a Debian 12 arm64 minbase tree plus systemd and ca-certificates on a
//! GPT disk, not a bootable image) customized on this amd64 host with no VM, its programs run
//! through qemu-user and binfmt_misc. The node manifest's apt, run, systemd and images steps all
//! execute the image's own arm64 programs (apt, dpkg and maintainer scripts, systemctl,
//! containerd and ctr) under emulation.
//!
//! The fixtures are named as such: `kib-fixture-true` is the arm64 image's own /usr/bin/true
//! (a real aarch64 ELF file), served by a local mirror on 127.0.0.1 under a `${arch}` URL, and
//! `kib.example/fixture/true-arm64:1` is a one-layer arm64 docker-archive holding it, made here
//! with umoci and skopeo.
//!
//! These tests change the host's binfmt_misc handlers (they disable a host handler, or register
//! a stand-in one) and always put them back through Drop guards; they take a lock so that they
//! never run at the same time, nor beside another binary's test that runs arm64 programs.

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::*;
use testserver::MirrorServer;

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";
const FIXTURE_HOST: &str = "https://downloads.kib.example";

static BINFMT_LOCK: Mutex<()> = Mutex::new(());

/// This binary's lock, then the one across test binaries ([`common::binfmt_lock`]).
fn lock() -> (std::sync::MutexGuard<'static, ()>, BinfmtLock) {
    (BINFMT_LOCK.lock().unwrap_or_else(|e| e.into_inner()), binfmt_lock(true))
}

/// The arm64 test fixture that `testdata/arm64/make-image.sh` builds and caches (any arm64
/// Debian disk image with systemd will do, such as `scripts/make-base-image.sh --arch arm64`'s
/// cloud image).
fn arm64_image() -> PathBuf {
    let p = std::env::var_os("KIB_BASE_IMAGE_ARM64")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kib/fixtures/arm64/kib-fixture-debian-12-minbase-arm64.raw"));
    assert!(p.exists(), "arm64 test fixture {} missing: run testdata/arm64/make-image.sh (scripts/test.sh does)", p.display());
    p
}

/// Runs `script` with binfmt_misc mounted, in a mount namespace of its own: the host's mount
/// table is never changed by the test's own look at binfmt_misc.
fn binfmt_sh(script: &str) -> String {
    let full = format!("[ -e {BINFMT}/register ] || mount -t binfmt_misc binfmt_misc {BINFMT}\n{script}");
    let out = Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-ec", &full]).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every binfmt_misc handler with its full listing (enabled, interpreter, flags, magic).
fn binfmt_snapshot() -> BTreeMap<String, String> {
    let text = binfmt_sh(&format!("cd {BINFMT}; for f in *; do [ \"$f\" = register ] || printf '\\n== %s\\n%s' \"$f\" \"$(cat \"$f\")\"; done"));
    text.split("\n== ").filter_map(|e| e.split_once('\n')).map(|(name, body)| (name.to_string(), body.to_string())).collect()
}

/// The enabled handlers that would run an aarch64 ELF file, with their flags.
fn aarch64_handlers(snap: &BTreeMap<String, String>) -> Vec<(String, kib::phase1::binfmt::Handler)> {
    let header = elf_header_aarch64();
    snap.iter()
        .filter_map(|(n, body)| kib::phase1::binfmt::Handler::parse(n, body).map(|h| (n.clone(), h)))
        .filter(|(_, h)| h.enabled && h.matches(&header))
        .collect()
}

fn elf_header_aarch64() -> Vec<u8> {
    let mut h = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00\xb7\x00".to_vec();
    h.resize(64, 0);
    h
}

/// Mount points (with their types) this process sees.
fn mount_snapshot() -> BTreeSet<(PathBuf, String)> {
    kib::mounts::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()).into_iter().map(|m| (m.mount_point, m.fstype)).collect()
}

/// Mounts that appeared since `before`. Other tests running on this machine mount in their own
/// temporary folders; those are not this test's.
fn new_mounts(before: &BTreeSet<(PathBuf, String)>, tmp: &Path) -> Vec<(PathBuf, String)> {
    let others = std::env::temp_dir();
    mount_snapshot().difference(before).filter(|(mp, fstype)| fstype == "binfmt_misc" || !mp.starts_with(&others) || mp.starts_with(tmp)).cloned().collect()
}

/// Keeps a mount of binfmt_misc alive, in a mount namespace of its own, for the test's
/// duration. The kernel drops every handler when the last binfmt_misc mount goes; a host with
/// binfmt_misc mounted (systemd's automount) keeps handlers after the process that registered
/// them exits. Holding a mount makes this host behave like that, so the test checks that kib
/// removes what it registered instead of relying on the kernel to, and handlers the test
/// registers survive between its commands.
struct BinfmtHolder(std::process::Child);

impl BinfmtHolder {
    fn start() -> BinfmtHolder {
        use std::io::BufRead;
        let script = format!("[ -e {BINFMT}/register ] || mount -t binfmt_misc binfmt_misc {BINFMT} || exit 1\necho ready\nexec sleep 3600");
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let holder = BinfmtHolder(child);
        assert_eq!(line.trim(), "ready", "could not mount binfmt_misc");
        holder
    }
}

impl Drop for BinfmtHolder {
    fn drop(&mut self) {
        // Our own child (unshare exec'd sh, which exec'd sleep: one pid).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts binfmt_misc handlers back as they were: re-enables the ones a test disabled, removes
/// the ones it registered. Runs on Drop, so a failing assertion restores the host too.
#[derive(Default)]
struct HostBinfmt {
    disabled: Vec<String>,
    registered: Vec<String>,
}

impl HostBinfmt {
    fn disable(&mut self, name: &str) {
        self.disabled.push(name.to_string());
        binfmt_sh(&format!("echo 0 > {BINFMT}/{name}"));
    }

    fn register(&mut self, name: &str, line: &str) {
        self.registered.push(name.to_string());
        binfmt_sh(&format!("printf '%s' '{line}' > {BINFMT}/register"));
    }
}

impl Drop for HostBinfmt {
    fn drop(&mut self) {
        let mut script = String::new();
        for n in &self.registered {
            script.push_str(&format!("[ ! -e {BINFMT}/{n} ] || echo -1 > {BINFMT}/{n}\n"));
        }
        for n in &self.disabled {
            script.push_str(&format!("[ ! -e {BINFMT}/{n} ] || echo 1 > {BINFMT}/{n}\n"));
        }
        if !script.is_empty() {
            let _ = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", &format!("[ -e {BINFMT}/register ] || mount -t binfmt_misc binfmt_misc {BINFMT}\n{script}")])
                .status();
        }
    }
}

/// The registration line Debian's qemu-user-static would use for aarch64 (its
/// /usr/lib/binfmt.d file, magic and mask from /usr/share/binfmts), under `name`, with the F
/// flag and the static interpreter.
fn debian_like_registration(name: &str) -> String {
    let def = kib::phase1::binfmt::definition("aarch64").unwrap();
    kib::phase1::binfmt::registration(name, &def, Path::new("/usr/bin/qemu-aarch64-static"), "F")
}

/// Copies the arm64 image's /usr/bin/true (a real aarch64 ELF executable) out as a fixture.
fn aarch64_true(tmp: &Path) -> Vec<u8> {
    let m = Mounted::partition(&arm64_image(), 1, &tmp.join("arm64-root"));
    let bytes = std::fs::read(m.path("/usr/bin/true")).unwrap();
    drop(m);
    assert_eq!(kib::phase0::facts::elf_arch(&bytes), Some("arm64"), "the arm64 image's /usr/bin/true is not an aarch64 ELF file");
    bytes
}

/// A one-layer arm64 docker-archive holding `/usr/local/bin/true` (the fixture), tagged REF.
fn arm64_image_archive(dir: &Path, true_path: &Path, out: &Path, reference: &str) {
    let script = r#"set -eu
w=$1; src=$2; out=$3; ref=$4
umoci init --layout "$w/oci"
umoci new --image "$w/oci:fixture"
umoci unpack --image "$w/oci:fixture" "$w/bundle" >/dev/null
mkdir -p "$w/bundle/rootfs/usr/local/bin"
cp "$src" "$w/bundle/rootfs/usr/local/bin/true"
umoci repack --image "$w/oci:fixture" "$w/bundle"
umoci config --image "$w/oci:fixture" --os linux --architecture arm64 --config.entrypoint /usr/local/bin/true \
    --config.label org.kib.fixture=true --config.label "org.opencontainers.image.description=kib TEST FIXTURE"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$w/policy.json"
mkdir -p "$(dirname "$out")"
skopeo --policy "$w/policy.json" copy -q "oci:$w/oci:fixture" "docker-archive:$out:$ref"
"#;
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("bash").args(["-c", script, "make-image"]).arg(dir).arg(true_path).arg(out).arg(reference).status().unwrap();
    assert!(st.success(), "building the arm64 image fixture with umoci and skopeo failed");
}

/// A manifest with everything manifests/k8s-node-debian.yaml has (its includes, variables and
/// steps), plus `extra` steps, written below the repository's target folder so that its
/// includes (`phases/...`) resolve from there, as they do from manifests/.
fn node_manifest_plus(extra: yaml_serde::Value, name: &str) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(repo().join("manifests/k8s-node-debian.yaml")).unwrap();
    let mut m: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
    m["metadata"]["name"] = yaml_serde::Value::String(name.into());
    let steps = m["steps"].as_sequence_mut().expect("the node manifest has steps");
    steps.extend(extra.as_sequence().expect("extra steps are a list").iter().cloned());
    m["output"] = yaml_serde::from_str("{formats: [raw]}").unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml_serde::to_string(&m).unwrap()).unwrap();
    (dir, path)
}

fn dpkg_packages(root: &Mounted) -> Vec<kib::pkg::Package> {
    kib::pkg::dpkg::parse_status(&root.read("/var/lib/dpkg/status")).unwrap()
}

#[test]
fn arm64_node_image_on_an_amd64_host() {
    if common::skip_unless_root("arm64_node_image_on_an_amd64_host") {
        return;
    }
    let _l = lock();
    let _holder = BinfmtHolder::start();
    let tmp = tempfile::tempdir().unwrap();
    let binfmt_before = binfmt_snapshot();
    let mounts_before = mount_snapshot();

    // The fixtures: the arm64 image's own `true` under a ${arch} URL, and an arm64 image archive.
    let www = tmp.path().join("www");
    let true_arm64 = aarch64_true(tmp.path());
    let fixture = www.join("fixture/linux/arm64/kib-fixture-true");
    std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
    std::fs::write(&fixture, &true_arm64).unwrap();
    let true_sum = kib::hash::sha256_bytes(&true_arm64);
    let archive = www.join("fixture/images/arm64/true.tar");
    arm64_image_archive(&tmp.path().join("oci"), &fixture, &archive, "kib.example/fixture/true-arm64:1");
    let archive_sum = sha256(&archive);
    let server = MirrorServer::start(&www);

    let extra: yaml_serde::Value = yaml_serde::from_str(&format!(
        r#"
- name: aarch64 fixture binary
  download:
    url: "{FIXTURE_HOST}/fixture/linux/${{arch}}/kib-fixture-true"
    sha256: {{arm64: "{true_sum}"}}
    path: /usr/local/bin/kib-fixture-true
- name: run the downloaded binary and report the architecture
  run:
    script: |
      /usr/local/bin/kib-fixture-true
      {{ uname -m; dpkg --print-architecture; }} > /etc/kib-fixture-arch
- name: arm64 fixture image
  images:
    namespace: k8s.io
    archives:
      - url: "{FIXTURE_HOST}/fixture/images/${{arch}}/true.tar"
        sha256: {{arm64: "{archive_sum}"}}
"#
    ))
    .unwrap();
    let (_mdir, manifest) = node_manifest_plus(extra, "k8s-node-debian-arm64-test");
    let started = std::time::Instant::now();
    let (ok, err) = customize_in(&arm64_image(), &manifest, tmp.path(), &["--mirror", &format!("{FIXTURE_HOST}={}", server.url())]);
    eprintln!("arm64 customize took {:.1}s", started.elapsed().as_secs_f64());
    assert!(ok, "kib failed:\n{err}");

    // Nothing left: no handler, no mount, no loop device, no process, no work directory.
    assert_nothing_left(&tmp.path().join("work"));
    let inside = processes_rooted_in(tmp.path());
    assert!(inside.is_empty(), "processes from the image still run: {inside:?}");
    assert_eq!(binfmt_snapshot(), binfmt_before, "binfmt_misc handlers differ from before the build");
    let new = new_mounts(&mounts_before, tmp.path());
    assert!(new.is_empty(), "mounts left behind: {new:?}");

    // The BOM: the image's architecture, and the handler it ran through.
    let out = tmp.path().join("out");
    let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
    assert_eq!(bom["architecture"], "arm64");
    let emu = &bom["emulation"];
    assert_eq!(emu["image_architecture"], "arm64", "{emu}");
    assert_eq!(emu["host_architecture"], kib::phase0::facts::host_arch());
    let handler = emu["handler"].as_str().unwrap();
    let registered = emu["registered_by_kib"].as_bool().unwrap();
    if registered {
        assert!(handler.starts_with("kib-qemu-aarch64-"), "{emu}");
        assert_eq!(emu["interpreter"], "/usr/bin/qemu-aarch64-static");
        assert!(!binfmt_before.contains_key(handler));
    } else {
        assert!(binfmt_before.contains_key(handler), "kib says it used the host's {handler}, which was not registered: {emu}");
    }
    assert!(emu["flags"].as_str().unwrap().contains('F'), "{emu}");
    let bom_pkgs = bom["packages"].as_array().unwrap();
    let containerd = bom_pkgs.iter().find(|p| p["name"] == "containerd").expect("containerd in the BOM");
    assert_eq!(containerd["architecture"], "arm64");
    let loaded: Vec<&str> = bom["steps"].as_array().unwrap().iter().flat_map(|s| s["images"].as_array().into_iter().flatten()).filter_map(|i| i["name"].as_str()).collect();
    assert!(loaded.contains(&"kib.example/fixture/true-arm64:1"), "images loaded: {loaded:?}");

    // The image itself.
    let root = Mounted::partition(&out.join("k8s-node-debian-arm64-test.raw"), 1, &tmp.path().join("result"));
    let pkgs = dpkg_packages(&root);
    for name in ["containerd", "runc", "containernetworking-plugins", "conntrack", "socat", "jq"] {
        let p = pkgs.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name} is not installed"));
        assert_eq!(p.architecture, "arm64", "{name}");
    }
    let foreign: Vec<String> = pkgs.iter().filter(|p| p.architecture != "arm64" && p.architecture != "all").map(|p| format!("{}:{}", p.name, p.architecture)).collect();
    assert!(foreign.is_empty(), "packages of another architecture: {foreign:?}");
    let downloaded = std::fs::read(root.path("/usr/local/bin/kib-fixture-true")).unwrap();
    assert_eq!(kib::phase0::facts::elf_arch(&downloaded), Some("arm64"));
    assert_eq!(kib::hash::sha256_bytes(&downloaded), true_sum);
    assert_eq!(root.read("/etc/kib-fixture-arch"), "aarch64\narm64\n", "uname -m and dpkg in the chroot");
    // The `systemd` steps ran the image's arm64 systemctl: apt's timers masked, containerd enabled.
    for unit in ["apt-daily.timer", "apt-daily-upgrade.timer", "unattended-upgrades.service"] {
        let link = std::fs::read_link(root.path(&format!("/etc/systemd/system/{unit}"))).unwrap_or_else(|e| panic!("{unit} is not masked: {e}"));
        assert_eq!(link, Path::new("/dev/null"), "{unit}");
    }
    let wants = std::fs::read_link(root.path("/etc/systemd/system/multi-user.target.wants/containerd.service")).expect("containerd.service is not enabled");
    assert!(wants.ends_with("containerd.service"), "{}", wants.display());
    assert!(server.requests.lock().unwrap().iter().any(|r| r.contains("/fixture/linux/arm64/kib-fixture-true")));
    // containerd's store holds the image (its content store is in the image).
    assert!(root.path("/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256").is_dir());
}

/// A small arm64 build, for the two ways to the handler: kib's own (the host's disabled) and
/// the host's; then `kib cleanup` removing a handler a killed run left.
#[test]
fn binfmt_handler_paths_and_cleanup() {
    if common::skip_unless_root("binfmt_handler_paths_and_cleanup") {
        return;
    }
    let _l = lock();
    let holder = BinfmtHolder::start();
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("uname.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: uname}\nsteps:\n  - name: uname\n    run: {script: \"uname -m > /etc/kib-uname\"}\n\
         output: {formats: [raw]}\nsysprep: {enabled: false}\n",
    )
    .unwrap();
    let mut host = HostBinfmt::default();
    let build = |host_desc: &str| -> serde_json::Value {
        let _ = std::fs::remove_dir_all(tmp.path().join("out"));
        let (ok, err) = customize_in(&arm64_image(), &manifest, tmp.path(), &[]);
        assert!(ok, "kib failed ({host_desc}):\n{err}");
        assert_nothing_left(&tmp.path().join("work"));
        let root = Mounted::partition(&tmp.path().join("out/uname.raw"), 1, &tmp.path().join("result"));
        assert_eq!(root.read("/etc/kib-uname"), "aarch64\n");
        drop(root);
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/bom.json")).unwrap()).unwrap()
    };

    // 1. No usable host handler: disable every enabled aarch64 handler of the host.
    for (name, _) in aarch64_handlers(&binfmt_snapshot()) {
        host.disable(&name);
    }
    let before = binfmt_snapshot();
    assert!(aarch64_handlers(&before).is_empty());
    let mounts_before = mount_snapshot();
    let bom = build("no host handler");
    let emu = &bom["emulation"];
    assert_eq!(emu["registered_by_kib"], true, "{emu}");
    assert!(emu["handler"].as_str().unwrap().starts_with("kib-qemu-aarch64-"), "{emu}");
    assert_eq!(emu["interpreter"], "/usr/bin/qemu-aarch64-static");
    assert_eq!(emu["flags"], "F");
    assert_eq!(binfmt_snapshot(), before, "kib left its handler registered");
    assert!(new_mounts(&mounts_before, tmp.path()).is_empty());

    // 2. A host handler with the F flag (as Debian's qemu-user-static registers): kib uses it
    //    and leaves it registered.
    let stand_in = "kibtest-qemu-aarch64";
    host.register(stand_in, &debian_like_registration(stand_in));
    let before = binfmt_snapshot();
    assert!(before.contains_key(stand_in));
    let bom = build("host handler");
    let emu = &bom["emulation"];
    assert_eq!(emu["registered_by_kib"], false, "{emu}");
    assert_eq!(emu["handler"], stand_in);
    assert_eq!(emu["interpreter"], "/usr/bin/qemu-aarch64-static");
    assert_eq!(binfmt_snapshot(), before, "kib changed the host's handlers");

    // 3. A handler a SIGKILLed run left (its pid is no running kib): `kib cleanup` removes it,
    //    and only it.
    let child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    let _ = child.wait_with_output();
    let stale = format!("kib-qemu-aarch64-{dead}");
    host.register(&stale, &debian_like_registration(&stale));
    assert!(binfmt_snapshot().contains_key(&stale));
    let out = kib().args(["cleanup", "--work-dir"]).arg(tmp.path().join("work")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("removed binfmt_misc handler {stale}")), "{stdout}");
    let after = binfmt_snapshot();
    assert!(!after.contains_key(&stale));
    assert!(after.contains_key(stand_in), "kib cleanup removed a handler that is not kib's");
    drop(host);
    let restored = binfmt_snapshot();
    assert!(!restored.contains_key(stand_in));
    drop(holder);
}

/// Runs `qemu_binfmt_find aarch64 ROOT` from scripts/lib/qemu-binfmt.sh (what the image
/// scripts use to find qemu-user) and returns its findings, or its error.
fn qemu_binfmt_find(root: &Path) -> Result<BTreeMap<String, String>, String> {
    let script = r#"log() { :; }; die() { echo "$*" >&2; exit 1; }
source "$1"
if qemu_binfmt_find aarch64 "$2"; then
  printf 'source=%s\noffset=%s\nmagic=%s\nmask=%s\ninterp=%s\n' "$QEMU_BINFMT_SOURCE" "$QEMU_BINFMT_OFFSET" "$QEMU_BINFMT_MAGIC" "$QEMU_BINFMT_MASK" "$QEMU_BINFMT_INTERP"
else
  echo "$QEMU_BINFMT_ERROR" >&2; exit 1
fi"#;
    let out = Command::new("bash").args(["-c", script, "find"]).arg(repo().join("scripts/lib/qemu-binfmt.sh")).arg(root).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// The image scripts accept both layouts of Debian's qemu-user packages (shared/DESIGN.md §6):
/// Debian 12's qemu-user-static 7.2, and qemu 10 (bookworm-backports, Debian 13), which has no
/// /usr/share/binfmts and whose binfmt.d definition names a `*-binfmt-P` wrapper of a static
/// /usr/bin/qemu-aarch64. The trees are made here with the files and symlinks those packages
/// hold (the conf line is qemu-user 10.0.2's, verbatim); the interpreters point at this host's
/// static qemu-aarch64.
#[test]
fn image_scripts_find_qemu_user_in_both_layouts() {
    use std::os::unix::fs::symlink;
    let host_qemu = Path::new("/usr/bin/qemu-aarch64-static");
    assert!(host_qemu.is_file(), "{} missing: scripts/deps.sh installs qemu-user-static", host_qemu.display());
    let tmp = tempfile::tempdir().unwrap();
    let expected = kib::phase1::binfmt::definition("aarch64").unwrap();
    let esc = |b: &[u8]| b.iter().map(|x| format!("\\x{x:02x}")).collect::<String>();
    let check = |found: &BTreeMap<String, String>, what: &str| {
        assert_eq!(found["offset"], "0", "{what}");
        assert_eq!(found["magic"], esc(&expected.magic), "{what}");
        assert_eq!(found["mask"], esc(&expected.mask), "{what}");
        assert!(!found["interp"].ends_with("-binfmt-P"), "{what}: a -binfmt-P name would make qemu expect the P flag's arguments: {found:?}");
    };

    // qemu 10: qemu-user (static /usr/bin/qemu-aarch64, its binfmt.d file, the -binfmt-P
    // symlink) and qemu-user-binfmt (/usr/lib/binfmt.d symlink); no qemu-aarch64-static.
    let new = tmp.path().join("qemu10");
    for d in ["usr/bin", "usr/libexec/qemu-binfmt", "usr/share/qemu/binfmt.d", "usr/lib/binfmt.d"] {
        std::fs::create_dir_all(new.join(d)).unwrap();
    }
    std::fs::write(
        new.join("usr/share/qemu/binfmt.d/qemu-aarch64.conf"),
        ":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\
         \\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF\n",
    )
    .unwrap();
    symlink("../../share/qemu/binfmt.d/qemu-aarch64.conf", new.join("usr/lib/binfmt.d/qemu-aarch64.conf")).unwrap();
    symlink(host_qemu, new.join("usr/bin/qemu-aarch64")).unwrap();
    symlink("../../bin/qemu-aarch64", new.join("usr/libexec/qemu-binfmt/aarch64-binfmt-P")).unwrap();
    let found = qemu_binfmt_find(&new).unwrap();
    check(&found, "qemu 10");
    assert_eq!(Path::new(&found["source"]), new.join("usr/lib/binfmt.d/qemu-aarch64.conf"));
    assert_eq!(Path::new(&found["interp"]), host_qemu.canonicalize().unwrap());
    // qemu-user alone (no qemu-user-binfmt): its own binfmt.d file.
    std::fs::remove_file(new.join("usr/lib/binfmt.d/qemu-aarch64.conf")).unwrap();
    let found = qemu_binfmt_find(&new).unwrap();
    check(&found, "qemu-user without qemu-user-binfmt");
    assert_eq!(Path::new(&found["source"]), new.join("usr/share/qemu/binfmt.d/qemu-aarch64.conf"));

    // Debian 12's qemu-user-static as binfmt-support sees it: /usr/share/binfmts only.
    let old = tmp.path().join("qemu7");
    std::fs::create_dir_all(old.join("usr/share/binfmts")).unwrap();
    std::fs::create_dir_all(old.join("usr/bin")).unwrap();
    std::fs::write(
        old.join("usr/share/binfmts/qemu-aarch64"),
        "package qemu-user-static\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
         magic \\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00\noffset 0\n\
         mask \\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff\n\
         credentials no\nfix_binary yes\npreserve yes\n",
    )
    .unwrap();
    symlink(host_qemu, old.join("usr/bin/qemu-aarch64-static")).unwrap();
    let found = qemu_binfmt_find(&old).unwrap();
    check(&found, "qemu-user-static 7.2");
    assert_eq!(Path::new(&found["source"]), old.join("usr/share/binfmts/qemu-aarch64"));

    // A dynamically linked qemu-aarch64 (Debian 12's qemu-user) cannot run in a chroot: refused.
    let dynamic = tmp.path().join("dynamic");
    std::fs::create_dir_all(dynamic.join("usr/bin")).unwrap();
    std::fs::create_dir_all(dynamic.join("usr/share/binfmts")).unwrap();
    std::fs::copy(old.join("usr/share/binfmts/qemu-aarch64"), dynamic.join("usr/share/binfmts/qemu-aarch64")).unwrap();
    std::fs::copy("/usr/bin/env", dynamic.join("usr/bin/qemu-aarch64")).unwrap();
    let err = qemu_binfmt_find(&dynamic).unwrap_err();
    assert!(err.contains("no statically linked qemu-aarch64 interpreter"), "{err}");
    // Nothing at all.
    let err = qemu_binfmt_find(&tmp.path().join("empty")).unwrap_err();
    assert!(err.contains("no binfmt definition for qemu-aarch64"), "{err}");
}
