//! `kib cleanup`: removes what a crashed or killed run left behind. kib's own design leaves
//! nothing on SIGKILL (private mount namespace, autoclear loop devices), but a run killed at the
//! wrong instant, or an older version, can leave a work directory, and a loop device attached
//! without autoclear keeps its working copy alive until the host reboots.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::workdir::OWNER_FILE;

/// What `cleanup` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub loop_devices: Vec<String>,
    pub work_dirs: Vec<PathBuf>,
    pub skipped_live: Vec<PathBuf>,
    /// binfmt_misc handlers (`kib-qemu-<cpu>-<pid>`) of runs that no longer exist, removed.
    pub binfmt_handlers: Vec<String>,
    /// Half-written build-cache snapshots of runs that no longer exist, removed.
    pub partial_snapshots: Vec<PathBuf>,
}

/// Whether `pid` is a running kib process.
pub fn live_kib(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(argv0).rsplit('/').next().is_some_and(|n| n.starts_with("kib"))
    })
}

/// Loop devices whose backing file lies under `dir`: (device, backing file).
fn loops_backed_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            let backing = PathBuf::from(b.trim().trim_end_matches(" (deleted)"));
            if backing.starts_with(dir) {
                out.push((format!("/dev/{name}"), backing));
            }
        }
    }
    out
}

/// Cleans the work directories under `work_base` whose owner is no longer running: detaches
/// the loop devices backed by files in them, then removes them (never while something is
/// mounted there). Also removes the binfmt_misc handlers a killed foreign-architecture build
/// registered (`kib-qemu-<cpu>-<pid>` whose pid is no running kib); the host's own handlers are
/// never touched. Must run in kib's private mount namespace (binfmt_misc may get mounted).
///
/// Without `root` (a normal user after guestfs-backend runs): no binfmt_misc handlers, and a loop
/// device backed by a work directory is an error (root must detach it).
pub fn run(work_base: &Path, root: bool) -> Result<Report> {
    let mut report = Report::default();
    if root {
        report.binfmt_handlers = crate::phase1::binfmt::remove_stale(live_kib).context("removing stale binfmt_misc handlers")?;
    }
    let entries = match std::fs::read_dir(work_base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e).with_context(|| format!("reading {}", work_base.display())),
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !e.file_name().to_string_lossy().starts_with("run-") || !dir.is_dir() {
            continue;
        }
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if owner.is_some_and(live_kib) {
            report.skipped_live.push(dir);
            continue;
        }
        for (dev, backing) in loops_backed_under(&dir) {
            if !root {
                anyhow::bail!("{dev} is backed by {}: run kib cleanup as root to detach it", backing.display());
            }
            // In a container the node may be missing from /dev (see ensure_loop_node).
            let node = match dev.strip_prefix("/dev/loop").and_then(|n| n.parse().ok()) {
                Some(n) => crate::sys::loopnode::ensure_loop_node(n)?,
                None => PathBuf::from(&dev),
            };
            let ld = loopdev::LoopDevice::open(&node).with_context(|| format!("opening {}", node.display()))?;
            match ld.detach() {
                Ok(()) => report.loop_devices.push(format!("{dev} ({})", backing.display())),
                Err(e) => anyhow::bail!("{dev} is backed by {} but cannot be detached ({e}); is it still mounted?", backing.display()),
            }
        }
        let mounted = crate::mounts::mounts_under(&dir)?;
        if let Some(m) = mounted.first() {
            anyhow::bail!("{} is still mounted; not removing {}", m.mount_point.display(), dir.display());
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        report.work_dirs.push(dir);
    }
    Ok(report)
}
