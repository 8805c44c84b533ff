//! The tdnf backend (Photon OS 4/5, Azure Linux 3), run inside the chroot with
//! `SYSTEMD_OFFLINE=1`. From tdnf's own sources and documentation (vmware/tdnf: tools/cli
//! help and option parsing, client/config.c, client/goal.c, pytests/tests/test_locks.py); no
//! tdnf is packaged anywhere kib's tests can reach, so this backend is tested by its command
//! lines only.
//!
//! - install: `tdnf -y install NAME-VERSION ...` (`name=version` is written `name-version`).
//!   tdnf has no weak-dependency option: `recommends` has no effect (a warning says so).
//! - remove: `tdnf -y remove NAME ...`.
//! - hold: a `locks.d` file, `/etc/tdnf/locks.d/kib.conf`, one package name per line: tdnf adds
//!   a solver lock on each installed package named there (no update, no removal).
//! - refresh: `tdnf -y --refresh makecache`.
//! - tdnf reads `excludepkgs=` in tdnf.conf, not `exclude=` in a .repo file: pkgs.k8s.io's
//!   repository `exclude=` does not hold anything on tdnf; the `hold` verb does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::dnf::{empty_caches, repo_files, rpm_spec};
use super::rpm;
use super::{Chroot, ManagerKind, Package, PackageManager};
use crate::guest::GuestRoot;

/// The locks file kib writes its holds into.
pub const LOCKS_FILE: &str = "/etc/tdnf/locks.d/kib.conf";

/// tdnf. Needs from the image: tdnf, rpm.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tdnf;

fn argv<'a>(verb: &'a str) -> Vec<&'a str> {
    vec!["env", "SYSTEMD_OFFLINE=1", "tdnf", "-y", verb]
}

impl PackageManager for Tdnf {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Tdnf
    }

    fn refresh(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        c.run(&["env", "SYSTEMD_OFFLINE=1", "tdnf", "-y", "--refresh", "makecache"], "tdnf makecache", timeout)?;
        Ok(())
    }

    fn install(&mut self, c: &mut dyn Chroot, specs: &[String], recommends: bool, timeout: Option<Duration>) -> Result<()> {
        if recommends {
            tracing::warn!("tdnf has no weak-dependency option: `recommends: true` changes nothing");
        }
        let specs: Vec<String> = specs.iter().map(|s| rpm_spec(s)).collect();
        let mut a = argv("install");
        a.extend(specs.iter().map(String::as_str));
        c.run(&a, &format!("tdnf install {}", specs.join(" ")), timeout)?;
        Ok(())
    }

    fn remove(&mut self, c: &mut dyn Chroot, names: &[String], _purge: bool, timeout: Option<Duration>) -> Result<()> {
        let mut a = argv("remove");
        a.extend(names.iter().map(String::as_str));
        c.run(&a, &format!("tdnf remove {}", names.join(" ")), timeout)?;
        Ok(())
    }

    fn hold(&mut self, c: &mut dyn Chroot, names: &[String], _timeout: Option<Duration>) -> Result<()> {
        let root = c.root();
        let mut text = root.read_string(Path::new(LOCKS_FILE))?.unwrap_or_default();
        let have: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
        for n in names {
            if !have.contains(n) {
                text.push_str(n);
                text.push('\n');
            }
        }
        root.mkdir_p(Path::new(rpm::TDNF_LOCKS), 0o755)?;
        // Owned like the folder it goes in (root's, in an image).
        let (uid, gid) = root.lstat(Path::new(rpm::TDNF_LOCKS))?.map_or((0, 0), |st| (st.st_uid, st.st_gid));
        root.write(Path::new(LOCKS_FILE), text.as_bytes(), 0o644, uid, gid).with_context(|| format!("writing {LOCKS_FILE}"))?;
        tracing::info!("held in {LOCKS_FILE}: {}", names.join(" "));
        Ok(())
    }

    fn hold_all(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        let mut names: Vec<String> = rpm::installed(c.root())?.into_iter().map(|p| p.name).collect();
        names.dedup();
        self.hold(c, &names, timeout)
    }

    fn installed(&self, root: &GuestRoot) -> Result<Vec<Package>> {
        rpm::installed(root)
    }

    fn clean_caches(&self, root: &GuestRoot) -> Result<()> {
        // What `tdnf clean all` removes.
        empty_caches(root, &["/var/cache/tdnf"])
    }

    fn repository_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>> {
        repo_files(root)
    }


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
        let step = Packages { install: vec!["kubelet=1.30.0".into(), "jq".into()], remove: vec!["nano".into()], hold: vec!["kubelet".into(), "kubeadm".into()], ..Default::default() };
        apply_step(&mut Tdnf, &mut c, &step, &mut StepState::default(), None).unwrap();
        assert_eq!(
            c.log(),
            ["env SYSTEMD_OFFLINE=1 tdnf -y --refresh makecache", "env SYSTEMD_OFFLINE=1 tdnf -y install kubelet-1.30.0 jq", "env SYSTEMD_OFFLINE=1 tdnf -y remove nano"]
        );
        // A second hold adds only what is new; the locks are what kib's holds reader sees.
        Tdnf.hold(&mut c, &["kubelet".into(), "cri-tools".into()], None).unwrap();
        assert_eq!(c.root.read_string(Path::new(LOCKS_FILE)).unwrap().unwrap(), "kubelet\nkubeadm\ncri-tools\n");
        let h = rpm::holds(&c.root).unwrap();
        assert!(h.holds("kubeadm") && h.holds("cri-tools") && !h.holds("jq"));
        let p = rpm::parse_query("kubelet\t0\t1.30.0\t150500.1.1\tx86_64\tkubelet-1.30.0-150500.1.1.src.rpm\tApache-2.0\n").unwrap().remove(0);
        assert_eq!(Tdnf.locked_spec("kubelet", &p), "kubelet-0:1.30.0-150500.1.1.x86_64");
    }
}
