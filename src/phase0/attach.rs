//! Loop devices: one per partition, with an offset and a size limit, and autoclear, so the
//! kernel detaches it once the last user (kib's descriptor or a mount) is gone, even when kib
//! is killed.
//!
//! The device is set up with one `LOOP_CONFIGURE` ioctl (Linux 5.8+): backing file, offset,
//! size limit and autoclear at once. The older two-step `LOOP_SET_FD` + `LOOP_SET_STATUS64`
//! (what loopdev-3 does, used here as the fallback on older kernels) leaves a window in which a
//! SIGKILL leaks an attached device without autoclear; here that window took 0.3 s, while the
//! kernel flushed the freshly written working copy.

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
            let path = dev.path().unwrap_or_else(|| PathBuf::from("/dev/loop?"));
            let attached = match configure(&path, file, offset, size, read_only) {
                Err(e) if matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::INVAL.raw_os_error() || code == rustix::io::Errno::NOTTY.raw_os_error()) => {
                    // No LOOP_CONFIGURE (Linux < 5.8): the two-step attach.
                    dev.with().offset(offset).size_limit(size).read_only(read_only).autoclear(true).attach(file)
                }
                other => other,
            };
            match attached {
                Ok(()) => {
                    let path = dev.path().unwrap_or_else(|| PathBuf::from("/dev/loop?"));
                    tracing::debug!("attached {} at offset {offset} size {size} on {}", file.display(), path.display());
                    return Ok(LoopDev { dev: Some(dev), path });
                }
                // Another process took the device between GET_FREE and our attach.
                Err(e) if matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::BUSY.raw_os_error() || c == rustix::io::Errno::AGAIN.raw_os_error()) => {
                    last = Some(e)
                }
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

/// `struct loop_info64` of linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of linux/loop.h.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CONFIGURE: rustix::ioctl::Opcode = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Attaches `file` to the loop device at `dev` in one `LOOP_CONFIGURE` call, with autoclear.
#[allow(unsafe_code)]
fn configure(dev: &Path, file: &Path, offset: u64, size: u64, read_only: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let device = std::fs::OpenOptions::new().read(true).write(!read_only).open(dev)?;
    let backing = std::fs::OpenOptions::new().read(true).write(!read_only).open(file)?;
    let mut file_name = [0u8; 64];
    let name = file.as_os_str().as_encoded_bytes();
    let n = name.len().min(63);
    file_name[..n].copy_from_slice(&name[..n]);
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset,
            sizelimit: size,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags: LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 },
            file_name,
            crypt_name: [0; 64],
            encrypt_key: [0; 32],
            init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors field for
    // field (repr(C)); the kernel takes its own reference to the backing file during the call.
    unsafe { rustix::ioctl::ioctl(&device, rustix::ioctl::Setter::<LOOP_CONFIGURE, LoopConfig>::new(config)) }?;
    Ok(())
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::debug!("{e:#} (autoclear will detach it when its last user goes)");
        }
    }
}
