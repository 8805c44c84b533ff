//! Mounts: kib's private mount namespace, mounting onto directories resolved inside an image
//! (through [`crate::sys::Sys`], each mount a [`Mounted`] guard), and, as a safety net behind
//! the guards, unmounting whole trees as /proc/self/mountinfo lists them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use crate::guest::GuestRoot;
use crate::sys::{Mounted, MountSpec, Sys};
use std::sync::Arc;

/// Moves kib into a mount namespace of its own, with every mount private, so that nothing it
/// mounts is seen by the host and the kernel drops all of it when kib exits, however it exits.
///
/// Must run before any thread starts (unshare(2) refuses CLONE_NEWNS in a multi-threaded
/// process otherwise).
#[allow(unsafe_code)]
pub fn enter_private_namespace() -> Result<()> {
    // SAFETY: called from main before any other thread exists; CLONE_NEWNS only changes this
    // process's view of mounts.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .context(
            "entering a private mount namespace (unshare CLONE_NEWNS): kib must run as root with CAP_SYS_ADMIN; \
             in a container, `--cap-add SYS_ADMIN` (see README, \"Running in a container\") or `--privileged`",
        )?;
    rustix::mount::mount_change("/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)
        .context("making every mount private in kib's namespace")?;
    Ok(())
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo text (see proc(5)). Octal escapes such as `\040` are decoded.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = unescape(r.next().unwrap_or(""));
            Some(MountEntry { mount_point: PathBuf::from(unescape(mount_point)), fstype, source })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this process at or below `dir`, in mount order (parents before children).
pub fn mounts_under(dir: &Path) -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text).into_iter().filter(|m| m.mount_point.starts_with(dir)).collect())
}

/// Mounts `source` (a device, or a pseudo-filesystem name) on the image directory `guest`,
/// resolved inside `root` so that a symlink in the image cannot redirect the mount. The
/// directory is created when missing.
///
/// Errors: the mount point cannot be made, or the mount fails (the errno stays in the chain).
pub fn mount_in(sys: &Arc<dyn Sys>, root: &GuestRoot, guest: &Path, source: &str, fstype: &str, flags: MountFlags, data: Option<&str>) -> Result<Mounted> {
    let dir = root.mkdir_p(guest, 0o755).with_context(|| format!("preparing mount point {} in the image", guest.display()))?;
    let at = root.path().join(guest.strip_prefix("/").unwrap_or(guest));
    Mounted::mount(sys, &MountSpec { source, source_at: None, target: &GuestRoot::fd_path(&dir), at: &at, fstype, flags, data })
        .with_context(|| format!("mounting {source} ({fstype}) on {} in the image", guest.display()))
}

/// Bind-mounts `source` onto the image path `guest` (which must exist, resolved inside `root`).
/// `source` is a host path, or with `source_in_image` an image path resolved inside `root` too
/// (an fstab bind entry).
///
/// Errors: either path cannot be opened, or the mount fails.
pub fn bind_in(sys: &Arc<dyn Sys>, root: &GuestRoot, source: &Path, source_in_image: bool, guest: &Path) -> Result<Mounted> {
    bind_in_with(sys, root, source, source_in_image, guest, MountFlags::BIND)
}

/// [`bind_in`] with `flags` (`BIND`, or `BIND | REC` for a recursive bind).
pub fn bind_in_with(sys: &Arc<dyn Sys>, root: &GuestRoot, source: &Path, source_in_image: bool, guest: &Path, flags: MountFlags) -> Result<Mounted> {
    let target = if source_in_image {
        // An fstab bind entry's mount point, like any other, is made when missing.
        root.mkdir_p(guest, 0o755).with_context(|| format!("preparing bind target {} in the image", guest.display()))?
    } else {
        root.open_in_path(guest).with_context(|| format!("opening bind target {} in the image", guest.display()))?
    };
    let (source_fd, source_path);
    let source_str = if source_in_image {
        source_fd = root.open_in_path(source).with_context(|| format!("opening bind source {} in the image", source.display()))?;
        source_path = GuestRoot::fd_path(&source_fd);
        source_path.to_string_lossy().into_owned()
    } else {
        source.to_string_lossy().into_owned()
    };
    let at = root.path().join(guest.strip_prefix("/").unwrap_or(guest));
    let shown = source_in_image.then(|| root.path().join(source.strip_prefix("/").unwrap_or(source)));
    let spec = MountSpec { source: &source_str, source_at: shown.as_deref(), target: &GuestRoot::fd_path(&target), at: &at, fstype: "", flags, data: None };
    Mounted::mount(sys, &spec)
        .with_context(|| format!("bind-mounting {} on {} in the image", source.display(), guest.display()))
}

/// Unmounts everything at or below `dir`, deepest first. A busy mount is retried for about two
/// seconds; after that it is detached lazily (it is in kib's private namespace, so it goes away
/// when the last user does) and reported.
///
/// Errors: mountinfo cannot be read, or an unmount fails for another reason than EBUSY/EINVAL.
pub fn unmount_tree(dir: &Path) -> Result<()> {
    let mounts = mounts_under(dir).context("reading /proc/self/mountinfo")?;
    for m in mounts.iter().rev() {
        unmount_one(&m.mount_point)?;
    }
    Ok(())
}

fn unmount_one(path: &Path) -> Result<()> {
    for attempt in 0..20 {
        match rustix::mount::unmount(path, UnmountFlags::NOFOLLOW) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(()), // not mounted (any more)
            Err(rustix::io::Errno::BUSY) if attempt < 19 => std::thread::sleep(Duration::from_millis(100)),
            Err(rustix::io::Errno::BUSY) => {
                tracing::warn!("{} is still busy after 2 s; detaching it lazily", path.display());
                rustix::mount::unmount(path, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                    .with_context(|| format!("detaching {}", path.display()))?;
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    98 22 7:3 / /var/tmp/kib/run\\040x/root rw - ext4 /dev/loop3 rw\n\
                    99 98 0:5 / /var/tmp/kib/run\\040x/root/dev rw - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, Path::new("/var/tmp/kib/run x/root"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].source, "/dev/loop3");
        let under: Vec<_> = m.iter().filter(|e| e.mount_point.starts_with("/var/tmp/kib/run x/root")).collect();
        assert_eq!(under.len(), 2);
    }
}
