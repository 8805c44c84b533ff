//! Loop device nodes and the loop control device, for [`super::RealSys::loop_attach`].
//!
//! In a container, `/dev` is usually a tmpfs filled when the container started, so the node of a
//! loop device the kernel creates later (`LOOP_CTL_GET_FREE` adds one when none is free) is not
//! there (moby/moby#27886, containers/podman#9621). [`ensure_loop_node`] makes it appear. The
//! errors here name the container flags that fix them.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode};
use rustix::io::Errno;

fn err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

/// Opens `/dev/loop-control` read-write. Errors name what is missing: the node (a container
/// started without `--device /dev/loop-control`, or no loop module on a host) or the permission
/// (not root, or a device cgroup that does not allow it).
pub(super) fn open_loop_control() -> io::Result<File> {
    const CTL: &str = "/dev/loop-control";
    match std::fs::OpenOptions::new().read(true).write(true).open(CTL) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(err(
            e.kind(),
            format!(
                "{CTL} does not exist, so kib cannot allocate loop devices. In a container, pass it in: \
                 `--device /dev/loop-control --device-cgroup-rule 'b 7:* rwm'` (with `--cap-add SYS_ADMIN`), or \
                 `--privileged`; on a host, load the loop module (`modprobe loop`)"
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(err(
            e.kind(),
            format!(
                "opening {CTL}: {e}: kib must run as root, and in a container the device cgroup must allow the \
                 loop devices: `--device /dev/loop-control --device-cgroup-rule 'b 7:* rwm'`, or `--privileged`"
            ),
        )),
        Err(e) => Err(err(e.kind(), format!("opening {CTL}: {e}"))),
    }
}

/// An error opening a loop device node, with the container flag to fix it when it is a
/// permission error.
pub(super) fn denied_hint(e: io::Error, path: &Path) -> io::Error {
    if e.kind() == io::ErrorKind::PermissionDenied {
        err(
            e.kind(),
            format!(
                "opening {}: {e}: in a container the device cgroup must allow loop devices: \
                 `--device-cgroup-rule 'b 7:* rwm'`, or `--privileged`",
                path.display()
            ),
        )
    } else {
        err(e.kind(), format!("opening {}: {e}", path.display()))
    }
}

/// `LOOP_CTL_GET_FREE`: the number of a free loop device; the kernel adds one when none is free.
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument and writes no user memory; the device number is
// the ioctl's return value.
#[allow(unsafe_code)]
unsafe impl rustix::ioctl::Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        0x4C82
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::null_mut()
    }
    unsafe fn output_from_ptr(out: rustix::ioctl::IoctlOutput, _: *mut std::ffi::c_void) -> rustix::io::Result<u32> {
        u32::try_from(out).map_err(|_| Errno::RANGE)
    }
}

#[allow(unsafe_code)]
pub(super) fn next_free(ctl: &File) -> io::Result<u32> {
    // SAFETY: see `GetFree`.
    unsafe { rustix::ioctl::ioctl(ctl, GetFree) }.map_err(|e| err(io::Error::from(e).kind(), format!("finding a free loop device (LOOP_CTL_GET_FREE): {e}")))
}

/// How [`ensure_loop_node`] made a missing loop device node appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeFix {
    /// The node was there (the normal case on a host, whose /dev is devtmpfs).
    Present,
    /// kib mounted devtmpfs on /dev in its private mount namespace.
    Devtmpfs,
    /// kib created the node with mknod in /dev (a container's own tmpfs).
    Mknod,
}

/// Makes sure `/dev/loop<number>` exists and is the block device the kernel registered for loop
/// device `number` (its major:minor from `/sys/class/block/loop<number>/dev`; 7:`number` when
/// sysfs does not say), and returns that path.
///
/// When it is missing or wrong, which happens in a container whose /dev is a snapshot taken at
/// its start (see the module documentation):
///
/// 1. kib mounts devtmpfs on /dev, unless /dev is a devtmpfs already. This must run in kib's
///    private mount namespace ([`crate::mounts::enter_private_namespace`], entered before any
///    command that attaches), so the mount is seen by kib and its children only and goes away
///    with kib however it exits; nothing is written to any /dev. devtmpfs is the kernel's own
///    view of every device, so every loop node kib gets later is there too. It needs
///    CAP_SYS_ADMIN, which mounting a loop device's filesystem needs anyway, and no CAP_MKNOD.
///    Access is still governed by the container's device cgroup. It hides the container's
///    /dev/pts, /dev/shm and /dev/mqueue from kib, which needs none of them (the chroot session
///    makes its own /dev).
/// 2. Else (the mount is refused) kib creates the node with mknod, mode 0600, when /dev is not a
///    devtmpfs. That needs CAP_MKNOD and writes into the container's /dev tmpfs, where the node
///    stays for the container's life (other processes of the container see it; it stays right
///    for as long as the kernel keeps that loop device).
///
/// Why this order: osbuild created missing loop nodes with mknod (osbuild#1468) and reverted it
/// (osbuild#1646) as racy against udev and impractical with partition scanning; its container
/// front end, bootc-image-builder, mounts devtmpfs on /dev instead (bib#238), and osbuild's
/// chroot now mounts devtmpfs and falls back to bind-mounting the host's /dev (osbuild#2277).
/// kib scans no partitions (one loop device per partition), so one mknod per device is enough
/// as the fallback; it never writes to a devtmpfs (the host's /dev, which udev manages). A
/// debug log line says which was done.
///
/// Errors: neither works; the message names `-v /dev:/dev` and `--privileged`.
pub fn ensure_loop_node(number: u32) -> io::Result<PathBuf> {
    static FIXING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dev = Path::new("/dev");
    let path = dev.join(format!("loop{number}"));
    let (major, minor) = sysfs_dev(number).unwrap_or((7, number));
    let want = rustix::fs::makedev(major, minor);
    if is_node(&path, want) {
        return Ok(path);
    }
    let _one_at_a_time = FIXING.lock().unwrap_or_else(|e| e.into_inner());
    let mut tried = Vec::new();
    let fix = if is_node(&path, want) {
        Some(NodeFix::Present)
    } else if is_devtmpfs(dev) {
        tried.push("/dev is a devtmpfs, which kib does not write to".to_string());
        None
    } else {
        let flags = rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NOEXEC;
        match rustix::mount::mount("devtmpfs", dev, "devtmpfs", flags, Some(c"mode=0755")) {
            Ok(()) if is_node(&path, want) => Some(NodeFix::Devtmpfs),
            Ok(()) => {
                tried.push("the devtmpfs mounted on /dev lacks it too".to_string());
                None
            }
            Err(e) => {
                tried.push(format!("mounting devtmpfs on /dev: {e}"));
                match make_node(&path, want) {
                    Ok(()) if is_node(&path, want) => Some(NodeFix::Mknod),
                    Ok(()) => {
                        tried.push(format!("mknod {} made no block device {major}:{minor}", path.display()));
                        None
                    }
                    Err(e) => {
                        tried.push(format!("mknod {}: {e}", path.display()));
                        None
                    }
                }
            }
        }
    };
    match fix {
        Some(NodeFix::Present) => {}
        Some(NodeFix::Devtmpfs) => tracing::debug!(
            "{} ({major}:{minor}) was missing from /dev (a container's, filled when it started): mounted devtmpfs on /dev in kib's private mount namespace",
            path.display()
        ),
        Some(NodeFix::Mknod) => tracing::debug!(
            "{} ({major}:{minor}) was missing from /dev (a container's, filled when it started): created it with mknod (devtmpfs: {})",
            path.display(),
            tried.join("; ")
        ),
        None => {
            return Err(err(
                io::ErrorKind::NotFound,
                format!(
                    "the loop device node {} ({major}:{minor}) is missing from /dev or wrong, and kib could not make it ({}). \
                     In a container, run with `-v /dev:/dev` (the host's /dev), or `--privileged`",
                    path.display(),
                    tried.join("; ")
                ),
            ))
        }
    }
    Ok(path)
}

/// Whether `path` is the block device `rdev`.
fn is_node(path: &Path, rdev: rustix::fs::Dev) -> bool {
    matches!(rustix::fs::stat(path), Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice && st.st_rdev == rdev)
}

/// Creates the block device node `path` (mode 0600) for `rdev`, replacing a stale file or node
/// there.
fn make_node(path: &Path, rdev: rustix::fs::Dev) -> rustix::io::Result<()> {
    let mknod = || rustix::fs::mknodat(rustix::fs::CWD, path, FileType::BlockDevice, Mode::RUSR | Mode::WUSR, rdev);
    match mknod() {
        Err(Errno::EXIST) => {
            rustix::fs::unlink(path)?;
            mknod()
        }
        other => other,
    }
}

/// The major and minor number the kernel gave loop device `number`, from sysfs.
fn sysfs_dev(number: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/sys/class/block/loop{number}/dev")).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether `dir` is a devtmpfs mount point (by /proc/self/mountinfo; statfs cannot tell devtmpfs
/// from tmpfs).
fn is_devtmpfs(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    // The last mount listed on a mount point is the one on top.
    crate::mounts::parse_mountinfo(&text).into_iter().rev().find(|m| m.mount_point == dir).is_some_and(|m| m.fstype == "devtmpfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// On a host (/dev is devtmpfs) an existing loop device's node is simply returned: nothing
    /// is mounted.
    #[test]
    fn present_node_is_returned_without_mounting() {
        let Some(n) = (0..64).find(|n| Path::new(&format!("/sys/class/block/loop{n}")).exists()) else {
            eprintln!("skipped: no loop device on this machine");
            return;
        };
        let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(ensure_loop_node(n).unwrap(), PathBuf::from(format!("/dev/loop{n}")));
        assert_eq!(std::fs::read_to_string("/proc/self/mountinfo").unwrap(), before);
        assert_eq!(sysfs_dev(n).map(|(major, _)| major), Some(7));
    }

    /// The mknod fallback makes the right block node, also over a stale file in its place.
    #[test]
    fn make_node_creates_and_replaces() {
        if !root() {
            eprintln!("skipped: mknod of a block device needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("loop4711");
        let rdev = rustix::fs::makedev(7, 4711);
        make_node(&p, rdev).unwrap();
        assert!(is_node(&p, rdev));
        assert!(!is_node(&p, rustix::fs::makedev(7, 4712)));
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "stale").unwrap();
        assert!(!is_node(&p, rdev));
        make_node(&p, rdev).unwrap();
        assert!(is_node(&p, rdev));
        let mode = rustix::fs::stat(&p).unwrap().st_mode & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn devtmpfs_is_told_from_tmpfs() {
        // This host's /dev is a devtmpfs; /dev/shm (where mounted) is a tmpfs.
        let mounts = crate::mounts::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
        let fstype = |p: &str| mounts.iter().rev().find(|m| m.mount_point == Path::new(p)).map(|m| m.fstype.clone());
        assert_eq!(is_devtmpfs(Path::new("/dev")), fstype("/dev").as_deref() == Some("devtmpfs"));
        if fstype("/dev/shm").as_deref() == Some("tmpfs") {
            assert!(!is_devtmpfs(Path::new("/dev/shm")));
        }
    }
}
