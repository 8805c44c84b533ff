//! The apt backend: apt-get, apt-mark and dpkg, run inside the chroot. Debian and its family.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::{Chroot, ManagerKind, Package, PackageManager, PackagePins};
use crate::guest::GuestRoot;

/// The apt preferences file that pins the locked versions while a `packages` step runs.
pub const LOCK_PREFERENCES: &str = "/etc/apt/preferences.d/zz-kib-lock.pref";

/// Options of every apt-get run that changes packages. `--force-unsafe-io`: dpkg skips its fsync
/// of every unpacked file, as mmdebstrap and mkosi do; the image is synced once, when Phase 2
/// unmounts it, and a build that dies half-way is thrown away anyway. Downloaded packages are
/// kept (whatever the image's apt.conf says), since with kib's package cache they outlive the
/// build.
const DPKG_OPTS: &[&str] = &[
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "Dpkg::Options::=--force-unsafe-io",
    "-o",
    "Dpkg::Use-Pty=0",
    "-o",
    "APT::Keep-Downloaded-Packages=true",
];

/// apt. Needs from the image: apt-get, apt-mark, dpkg, dpkg-query.
#[derive(Debug, Default, Clone, Copy)]
pub struct Apt;

/// In a user namespace (the guestfs backend, for a normal user), apt downloads as root there
/// instead of its `_apt` user: `_apt`'s uid maps to a subordinate id on the host, which would own
/// files and the `partial` folders in the user's package cache that the user could then neither
/// read nor remove outside kib.
const SANDBOX_ROOT: &[&str] = &["-o", "APT::Sandbox::User=root"];

fn sandbox_opts() -> &'static [&'static str] {
    if crate::config::in_user_namespace() {
        SANDBOX_ROOT
    } else {
        &[]
    }
}

impl Apt {
    fn get(c: &mut dyn Chroot, verb: &str, extra: &[&str], names: &[String], timeout: Option<Duration>) -> Result<()> {
        let mut argv = vec!["apt-get", "-q", "-y", verb];
        argv.extend_from_slice(DPKG_OPTS);
        argv.extend_from_slice(sandbox_opts());
        argv.extend_from_slice(extra);
        argv.extend(names.iter().map(String::as_str));
        c.run(&argv, &format!("apt-get {verb} {}", names.join(" ")), timeout)?;
        Ok(())
    }
}

impl PackageManager for Apt {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Apt
    }

    fn refresh(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        let mut argv = vec!["apt-get", "-q", "update"];
        argv.extend_from_slice(sandbox_opts());
        c.run(&argv, "apt-get update", timeout)?;
        Ok(())
    }

    fn install(&mut self, c: &mut dyn Chroot, specs: &[String], recommends: bool, timeout: Option<Duration>) -> Result<()> {
        Apt::get(c, "install", if recommends { &[] } else { &["--no-install-recommends"] }, specs, timeout)
    }

    fn remove(&mut self, c: &mut dyn Chroot, names: &[String], purge: bool, timeout: Option<Duration>) -> Result<()> {
        Apt::get(c, if purge { "purge" } else { "remove" }, &[], names, timeout)
    }

    fn hold(&mut self, c: &mut dyn Chroot, names: &[String], timeout: Option<Duration>) -> Result<()> {
        let mut argv = vec!["apt-mark", "hold"];
        argv.extend(names.iter().map(String::as_str));
        c.run(&argv, &format!("apt-mark hold {}", names.join(" ")), timeout)?;
        Ok(())
    }

    fn hold_all(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        if c.has("/usr/bin/dpkg") {
            c.run(&["/bin/sh", "-ec", "dpkg-query -W -f '${Package} hold\\n' | dpkg --set-selections"], "dpkg --set-selections (hold every package)", timeout)?;
        }
        Ok(())
    }

    fn clean_caches(&self, root: &GuestRoot) -> Result<()> {
        for dir in ["/var/lib/apt/lists", "/var/cache/apt/archives"] {
            for name in root.read_dir(Path::new(dir))? {
                if name != "partial" && name != "lock" {
                    root.remove(&Path::new(dir).join(&name))?;
                }
            }
            root.empty_dir(&Path::new(dir).join("partial"))?;
        }
        for name in root.read_dir(Path::new("/var/cache/apt"))? {
            if name.to_string_lossy().ends_with(".bin") {
                root.remove(&Path::new("/var/cache/apt").join(name))?;
            }
        }
        Ok(())
    }

    fn repository_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>> {
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        let mut names = root.read_dir(Path::new("/etc/apt/sources.list.d"))?;
        names.sort();
        for name in names {
            let n = name.to_string_lossy();
            if n.ends_with(".list") || n.ends_with(".sources") {
                files.push(Path::new("/etc/apt/sources.list.d").join(&name));
            }
        }
        Ok(files)
    }

    fn locked_spec(&self, requested: &str, locked: &Package) -> String {
        if requested.contains('=') || requested.contains('/') {
            requested.to_string()
        } else {
            format!("{requested}={}", locked.version)
        }
    }

    /// `/var/cache/apt` (downloaded packages in `archives/`, and the binary caches apt builds
    /// from the lists) and `/var/lib/apt/lists` (the repositories' indexes).
    fn cache_dirs(&self) -> &'static [(&'static str, &'static str)] {
        &[("cache", "/var/cache/apt"), ("lists", "/var/lib/apt/lists")]
    }

    fn cache_key_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>> {
        let mut files = vec![PathBuf::from("/etc/apt/trusted.gpg")];
        for dir in ["/etc/apt/trusted.gpg.d", "/etc/apt/keyrings"] {
            let mut names = root.read_dir(Path::new(dir))?;
            names.sort();
            files.extend(names.into_iter().map(|n| Path::new(dir).join(n)));
        }
        Ok(files)
    }

    fn lock_files(&self, pins: &PackagePins) -> Vec<(PathBuf, String)> {
        let mut s = format!("# kib --lock {}: removed after the build\n", pins.source.display());
        for (name, p) in &pins.packages {
            s.push_str(&format!("\nPackage: {name}\nPin: version {}\nPin-Priority: 1001\n", p.version));
        }
        vec![(PathBuf::from(LOCK_PREFERENCES), s)]
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeChroot;
    use super::super::{apply_step, dpkg, StepState};
    use super::*;
    use crate::manifest::Packages;

    fn pins() -> PackagePins {
        let status = "Package: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1\n\n\
                      Package: libjq1\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1\n";
        let packages = dpkg::parse_status(status).unwrap().into_iter().map(|p| (p.name.clone(), p)).collect();
        PackagePins { source: "old/bom.json".into(), packages }
    }

    #[test]
    fn a_step_runs_refresh_install_remove_purge_hold_in_order() {
        let mut c = FakeChroot::new();
        let step = Packages { install: vec!["jq".into(), "chrony=4.3".into()], remove: vec!["nano".into()], purge: vec!["vim".into()], hold: vec!["jq".into()], ..Default::default() };
        let mut state = StepState::default();
        apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap();
        let o = DPKG_OPTS.join(" ");
        assert_eq!(
            c.log(),
            [
                "apt-get -q update".to_string(),
                format!("apt-get -q -y install {o} --no-install-recommends jq chrony=4.3"),
                format!("apt-get -q -y remove {o} nano"),
                format!("apt-get -q -y purge {o} vim"),
                "apt-mark hold jq".to_string(),
            ]
        );
        assert_eq!(c.rewritten, [PathBuf::from("/etc/apt/sources.list")]);
        // The next step does not refresh again, unless it asks.
        let step = Packages { install: vec!["curl".into()], recommends: true, ..Default::default() };
        apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap();
        assert_eq!(c.log().last().unwrap(), &format!("apt-get -q -y install {o} curl"));
        assert_eq!(c.log().len(), 6);
    }

    #[test]
    fn the_package_cache_is_bound_by_sources_and_rebound_when_they_change() {
        let mut c = FakeChroot::new();
        let (uid, gid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        c.root.write(Path::new("/etc/apt/sources.list"), b"deb http://deb.debian.org/debian bookworm main\n", 0o644, uid, gid).unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = crate::pkg::PackageCache { dir: cache_dir.path().join("packages"), arch: "amd64".into() };
        let mut state = StepState { cache: Some(cache), ..Default::default() };
        let step = Packages { install: vec!["jq".into()], ..Default::default() };
        apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap();
        assert_eq!(c.cache_binds.len(), 1);
        let key = state.bound_key.clone().unwrap();
        let base = cache_dir.path().join("packages/apt").join(&key);
        assert_eq!(c.cache_binds[0], [(base.join("cache"), PathBuf::from("/var/cache/apt")), (base.join("lists"), PathBuf::from("/var/lib/apt/lists"))]);
        assert!(base.join("cache").is_dir() && base.join("lists").is_dir());
        // Same sources: no new bind, no second refresh.
        apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap();
        assert_eq!(c.cache_binds.len(), 1);
        assert_eq!(c.log().iter().filter(|l| l.ends_with("update")).count(), 1);
        // A new repository (or a new key) is another cache, bound in its place, and refreshed.
        c.root.write(Path::new("/etc/apt/sources.list.d/k8s.list"), b"deb https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n", 0o644, uid, gid).unwrap();
        apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap();
        assert_eq!(c.cache_binds.len(), 2);
        assert_ne!(state.bound_key.as_deref(), Some(key.as_str()));
        assert_eq!(c.log().iter().filter(|l| l.ends_with("update")).count(), 2);
        let k2 = state.bound_key.clone().unwrap();
        c.root.mkdir_p(Path::new("/etc/apt/keyrings"), 0o755).unwrap();
        c.root.write(Path::new("/etc/apt/keyrings/k8s.asc"), b"key", 0o644, uid, gid).unwrap();
        apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap();
        assert_ne!(state.bound_key.as_deref(), Some(k2.as_str()));
        // dpkg skips its per-file fsync; downloads are kept for the next build.
        assert!(c.log()[1].contains("Dpkg::Options::=--force-unsafe-io") && c.log()[1].contains("APT::Keep-Downloaded-Packages=true"), "{:?}", c.log());
        // Without the cache, nothing is bound.
        let mut c = FakeChroot::new();
        apply_step(&mut Apt, &mut c, &step, &mut StepState::default(), None).unwrap();
        assert!(c.cache_binds.is_empty());
    }

    #[test]
    fn locked_versions_are_asked_for_pinned_and_unpinned_after() {
        let mut c = FakeChroot::new();
        let mut state = StepState { pins: Some(std::sync::Arc::new(pins())), ..Default::default() };
        let step = Packages { install: vec!["jq".into(), "curl".into(), "libjq1=9".into()], ..Default::default() };
        // The fake image has no dpkg status: nothing installed, so nothing mismatches.
        apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap();
        assert!(c.log()[1].ends_with("--no-install-recommends jq=1.6-2.1 curl libjq1=9"), "{:?}", c.log());
        assert!(!c.root.exists(Path::new(LOCK_PREFERENCES)), "the pin file outlived the step");
        let prefs = &Apt.lock_files(&pins())[0].1;
        assert!(prefs.contains("Package: jq\nPin: version 1.6-2.1\nPin-Priority: 1001\n"), "{prefs}");
        // A failing install still removes the pin file, and says which lock it was.
        c.fail_on = Some("install".into());
        let e = format!("{:#}", apply_step(&mut Apt, &mut c, &step, &mut state, None).unwrap_err());
        assert!(e.contains("--lock old/bom.json: installing the locked versions") && e.contains("Unable to locate package"), "{e}");
        assert!(!c.root.exists(Path::new(LOCK_PREFERENCES)));
    }

    #[test]
    fn mismatches_name_each_package() {
        let installed = dpkg::parse_status(
            "Package: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1+deb12u1\n\nPackage: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7\n",
        )
        .unwrap();
        assert_eq!(pins().mismatches(&installed), ["jq 1.6-2.1+deb12u1 (locked 1.6-2.1)"]);
    }

    #[test]
    fn caches_and_repository_files() {
        let c = FakeChroot::new();
        let r = &c.root;
        for f in ["/var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease", "/var/lib/apt/lists/lock", "/var/cache/apt/archives/jq.deb", "/var/cache/apt/pkgcache.bin", "/etc/apt/sources.list.d/k8s.list", "/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list.d/README"] {
            r.write(Path::new(f), b"x", 0o644, rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw()).unwrap();
        }
        r.mkdir_p(Path::new("/var/lib/apt/lists/partial"), 0o755).unwrap();
        Apt.clean_caches(r).unwrap();
        assert_eq!(r.read_dir(Path::new("/var/lib/apt/lists")).unwrap().len(), 2); // lock and partial
        assert!(r.read_dir(Path::new("/var/cache/apt/archives")).unwrap().iter().all(|n| n == "partial"));
        assert!(!r.exists(Path::new("/var/cache/apt/pkgcache.bin")));
        let files = Apt.repository_files(r).unwrap();
        assert_eq!(files, [PathBuf::from("/etc/apt/sources.list"), "/etc/apt/sources.list.d/debian.sources".into(), "/etc/apt/sources.list.d/k8s.list".into()]);
    }
}
