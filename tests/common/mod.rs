//! Helpers shared by the integration tests. These tests run as root: they attach loop devices
//! and mount filesystems, and they clean up after themselves through Drop guards.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A lock on the host's binfmt_misc handlers across test binaries, which the runner starts two at
/// a time: an `flock` on `/run/kib-tests-binfmt.lock`, exclusive for tests/arm64.rs while it
/// disables or registers handlers, shared for tests that only run foreign programs through them
/// (tests/guestfs.rs's arm64 shell). Released on drop.
pub struct BinfmtLock(std::fs::File);

pub fn binfmt_lock(exclusive: bool) -> BinfmtLock {
    use rustix::fs::{flock, FlockOperation};
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/run/kib-tests-binfmt.lock").unwrap();
    flock(&f, if exclusive { FlockOperation::LockExclusive } else { FlockOperation::LockShared }).unwrap();
    BinfmtLock(f)
}

/// Whether the calling test must be skipped because it does not run as root (it attaches loop
/// devices and mounts filesystems). Prints why, so that a normal user's `cargo test` names
/// every test it skipped.
pub fn skip_unless_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return false;
    }
    // Written to the process's stderr itself, not through eprintln!, which the test harness
    // captures and shows only for failing tests: a normal user's `cargo test` lists each skip.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs root (it attaches loop devices and mounts filesystems); run the suite as root, as scripts/test.sh does");
    true
}

/// The Debian 12 base image that `scripts/make-base-image.sh` builds and caches.
pub fn base_image() -> PathBuf {
    let p = std::env::var_os("KIB_BASE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kib/base/debian-12-genericcloud-amd64.raw"));
    assert!(p.exists(), "base image {} missing: run scripts/make-base-image.sh (scripts/test.sh does)", p.display());
    p
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kib() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("kib").unwrap();
    c.current_dir(repo());
    c
}

pub fn sha256(p: &Path) -> String {
    kib::hash::sha256_file(p).unwrap()
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loop devices and mounts that mention `needle` (a test's own work or temp dir).
pub fn leftovers(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().to_string();
    let loops = sh(Command::new("losetup").arg("-a"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    loops.lines().chain(mounts.lines()).filter(|l| l.contains(&needle)).map(str::to_string).collect()
}

/// Asserts that nothing of a run using `work` is left: no loop device backed by a file there,
/// no mount, and no `run-*` work directory.
pub fn assert_nothing_left(work: &Path) {
    let l = leftovers(work);
    assert!(l.is_empty(), "left behind: {l:#?}");
    if work.exists() {
        let runs: Vec<_> = std::fs::read_dir(work).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(runs.is_empty(), "work directories left in {}: {runs:?}", work.display());
    }
}

/// A partition of a raw disk image mounted read-only in the test's temp dir; unmounted on drop,
/// which then waits (up to 10 s) for the kernel to release the autoclear loop device, as it does
/// asynchronously: a test that checks for leftover loop devices right after would see it.
pub struct Mounted {
    pub dir: PathBuf,
    disk: Option<PathBuf>,
}

impl Mounted {
    /// Mounts partition `number` of the raw image `disk` at `dir`, read-only, without journal
    /// replay, through a read-only autoclear loop device (`mount -o loop`).
    pub fn partition(disk: &Path, number: u32, dir: &Path) -> Mounted {
        let json: serde_json::Value = serde_json::from_str(&sh(Command::new("sfdisk").arg("--json").arg(disk))).unwrap();
        let parts = json["partitiontable"]["partitions"].as_array().unwrap();
        let suffix = number.to_string();
        let p = parts.iter().find(|p| p["node"].as_str().unwrap().ends_with(&suffix)).expect("partition listed");
        let start = p["start"].as_u64().unwrap() * 512;
        let size = p["size"].as_u64().unwrap() * 512;
        std::fs::create_dir_all(dir).unwrap();
        sh(Command::new("mount")
            .args(["-t", "ext4", "-o", &format!("ro,noload,loop,offset={start},sizelimit={size}")])
            .arg(disk)
            .arg(dir));
        Mounted { dir: dir.to_path_buf(), disk: Some(disk.to_path_buf()) }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    pub fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        if let Some(disk) = &self.disk {
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(10) {
                let out = Command::new("losetup").arg("-j").arg(disk).output();
                if out.map_or(true, |o| o.stdout.is_empty()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Writes a tiny GPT disk image with one ext4 partition holding `files` (image path, content).
/// No OS unless `files` adds an os-release. Made with sfdisk and mkfs.ext4 -d, no mount.
pub fn tiny_image(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    for (p, c) in files {
        let f = tree.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
    std::fs::create_dir_all(&tree).unwrap();
    let disk = dir.join(name);
    std::fs::File::create(&disk).unwrap().set_len(24 << 20).unwrap();
    let mut child = Command::new("sfdisk").arg("--quiet").arg(&disk).stdin(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"label: gpt\nstart=2048, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n").unwrap();
    assert!(child.wait().unwrap().success());
    sh(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "offset=1048576", "-d"]).arg(&tree).arg(&disk).arg("20M"));
    disk
}

/// A `kib customize` command with the output, work and cache folders inside `tmp`
/// (`out`, `work`, `cache`), and `--no-cache`: a test that builds twice in one `tmp` builds
/// twice, and no test pays for snapshots it never uses (tests/incremental.rs tests the build
/// cache with commands of its own).
pub fn customize_cmd(img: &Path, manifest: &Path, tmp: &Path) -> Command {
    customize_cmd_to(img, manifest, tmp, &tmp.join("out"))
}

/// [`customize_cmd`] with the output folder `out` instead of `tmp/out`.
pub fn customize_cmd_to(img: &Path, manifest: &Path, tmp: &Path, out: &Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("kib"));
    c.current_dir(repo())
        .args(["customize", "--disk-image"])
        .arg(img)
        .arg("--manifest")
        .arg(manifest)
        .arg("--output-dir")
        .arg(out)
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .arg("--cache-dir")
        .arg(tmp.join("cache"))
        .arg("--no-cache");
    c
}

/// Runs [`customize_cmd`] plus `extra` arguments. Returns whether it succeeded and its
/// standard error.
pub fn customize_in(img: &Path, manifest: &Path, tmp: &Path, extra: &[&str]) -> (bool, String) {
    let out = customize_cmd(img, manifest, tmp).args(extra).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Processes whose root directory lies under `dir` (chrooted into a test's work folder).
pub fn processes_rooted_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_link(e.path().join("root")).is_ok_and(|r| r.starts_with(dir)))
        .map(|e| std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default().replace('\0', " "))
        .collect()
}

/// An image of the LVM fixtures (testdata/lvm/make-lvm-image.sh, cached in
/// `KIB_LVM_FIXTURE_DIR` or /var/cache/kib/lvm; scripts/test.sh builds the ones the tests use).
pub fn lvm_fixture(file: &str) -> PathBuf {
    let dir = std::env::var_os("KIB_LVM_FIXTURE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/kib/lvm"));
    let p = dir.join(file);
    assert!(p.exists(), "LVM fixture {} missing: run testdata/lvm/make-lvm-image.sh (scripts/test.sh does)", p.display());
    p
}

/// A volume group of a raw image as lvm reports it, read-only, the way kib reads it (its PV
/// partition on a read-only loop device of the test's own, a private LVM_SYSTEM_DIR,
/// `--readonly --devices`): the mapped VG, the PV partition's start in bytes and the pvs rows.
pub fn read_vg(disk: &Path, partition: u32, tmp: &Path) -> (kib::phase0::lvm::VolumeGroup, u64, Vec<kib::phase0::lvm::PvRow>) {
    let json: serde_json::Value = serde_json::from_str(&sh(Command::new("sfdisk").arg("--json").arg(disk))).unwrap();
    let parts = json["partitiontable"]["partitions"].as_array().unwrap();
    let p = parts.iter().find(|p| p["node"].as_str().unwrap().ends_with(&partition.to_string())).expect("partition listed");
    let start = p["start"].as_u64().unwrap() * 512;
    let size = p["size"].as_u64().unwrap() * 512;
    let dev = sh(Command::new("losetup").args(["--find", "--show", "--read-only", "--offset", &start.to_string(), "--sizelimit", &size.to_string()]).arg(disk));
    let dev = dev.trim().to_string();
    let sysdir = kib::phase0::lvmap::private_system_dir(tmp).unwrap();
    let report = |r| {
        let out = kib::phase0::lvmap::lvm_command(&sysdir, &kib::phase0::lvm::report_args(r, &[&dev])).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (pvs, lvs) = (report(kib::phase0::lvm::Report::Pvs), report(kib::phase0::lvm::Report::Lvs));
    sh(Command::new("losetup").arg("-d").arg(&dev));
    let pvs = kib::phase0::lvm::parse_pvs(&pvs).unwrap();
    let segs = kib::phase0::lvm::parse_lvs(&lvs).unwrap();
    let mut vgs = kib::phase0::lvm::map_volume_groups(&pvs, &segs).unwrap();
    assert_eq!(vgs.len(), 1);
    (vgs.remove(0), start, pvs)
}

/// An LV of `disk` mounted read-only (xfs without log recovery) at `dir` through an autoclear
/// loop device at its byte range; unmounted on drop.
pub fn mount_lv(disk: &Path, offset: u64, size: u64, fstype: &str, dir: &Path) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    // nouuid: another test may have mounted a copy of the same xfs (the same UUID) right now.
    let opt = if fstype == "xfs" { "norecovery,nouuid" } else { "noload" };
    sh(Command::new("mount").args(["-t", fstype, "-o", &format!("ro,{opt},loop,offset={offset},sizelimit={size}")]).arg(disk).arg(dir));
    Mounted { dir: dir.to_path_buf(), disk: Some(disk.to_path_buf()) }
}

/// `security.selinux` of a file, without the trailing NUL; empty when it has none.
pub fn selinux_label(p: &Path) -> String {
    let out = Command::new("getfattr").args(["--absolute-names", "--only-values", "-n", "security.selinux"]).arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim_end_matches('\0').to_string()
}

/// What file_contexts `fc` says `path` (an image path) should be labelled.
pub fn selinux_wanted(fc: &Path, path: &str) -> String {
    let out = Command::new("matchpathcon").args(["-n", "-f"]).arg(fc).arg(path).output().unwrap();
    assert!(out.status.success(), "matchpathcon {path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Validates an OVF descriptor against DMTF's OVF envelope schema DSP8023 1.1.1, vendored in
/// testdata/schemas/ovf/ (see its README), with xmllint (Debian libxml2-utils) and no network.
/// Returns xmllint's output on failure.
pub fn validate_ovf(xml: &str) -> Result<(), String> {
    use std::io::Write;
    let schema = repo().join("testdata/schemas/ovf/dsp8023_1.1.1.xsd");
    let mut child = Command::new("xmllint")
        .args(["--noout", "--nonet", "--schema"])
        .arg(&schema)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xmllint (Debian libxml2-utils; scripts/deps.sh installs it)");
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(()) } else { Err(text) }
}

/// Asserts that `kib check --boot --output json` (its `out`) passed every boot check the node
/// manifests promise; on failure shows stderr and the newest 40 lines of the serial `console`
/// log. `t0` is when the boot started (the wall time is printed).
pub fn assert_booted_node(out: &std::process::Output, console: &Path, t0: std::time::Instant) {
    assert_boot_checks(
        out,
        console,
        t0,
        &[
            "boot: report complete",
            "boot: containerd active",
            "boot: kubelet enabled",
            "boot: kubelet not running",
            "boot: swap off",
            "boot: no failed units",
            "boot: machine-id fresh",
            "boot: module br_netfilter loaded",
            "boot: sysctl net.ipv4.ip_forward = 1",
            "boot: image registry.k8s.io/pause:3.9 listed by ctr",
        ],
    );
}

/// Asserts that `kib check --boot --output json` (its `out`) passed, and that each check named in
/// `names` is in its report and passed; prints the boot's wall time since `t0`. On failure it
/// shows the newest 40 lines of the serial console log.
pub fn assert_boot_checks(out: &std::process::Output, console: &Path, t0: std::time::Instant, names: &[&str]) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string(console).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(out.status.success(), "{text}\n{}\nconsole tail (newest first):\n{}", String::from_utf8_lossy(&out.stderr), tail.join("\n"));
    eprintln!("kib check --boot (TCG): {:.0}s", t0.elapsed().as_secs_f64());
    let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let passed = |name: &str| checks.iter().any(|c| c["name"] == name && c["ok"] == true);
    for name in names {
        assert!(passed(name), "{name}: {checks:#?}");
    }
}
