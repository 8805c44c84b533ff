//! Loop devices: one per partition, with an offset and a size limit, and autoclear, so the
//! kernel detaches it once the last user (kib's descriptor or a mount) is gone, even when kib
//! is killed.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use loopdev::{LoopControl, LoopDevice};

/// An attached loop device. [`LoopDev::close`] detaches it; dropping it detaches best-effort.
#[derive(Debug)]
pub struct LoopDev {
    dev: Option<LoopDevice>,
    path: PathBuf,
}

impl LoopDev {
    /// Attaches bytes `offset .. offset + size` of `file` to a free loop device, read-write
    /// unless `read_only`, with autoclear and without partition scanning. Retries when another
    /// process takes the free device first.
    pub fn attach(file: &Path, offset: u64, size: u64, read_only: bool) -> Result<Self> {
        let ctl = LoopControl::open().context("opening /dev/loop-control (is the loop module loaded?)")?;
        let mut last = None;
        for _ in 0..20 {
            let dev = ctl.next_free().context("finding a free loop device")?;
            match dev.with().offset(offset).size_limit(size).read_only(read_only).autoclear(true).attach(file) {
                Ok(()) => {
                    let path = dev.path().unwrap_or_else(|| PathBuf::from("/dev/loop?"));
                    tracing::debug!("attached {} at offset {offset} size {size} on {}", file.display(), path.display());
                    return Ok(LoopDev { dev: Some(dev), path });
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => last = Some(e),
                Err(e) => return Err(e).with_context(|| format!("attaching {} (offset {offset}) to a loop device", file.display())),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free loop device"))).context("every free loop device was taken by others")
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
        let Some(dev) = self.dev.take() else { return Ok(()) };
        match dev.detach() {
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
