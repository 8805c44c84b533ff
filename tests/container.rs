//! kib inside podman, as root: builds the container image with scripts/make-container-image.sh
//! (the kib under test, cached by content hash) and runs the overhead manifest
//! (testdata/bench/overhead.yaml) on the base image inside `podman run`:
//!
//! - `--privileged` with the container's own /dev, whose loop nodes are deleted first, so that
//!   kib must make the node of the device it gets appear itself (it mounts devtmpfs in its
//!   private mount namespace; see `kib::sys::loopnode::ensure_loop_node`);
//! - `--privileged -v /dev:/dev`;
//! - the least-privilege variant, `--cap-add SYS_ADMIN --device /dev/loop-control
//!   --device-cgroup-rule 'b 7:* rwm'`;
//!
//! and compares each with a build on the host (same files, same packages in bom.json, the same
//! files written by the steps, SHA256SUMS verifying). Also: the variant without
//! `--device /dev/loop-control` fails naming that flag; a container stopped (SIGTERM) and one
//! killed (SIGKILL) in the middle of a step. After every run nothing may be left on the host: no
//! loop device backed by the run's files, no mount, no container.
//!
//! Skips (with a message) when podman is not installed or not running as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

fn ready() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the container tests run as root (rootful podman, loop devices)");
        return false;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!("skipped: podman is not installed (scripts/deps.sh installs it)");
        return false;
    }
    true
}

/// podman with the project's containers.conf unless CONTAINERS_CONF says otherwise.
fn podman() -> Command {
    let mut c = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        c.env("CONTAINERS_CONF", repo().join("scripts/containers.conf"));
    }
    c
}

/// The image, built once per test process from the kib under test.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(repo().join("scripts/make-container-image.sh"))
            .arg("--kib")
            .arg(assert_cmd::cargo::cargo_bin("kib"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "make-container-image.sh failed:\n{stderr}");
        let name = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        assert!(name.starts_with("localhost/kib:"), "{name}");
        eprintln!("container image {name} ready in {:.1?}", started.elapsed());
        name
    })
}

/// A container name unique to this test process, removed (forcibly) on drop, so that a failing
/// test leaves no container either.
struct Named(String);

impl Named {
    fn new(case: &str) -> Named {
        Named(format!("kib-test-{}-{case}", std::process::id()))
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", "--ignore", &self.0]).output();
    }
}

/// A run's own folders: the output folder on the host (mounted at /out) and the work folder
/// inside the container, whose unique name is what the host's `losetup -a` and mountinfo would
/// show of it.
struct Case {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    work_in_container: String,
    name: Named,
}

impl Case {
    fn new(case: &str) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let name = Named::new(case);
        Case { work_in_container: format!("/var/tmp/{}", name.0), _tmp: tmp, out, name }
    }

    /// `podman run --rm --name … FLAGS` with the base image's folder read-only at /base, the
    /// repository's testdata/bench at /m, /var/cache/kib and the output folder at /out, then
    /// `sh -c PRELUDE; exec kib customize --no-cache … overhead.yaml …` (no build cache: each run
    /// must attach and mount, and make the same bytes as the host build).
    fn run(&self, flags: &[&str], prelude: &str, manifest: &str) -> Output {
        let base = base_image();
        let started = Instant::now();
        let script = format!(
            "{prelude}\nexec kib customize --no-cache --disk-image /base/{} --manifest {manifest} -o /out --work-dir {}",
            base.file_name().unwrap().to_string_lossy(),
            self.work_in_container
        );
        let out = podman()
            .args(["run", "--rm", "--name", &self.name.0, "-e", "KIB_LOG=info,kib::sys::loopnode=debug"])
            .args(flags)
            .arg("-v")
            .arg(format!("{}:/base:ro", base.parent().unwrap().display()))
            .arg("-v")
            .arg(format!("{}:/m:ro", repo().join("testdata/bench").display()))
            .args(["-v", "/var/cache/kib:/var/cache/kib"])
            .arg("-v")
            .arg(format!("{}:/out", self.out.display()))
            .args([image(), "sh", "-c", &script])
            .output()
            .unwrap();
        eprintln!("{} ({}): {:.1?}", self.name.0, flags.join(" "), started.elapsed());
        out
    }

    /// Nothing of this run is left on the host: no loop device backed by its files and no mount
    /// (waiting up to 10 s: after a SIGKILL the kernel tears the container's mount namespace
    /// down asynchronously), and no container of its name.
    fn assert_nothing_left(&self) {
        let needle = Path::new(&self.work_in_container);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !leftovers(needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let l = leftovers(needle);
        assert!(l.is_empty(), "left on the host: {l:#?}");
        let names = podman().args(["ps", "--all", "--format", "{{.Names}}"]).output().unwrap();
        let names = String::from_utf8_lossy(&names.stdout);
        assert!(!names.lines().any(|n| n == self.name.0), "container {} left: {names}", self.name.0);
    }
}

/// The host build of the overhead manifest everything is compared with, made once.
fn host_build() -> &'static Path {
    static OUT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &OUT.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = Command::new(assert_cmd::cargo::cargo_bin("kib"))
            .args(["customize", "--no-cache", "--disk-image"])
            .arg(base_image())
            .arg("--manifest")
            .arg(repo().join("testdata/bench/overhead.yaml"))
            .arg("-o")
            .arg(tmp.path().join("out"))
            .arg("--work-dir")
            .arg(tmp.path().join("work"))
            .output()
            .unwrap();
        assert!(out.status.success(), "host build failed:\n{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("host build: {:.1?}", started.elapsed());
        assert_nothing_left(&tmp.path().join("work"));
        let out = tmp.path().join("out");
        (tmp, out)
    })
    .1
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn bom(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("bom.json")).unwrap()).unwrap()
}

/// (name, version, architecture) of every package in a bom.json.
fn packages(bom: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = bom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().into(), p["version"].as_str().unwrap().into(), p["architecture"].as_str().unwrap_or("").into()))
        .collect();
    v.sort();
    v
}

/// Each step's name with the files it wrote and their sha256.
fn step_files(bom: &serde_json::Value) -> Vec<String> {
    bom["steps"].as_array().unwrap().iter().map(|s| format!("{} {}", s["name"], s["files"])).collect()
}

/// The container's output is the host's: the same files, packages and step files in bom.json,
/// the same OS, and a SHA256SUMS that verifies.
fn assert_same_as_host(out: &Path) {
    let host = host_build();
    assert_eq!(names(out), names(host));
    assert_eq!(names(out), ["SHA256SUMS", "bench-overhead.cdx.json", "bench-overhead.qcow2", "bench-overhead.spdx.json", "bom.json"]);
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 4, "{sums}");
    for line in sums.lines() {
        let (sum, file) = line.split_once("  ").unwrap();
        assert_eq!(sha256(&out.join(file)), sum, "{file}");
    }
    let (b, h) = (bom(out), bom(host));
    assert!(!packages(&b).is_empty());
    assert_eq!(packages(&b), packages(&h), "bom.json packages differ from the host build's");
    assert_eq!(step_files(&b), step_files(&h));
    assert_eq!(b["os_release"], h["os_release"]);
    assert_eq!(b["input"]["sha256"], h["input"]["sha256"]);
    let info: serde_json::Value = serde_json::from_slice(
        &Command::new("qemu-img").args(["info", "--output=json"]).arg(out.join("bench-overhead.qcow2")).output().unwrap().stdout,
    )
    .unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], std::fs::metadata(base_image()).unwrap().len());
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// --privileged with the container's own /dev (a tmpfs filled at its start), all of whose loop
/// nodes are deleted before kib starts: the node of the device kib gets is missing, as it is for
/// a loop device the kernel adds after the container started.
#[test]
fn privileged_with_missing_loop_nodes() {
    if !ready() {
        return;
    }
    let case = Case::new("priv");
    let o = case.run(&["--privileged"], "rm -f /dev/loop[0-9]*", "/m/overhead.yaml");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("was missing from /dev") && err.contains("mounted devtmpfs on /dev in kib's private mount namespace"), "{err}");
    assert_same_as_host(&case.out);
    case.assert_nothing_left();
}

#[test]
fn privileged_with_the_hosts_dev() {
    if !ready() {
        return;
    }
    let case = Case::new("privdev");
    let o = case.run(&["--privileged", "-v", "/dev:/dev"], "", "/m/overhead.yaml");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("was missing from /dev"), "the host's /dev has every node:\n{err}");
    assert_same_as_host(&case.out);
    case.assert_nothing_left();
}

const LEAST: &[&str] = &["--cap-add", "SYS_ADMIN", "--device", "/dev/loop-control", "--device-cgroup-rule", "b 7:* rwm"];

/// Without --privileged: the container's /dev has no loop node at all, so this also takes
/// kib's devtmpfs path.
#[test]
fn least_privilege() {
    if !ready() {
        return;
    }
    let case = Case::new("least");
    let o = case.run(LEAST, "", "/m/overhead.yaml");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("mounted devtmpfs on /dev"), "{err}");
    assert_same_as_host(&case.out);
    case.assert_nothing_left();

    // Without /dev/loop-control, the error names the flag that is missing.
    let case = Case::new("noctl");
    let o = case.run(&["--cap-add", "SYS_ADMIN", "--device-cgroup-rule", "b 7:* rwm"], "", "/m/overhead.yaml");
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("/dev/loop-control does not exist") && err.contains("--device /dev/loop-control"), "{err}");
    assert!(names(&case.out).is_empty(), "{:?}", names(&case.out));
    case.assert_nothing_left();
}

/// `podman stop` (SIGTERM to kib, pid 1 in the container) and `podman kill -s KILL` while a step
/// runs: the container goes, and nothing of it stays on the host; after the SIGKILL, a build
/// into the same output folder succeeds.
#[test]
fn stopped_or_killed_container_leaves_nothing() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("slow.yaml"),
        "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: slow}\nsteps:\n  - name: wait\n    run: {script: \"sleep 300\"}\noutput: {formats: [qcow2]}\n",
    )
    .unwrap();
    for (case_name, flags, stop) in [("term", vec!["--privileged"], ["stop", "--time", "20"]), ("kill", vec!["--privileged", "-v", "/dev:/dev"], ["kill", "--signal", "KILL"])] {
        let case = Case::new(case_name);
        let manifests = format!("{}:/slow:ro", tmp.path().display());
        let mut all = flags.clone();
        all.extend(["-v", &manifests]);
        let image = image();
        std::thread::scope(|s| {
            let run = s.spawn(|| case.run(&all, "", "/slow/slow.yaml"));
            // Wait until the step's `sleep` runs (seen from inside the container: its pid
            // namespace is a child of the container's).
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let probe = podman().args(["exec", &case.name.0, "sh", "-c", "grep -qs '^sleep' /proc/[0-9]*/cmdline"]).output().unwrap();
                if probe.status.success() {
                    break;
                }
                assert!(Instant::now() < deadline, "the step did not start in 120 s ({image})");
                std::thread::sleep(Duration::from_millis(200));
            }
            let l = leftovers(Path::new(&case.work_in_container));
            assert!(l.iter().any(|l| l.contains("disk.raw")), "the running build's loop device is not visible on the host: {l:?}");
            let o = podman().args(stop).arg(&case.name.0).output().unwrap();
            assert!(o.status.success(), "podman {}: {}", stop[0], stderr(&o));
            let o = run.join().unwrap();
            assert!(!o.status.success());
            if case_name == "term" {
                let err = stderr(&o);
                assert!(err.contains("interrupted by signal 15"), "{err}");
                assert_eq!(o.status.code(), Some(143), "{err}");
            }
        });
        case.assert_nothing_left();
        let left = names(&case.out);
        if case_name == "term" {
            assert!(left.is_empty(), "{left:?}");
        } else {
            // The work directory (in the container) is not on the output folder's filesystem, so
            // kib stages the artifacts in a hidden `.kib-staging-<pid>` folder of the output
            // folder, which a SIGKILL leaves there (here still empty: killed during a step)...
            assert!(left.iter().all(|n| n.starts_with(".kib-staging-")), "{left:?}");
            // ...until the next run into the same folder in a container, where kib is pid 1 too,
            // replaces it.
            let again = case.run(&["--privileged", "-v", "/dev:/dev"], "", "/m/overhead.yaml");
            assert!(again.status.success(), "{}", stderr(&again));
            assert_same_as_host(&case.out);
            case.assert_nothing_left();
        }
    }
}
