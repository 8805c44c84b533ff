//! The dnf and yum backend: dnf (RHEL 8/9/10, Rocky, Alma, CentOS Stream, Oracle Linux, Amazon
//! Linux 2023), microdnf, and yum (RHEL 7, Amazon Linux 2; on EL 8+ `yum` is dnf), run inside the
//! chroot with `SYSTEMD_OFFLINE=1` (scriptlets' `systemctl start`/`daemon-reload` are ignored,
//! `enable` works offline).
//!
//! - install: `dnf -y install --setopt=install_weak_deps=False NAME-VERSION ...` (`name=version`
//!   is written `name-version`, which dnf understands); `--disableexcludes=<repo>` for each
//!   repository (or `main`) whose `exclude=` names a package the step installs, which is how
//!   upstream image-builder installs kubelet, kubeadm and kubectl from pkgs.k8s.io's repository
//!   whose `exclude=` holds them afterwards.
//! - I/O: nothing like dpkg's `--force-unsafe-io` is passed, because rpm already does not fsync
//!   the files it unpacks: `%_flush_io` is off unless a host defines it (rpm 4.14+; 4.18's
//!   /usr/lib/rpm/macros).
//! - kib's shared package cache: dnf's `/var/cache/dnf` (yum 3's `/var/cache/yum`) holds both
//!   the repositories' metadata and, with `--setopt=keepcache=1` (passed to every install, as
//!   apt is told `APT::Keep-Downloaded-Packages`), the downloaded packages. Keyed by the
//!   repository files, dnf.conf/yum.conf and `/etc/pki/rpm-gpg`. microdnf gets no shared cache
//!   (untested here; it keeps its own, which sysprep empties).
//! - hold: `dnf versionlock add` when the image has the versionlock plugin, otherwise the names
//!   are added to `exclude=` in `[main]` of dnf.conf (yum.conf for yum). The log says which.
//! - refresh: `dnf -y --refresh makecache`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::rpm::{self, ini_sections};
use super::{Chroot, ManagerKind, Package, PackageManager};
use crate::guest::GuestRoot;

/// dnf, microdnf or yum. Needs from the image: the tool, rpm; for holds, the versionlock plugin
/// or a writable dnf.conf/yum.conf.
#[derive(Debug, Clone, Copy)]
pub struct Dnf {
    /// `dnf`, `microdnf` or `yum`.
    pub tool: &'static str,
}

impl Dnf {
    /// The main configuration file: `/etc/dnf/dnf.conf`, or `/etc/yum.conf` for yum 3 images
    /// that have no dnf.conf.
    pub fn main_conf(&self, root: &GuestRoot) -> &'static str {
        if self.tool == "yum" && !root.exists(Path::new("/etc/dnf/dnf.conf")) {
            "/etc/yum.conf"
        } else {
            "/etc/dnf/dnf.conf"
        }
    }

    /// Whether the image has the versionlock plugin, enabled: its Python module and its
    /// configuration with `enabled=1` (dnf: python3-dnf-plugin-versionlock; yum 3:
    /// yum-plugin-versionlock).
    pub fn has_versionlock(root: &GuestRoot) -> bool {
        let enabled = |conf: &str| {
            root.read_string(Path::new(conf)).ok().flatten().is_some_and(|t| {
                ini_sections(&t).iter().any(|s| s.name == "main" && s.get("enabled").is_some_and(|v| matches!(v, "1" | "yes" | "true" | "True")))
            })
        };
        let dnf_module = ["/usr/lib", "/usr/lib64"].iter().any(|lib| {
            root.read_dir(Path::new(lib)).unwrap_or_default().iter().any(|py| {
                let py = py.to_string_lossy();
                py.starts_with("python3")
                    && ["site-packages", "dist-packages"].iter().any(|sp| root.exists(&Path::new(lib).join(py.as_ref()).join(sp).join("dnf-plugins/versionlock.py")))
            })
        });
        (dnf_module && enabled("/etc/dnf/plugins/versionlock.conf")) || (root.exists(Path::new("/usr/lib/yum-plugins/versionlock.py")) && enabled("/etc/yum/pluginconf.d/versionlock.conf"))
    }

    /// The argv prefix: `env SYSTEMD_OFFLINE=1 dnf -y`.
    fn argv<'a>(&self, verb: &'a str) -> Vec<&'a str> {
        vec!["env", "SYSTEMD_OFFLINE=1", self.tool, "-y", verb]
    }

    /// The `--disableexcludes=` options that let `specs` through the `exclude=` lists of the
    /// image's main configuration and repositories: one per section whose list matches a
    /// name the specs ask for.
    pub fn lifted_excludes(&self, root: &GuestRoot, specs: &[String]) -> Result<Vec<String>> {
        let names: Vec<String> = specs.iter().map(|s| rpm::spec_name(s, std::iter::empty())).collect();
        let mut out = Vec::new();
        let mut files = vec![PathBuf::from(self.main_conf(root))];
        files.extend(repo_files(root)?);
        for f in files {
            let Some(text) = root.read_string(&f).with_context(|| format!("reading {}", f.display()))? else { continue };
            for s in ini_sections(&text) {
                let ex = s.excludes();
                if names.iter().any(|n| ex.iter().any(|p| rpm::glob_match(p, n))) {
                    let opt = format!("--disableexcludes={}", s.name);
                    if !out.contains(&opt) {
                        out.push(opt);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds `names` to `exclude=` in `[main]` of `conf` (extending an existing line), keeping the
    /// rest of the file as it is. Returns the new text.
    pub fn add_main_excludes(text: &str, names: &[String]) -> String {
        let mut out = String::new();
        let mut in_main = false;
        let mut done = false;
        let mut main_seen = false;
        for line in text.split_inclusive('\n') {
            let t = line.trim();
            if t.starts_with('[') && t.ends_with(']') {
                if in_main && !done {
                    out.push_str(&format!("exclude={}\n", names.join(" ")));
                    done = true;
                }
                in_main = &t[1..t.len() - 1] == "main";
                main_seen |= in_main;
            } else if in_main && !done {
                if let Some((k, v)) = t.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("exclude") {
                        let mut have: Vec<&str> = v.split([' ', ',']).filter(|s| !s.is_empty()).collect();
                        for n in names {
                            if !have.contains(&n.as_str()) {
                                have.push(n);
                            }
                        }
                        out.push_str(&format!("exclude={}\n", have.join(" ")));
                        done = true;
                        continue;
                    }
                }
            }
            out.push_str(line);
        }
        if !done {
            if !main_seen {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("[main]\n");
            } else if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("exclude={}\n", names.join(" ")));
        }
        out
    }
}

/// `/etc/yum.repos.d/*.repo`, sorted.
pub fn repo_files(root: &GuestRoot) -> Result<Vec<PathBuf>> {
    let mut names = root.read_dir(Path::new(rpm::YUM_REPOS)).context("listing /etc/yum.repos.d")?;
    names.sort();
    Ok(names.into_iter().filter(|n| n.to_string_lossy().ends_with(".repo")).map(|n| Path::new(rpm::YUM_REPOS).join(n)).collect())
}

/// `name=version` → `name-version` (what dnf and tdnf understand); other specs as they are.
pub fn rpm_spec(spec: &str) -> String {
    match spec.split_once('=') {
        Some((n, v)) if !n.is_empty() && !n.contains(['<', '>']) => format!("{n}-{v}"),
        _ => spec.to_string(),
    }
}

/// The exact NEVRA of a recorded package: `name-epoch:version-release.arch`.
pub fn nevra(p: &Package) -> String {
    let release = p.release.as_deref().map(|r| format!("-{r}")).unwrap_or_default();
    format!("{}-{}:{}{release}.{}", p.name, p.epoch.unwrap_or(0), p.version, p.architecture)
}

/// Removes what is inside these cache folders (not the folders).
pub fn empty_caches(root: &GuestRoot, dirs: &[&str]) -> Result<()> {
    for d in dirs {
        root.empty_dir(Path::new(d)).with_context(|| format!("emptying {d}"))?;
    }
    Ok(())
}

impl PackageManager for Dnf {
    fn kind(&self) -> ManagerKind {
        if self.tool == "yum" {
            ManagerKind::Yum
        } else {
            ManagerKind::Dnf
        }
    }

    fn refresh(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        let argv = ["env", "SYSTEMD_OFFLINE=1", self.tool, "-y", "--refresh", "makecache"];
        c.run(&argv, &format!("{} makecache", self.tool), timeout)?;
        Ok(())
    }

    fn install(&mut self, c: &mut dyn Chroot, specs: &[String], recommends: bool, timeout: Option<Duration>) -> Result<()> {
        let specs: Vec<String> = specs.iter().map(|s| rpm_spec(s)).collect();
        let lifted = self.lifted_excludes(c.root(), &specs)?;
        let mut argv = self.argv("install");
        if self.tool != "microdnf" {
            // Kept for kib's package cache; without it, sysprep empties the image's.
            argv.push("--setopt=keepcache=1");
        }
        if !recommends {
            argv.push("--setopt=install_weak_deps=False");
        }
        argv.extend(lifted.iter().map(String::as_str));
        argv.extend(specs.iter().map(String::as_str));
        c.run(&argv, &format!("{} install {}", self.tool, specs.join(" ")), timeout)?;
        Ok(())
    }

    fn remove(&mut self, c: &mut dyn Chroot, names: &[String], _purge: bool, timeout: Option<Duration>) -> Result<()> {
        let mut argv = self.argv("remove");
        argv.extend(names.iter().map(String::as_str));
        c.run(&argv, &format!("{} remove {}", self.tool, names.join(" ")), timeout)?;
        Ok(())
    }

    fn hold(&mut self, c: &mut dyn Chroot, names: &[String], timeout: Option<Duration>) -> Result<()> {
        if Dnf::has_versionlock(c.root()) {
            let mut argv = vec!["env", "SYSTEMD_OFFLINE=1", self.tool, "-y", "versionlock", "add"];
            argv.extend(names.iter().map(String::as_str));
            c.run(&argv, &format!("{} versionlock add {}", self.tool, names.join(" ")), timeout)?;
            // `versionlock add` of a name that is not installed prints "No package found" and
            // exits 0: check that each one is locked now.
            let h = rpm::holds(c.root())?;
            let missing: Vec<&String> = names.iter().filter(|n| !h.patterns.iter().any(|(p, src)| src.contains("versionlock") && rpm::glob_match(p, n))).collect();
            if !missing.is_empty() {
                bail!("{} versionlock add: {} not locked (not installed?)", self.tool, missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
            }
            tracing::info!("held with the versionlock plugin: {}", names.join(" "));
        } else {
            let conf = self.main_conf(c.root());
            let text = c.root().read_string(Path::new(conf)).with_context(|| format!("reading {conf}"))?.unwrap_or_default();
            let st = c.root().lstat(Path::new(conf))?;
            let (mode, uid, gid) = st.map_or((0o644, 0, 0), |s| (s.st_mode & 0o7777, s.st_uid, s.st_gid));
            c.root().write(Path::new(conf), Dnf::add_main_excludes(&text, names).as_bytes(), mode, uid, gid).with_context(|| format!("writing {conf}"))?;
            tracing::info!("held with `exclude=` in [main] of {conf} (the image has no versionlock plugin): {}", names.join(" "));
        }
        Ok(())
    }

    fn hold_all(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()> {
        if !Dnf::has_versionlock(c.root()) {
            tracing::warn!("sysprep hold-packages: the image has no versionlock plugin; holding every package with exclude=* would stop the node from installing anything, so packages are left unheld");
            return Ok(());
        }
        let names: Vec<String> = {
            let mut n: Vec<String> = rpm::installed(c.root())?.into_iter().map(|p| p.name).collect();
            n.dedup();
            n
        };
        // Installed packages only: sysprep has emptied the caches already, and must not fill
        // them again from the repositories.
        let mut argv = vec!["env", "SYSTEMD_OFFLINE=1", self.tool, "-y", "-q", "--disablerepo=*", "versionlock", "add"];
        argv.extend(names.iter().map(String::as_str));
        c.run(&argv, &format!("{} versionlock add (every package)", self.tool), timeout)?;
        // dnf writes its installed-package cache (@System.solv) even without repositories: sysprep
        // emptied the caches before this, so empty them again.
        self.clean_caches(c.root())
    }

    fn installed(&self, root: &GuestRoot) -> Result<Vec<Package>> {
        rpm::installed(root)
    }

    fn clean_caches(&self, root: &GuestRoot) -> Result<()> {
        // What `dnf clean all` removes: metadata, packages, solv files.
        empty_caches(root, &["/var/cache/dnf", "/var/cache/yum"])
    }

    fn repository_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>> {
        repo_files(root)
    }

    fn cache_dirs(&self) -> &'static [(&'static str, &'static str)] {
        match self.tool {
            "dnf" => &[("cache", "/var/cache/dnf")],
            "yum" => &[("cache", "/var/cache/yum")],
            _ => &[],
        }
    }

    /// The main configuration (its `cachedir`, `gpgcheck`) and the signing keys in
    /// `/etc/pki/rpm-gpg`.
    fn cache_key_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>> {
        let mut files = vec![PathBuf::from(self.main_conf(root))];
        files.extend(rpm::gpg_key_files(root)?);
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeChroot;
    use super::super::{apply_step, StepState};
    use super::*;
    use crate::manifest::Packages;

    fn put(c: &FakeChroot, p: &str, s: &str) {
        c.root.write(Path::new(p), s.as_bytes(), 0o644, rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw()).unwrap();
    }

    #[test]
    fn command_lines_of_a_step() {
        let mut c = FakeChroot::new();
        put(&c, "/etc/yum.repos.d/kubernetes.repo", "[kubernetes]\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n");
        put(&c, "/etc/yum.repos.d/rocky.repo", "[baseos]\nbaseurl=x\n");
        // An existing dnf.conf (owned by whoever runs the test, so that its owner is kept
        // without root: a new one would be root's).
        put(&c, "/etc/dnf/dnf.conf", "[main]\n");
        let step = Packages {
            install: vec!["kubelet-1.30.0".into(), "kubeadm=1.30.0".into(), "jq".into()],
            remove: vec!["nano".into()],
            hold: vec!["kubelet".into()],
            ..Default::default()
        };
        let mut state = StepState::default();
        let mut d = Dnf { tool: "dnf" };
        // No versionlock plugin in the fake image: the hold goes to dnf.conf's exclude=.
        apply_step(&mut d, &mut c, &step, &mut state, None).unwrap();
        assert_eq!(
            c.log(),
            [
                "env SYSTEMD_OFFLINE=1 dnf -y --refresh makecache",
                "env SYSTEMD_OFFLINE=1 dnf -y install --setopt=keepcache=1 --setopt=install_weak_deps=False --disableexcludes=kubernetes kubelet-1.30.0 kubeadm-1.30.0 jq",
                "env SYSTEMD_OFFLINE=1 dnf -y remove nano",
            ]
        );
        assert_eq!(c.rewritten, [PathBuf::from("/etc/yum.repos.d/kubernetes.repo"), "/etc/yum.repos.d/rocky.repo".into()]);
        assert_eq!(c.root.read_string(Path::new("/etc/dnf/dnf.conf")).unwrap().unwrap(), "[main]\nexclude=kubelet\n");
        // recommends: true keeps weak dependencies; yum is the same tool line.
        let step = Packages { install: vec!["chrony".into()], recommends: true, update: Some(false), ..Default::default() };
        apply_step(&mut Dnf { tool: "yum" }, &mut c, &step, &mut state, None).unwrap();
        assert_eq!(c.log().last().unwrap(), "env SYSTEMD_OFFLINE=1 yum -y install --setopt=keepcache=1 chrony");
    }

    #[test]
    fn the_package_cache_is_keyed_by_repositories_and_keys() {
        let cache = tempfile::tempdir().unwrap();
        let keyed = |key: &str| {
            let mut c = FakeChroot::new();
            put(&c, "/etc/yum.repos.d/rocky.repo", "[baseos]\nbaseurl=x\n");
            put(&c, "/etc/dnf/dnf.conf", "[main]\n");
            put(&c, "/etc/pki/rpm-gpg/RPM-GPG-KEY-rocky", key);
            let mut state = StepState { cache: Some(crate::pkg::PackageCache { dir: cache.path().into(), arch: "amd64".into() }), ..Default::default() };
            let step = Packages { install: vec!["jq".into()], ..Default::default() };
            apply_step(&mut Dnf { tool: "dnf" }, &mut c, &step, &mut state, None).unwrap();
            // dnf's own repository files are not rewritten for the cache (it is told on its
            // command line), and one folder is bound.
            assert_eq!(c.root.read_string(Path::new("/etc/yum.repos.d/rocky.repo")).unwrap().unwrap(), "[baseos]\nbaseurl=x\n");
            assert_eq!(c.cache_binds.len(), 1);
            let (host, guest) = c.cache_binds[0][0].clone();
            assert_eq!(guest, Path::new("/var/cache/dnf"));
            host
        };
        let a = keyed("key A");
        assert!(a.starts_with(cache.path().join("dnf")), "{}", a.display());
        assert_eq!(keyed("key A"), a);
        assert_ne!(keyed("key B"), a, "another signing key must not share the cache");
        assert!(Dnf { tool: "microdnf" }.cache_dirs().is_empty());
    }

    #[test]
    fn hold_with_versionlock_checks_the_list() {
        let mut c = FakeChroot::new();
        put(&c, "/usr/lib/python3.11/site-packages/dnf-plugins/versionlock.py", "");
        put(&c, "/etc/dnf/plugins/versionlock.conf", "[main]\nenabled = 1\n");
        assert!(Dnf::has_versionlock(&c.root));
        // The fake runs nothing, so the list stays empty: kib notices the lock did not happen.
        let e = Dnf { tool: "dnf" }.hold(&mut c, &["kubelet".into()], None).unwrap_err().to_string();
        assert_eq!(e, "dnf versionlock add: kubelet not locked (not installed?)");
        assert_eq!(c.log(), ["env SYSTEMD_OFFLINE=1 dnf -y versionlock add kubelet"]);
        put(&c, "/etc/dnf/plugins/versionlock.list", "kubelet-0:1.30.0-150500.1.1.*\n");
        Dnf { tool: "dnf" }.hold(&mut c, &["kubelet".into()], None).unwrap();
    }

    #[test]
    fn main_excludes_extend_an_existing_line() {
        assert_eq!(Dnf::add_main_excludes("[main]\ngpgcheck=1\nexclude=kernel*\n[x]\na=b\n", &["kubelet".into()]), "[main]\ngpgcheck=1\nexclude=kernel* kubelet\n[x]\na=b\n");
        assert_eq!(Dnf::add_main_excludes("[main]\ngpgcheck=1\n\n[x]\n", &["a".into(), "b".into()]), "[main]\ngpgcheck=1\n\nexclude=a b\n[x]\n");
        assert_eq!(Dnf::add_main_excludes("[main]\ngpgcheck=1", &["a".into()]), "[main]\ngpgcheck=1\nexclude=a\n");
    }

    #[test]
    fn lock_specs_are_exact_nevras() {
        let p = rpm::parse_query("kubelet\t0\t1.30.0\t150500.1.1\tx86_64\tkubelet-1.30.0-150500.1.1.src.rpm\tApache-2.0\n").unwrap().remove(0);
        assert_eq!(Dnf { tool: "dnf" }.locked_spec("kubelet", &p), "kubelet-0:1.30.0-150500.1.1.x86_64");
        assert_eq!(Dnf { tool: "dnf" }.locked_spec("kubelet-1.30.0", &p), "kubelet-1.30.0");
        assert_eq!(rpm_spec("kubelet=1.30.0"), "kubelet-1.30.0");
        assert_eq!(rpm_spec("kubelet"), "kubelet");
    }

    #[test]
    fn caches_are_emptied() {
        let c = FakeChroot::new();
        put(&c, "/var/cache/dnf/baseos-1/repodata/repomd.xml", "x");
        put(&c, "/var/cache/dnf/expired_repos.json", "x");
        Dnf { tool: "dnf" }.clean_caches(&c.root).unwrap();
        assert!(c.root.read_dir(Path::new("/var/cache/dnf")).unwrap().is_empty());
    }
}
