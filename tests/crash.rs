//! Crash safety on the real base image: kib is SIGKILLed at 20 points spread over all three
//! phases, and stopped with SIGTERM and SIGINT. After each, nothing of it may remain: no loop
//! device backed by its working copy, no mount, no process from the image, nothing in the output
//! folder; the input is bit-identical; `kib cleanup` removes the work directories a SIGKILL
//! leaves, and a SIGTERM/SIGINT leaves none at all.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

const MANIFEST: &str = r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {name: crash}
steps:
  - name: a file
    file: {path: /etc/kib-crash-test, content: "x\n"}
  - name: a package
    packages: {install: [jq]}
  - name: a pause
    run: {script: "sleep 1"}
output: {formats: [qcow2, raw]}
"#;

fn start(tmp: &Path) -> Child {
    customize_cmd(&base_image(), &tmp.join("crash.yaml"), tmp).arg("-q").stderr(std::process::Stdio::null()).spawn().unwrap()
}

/// Waits up to 60 s for the kernel to finish tearing down a killed run's namespace (a killed
/// process stuck in disk I/O on a loaded host goes only when its I/O completes), then asserts
/// nothing is left.
fn assert_gone(tmp: &Path, what: &str) {
    let work = tmp.join("work");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (l, p) = (leftovers(&work), processes_rooted_in(&work));
        if l.is_empty() && p.is_empty() {
            break;
        }
        let states: Vec<String> = p.iter().map(|cmd| process_state(cmd)).collect();
        assert!(Instant::now() < deadline, "{what}: left behind after 60 s: {l:?} {p:?} (states {states:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = tmp.join("out");
    let files: Vec<_> = std::fs::read_dir(&out).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(files.is_empty(), "{what}: the output folder holds {files:?}");
}

/// The state letters (R, S, D, Z...) of the processes whose command line is `cmd`.
fn process_state(cmd: &str) -> String {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ") == *cmd))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next().unwrap_or('?').to_string()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn killed_at_any_point_kib_leaves_nothing() {
    if common::skip_unless_root("killed_at_any_point_kib_leaves_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("crash.yaml"), MANIFEST).unwrap();
    let input = base_image();
    let before = sha256(&input);

    // Two full runs, to spread the kill points over the length of the faster one (the first
    // may be slower: cold caches, the network).
    let mut full = Duration::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        assert!(start(tmp.path()).wait().unwrap().success());
        full = full.min(t.elapsed());
        std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
        assert_nothing_left(&tmp.path().join("work"));
    }

    // 20 SIGKILLs of a running kib, spread over 95% of a run. A run that finishes before its
    // point (runs vary with the network) is a complete build: it is checked and the point tried
    // again earlier.
    let points = 20;
    let (mut killed, mut attempts) = (0, 0);
    let mut scale = 0.95;
    while killed < points {
        attempts += 1;
        assert!(attempts <= 40, "only {killed} of {points} kill points hit a running kib in 40 attempts");
        let at = full.mul_f64(scale * (killed as f64 + 0.5) / points as f64);
        let mut child = start(tmp.path());
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_some_and(|s| s.success()) {
            std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
            assert!(leftovers(&tmp.path().join("work")).is_empty());
            scale *= 0.9;
            continue;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        killed += 1;
        assert_gone(tmp.path(), &format!("SIGKILL at {at:.2?} of {full:.2?}"));
    }
    eprintln!("{killed} SIGKILLs in {attempts} attempts over a {full:.2?} run");
    // The work directories SIGKILL leaves are what `kib cleanup` is for.
    let cleanup = kib().args(["cleanup", "--work-dir"]).arg(tmp.path().join("work")).output().unwrap();
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    assert_nothing_left(&tmp.path().join("work"));

    // SIGTERM and SIGINT in the middle of the apt step: exit 143 / 130, and a clean exit.
    for (sig, code) in [(rustix::process::Signal::TERM, 143), (rustix::process::Signal::INT, 130)] {
        let mut child = start(tmp.path());
        std::thread::sleep(full.mul_f64(0.4));
        rustix::process::kill_process(rustix::process::Pid::from_raw(child.id() as i32).unwrap(), sig).unwrap();
        let status = child.wait().unwrap();
        if status.success() {
            // It finished first: a complete build, whose outputs the next round must not find.
            std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
            continue;
        }
        assert_eq!(status.code(), Some(code), "{sig:?}");
        assert_gone(tmp.path(), &format!("{sig:?}"));
        assert_nothing_left(&tmp.path().join("work")); // no work directory either
    }
    assert_eq!(sha256(&input), before, "the input image changed");
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_still_leaves_nothing() {
    if common::skip_unless_root("a_second_ctrl_c_exits_at_once_and_still_leaves_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("crash.yaml"),
        "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: slow}\nsteps:\n  - name: slow\n    run: {script: \"sleep 60\"}\n",
    )
    .unwrap();
    let mut child = start(tmp.path());
    // Wait until the step runs: a process rooted in the image. Phase 0 copies
    // the base image first, which takes minutes on a loaded 2-core runner.
    let deadline = Instant::now() + Duration::from_secs(300);
    while processes_rooted_in(&tmp.path().join("work")).is_empty() {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let t = Instant::now();
    let status = child.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "kib took {:?} to stop", t.elapsed());
    assert_eq!(status.code(), Some(130));
    assert_gone(tmp.path(), "two SIGINTs");
    let cleanup = kib().args(["cleanup", "--work-dir"]).arg(tmp.path().join("work")).output().unwrap();
    assert!(cleanup.status.success());
    assert_nothing_left(&tmp.path().join("work"));
}

const LVM_MANIFEST: &str = r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {name: crash-lvm}
steps:
  - name: a file on the root LV
    file: {path: /etc/kib-crash-test, content: "x\n"}
  - name: a file on the /var LV, and a pause
    run: {script: "echo x > /var/lib/kib-crash-test; sleep 3"}
output: {formats: [raw]}
"#;

/// Waits (up to 120 s) until `ready` holds, checking every 20 ms; false if `child` ended first.
fn wait_for(child: &mut Child, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("kib never reached the kill point");
}

/// Processes whose command line starts with `prefix`.
fn running(prefix: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).replace('\0', " ").starts_with(prefix))
}

/// The LVM+SELinux fixture (root and /var on LVs of VG rootvg, SELinux permissive): SIGKILL
/// while its LVs are attached (as the /var LV's loop device appears, during a step writing to
/// both LVs, during the SELinux relabel) and SIGTERM during the step. Nothing may remain,
/// the input stays bit-identical.
#[test]
fn killed_while_lvm_volumes_are_attached_kib_leaves_nothing() {
    if common::skip_unless_root("killed_while_lvm_volumes_are_attached_kib_leaves_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("crash-lvm.yaml");
    std::fs::write(&manifest, LVM_MANIFEST).unwrap();
    let input = lvm_fixture("debian-12-lvm-selinux-amd64.raw");
    let before = sha256(&input);
    let (vg, pv_start, _) = read_vg(&input, 3, &tmp.path().join("lvm"));
    let var = vg.lv("varlv").unwrap();
    let var_loop = format!("offset {}, sizelimit {}", pv_start + var.offset_bytes_in_pv, var.size_bytes);
    let work = tmp.path().join("work");
    let start = || customize_cmd(&input, &manifest, tmp.path()).arg("-q").stderr(std::process::Stdio::null()).spawn().unwrap();
    let var_attached = || {
        let out = std::process::Command::new("losetup").arg("-a").output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains(&*work.to_string_lossy()) && l.contains(&var_loop))
    };
    let mut points = 0;
    for (what, signal) in [("the /var LV attached", 9), ("the step running", 9), ("setfiles labelling", 9), ("the step running", 15)] {
        let mut child = start();
        let reached = match what {
            "the /var LV attached" => wait_for(&mut child, var_attached),
            "the step running" => wait_for(&mut child, || !processes_rooted_in(&work).is_empty()),
            _ => wait_for(&mut child, || running("setfiles ")),
        };
        assert!(reached, "{what}: kib ended before the kill point");
        assert!(var_attached(), "{what}: the /var LV is not attached at the kill point");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let sig = if signal == 9 { rustix::process::Signal::KILL } else { rustix::process::Signal::TERM };
        rustix::process::kill_process(pid, sig).unwrap();
        let status = child.wait().unwrap();
        if signal == 15 {
            assert_eq!(status.code(), Some(143));
        }
        points += 1;
        assert_gone(tmp.path(), &format!("signal {signal} with {what}"));
    }
    eprintln!("{points} kill points with LVM volumes attached");
    let cleanup = kib().args(["cleanup", "--work-dir"]).arg(&work).output().unwrap();
    assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
    assert_nothing_left(&work);
    assert_eq!(sha256(&input), before, "the input image changed");
}
