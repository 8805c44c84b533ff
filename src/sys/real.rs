//! The real [`Sys`]: loop devices with one `LOOP_CONFIGURE` ioctl, mounts with rustix, blkid
//! for probes, host commands through [`crate::exec`].
//!
//! Loop devices are set up with one `LOOP_CONFIGURE` ioctl (Linux 5.8+): backing file, offset,
//! size limit and autoclear at once. The older two-step `LOOP_SET_FD` + `LOOP_SET_STATUS64`
//! (what loopdev-3 does, used here as the fallback on older kernels) leaves a window in which a
//! SIGKILL leaks an attached device without autoclear; here that window took 0.3 s, while the
//! kernel flushed the freshly written working copy.

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rustix::mount::UnmountFlags;

use super::{loopnode, LoopDevice, LoopSpec, MountFlags, MountSpec, Probe, Sys};
use crate::exec::{self, ExecError};

/// The kernel and the host's tools, for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

fn errno_is(e: &io::Error, errnos: &[rustix::io::Errno]) -> bool {
    e.raw_os_error().is_some_and(|c| errnos.iter().any(|n| n.raw_os_error() == c))
}

impl Sys for RealSys {
    /// Retries when another process takes the free device first.
    fn loop_attach(&self, spec: &LoopSpec<'_>) -> io::Result<LoopDevice> {
        let ctl = loopnode::open_loop_control()?;
        let mut last = None;
        for _ in 0..20 {
            // Not loopdev's `next_free`, which opens the node and so fails in a container whose
            // /dev lacks it: the number first, then the node made to exist (see `loopnode`).
            let number = loopnode::next_free(&ctl)?;
            let path = loopnode::ensure_loop_node(number)?;
            let dev = loopdev::LoopDevice::open(&path).map_err(|e| loopnode::denied_hint(e, &path))?;
            let attached = match configure(&path, spec.file, spec.offset, spec.size, spec.read_only) {
                Err(e) if errno_is(&e, &[rustix::io::Errno::INVAL, rustix::io::Errno::NOTTY]) => {
                    // No LOOP_CONFIGURE (Linux < 5.8): the two-step attach.
                    dev.with().offset(spec.offset).size_limit(spec.size).read_only(spec.read_only).autoclear(true).attach(spec.file)
                }
                other => other,
            };
            match attached {
                Ok(()) => return Ok(LoopDevice { path, handle: Some(dev) }),
                // Another process took the device between GET_FREE and our attach.
                Err(e) if errno_is(&e, &[rustix::io::Errno::BUSY, rustix::io::Errno::AGAIN]) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free loop device (every free one was taken by others)")))
    }

    fn loop_detach(&self, dev: &mut LoopDevice) -> io::Result<()> {
        match dev.handle.take() {
            Some(h) => h.detach(),
            None => loopdev::LoopDevice::open(&dev.path)?.detach(),
        }
    }

    fn mount(&self, spec: &MountSpec<'_>) -> io::Result<()> {
        if spec.flags.contains(MountFlags::BIND | MountFlags::REC) {
            rustix::mount::mount_bind_recursive(spec.source, spec.target)?;
            return Ok(());
        }
        if spec.flags.contains(MountFlags::BIND) {
            rustix::mount::mount_bind(spec.source, spec.target)?;
            return Ok(());
        }
        let data = spec.data.map(std::ffi::CString::new).transpose().map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::mount::mount(spec.source, spec.target, spec.fstype, spec.flags, data.as_deref())?;
        Ok(())
    }

    fn unmount(&self, target: &Path, lazy: bool) -> io::Result<()> {
        let flags = if lazy { UnmountFlags::NOFOLLOW | UnmountFlags::DETACH } else { UnmountFlags::NOFOLLOW };
        Ok(rustix::mount::unmount(target, flags)?)
    }

    /// `blkid -p`, which reads superblocks without attaching anything. Exit code 2 means nothing
    /// found; an ambivalent probe (several signatures) counts as nothing found.
    fn probe(&self, file: &Path, offset: u64, size: u64) -> io::Result<Probe> {
        let out = crate::exec::host_tool("blkid").args(["-p", "-o", "export", "-O", &offset.to_string(), "-S", &size.to_string()]).arg(file).output()?;
        Ok(super::parse_export(&String::from_utf8_lossy(&out.stdout)))
    }

    fn run(&self, cmd: &mut Command, what: &str, timeout: Option<Duration>) -> Result<Vec<String>, ExecError> {
        exec::run(cmd, what, timeout)
    }

    fn output(&self, cmd: &mut Command, what: &str) -> Result<String, ExecError> {
        exec::capture(cmd, what)
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

