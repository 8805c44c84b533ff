//! The zypper backend (SLES, openSUSE), run inside the chroot with `SYSTEMD_OFFLINE=1`.
//!
//! - install: `zypper --non-interactive install --no-recommends SPEC ...` (zypper takes
//!   `name=version` and `name-version` as they are);
//! - remove: `zypper --non-interactive remove NAME ...`;
//! - hold: `zypper --non-interactive addlock NAME ...` (written to /etc/zypp/locks);
//! - refresh: `zypper --non-interactive refresh` (never `--gpg-auto-import-keys`: a repository's
//!   key must come from a `repository` step or the image, not from the repository itself).
//! - kib's shared package cache: `/var/cache/zypp/{raw,solv,packages}` (metadata, solv files,
//!   downloaded packages). zypper keeps downloaded packages only for repositories with
//!   `keeppackages=1`, and has no global switch (zypper(8), zypp.conf(5)), so while the cache is
//!   bound each repository file says `keeppackages=1`; the session puts the originals back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::dnf::{empty_caches};
use super::rpm;
use super::{Chroot, ManagerKind, Package, PackageManager};
use crate::guest::GuestRoot;

/// zypper's repository folder.
pub const REPOS: &str = "/etc/zypp/repos.d";

/// zypper. Needs from the image: zypper, rpm.
#[derive(Debug, Default, Clone, Copy)]
pub struct Zypper;

fn argv<'a>(verb: &'a str) -> Vec<&'a str> {
    vec!["env", "SYSTEMD_OFFLINE=1", "zypper", "--non-interactive", verb]
}

impl PackageManager for Zypper {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Zypper
    }

    fn refresh(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        c.run(&argv("refresh"), "zypper refresh", timeout)?;
        Ok(())
    }

    fn install(&mut self, c: &mut dyn Chroot, specs: &[String], recommends: bool, timeout: Option<Duration>) -> Result<()> {
        let mut a = argv("install");
        // --oldpackage: a pin lower than what is installed downgrades, as with dnf and apt.
        a.push("--oldpackage");
        if !recommends {
            a.push("--no-recommends");
        }
        a.extend(specs.iter().map(String::as_str));
        c.run(&a, &format!("zypper install {}", specs.join(" ")), timeout)?;
        Ok(())
    }

    fn remove(&mut self, c: &mut dyn Chroot, names: &[String], _purge: bool, timeout: Option<Duration>) -> Result<()> {
        let mut a = argv("remove");
        a.extend(names.iter().map(String::as_str));
        c.run(&a, &format!("zypper remove {}", names.join(" ")), timeout)?;
        Ok(())
    }

    fn hold(&mut self, c: &mut dyn Chroot, names: &[String], timeout: Option<Duration>) -> Result<()> {
        let mut a = argv("addlock");
        a.extend(names.iter().map(String::as_str));
        c.run(&a, &format!("zypper addlock {}", names.join(" ")), timeout)?;
        let locked = rpm::parse_zypp_locks(&c.root().read_string(Path::new(rpm::ZYPP_LOCKS))?.unwrap_or_default());
        let missing: Vec<&str> = names.iter().filter(|n| !locked.contains(n)).map(String::as_str).collect();
        if !missing.is_empty() {
            bail!("zypper addlock: {} not in {} afterwards", missing.join(", "), rpm::ZYPP_LOCKS);
        }
        Ok(())
    }

    fn hold_all(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        let mut names: Vec<String> = rpm::installed(c.root())?.into_iter().map(|p| p.name).collect();
        names.dedup();
        let mut a = argv("addlock");
        a.extend(names.iter().map(String::as_str));
        c.run(&a, "zypper addlock (every package)", timeout)?;
        Ok(())
    }

    fn installed(&self, root: &GuestRoot) -> Result<Vec<Package>> {
        rpm::installed(root)
    }

    fn clean_caches(&self, root: &GuestRoot) -> Result<()> {
        // What `zypper clean --all` removes: packages, raw metadata, solv caches.
        empty_caches(root, &["/var/cache/zypp/packages", "/var/cache/zypp/raw", "/var/cache/zypp/solv"])
    }

    fn repository_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>> {
        let mut names = root.read_dir(Path::new(REPOS)).context("listing /etc/zypp/repos.d")?;
        names.sort();
        Ok(names.into_iter().filter(|n| n.to_string_lossy().ends_with(".repo")).map(|n| Path::new(REPOS).join(n)).collect())
    }

    fn cache_dirs(&self) -> &'static [(&'static str, &'static str)] {
        &[("raw", "/var/cache/zypp/raw"), ("solv", "/var/cache/zypp/solv"), ("packages", "/var/cache/zypp/packages")]
    }

    /// The repositories' signing keys the image trusts: `/etc/pki/rpm-gpg` (where SUSE and
    /// kib's `repository` step put them), beside the repository files.
    fn cache_key_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>> {
        rpm::gpg_key_files(root)
    }

    fn cached_repository(&self) -> Option<fn(&str) -> String> {
        Some(keep_packages)
    }
}

/// A zypper .repo file's text with `keeppackages=1` in every section (any other
/// `keeppackages=` line dropped).
pub fn keep_packages(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.split_once('=').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("keeppackages")) {
            continue;
        }
        out.push_str(line);
        if t.starts_with('[') && t.ends_with(']') {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("keeppackages=1\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeChroot;
    use super::super::{apply_step, StepState};
    use super::*;
    use crate::manifest::Packages;

    #[test]
    fn command_lines_of_a_step() {
        let mut c = FakeChroot::new();
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        c.root.write(Path::new("/etc/zypp/repos.d/kubernetes.repo"), b"[kubernetes]\n", 0o644, uid, gid).unwrap();
        let step = Packages { install: vec!["kubelet-1.30.0".into(), "jq".into()], remove: vec!["nano".into()], hold: vec!["kubelet".into()], ..Default::default() };
        let e = apply_step(&mut Zypper, &mut c, &step, &mut StepState::default(), None).unwrap_err().to_string();
        // The fake runs nothing: the lock is not there afterwards, and kib says so.
        assert_eq!(e, "zypper addlock: kubelet not in /etc/zypp/locks afterwards");
        assert_eq!(
            c.log(),
            [
                "env SYSTEMD_OFFLINE=1 zypper --non-interactive refresh",
                "env SYSTEMD_OFFLINE=1 zypper --non-interactive install --oldpackage --no-recommends kubelet-1.30.0 jq",
                "env SYSTEMD_OFFLINE=1 zypper --non-interactive remove nano",
                "env SYSTEMD_OFFLINE=1 zypper --non-interactive addlock kubelet",
            ]
        );
        assert_eq!(c.rewritten, [PathBuf::from("/etc/zypp/repos.d/kubernetes.repo")]);
        c.root.write(Path::new(rpm::ZYPP_LOCKS), b"type: package\nmatch_type: glob\ncase_sensitive: on\nsolvable_name: kubelet\n", 0o644, uid, gid).unwrap();
        Zypper.hold(&mut c, &["kubelet".into()], None).unwrap();
        let step = Packages { install: vec!["chrony".into()], recommends: true, update: Some(false), ..Default::default() };
        apply_step(&mut Zypper, &mut c, &step, &mut StepState::default(), None).unwrap();
        assert_eq!(c.log().last().unwrap(), "env SYSTEMD_OFFLINE=1 zypper --non-interactive install --oldpackage chrony");
    }

    #[test]
    fn the_package_cache_keeps_packages_per_repository() {
        assert_eq!(keep_packages("[a]\nname=A\nkeeppackages=0\n\n[b]\nbaseurl=x\n"), "[a]\nkeeppackages=1\nname=A\n\n[b]\nkeeppackages=1\nbaseurl=x\n");
        assert_eq!(keep_packages("[a]"), "[a]\nkeeppackages=1\n");
        // With the cache, the repository files are rewritten and the cache folders bound.
        let mut c = FakeChroot::new();
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        c.root.write(Path::new("/etc/zypp/repos.d/sles.repo"), b"[sles]\nkeeppackages=0\n", 0o644, uid, gid).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut state = StepState { cache: Some(crate::pkg::PackageCache { dir: cache.path().into(), arch: "amd64".into() }), ..Default::default() };
        let step = Packages { install: vec!["jq".into()], ..Default::default() };
        apply_step(&mut Zypper, &mut c, &step, &mut state, None).unwrap();
        assert_eq!(c.root.read_string(Path::new("/etc/zypp/repos.d/sles.repo")).unwrap().unwrap(), "[sles]\nkeeppackages=1\n");
        let guests: Vec<_> = c.cache_binds[0].iter().map(|(_, g)| g.display().to_string()).collect();
        assert_eq!(guests, ["/var/cache/zypp/raw", "/var/cache/zypp/solv", "/var/cache/zypp/packages"]);
    }
}
