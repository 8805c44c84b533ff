//! The chroot session: what a mounted image needs before its own programs can run in it, and
//! the exact undoing of it afterwards.
//!
//! While the session is open the image has:
//! - `/dev`: a fresh tmpfs with `null`, `zero`, `full`, `random`, `urandom` and `tty`
//!   bind-mounted from the host, a private `devpts` instance on `/dev/pts` and a tmpfs `/dev/shm`
//!   (the host's /dev itself is never bind-mounted, so nothing can delete through it);
//! - `/sys`: sysfs, read-only; `/run`: an empty tmpfs (so systemctl sees an offline system);
//! - `/proc`: mounted per command, inside that command's own PID namespace;
//! - `/etc/resolv.conf`: a copy of the host's; the image's own file or symlink is set aside and
//!   put back exactly on close;
//! - `/usr/sbin/policy-rc.d` exiting 101 on Debian-family images, so that no package starts a
//!   service; an existing one is set aside and put back.
//!
//! Every command runs as `unshare --pid --fork --kill-child --mount-proc --root=<root>`: its own
//! PID namespace, so a daemon a step starts dies with the step, and nothing survives kib.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::exec::ExecError;
use crate::fetch::MirrorMap;
use crate::guest::GuestRoot;
use crate::mounts;
use crate::sys::{MountFlags, Stack, Sys};

/// Environment variables passed from kib's environment into the chroot (proxy settings). Their
/// values are never logged nor written to the BOM: they may hold credentials.
pub const PASSED_ENV: &[&str] = &["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy", "ALL_PROXY"];

const RESOLV: &str = "/etc/resolv.conf";
const RESOLV_SAVED: &str = "/etc/.kib-saved-resolv.conf";
const POLICY: &str = "/usr/sbin/policy-rc.d";
const POLICY_SAVED: &str = "/usr/sbin/.kib-saved-policy-rc.d";
const API_MOUNTS: &[&str] = &["/dev", "/sys", "/run"];
const GRUB_CFG: &str = "/boot/grub/grub.cfg";

fn has_menuentry(cfg: &[u8]) -> bool {
    String::from_utf8_lossy(cfg).lines().any(|l| l.trim_start().starts_with("menuentry "))
}

/// An open chroot session on a mounted image root. It holds its own handle on the root: close it
/// (or drop it) before the image is unmounted.
pub struct Session {
    root: GuestRoot,
    sys: Arc<dyn Sys>,
    /// The API mounts, undone in reverse on close.
    mounts: Stack,
    /// kib's package cache bound over the package manager's folders (see
    /// [`crate::pkg::PackageCache`]); released before sysprep and on close.
    package_cache: Stack,
    env: Vec<(String, OsString)>,
    mirrors: MirrorMap,
    /// Repository files rewritten through the mirror map: path, original content, mode.
    saved_sources: Vec<(PathBuf, Vec<u8>, u32)>,
    resolv_saved: Option<bool>,
    policy_saved: Option<bool>,
    /// The image's grub.cfg when it had boot entries (see [`Session::close`]).
    grub_cfg: Option<Vec<u8>>,
    open: bool,
}

impl Session {
    /// Prepares the image for running its programs. `debian_family` adds policy-rc.d.
    /// On error, whatever was set up is undone.
    pub fn open(sys: &Arc<dyn Sys>, root: &GuestRoot, debian_family: bool, mirrors: MirrorMap) -> Result<Session> {
        let root = root.try_clone().context("opening the image root for the chroot session")?;
        let mut env: Vec<(String, OsString)> = vec![
            ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ("HOME".into(), "/root".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("LC_ALL".into(), "C.UTF-8".into()),
            ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
            ("DEBCONF_NONINTERACTIVE_SEEN".into(), "true".into()),
        ];
        for k in PASSED_ENV {
            if let Some(v) = std::env::var_os(k) {
                env.push(((*k).to_string(), v));
            }
        }
        // libcurl (dnf, tdnf) never reads HTTP_PROXY for http:// URLs: give the lower-case name
        // the upper-case value when only that one is set.
        for k in ["http_proxy", "https_proxy", "no_proxy"] {
            if std::env::var_os(k).is_none() {
                if let Some(v) = std::env::var_os(k.to_ascii_uppercase()) {
                    env.push((k.to_string(), v));
                }
            }
        }
        let grub_cfg = root.read(Path::new(GRUB_CFG)).ok().flatten().filter(|c| has_menuentry(c));
        let mut s = Session { root, sys: Arc::clone(sys), mounts: Stack::default(), package_cache: Stack::default(), env, mirrors, saved_sources: Vec::new(), resolv_saved: None, policy_saved: None, grub_cfg, open: true };
        s.mounts = mount_api(sys, &s.root).context("mounting /dev, /sys and /run in the image")?;
        s.install_resolv_conf().context("putting the host's resolv.conf in place")?;
        if debian_family {
            s.install_policy_rc_d().context("installing policy-rc.d")?;
        }
        Ok(s)
    }

    fn install_resolv_conf(&mut self) -> Result<()> {
        let host = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        let existed = self.root.lstat(Path::new(RESOLV))?.is_some();
        if existed {
            self.root.rename(Path::new(RESOLV), Path::new(RESOLV_SAVED))?;
        }
        self.resolv_saved = Some(existed);
        self.root.write(Path::new(RESOLV), &host, 0o644, 0, 0)?;
        Ok(())
    }

    fn install_policy_rc_d(&mut self) -> Result<()> {
        let existed = self.root.lstat(Path::new(POLICY))?.is_some();
        if existed {
            self.root.rename(Path::new(POLICY), Path::new(POLICY_SAVED))?;
        }
        self.policy_saved = Some(existed);
        self.root.write(Path::new(POLICY), b"#!/bin/sh\n# Written by kib while it customizes this image: start no service.\nexit 101\n", 0o755, 0, 0)?;
        Ok(())
    }

    fn rewrite_through_mirrors(&mut self, files: &[PathBuf], also: Option<fn(&str) -> String>) -> Result<()> {
        if self.mirrors.0.is_empty() && also.is_none() {
            return Ok(());
        }
        for f in files {
            if self.saved_sources.iter().any(|(p, _, _)| p == f) {
                continue;
            }
            let Some(st) = self.root.lstat(f)? else { continue };
            if st.st_mode & 0o170000 != 0o100000 {
                continue; // only regular files; a symlink is left alone
            }
            let Some(original) = self.root.read(f)? else { continue };
            let text = String::from_utf8_lossy(&original);
            let mut rewritten = rewrite_urls(&text, &self.mirrors);
            if let Some(also) = also {
                rewritten = also(&rewritten);
            }
            if rewritten != text {
                self.root.write(f, rewritten.as_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid)?;
                tracing::info!("repository file {} rewritten for the build (mirror map, package cache); the original goes back when the session closes", f.display());
                self.saved_sources.push((f.clone(), original, st.st_mode & 0o7777));
            }
        }
        Ok(())
    }

    /// Bind-mounts host folders over image folders (made when missing), releasing earlier
    /// binds of this kind first; see [`crate::pkg::Chroot::bind_package_cache`]. On error, what
    /// this call bound is undone.
    ///
    /// Errors: an image folder cannot be made, or a bind fails.
    pub fn bind_package_cache(&mut self, binds: &[(PathBuf, PathBuf)]) -> Result<()> {
        self.release_package_cache()?;
        for (host, guest) in binds {
            let bound = self
                .root
                .mkdir_p(guest, 0o755)
                .with_context(|| format!("preparing {} in the image for the package cache", guest.display()))
                .and_then(|_| mounts::bind_in(&self.sys, &self.root, host, false, guest));
            match bound {
                Ok(m) => self.package_cache.push_mount(m),
                Err(e) => {
                    let _ = self.package_cache.close();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Releases the package cache binds, so that the image's own package folders show again
    /// (for sysprep to empty them). Harmless when none are bound.
    ///
    /// Errors: an unmount fails (see [`crate::sys::Mounted::close`]).
    pub fn release_package_cache(&mut self) -> Result<()> {
        self.package_cache.close().context("releasing the package cache binds")
    }

    /// The image's root.
    pub fn root(&self) -> &GuestRoot {
        &self.root
    }

    /// A command that runs `argv` inside the chroot, in its own PID namespace, with the session's
    /// environment plus `env`.
    pub fn command(&self, argv: &[&str], env: &[(String, String)]) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(format!("--root={}", self.root.path().display()))
            .arg("--wd=/")
            .arg("--")
            .args(argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `argv` in the chroot (see [`Session::command`]) through the session's [`Sys`];
    /// `what` names it in logs and errors.
    pub fn run(&self, argv: &[&str], env: &[(String, String)], what: &str, timeout: Option<Duration>) -> Result<Vec<String>, ExecError> {
        self.sys.run(&mut self.command(argv, env), what, timeout)
    }

    /// Whether the image has an executable at this path.
    pub fn has(&self, guest: &str) -> bool {
        self.root.exists(Path::new(guest))
    }

    /// Closes the session (every file it changed restored, everything it mounted unmounted),
    /// runs `f` on the image as the steps left it, then opens the session again as
    /// [`Session::open`] does. The build cache snapshots the image this way, so that no file of
    /// the session (the host's resolv.conf, policy-rc.d, sources rewritten through the mirror
    /// map with their credentials) is ever in a snapshot.
    ///
    /// Errors: closing or reopening the session fails, or `f` fails (after the reopening).
    pub fn closed_while<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let debian_family = self.policy_saved.is_some();
        self.close()?;
        let out = f();
        let sys = Arc::clone(&self.sys);
        *self = Session::open(&sys, &self.root, debian_family, self.mirrors.clone()).context("opening the chroot session again")?;
        out
    }

    /// Undoes everything `open` did, in reverse order. Safe to call twice.
    pub fn close(&mut self) -> Result<()> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        let mut first_err = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!("closing the chroot session: {e:#}");
                first_err.get_or_insert(e);
            }
        };
        // First the package cache, bound over image folders (and after every step's command).
        note(self.release_package_cache());
        // Debian's update-grub (run by kernel and grub package scripts) writes a grub.cfg
        // without boot entries when / is a file-backed loop device, as it is here. Put the
        // image's own grub.cfg back rather than leave an image that cannot boot.
        if let Some(saved) = self.grub_cfg.take() {
            if !self.root.read(Path::new(GRUB_CFG)).ok().flatten().is_some_and(|c| has_menuentry(&c)) {
                tracing::warn!(
                    "{GRUB_CFG} lost its boot entries during the build (update-grub cannot see through a loop device); \
                     kib restored the image's original grub.cfg. If a step changed the kernel, the boot menu still lists the old one"
                );
                note(self.root.write(Path::new(GRUB_CFG), &saved, 0o444, 0, 0).context("restoring grub.cfg"));
            }
        }
        for (path, original, mode) in std::mem::take(&mut self.saved_sources) {
            note(self.root.write(&path, &original, mode, 0, 0).with_context(|| format!("restoring {}", path.display())));
        }
        if let Some(existed) = self.policy_saved.take() {
            note(restore(&self.root, POLICY, POLICY_SAVED, existed).context("restoring policy-rc.d"));
        }
        if let Some(existed) = self.resolv_saved.take() {
            note(restore(&self.root, RESOLV, RESOLV_SAVED, existed).context("restoring the image's resolv.conf"));
        }
        note(self.mounts.close());
        // The safety net: anything a command left mounted below them.
        for m in API_MOUNTS.iter().rev() {
            note(mounts::unmount_tree(&self.root.path().join(&m[1..])));
        }
        // The empty device-node files and links kib made in the image's /dev stay out of it:
        // /dev was a tmpfs, now gone.
        first_err.map_or(Ok(()), Err)
    }
}

/// Mounts what the image's programs need: a tmpfs `/dev` with a few device nodes bound from the
/// host, a private devpts, `/dev/shm`, a read-only sysfs and a tmpfs `/run`. Returns the mounts,
/// to be undone in reverse; on error, what was mounted is undone.
///
/// Errors: a mount point cannot be made, or a mount fails.
pub fn mount_api(sys: &Arc<dyn Sys>, r: &GuestRoot) -> Result<Stack> {
    let mut stack = Stack::default();
    let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
    // Files kib makes here belong to kib (root, in a real run).
    let (uid, gid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
    stack.push_mount(mounts::mount_in(sys, r, Path::new("/dev"), "kib-dev", "tmpfs", MountFlags::NOSUID | MountFlags::NOEXEC, Some("mode=0755,size=8m"))?);
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let guest = PathBuf::from("/dev").join(node);
        r.write(&guest, b"", 0o666, uid, gid)?;
        stack.push_mount(mounts::bind_in(sys, r, &Path::new("/dev").join(node), false, &guest)?);
    }
    stack.push_mount(mounts::mount_in(sys, r, Path::new("/dev/pts"), "devpts", "devpts", MountFlags::NOSUID | MountFlags::NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620"))?);
    r.symlink("pts/ptmx", Path::new("/dev/ptmx"))?;
    stack.push_mount(mounts::mount_in(sys, r, Path::new("/dev/shm"), "kib-shm", "tmpfs", nosuid_nodev, Some("mode=1777"))?);
    for (link, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
        r.symlink(target, &Path::new("/dev").join(link))?;
    }
    match mounts::mount_in(sys, r, Path::new("/sys"), "sysfs", "sysfs", MountFlags::RDONLY | nosuid_nodev | MountFlags::NOEXEC, None) {
        Ok(m) => stack.push_mount(m),
        // In the guestfs backend's user namespace, which does not own the network namespace, a
        // new sysfs is refused: the host's is bound instead (read-only to the image's programs,
        // which hold no privilege over it).
        Err(e) if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()))) => {
            tracing::debug!("sysfs cannot be mounted here ({e:#}); binding the host's /sys");
            // Recursive: a user namespace may not bind /sys without the submounts locked to it.
            stack.push_mount(mounts::bind_in_with(sys, r, Path::new("/sys"), false, Path::new("/sys"), MountFlags::BIND | MountFlags::REC)?);
        }
        Err(e) => return Err(e),
    }
    stack.push_mount(mounts::mount_in(sys, r, Path::new("/run"), "kib-run", "tmpfs", nosuid_nodev, Some("mode=0755"))?);
    r.mkdir_p(Path::new("/run/lock"), 0o1777)?;
    Ok(stack)
}

/// Rewrites every URL-looking word of repository text (apt sources, one-line or deb822; `.repo`
/// `baseurl=` lines) through the mirror map.
pub fn rewrite_urls(text: &str, mirrors: &MirrorMap) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut rest = line;
        while let Some(i) = rest.find("://") {
            // `=` too: a .repo file's `baseurl=https://...`.
            let start = rest[..i].rfind(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '=').map_or(0, |p| p + 1);
            let end = rest[i..].find(|c: char| c.is_whitespace() || c == ']').map_or(rest.len(), |p| i + p);
            out.push_str(&rest[..start]);
            out.push_str(&mirrors.resolve(&rest[start..end]));
            rest = &rest[end..];
        }
        out.push_str(rest);
    }
    out
}

fn restore(root: &GuestRoot, path: &str, saved: &str, existed: bool) -> Result<()> {
    root.remove(Path::new(path))?;
    if existed {
        root.rename(Path::new(saved), Path::new(path))?;
    }
    Ok(())
}

impl crate::pkg::Chroot for Session {
    fn root(&self) -> &GuestRoot {
        &self.root
    }
    fn run(&self, argv: &[&str], what: &str, timeout: Option<Duration>) -> Result<Vec<String>, ExecError> {
        Session::run(self, argv, &[], what, timeout)
    }
    /// The session puts every original back on [`Session::close`], so the image keeps its
    /// upstream sources.
    fn rewrite_sources(&mut self, files: &[PathBuf], also: Option<fn(&str) -> String>) -> Result<()> {
        self.rewrite_through_mirrors(files, also)
    }
    fn bind_package_cache(&mut self, binds: &[(PathBuf, PathBuf)]) -> Result<()> {
        Session::bind_package_cache(self, binds)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{check_unwound, FakeSys};

    fn api_mounts(fail_at: Option<usize>) -> (Result<Stack>, Arc<FakeSys>, tempfile::TempDir) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("root")).unwrap();
        let root = GuestRoot::open(&t.path().join("root")).unwrap();
        let mut f = FakeSys::new(t.path());
        f.fail_at = fail_at;
        let f = Arc::new(f);
        let sys: Arc<dyn Sys> = f.clone();
        (mount_api(&sys, &root), f, t)
    }

    #[test]
    fn the_api_mounts_in_order_and_undone_in_reverse() {
        let (stack, f, _t) = api_mounts(None);
        let mut stack = stack.unwrap();
        let mut want: Vec<String> = vec!["mount kib-dev on $T/root/dev type tmpfs flags [NOEXEC,NOSUID] data mode=0755,size=8m".into()];
        for n in ["null", "zero", "full", "random", "urandom", "tty"] {
            want.push(format!("bind /dev/{n} on $T/root/dev/{n}"));
        }
        want.extend([
            "mount devpts on $T/root/dev/pts type devpts flags [NOEXEC,NOSUID] data newinstance,ptmxmode=0666,mode=0620".to_string(),
            "mount kib-shm on $T/root/dev/shm type tmpfs flags [NODEV,NOSUID] data mode=1777".into(),
            "mount sysfs on $T/root/sys type sysfs flags [NODEV,NOEXEC,NOSUID,RDONLY]".into(),
            "mount kib-run on $T/root/run type tmpfs flags [NODEV,NOSUID] data mode=0755".into(),
        ]);
        assert_eq!(f.log(), want);
        stack.close().unwrap();
        let log = f.log();
        let undone: Vec<&str> = log[want.len()..].iter().map(String::as_str).collect();
        let mut expected: Vec<String> = want.iter().rev().map(|l| format!("unmount {}", l.split(" on ").nth(1).unwrap().split(" type ").next().unwrap())).collect();
        expected.dedup();
        assert_eq!(undone, expected);
        check_unwound(&log).unwrap();
    }

    #[test]
    fn a_failing_api_mount_unwinds_what_came_before() {
        for i in 0..11 {
            let (r, f, _t) = api_mounts(Some(i));
            let e = format!("{:#}", r.unwrap_err());
            assert!(e.contains("Input/output error"), "{e}");
            check_unwound(&f.log()).unwrap_or_else(|v| panic!("failing mount {i}: {v}: {:#?}", f.log()));
            assert_eq!(f.log().iter().filter(|l| l.starts_with("unmount")).count(), i, "{:#?}", f.log());
        }
    }

    #[test]
    fn rewrites_one_line_and_deb822_sources() {
        let m = MirrorMap::parse(&["http://deb.debian.org/debian=http://127.0.0.1:8080/debian".into(), "https://pkgs.k8s.io=http://127.0.0.1:8080/pkgs".into()]).unwrap();
        let list = "deb http://deb.debian.org/debian bookworm main\ndeb [signed-by=/etc/apt/keyrings/k.asc] https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\ndeb http://security.debian.org/debian-security bookworm-security main\n";
        assert_eq!(
            rewrite_urls(list, &m),
            "deb http://127.0.0.1:8080/debian bookworm main\ndeb [signed-by=/etc/apt/keyrings/k.asc] http://127.0.0.1:8080/pkgs/core:/stable:/v1.30/deb/ /\ndeb http://security.debian.org/debian-security bookworm-security main\n"
        );
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        assert_eq!(rewrite_urls(deb822, &m), "Types: deb\nURIs: http://127.0.0.1:8080/debian\nSuites: bookworm\n");
        let repo = "[kubernetes]\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\ngpgkey=file:///etc/pki/rpm-gpg/kubernetes.asc\n";
        assert_eq!(rewrite_urls(repo, &m), "[kubernetes]\nbaseurl=http://127.0.0.1:8080/pkgs/core:/stable:/v1.30/rpm/\ngpgkey=file:///etc/pki/rpm-gpg/kubernetes.asc\n");
    }
}
