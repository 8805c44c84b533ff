//! The system seam: a small trait, [`Sys`], over what kib asks of the kernel and the host's
//! tools: attach and detach a loop device, mount and unmount, probe a filesystem (blkid), run a
//! host command. Phase 0's mount tree and disk growth and the chroot session go through it, so
//! that their exact call sequences (root selection, fstab order, growth, unwinding after a
//! failure at any point) are unit-tested without root against the recording fake ([`fake`]),
//! while the integration tests run the real thing ([`real::RealSys`]). youki's `Syscall` trait
//! and its test implementation are the model.
//!
//! Every resource is a guard: [`LoopDev`] and [`Mounted`], each with `close(self) -> Result`
//! and a best-effort `Drop`, written once, closing twice harmless. The mountinfo sweep
//! ([`crate::mounts::unmount_tree`]) stays only as a safety net behind them.
//!
//! How later work fits without changing the trait's shape:
//! - LVM (issue 12): a linear logical volume is one more loop device at
//!   `partition offset + pe_start + first extent × extent size` of the same file: a
//!   [`LoopSpec`]. The PV is probed (`LVM2_member`) with [`Sys::probe`], the VG read with
//!   `lvs --devices <loop> --reportformat json` through [`Sys::run`], and each LV attached with
//!   [`Sys::loop_attach`] and probed like a partition.
//! - Loop devices in containers (issue 13): a privileged container's /dev may lack the
//!   `/dev/loopN` node the kernel just allocated; [`real::RealSys::loop_attach`] can create it
//!   (mknod b 7 N) before opening it. Callers still get a [`LoopDevice`] with its path.

pub mod fake;
pub mod loopnode;
pub mod real;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
pub use rustix::mount::MountFlags;

use crate::exec::ExecError;

/// What blkid says of a filesystem: `TYPE`, `UUID`, `LABEL`, ... (keys as blkid prints them).
pub type Probe = std::collections::HashMap<String, String>;

/// Parses `blkid -o export` output.
pub fn parse_export(text: &str) -> Probe {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A byte range of a file to attach as a loop device. The device always has autoclear (the
/// kernel detaches it once its last user is gone, even when kib is killed) and no partition
/// scanning.
#[derive(Debug, Clone, Copy)]
pub struct LoopSpec<'a> {
    pub file: &'a Path,
    /// Offset of the first byte, in bytes.
    pub offset: u64,
    /// Length, in bytes (the size limit).
    pub size: u64,
    pub read_only: bool,
}

/// An attached loop device, as [`Sys::loop_attach`] returns it. It holds the device open where
/// the implementation needs to (with autoclear, closing the last descriptor of an unmounted
/// device detaches it).
#[derive(Debug)]
pub struct LoopDevice {
    /// The device node, such as `/dev/loop3`.
    pub path: PathBuf,
    handle: Option<loopdev::LoopDevice>,
}

impl LoopDevice {
    /// A device known by its path only (what a fake returns).
    pub fn at(path: PathBuf) -> LoopDevice {
        LoopDevice { path, handle: None }
    }
}

/// One mount(2).
#[derive(Debug, Clone, Copy)]
pub struct MountSpec<'a> {
    /// A device, a host path for a bind mount, or a pseudo-filesystem's name.
    pub source: &'a str,
    /// For a bind mount whose source was resolved inside the image (`source` is then
    /// `/proc/self/fd/N`): the host path it is, for messages and fakes.
    pub source_at: Option<&'a Path>,
    /// What mount(2) is given: a host path, or `/proc/self/fd/N` for a directory resolved
    /// inside the image.
    pub target: &'a Path,
    /// The host path the mount lands on: for guards, messages and fakes.
    pub at: &'a Path,
    /// Ignored for a bind mount (`flags` with [`MountFlags::BIND`]).
    pub fstype: &'a str,
    pub flags: MountFlags,
    pub data: Option<&'a str>,
}

/// What kib asks of the kernel and the host. [`real::RealSys`] does it; [`fake::FakeSys`]
/// records it. Errors are `io::Error`s, so that the errno (ENODEV, EBUSY, ENOSPC) reaches the
/// caller.
pub trait Sys: Send + Sync + std::fmt::Debug {
    /// Attaches `spec` to a free loop device, with autoclear.
    fn loop_attach(&self, spec: &LoopSpec<'_>) -> io::Result<LoopDevice>;
    /// Detaches `dev`. ENXIO: it was already detached (autoclear).
    fn loop_detach(&self, dev: &mut LoopDevice) -> io::Result<()>;
    /// Mounts as `spec` says.
    fn mount(&self, spec: &MountSpec<'_>) -> io::Result<()>;
    /// Unmounts `target` (not following a final symlink); `lazy` detaches it even while busy.
    fn unmount(&self, target: &Path, lazy: bool) -> io::Result<()>;
    /// What filesystem is in `size` bytes at `offset` of `file` (blkid -p); empty when none.
    fn probe(&self, file: &Path, offset: u64, size: u64) -> io::Result<Probe>;
    /// Runs a host command to completion (see [`crate::exec::run`]); `what` names it.
    fn run(&self, cmd: &mut Command, what: &str, timeout: Option<Duration>) -> Result<Vec<String>, ExecError>;
    /// Runs a host command whose standard output kib parses (lvm's JSON reports, setfiles' dry
    /// run): returns its standard output; a failure carries the last lines of its standard error.
    fn output(&self, cmd: &mut Command, what: &str) -> Result<String, ExecError>;
}

/// The real system, shared.
pub fn real() -> Arc<dyn Sys> {
    Arc::new(real::RealSys)
}

/// An attached loop device. [`LoopDev::close`] detaches it; dropping it detaches best-effort
/// (autoclear detaches it anyway once its last user is gone).
#[derive(Debug)]
pub struct LoopDev {
    sys: Arc<dyn Sys>,
    dev: Option<LoopDevice>,
    path: PathBuf,
}

impl LoopDev {
    /// Attaches bytes `offset .. offset + size` of `file` (see [`LoopSpec`]).
    ///
    /// Errors: no free loop device, or the kernel refuses (with the file and offset).
    pub fn attach(sys: &Arc<dyn Sys>, file: &Path, offset: u64, size: u64, read_only: bool) -> Result<LoopDev> {
        let dev = sys
            .loop_attach(&LoopSpec { file, offset, size, read_only })
            .with_context(|| format!("attaching {} (offset {offset}, {size} bytes) to a loop device", file.display()))?;
        tracing::debug!("attached {} at offset {offset} size {size} on {}", file.display(), dev.path.display());
        Ok(LoopDev { sys: Arc::clone(sys), path: dev.path.clone(), dev: Some(dev) })
    }

    /// The device node, such as `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches the device. Harmless when autoclear already did.
    pub fn close(mut self) -> Result<()> {
        self.detach()
    }

    fn detach(&mut self) -> Result<()> {
        let Some(mut dev) = self.dev.take() else { return Ok(()) };
        match self.sys.loop_detach(&mut dev) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("detaching {}", self.path.display())),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::debug!("{e:#} (autoclear will detach it when its last user goes)");
        }
    }
}

/// A mount. [`Mounted::close`] unmounts it, retrying a busy one for about two seconds before
/// detaching it lazily (it is in kib's private namespace, so it goes when its last user does);
/// dropping it does the same, best-effort.
#[derive(Debug)]
pub struct Mounted {
    sys: Arc<dyn Sys>,
    at: PathBuf,
    mounted: bool,
    /// A recursive bind: its submounts go with it, so it is detached (MNT_DETACH) at once.
    recursive: bool,
}

/// How many times a busy unmount is tried, 100 ms apart, before a lazy one.
const UNMOUNT_TRIES: u32 = 20;

impl Mounted {
    /// Mounts as `spec` says.
    ///
    /// Errors: the mount fails (the message names source, type and where; the errno stays in
    /// the chain as an `io::Error`).
    pub fn mount(sys: &Arc<dyn Sys>, spec: &MountSpec<'_>) -> Result<Mounted> {
        sys.mount(spec).with_context(|| format!("mounting {} ({}) on {}", spec.source, if spec.flags.contains(MountFlags::BIND) { "bind" } else { spec.fstype }, spec.at.display()))?;
        Ok(Mounted { sys: Arc::clone(sys), at: spec.at.to_path_buf(), mounted: true, recursive: spec.flags.contains(MountFlags::BIND | MountFlags::REC) })
    }

    /// Where it is mounted (a host path).
    pub fn at(&self) -> &Path {
        &self.at
    }

    /// Unmounts. Harmless when it is no longer mounted.
    ///
    /// Errors: an unmount failing otherwise than busy or not mounted.
    pub fn close(mut self) -> Result<()> {
        self.unmount()
    }

    fn unmount(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.mounted) {
            return Ok(());
        }
        if self.recursive {
            return self.sys.unmount(&self.at, true).with_context(|| format!("detaching {}", self.at.display()));
        }
        let busy = rustix::io::Errno::BUSY.raw_os_error();
        for attempt in 1..=UNMOUNT_TRIES {
            match self.sys.unmount(&self.at, false) {
                Ok(()) => return Ok(()),
                Err(e) if [rustix::io::Errno::INVAL.raw_os_error(), rustix::io::Errno::NOENT.raw_os_error()].contains(&e.raw_os_error().unwrap_or(0)) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(busy) && attempt < UNMOUNT_TRIES => std::thread::sleep(Duration::from_millis(100)),
                Err(e) if e.raw_os_error() == Some(busy) => break,
                Err(e) => return Err(e).with_context(|| format!("unmounting {}", self.at.display())),
            }
        }
        tracing::warn!("{} is still busy after 2 s; detaching it lazily", self.at.display());
        self.sys.unmount(&self.at, true).with_context(|| format!("detaching {}", self.at.display()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("{e:#}");
        }
    }
}

/// A stack of guards undone in reverse order of creation: what Phase 0 and the chroot session
/// hold. Loop devices and mounts interleave (attach, mount on it, attach, mount ...), and
/// undoing them strictly in reverse never detaches a device that is still mounted.
#[derive(Debug, Default)]
pub struct Stack {
    held: Vec<Held>,
}

/// One guard of a [`Stack`].
#[derive(Debug)]
pub enum Held {
    Loop(LoopDev),
    Mount(Mounted),
}

impl Stack {
    pub fn push_loop(&mut self, l: LoopDev) {
        self.held.push(Held::Loop(l));
    }

    pub fn push_mount(&mut self, m: Mounted) {
        self.held.push(Held::Mount(m));
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The loop device pushed `n`th among loop devices (0: the first).
    pub fn loop_path(&self, n: usize) -> Option<&Path> {
        self.held.iter().filter_map(|h| if let Held::Loop(l) = h { Some(l.path()) } else { None }).nth(n)
    }

    /// Undoes the guard pushed last.
    pub fn close_last(&mut self) -> Result<()> {
        match self.held.pop() {
            Some(Held::Loop(l)) => l.close(),
            Some(Held::Mount(m)) => m.close(),
            None => Ok(()),
        }
    }

    /// Undoes every guard, the last first. Goes on after an error and returns the first.
    pub fn close(&mut self) -> Result<()> {
        let mut first = None;
        while let Some(h) = self.held.pop() {
            let r = match h {
                Held::Loop(l) => l.close(),
                Held::Mount(m) => m.close(),
            };
            if let Err(e) = r {
                tracing::warn!("{e:#}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
