//! The per-run work directory, which holds the working copy and the mount point of the image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::mounts;

/// File inside each work directory naming the process that owns it, so that `kib cleanup` can
/// tell a crashed run's directory from a live one.
pub const OWNER_FILE: &str = "kib.pid";

/// A directory `<base>/run-XXXXXX` owned by this run. Removed on [`WorkDir::close`] or drop,
/// but never while anything is still mounted below it: a mount left there would otherwise take
/// the image's files (or a bind-mounted host directory) down with it.
#[derive(Debug)]
pub struct WorkDir {
    path: Option<PathBuf>,
}

/// This process's pid as the host sees it: in the guestfs backend's PID namespace kib is pid 1
/// there, while /proc (the host's, not remounted) names it by its host pid, which `kib cleanup`
/// looks for.
pub fn host_pid() -> u32 {
    std::fs::read_link("/proc/self").ok().and_then(|p| p.to_str().and_then(|s| s.parse().ok())).unwrap_or_else(std::process::id)
}

impl WorkDir {
    /// Creates a new work directory under `base` (created if missing).
    pub fn create(base: &Path) -> Result<Self> {
        std::fs::create_dir_all(base).with_context(|| format!("creating work directory base {}", base.display()))?;
        let path = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(base)
            .with_context(|| format!("creating a work directory in {}", base.display()))?
            .keep();
        std::fs::write(path.join(OWNER_FILE), host_pid().to_string())?;
        Ok(WorkDir { path: Some(path) })
    }

    /// A placeholder that owns nothing (what is left after [`WorkDir::close`] moved out).
    pub fn detached() -> Self {
        WorkDir { path: None }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("work dir used after close")
    }

    /// Removes the directory. Refuses, and leaves it in place, when something is mounted below.
    pub fn close(mut self) -> Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        let Some(path) = self.path.take() else { return Ok(()) };
        let mounted = mounts::mounts_under(&path).context("reading /proc/self/mountinfo")?;
        if !mounted.is_empty() {
            bail!(
                "not removing work directory {}: {} is still mounted there",
                path.display(),
                mounted[0].mount_point.display()
            );
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("removing work directory {}", path.display()))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("{e:#}");
        }
    }
}
