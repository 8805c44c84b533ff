//! `kib cleanup` after a crash: a stale work directory with a loop device attached without
//! autoclear (as a run killed between attach and autoclear, or an older tool, leaves it).

mod common;

use std::process::Command;

use common::*;

#[test]
fn cleanup_detaches_stale_loop_devices_and_removes_dead_runs() {
    if common::skip_unless_root("cleanup_detaches_stale_loop_devices_and_removes_dead_runs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("work");
    let dead = base.join("run-dead");
    std::fs::create_dir_all(&dead).unwrap();
    // The pid of a process that has exited.
    let child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let _ = child.wait_with_output();
    std::fs::write(dead.join("kib.pid"), pid.to_string()).unwrap();
    let disk = dead.join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let out = Command::new("losetup").args(["--find", "--show"]).arg(&disk).output().unwrap();
    assert!(out.status.success());
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let run = kib().args(["cleanup", "--work-dir"]).arg(&base).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    // Whatever happens, do not leave the loop device behind.
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains(&format!("detached loop device {dev}")), "{stdout}");
    assert!(stdout.contains("removed work directory") && !dead.exists(), "{stdout}");
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
    let again = kib().args(["cleanup", "--work-dir"]).arg(&base).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to clean up"));
}
