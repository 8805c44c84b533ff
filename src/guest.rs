//! Safe file access inside a mounted image root.
//!
//! The image is hostile: its symlinks may point anywhere (`/etc/resolv.conf -> /etc/passwd`,
//! `/etc/containerd -> ../../../../host/etc`). Every path kib reads, writes or deletes in the image
//! goes through [`GuestRoot`], which resolves it with `openat2(RESOLVE_IN_ROOT)`: absolute symlinks
//! and `..` are resolved as if the image root were `/`, so no path can leave the image. Final
//! components are never followed when writing or deleting: a write replaces a symlink instead of
//! writing through it, and a deletion removes the link, not its target.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};

/// An open image root. Paths given to its methods are image paths (`/etc/fstab`); a leading `/`
/// is optional.
#[derive(Debug)]
pub struct GuestRoot {
    fd: OwnedFd,
    path: PathBuf,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl GuestRoot {
    /// Opens the directory `path` (a host path) as an image root.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rfs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(GuestRoot { fd, path: path.to_path_buf() })
    }

    /// Another handle on the same root (a duplicated descriptor), for an owner that outlives a
    /// borrow, such as the chroot session.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(GuestRoot { fd: self.fd.try_clone()?, path: self.path.clone() })
    }

    /// The host path of the root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_in(&self, guest: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = relative(guest)?;
        let rel: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { &rel };
        // openat2 answers EAGAIN when a rename or mount anywhere on the system raced with the
        // resolution (it cannot then vouch that `..` stayed inside); retrying is the documented
        // response. Concurrent builds mount all the time.
        let mut tries = 0;
        loop {
            match rfs::openat2(&self.fd, rel, flags | OFlags::CLOEXEC, mode, RESOLVE) {
                Err(rustix::io::Errno::AGAIN) if tries < 1000 => tries += 1,
                other => return Ok(other?),
            }
        }
    }

    /// Opens a directory as an `O_PATH` descriptor, following symlinks inside the root.
    pub fn open_dir(&self, guest: &Path) -> io::Result<OwnedFd> {
        self.open_in(guest, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
    }

    /// Opens any path as an `O_PATH` descriptor (following symlinks inside the root), for use as
    /// a mount target.
    pub fn open_in_path(&self, guest: &Path) -> io::Result<OwnedFd> {
        self.open_in(guest, OFlags::PATH, Mode::empty())
    }

    /// Opens a file for reading, following symlinks inside the root.
    pub fn open_read(&self, guest: &Path) -> io::Result<File> {
        Ok(File::from(self.open_in(guest, OFlags::RDONLY, Mode::empty())?))
    }

    /// Reads a whole file. `Ok(None)` when it does not exist.
    pub fn read(&self, guest: &Path) -> io::Result<Option<Vec<u8>>> {
        match self.open_read(guest) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole file as UTF-8 (lossily). `Ok(None)` when it does not exist.
    pub fn read_string(&self, guest: &Path) -> io::Result<Option<String>> {
        Ok(self.read(guest)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Reads at most `max` bytes of a regular file, following symlinks inside the root.
    /// `Ok(None)` when it is missing or is not a regular file (a FIFO or device in a hostile
    /// image is never opened for a blocking read: the open is non-blocking and the type is
    /// checked on the opened descriptor). For metadata files that are small in any sane image.
    pub fn read_regular_capped(&self, guest: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
        let fd = match self.open_in(guest, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::NOENT.raw_os_error() || c == rustix::io::Errno::NOTDIR.raw_os_error()) => return Ok(None),
            Err(e) => return Err(e),
        };
        if rfs::fstat(&fd)?.st_mode & libc_s_ifmt() != 0o100000 {
            return Ok(None);
        }
        let mut buf = Vec::new();
        File::from(fd).take(max).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Whether the path exists, following symlinks inside the root.
    pub fn exists(&self, guest: &Path) -> bool {
        self.open_in(guest, OFlags::PATH, Mode::empty()).is_ok()
    }

    /// The status of the path itself (a symlink is not followed). `Ok(None)` when it is missing.
    pub fn lstat(&self, guest: &Path) -> io::Result<Option<rfs::Stat>> {
        let (parent, name) = match self.parent(guest, false) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match rfs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The target of a symlink (not followed). `Ok(None)` when the path is missing or not a
    /// symlink.
    pub fn read_link(&self, guest: &Path) -> io::Result<Option<PathBuf>> {
        let (parent, name) = match self.parent(guest, false) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match rfs::readlinkat(&parent, &name, Vec::new()) {
            Ok(t) => Ok(Some(PathBuf::from(OsStr::from_bytes(t.as_bytes())))),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Names in a directory, without `.` and `..`, sorted. `Ok(vec![])` when it does not exist.
    pub fn read_dir(&self, guest: &Path) -> io::Result<Vec<OsString>> {
        let fd = match self.open_in(guest, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in rfs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Creates a directory and its missing parents (mode `mode`, owned by whoever runs kib, i.e.
    /// root). Returns an `O_PATH` descriptor of it.
    pub fn mkdir_p(&self, guest: &Path, mode: u32) -> io::Result<OwnedFd> {
        let rel = relative(guest)?;
        let mut dir = self.open_dir(Path::new("/"))?;
        let mut so_far = PathBuf::new();
        for comp in rel.components() {
            so_far.push(comp);
            dir = match self.open_dir(&so_far) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rfs::mkdirat(&dir, comp.as_os_str(), Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.open_dir(&so_far).map_err(|e| {
                        io::Error::new(e.kind(), format!("image folder /{} is a symlink to a folder that does not exist in the image ({e})", so_far.display()))
                    })?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(dir)
    }

    /// Resolves the parent folder of `guest` (inside the root) and returns it with the final name.
    fn parent(&self, guest: &Path, create: bool) -> io::Result<(OwnedFd, OsString)> {
        let rel = relative(guest)?;
        let name = rel.file_name().ok_or_else(|| invalid(guest, "has no file name"))?.to_os_string();
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = if create { self.mkdir_p(parent, 0o755)? } else { self.open_dir(parent)? };
        Ok((fd, name))
    }

    /// Writes a regular file atomically: a temporary file in the same folder, then a rename over
    /// the final name (which replaces a symlink there instead of following it). Missing parent
    /// folders are created with mode 0755.
    pub fn write(&self, guest: &Path, content: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
        let mut r = content;
        self.write_from(guest, &mut r, mode, uid, gid).map(|_| ())
    }

    /// [`GuestRoot::write`] with the content streamed from `r` in 4 MiB pieces (never held whole
    /// in memory: image archives and downloads may be GiBs). Returns the bytes written and
    /// their SHA-256 (lowercase hex).
    ///
    /// Errors: `r` fails, the path leaves the root or cannot be created, or the disk is full
    /// (ENOSPC, as an `io::Error`); the temporary file is removed on error.
    pub fn write_from(&self, guest: &Path, r: &mut dyn io::Read, mode: u32, uid: u32, gid: u32) -> io::Result<(u64, String)> {
        let (parent, name) = self.parent(guest, true)?;
        let mut tmp_name = OsString::from(".kib-tmp-");
        tmp_name.push(&name);
        let _ = rfs::unlinkat(&parent, &tmp_name, AtFlags::empty());
        let fd = rfs::openat(
            &parent,
            &tmp_name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let result = (|| -> io::Result<(u64, String)> {
            let mut f = File::from(fd);
            let (size, sha256) = crate::hash::copy_hashed(r, &mut f, &mut || Ok(()))?;
            rfs::fchown(f.as_fd(), Some(rfs::Uid::from_raw(uid)), Some(rfs::Gid::from_raw(gid)))?;
            rfs::fchmod(f.as_fd(), Mode::from_raw_mode(mode))?;
            rfs::renameat(&parent, &tmp_name, &parent, &name)?;
            Ok((size, sha256))
        })();
        if result.is_err() {
            let _ = rfs::unlinkat(&parent, &tmp_name, AtFlags::empty());
        }
        result
    }

    /// Creates a symlink at `guest` pointing at `target` (stored as given), replacing a file or
    /// symlink already there.
    pub fn symlink(&self, target: &str, guest: &Path) -> io::Result<()> {
        let (parent, name) = self.parent(guest, true)?;
        match rfs::unlinkat(&parent, &name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(rfs::symlinkat(target, &parent, &name)?)
    }

    /// Renames `from` to `to`, both resolved inside the root; neither final component is
    /// followed. Replaces `to` if it exists.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fp, fname) = self.parent(from, false)?;
        let (tp, tname) = self.parent(to, false)?;
        Ok(rfs::renameat(&fp, &fname, &tp, &tname)?)
    }

    /// Removes a file, symlink or directory tree. A symlink is removed, never followed, and the
    /// removal does not descend into other filesystems mounted below. Returns whether something
    /// was there.
    pub fn remove(&self, guest: &Path) -> io::Result<bool> {
        let (parent, name) = match self.parent(guest, false) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        remove_at(&parent, &name)
    }

    /// Removes everything inside a directory but keeps the directory itself. When the final
    /// component is a symlink (or not a directory) nothing is done.
    pub fn empty_dir(&self, guest: &Path) -> io::Result<()> {
        let (parent, name) = match self.parent(guest, false) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = match rfs::openat(&parent, &name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let dev = rfs::fstat(&dir)?.st_dev;
        remove_children(&dir, dev)
    }

    /// Truncates a regular file to zero bytes; a symlink or missing file is left alone. Returns
    /// whether a file was truncated.
    pub fn truncate(&self, guest: &Path) -> io::Result<bool> {
        let (parent, name) = match self.parent(guest, false) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match rfs::openat(&parent, &name, OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::empty()) {
            Ok(fd) => {
                if rfs::fstat(&fd)?.st_mode & libc_s_ifmt() != 0o100000 {
                    return Ok(false);
                }
                rfs::ftruncate(&fd, 0)?;
                Ok(true)
            }
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::ISDIR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The `/proc/self/fd/N` path of a descriptor: mounting on it mounts on exactly the directory
    /// that was resolved inside the root, whatever symlinks the image holds.
    pub fn fd_path(fd: &OwnedFd) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }
}

fn libc_s_ifmt() -> u32 {
    0o170000
}

fn remove_at(parent: &OwnedFd, name: &OsStr) -> io::Result<bool> {
    let st = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if st.st_mode & libc_s_ifmt() == 0o040000 {
        let dir = rfs::openat(parent, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
        remove_children(&dir, st.st_dev)?;
        match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            // A mount point below (another filesystem) keeps the folder: that is intended.
            Ok(()) | Err(rustix::io::Errno::BUSY | rustix::io::Errno::NOTEMPTY) => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        rfs::unlinkat(parent, name, AtFlags::empty())?;
    }
    Ok(true)
}

fn remove_children(dir: &OwnedFd, dev: u64) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    for name in names {
        let st = match rfs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if st.st_mode & libc_s_ifmt() == 0o040000 && st.st_dev != dev {
            continue; // another filesystem is mounted here: leave it alone
        }
        remove_at(dir, &name)?;
    }
    Ok(())
}

/// The path relative to the root: leading `/` removed; `..` and `.` are refused so that a
/// manifest path means what it says.
fn relative(guest: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in guest.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(invalid(guest, "must not contain `..`")),
        }
    }
    Ok(out)
}

fn invalid(guest: &Path, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("image path {} {what}", guest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test's own uid and gid: what a write may set without root (kib writes as root).
    fn me() -> (u32, u32) {
        (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
    }
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, GuestRoot) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let host = d.path().join("host");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("passwd"), "host secret").unwrap();
        let g = GuestRoot::open(&root).unwrap();
        (d, root, host, g)
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let (_d, root, host, g) = setup();
        // /etc/containerd -> <host dir> (absolute, pointing outside)
        symlink(&host, root.join("etc/containerd")).unwrap();
        // The target does not exist inside the image: a clear error, and nothing on the host.
        let e = g.write(Path::new("/etc/containerd/config.toml"), b"x", 0o644, 0, 0).unwrap_err();
        assert!(e.to_string().contains("/etc/containerd is a symlink"), "{e}");
        assert!(!host.join("config.toml").exists(), "wrote through an absolute symlink");
        // When it exists inside the image, the write lands there.
        std::fs::create_dir_all(root.join(host.strip_prefix("/").unwrap())).unwrap();
        let (uid, gid) = me();
        g.write(Path::new("/etc/containerd/config.toml"), b"x", 0o644, uid, gid).unwrap();
        assert!(!host.join("config.toml").exists(), "wrote through an absolute symlink");
        // It landed at <root><host path>/config.toml, i.e. inside the image.
        let inside = root.join(host.strip_prefix("/").unwrap()).join("config.toml");
        assert_eq!(std::fs::read(inside).unwrap(), b"x");
    }

    #[test]
    fn relative_dotdot_symlinks_stay_inside() {
        let (_d, root, host, g) = setup();
        symlink("../../../../../../../../host/passwd", root.join("etc/resolv.conf")).unwrap();
        // Reading follows the link, but clamped to the root: there is no /host/passwd inside.
        assert!(g.read(Path::new("/etc/resolv.conf")).unwrap().is_none());
        // Writing replaces the link itself.
        let (uid, gid) = me();
        g.write(Path::new("/etc/resolv.conf"), b"nameserver 1.1.1.1\n", 0o644, uid, gid).unwrap();
        assert_eq!(std::fs::read_to_string(host.join("passwd")).unwrap(), "host secret");
        let meta = std::fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(meta.uid(), uid);
    }

    #[test]
    fn remove_deletes_links_not_targets() {
        let (_d, root, host, g) = setup();
        std::fs::create_dir_all(root.join("var/tmp/sub")).unwrap();
        std::fs::write(root.join("var/tmp/sub/f"), "x").unwrap();
        symlink(&host, root.join("var/tmp/hostlink")).unwrap();
        symlink(&host, root.join("tmp")).unwrap();
        g.empty_dir(Path::new("/var/tmp")).unwrap();
        assert!(root.join("var/tmp").is_dir());
        assert_eq!(std::fs::read_dir(root.join("var/tmp")).unwrap().count(), 0);
        // /tmp -> host: emptying it empties <root><host>, which does not exist; the host is untouched.
        g.empty_dir(Path::new("/tmp")).unwrap();
        assert!(g.remove(Path::new("/tmp")).unwrap());
        assert!(host.join("passwd").exists());
        assert!(!g.remove(Path::new("/nothing/here")).unwrap());
    }

    #[test]
    fn truncate_leaves_symlinks_alone() {
        let (_d, root, host, g) = setup();
        std::fs::write(root.join("etc/machine-id"), "abc\n").unwrap();
        symlink(host.join("passwd"), root.join("etc/hostname")).unwrap();
        assert!(g.truncate(Path::new("/etc/machine-id")).unwrap());
        assert!(!g.truncate(Path::new("/etc/hostname")).unwrap());
        assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap().len(), 0);
        assert_eq!(std::fs::read_to_string(host.join("passwd")).unwrap(), "host secret");
    }

    #[test]
    fn dotdot_in_manifest_paths_is_refused() {
        let (_d, _root, _host, g) = setup();
        let e = g.write(Path::new("/etc/../../x"), b"", 0o644, 0, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "image path /etc/../../x must not contain `..`");
    }
}
