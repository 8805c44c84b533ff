//! Packages: the installed-package model, the image's package databases, and the package
//! managers that change them. Phase 1 (`packages` steps), Phase 2 (the BOM, sysprep's caches and
//! holds), `kib inspect`, `kib check` and `--lock` all go through here; nothing here imports a
//! phase or a command.
//!
//! - [`Package`]: one installed package, RPM-ready (epoch, release, source RPM).
//! - [`installed`]: the database readers: dpkg's status file ([`dpkg`], with licences from
//!   DEP-5 copyright files, [`license`]) and the rpmdb ([`rpm`]: the image's own `rpm -qa --qf`,
//!   with the header's `License` and the holds of dnf/yum, zypper and tdnf).
//! - [`PackageManager`]: the verbs a `packages` step and sysprep need, one implementation per tool.
//!   apt is [`apt::Apt`], dnf/yum/microdnf [`dnf::Dnf`], zypper [`zypper::Zypper`], tdnf
//!   [`tdnf::Tdnf`]. [`detect`] picks one from the image ([`detect::detect`]), or the manifest
//!   forces it (`packages: {manager: ...}`).
//! - [`Chroot`]: what a backend needs from the chroot session (run a command, rewrite repository
//!   files through the mirror map until the session closes), so that backends can be tested
//!   with a recording fake.
//!
//! **Adding a backend**: write `src/pkg/<tool>.rs` with a type that implements
//! [`PackageManager`], and make its arm of [`backend`] return it.

pub mod apt;
pub mod detect;
pub mod dnf;
pub mod dpkg;
pub mod license;
pub mod rpm;
pub mod tdnf;
pub mod zypper;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use indexmap::IndexMap;

use crate::exec::ExecError;
use crate::guest::GuestRoot;
pub use crate::manifest::ManagerKind;
pub use detect::{detect, Detected};
pub use license::PackageLicense;

/// The kind of package, which decides its purl type and how versions compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    /// A Debian package (dpkg): `version` is dpkg's whole version string, epoch included.
    #[default]
    Deb,
    /// An RPM: `epoch`, `version` and `release` separately.
    Rpm,
}

impl PackageKind {
    fn is_deb(&self) -> bool {
        *self == PackageKind::Deb
    }
}

/// An installed package, as its database records it. bom.json's `packages` entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    /// `deb` (absent in bom.json) or `rpm`.
    #[serde(default, skip_serializing_if = "PackageKind::is_deb")]
    pub kind: PackageKind,
    /// RPM epoch; `None` when the package has none, and always for deb (dpkg's epoch stays in
    /// `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// deb: dpkg's version (`1:2.36-9+deb12u7`); rpm: the `VERSION` tag.
    pub version: String,
    /// RPM release (`3.1.el9`); `None` for deb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// `amd64`, `all` (deb); `x86_64`, `noarch` (rpm).
    pub architecture: String,
    /// The source package when it differs from the name (dpkg's `Source` without a version;
    /// the source RPM's name for rpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Held at this version (apt-mark hold, dnf versionlock, zypper addlock).
    #[serde(default)]
    pub held: bool,
    /// The licence the package declares (deb: its DEP-5 copyright file; rpm: the `License` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<PackageLicense>,
}

impl Package {
    /// The version as the package manager writes it: deb `version`; rpm `[epoch:]version-release`.
    pub fn full_version(&self) -> String {
        match self.kind {
            PackageKind::Deb => self.version.clone(),
            PackageKind::Rpm => {
                let epoch = self.epoch.map(|e| format!("{e}:")).unwrap_or_default();
                let release = self.release.as_deref().map(|r| format!("-{r}")).unwrap_or_default();
                format!("{epoch}{}{release}", self.version)
            }
        }
    }
}

/// A package database kib can find in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// `/var/lib/dpkg/status`.
    Dpkg,
    /// `/var/lib/rpm` or `/usr/lib/sysimage/rpm`.
    Rpm,
}

impl Database {
    /// The database of the image's own package manager: the rpmdb when os-release names an RPM
    /// family (ID or ID_LIKE: rhel, fedora, suse, photon, ...) and the image has one, even if a
    /// dpkg status file is there too (kib's EL test fixture keeps its Debian userland's);
    /// otherwise dpkg first, then rpm. `None`: no package database at all.
    pub fn find(root: &GuestRoot) -> Option<Database> {
        let has_rpm = ["/var/lib/rpm", "/usr/lib/sysimage/rpm"].iter().any(|p| root.exists(Path::new(p)));
        let rpm_family = detect::os_ids(root).iter().find_map(|id| detect::family_manager(id)).is_some_and(|k| k != ManagerKind::Apt);
        if has_rpm && rpm_family {
            Some(Database::Rpm)
        } else if root.exists(Path::new(dpkg::STATUS)) {
            Some(Database::Dpkg)
        } else if has_rpm {
            Some(Database::Rpm)
        } else {
            None
        }
    }
}

/// Every installed package in the image at `root`, sorted by name, each with its licence where
/// known. Empty for an image with no package database.
///
/// Errors: an unreadable or unparsable database; an rpm database without an rpm program.
pub fn installed(root: &GuestRoot) -> Result<Vec<Package>> {
    match Database::find(root) {
        Some(Database::Dpkg) => dpkg::installed(root),
        Some(Database::Rpm) => rpm::installed(root),
        None => Ok(Vec::new()),
    }
}

/// What a package backend needs from the chroot session: the image's root, running the
/// image's own tools, and rewriting repository files through the mirror map for as long as the
/// session is open. `crate::phase1::session::Session` is the real one.
pub trait Chroot {
    /// The image's root.
    fn root(&self) -> &GuestRoot;
    /// Runs `argv` in the chroot; `what` names it in logs and errors. Returns the last lines of
    /// its output.
    fn run(&self, argv: &[&str], what: &str, timeout: Option<Duration>) -> Result<Vec<String>, ExecError>;
    /// Whether the image has this file (an executable path such as `/usr/bin/apt-get`).
    fn has(&self, guest: &str) -> bool {
        self.root().exists(Path::new(guest))
    }
    /// Rewrites the URLs in these image files (repository definitions) through the mirror map,
    /// and then, with `also`, through that function too (zypper's `keeppackages=1` while kib's
    /// package cache is bound: [`PackageManager::cached_repository`]); the session puts every
    /// original back when it closes. Files already rewritten are left alone, so calling it
    /// before every step is cheap.
    fn rewrite_sources(&mut self, files: &[PathBuf], also: Option<fn(&str) -> String>) -> Result<()>;
    /// Bind-mounts each `(host folder, image folder)` of kib's shared package cache over the
    /// image folder (made when missing), after releasing the binds of an earlier call. They stay
    /// until the session releases them (at the end of Phase 1, before sysprep) or closes.
    fn bind_package_cache(&mut self, binds: &[(PathBuf, PathBuf)]) -> Result<()>;
}

/// The pins of a `--lock` build: every package the locked BOM recorded, by name.
#[derive(Debug, Clone, Default)]
pub struct PackagePins {
    /// The bom.json they come from, for messages.
    pub source: PathBuf,
    pub packages: IndexMap<String, Package>,
}

impl PackagePins {
    /// The installed packages whose version differs from the pin, as `name version (locked
    /// version)` lines.
    pub fn mismatches(&self, installed: &[Package]) -> Vec<String> {
        installed
            .iter()
            .filter_map(|p| {
                let locked = self.packages.get(&p.name)?;
                let (have, want) = (p.full_version(), locked.full_version());
                (have != want).then(|| format!("{} {have} (locked {want})", p.name))
            })
            .collect()
    }
}

/// A package manager: the verbs of a `packages` step, sysprep's, and `--lock`'s. Every verb runs
/// the image's own tool in the chroot through [`Chroot`]. One implementation per tool; see the
/// module docs for adding one.
pub trait PackageManager: Send {
    /// Which manager this is.
    fn kind(&self) -> ManagerKind;
    /// Refreshes the repository metadata (`apt-get update`, `dnf makecache`).
    fn refresh(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()>;
    /// Installs `specs` (names, or names with the tool's own version pin), with weak
    /// dependencies (recommends) only when `recommends`.
    fn install(&mut self, c: &mut dyn Chroot, specs: &[String], recommends: bool, timeout: Option<Duration>) -> Result<()>;
    /// Removes `names`; with `purge`, their configuration files too (where the tool has it).
    fn remove(&mut self, c: &mut dyn Chroot, names: &[String], purge: bool, timeout: Option<Duration>) -> Result<()>;
    /// Holds `names` at their installed version.
    fn hold(&mut self, c: &mut dyn Chroot, names: &[String], timeout: Option<Duration>) -> Result<()>;
    /// Holds every installed package (sysprep's `hold-packages`).
    fn hold_all(&mut self, c: &mut dyn Chroot, timeout: Option<Duration>) -> Result<()>;
    /// Every installed package, with licences (see [`installed`]).
    fn installed(&self, root: &GuestRoot) -> Result<Vec<Package>> {
        installed(root)
    }
    /// Empties the tool's metadata and download caches, through `root` (sysprep's
    /// `package-cache`).
    fn clean_caches(&self, root: &GuestRoot) -> Result<()>;
    /// The image's repository definition files whose URLs the mirror map rewrites while steps
    /// run (apt: sources.list and sources.list.d; dnf: /etc/yum.repos.d/*.repo).
    fn repository_files(&self, root: &GuestRoot) -> Result<Vec<PathBuf>>;
    /// What to ask the tool for when a step names `requested` and the lock recorded `locked`
    /// (`jq=1.6-2.1` for apt). A request that already carries a version is kept as it is.
    /// Default: the RPM tools' exact NEVRA, `jq-0:1.6-2.el9.x86_64` (dnf, yum, tdnf and
    /// zypper all read it).
    fn locked_spec(&self, requested: &str, locked: &Package) -> String {
        if requested == locked.name {
            dnf::nevra(locked)
        } else {
            requested.to_string()
        }
    }
    /// Files that pin every locked package while a `packages` step runs (apt's preferences
    /// file), written before the step and removed after it: image path and content. Default:
    /// none (the RPM tools have no per-build pin file: the locked NEVRAs are asked for by name,
    /// and every installed package is checked against its pin after the step).
    fn lock_files(&self, _pins: &PackagePins) -> Vec<(PathBuf, String)> {
        Vec::new()
    }
    /// The image folders holding the tool's downloaded packages and repository metadata, which
    /// kib's shared package cache replaces while steps run (see [`PackageCache`]): a name for
    /// the cache's subfolder, and the image path. Default: none (the tool keeps its own caches
    /// in the image, and sysprep empties them).
    fn cache_dirs(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// The image files whose content keys the shared package cache, beside
    /// [`PackageManager::repository_files`]: the repositories' signing keys (apt: trusted.gpg,
    /// trusted.gpg.d, /etc/apt/keyrings), so that metadata checked against one set of keys is
    /// never reused by an image trusting another. Default: none.
    fn cache_key_files(&self, _root: &GuestRoot) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    /// A repository file's text as the tool must read it while kib's package cache is bound,
    /// when the tool keeps downloaded packages only where each repository says so (zypper's
    /// `keeppackages`); the session puts the original back when it closes. Default: `None`,
    /// the file as it is (apt and dnf are told on their command lines).
    fn cached_repository(&self) -> Option<fn(&str) -> String> {
        None
    }
}

/// The backend for `kind`, using the image's tool `tool` (`apt-get`, `dnf`, `microdnf`, ...).
///
/// Errors: none today (every manager [`detect`] finds has a backend); kept fallible for a
/// manager detected before its backend is written.
pub fn backend(detected: &Detected) -> Result<Box<dyn PackageManager>> {
    Ok(match detected.kind {
        ManagerKind::Apt => Box::new(apt::Apt),
        ManagerKind::Dnf | ManagerKind::Yum => Box::new(dnf::Dnf { tool: detected.tool }),
        ManagerKind::Tdnf => Box::new(tdnf::Tdnf),
        ManagerKind::Zypper => Box::new(zypper::Zypper),
    })
}

/// The backend for the package database the image has, when its tools were not found (an image
/// whose apt-get is gone still has dpkg's database and apt's caches, which sysprep cleans and
/// holds). `None` without a database kib has a backend for.
pub fn backend_for_database(root: &GuestRoot) -> Option<Box<dyn PackageManager>> {
    match Database::find(root)? {
        Database::Dpkg => Some(Box::new(apt::Apt)),
        Database::Rpm => {
            let tools = detect::tools_in(root);
            let d = detect::detect(&detect::os_ids(root), &tools, None).ok()?;
            backend(&d).ok()
        }
    }
}

/// What earlier `packages` steps of this build did, and the `--lock` pins.
#[derive(Debug, Default)]
pub struct StepState {
    /// The metadata was refreshed since the last `repository` step: later steps skip it unless
    /// they ask for it.
    pub refreshed: bool,
    /// `--lock`: the versions to install.
    pub pins: Option<std::sync::Arc<PackagePins>>,
    /// kib's shared package cache; `None`: the tools use the image's own caches.
    pub cache: Option<PackageCache>,
    /// The key of the package cache bound into the image now.
    pub bound_key: Option<String>,
    /// The key of the package cache whose binds went with the chroot session when it was closed
    /// for a build-cache snapshot: binding the same one again needs no refresh.
    pub released_key: Option<String>,
}

impl StepState {
    /// The chroot session was closed (for a build-cache snapshot), and the package cache's binds
    /// with it: the next packages step binds it again.
    pub fn session_closed(&mut self) {
        if let Some(k) = self.bound_key.take() {
            self.released_key = Some(k);
        }
    }
}

/// kib's package cache, shared by builds: the package manager's downloaded packages and
/// repository metadata (apt: `/var/cache/apt`, archives included, and `/var/lib/apt/lists`)
/// live in `<dir>/<manager>/<key>/<name>` on the host and are bind-mounted over the image's
/// folders while the steps run, so that a build that needs nothing new downloads nothing (apt
/// still asks the repositories whether their indexes changed; an unchanged one answers 304).
/// The key is the SHA-256 (first 16 hex digits) of the manager, the architecture, and the
/// image's repository definitions (after the mirror map) and signing keys, so images with
/// other sources or keys never share metadata. The image's own caches stay as they were, and
/// sysprep empties them as before. A packages step holds an exclusive `flock` on
/// `<key>/.lock`, so concurrent builds sharing a key take turns.
#[derive(Debug, Clone)]
pub struct PackageCache {
    /// `<cache dir>/packages`.
    pub dir: PathBuf,
    /// The image's architecture (`amd64`, `arm64`).
    pub arch: String,
}

impl PackageCache {
    /// The key for `kind` over the image files `files` (absent ones are skipped): see
    /// [`PackageCache`].
    ///
    /// Errors: a file cannot be read.
    pub fn key(&self, kind: ManagerKind, root: &GuestRoot, files: &[PathBuf]) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(format!("kib package cache 1\0{kind}\0{}\0", self.arch));
        for f in files {
            let content = match root.read(f) {
                Ok(c) => c,
                // A folder among the keys (keyrings/sub/): not a key file.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ISDIR.raw_os_error()) => None,
                Err(e) => bail!("reading {} in the image: {e}", f.display()),
            };
            if let Some(content) = content {
                h.update(f.as_os_str().as_encoded_bytes());
                h.update([0]);
                h.update((content.len() as u64).to_le_bytes());
                h.update(&content);
            }
        }
        Ok(hex::encode(h.finalize())[..16].to_string())
    }
}

/// An exclusive `flock` on a package cache entry, held while a packages step runs.
#[derive(Debug)]
pub struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    /// Locks `<dir>/.lock`, waiting (and saying so) while another build holds it. Gives up when
    /// kib is interrupted.
    ///
    /// Errors: the lock file cannot be opened, flock fails otherwise than busy, or an interrupt.
    pub fn acquire(dir: &Path) -> Result<CacheLock> {
        use anyhow::Context;
        use rustix::fs::{flock, FlockOperation};
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut told = false;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(CacheLock { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).with_context(|| format!("locking {}", path.display())),
            }
            if let Some(sig) = crate::exec::interrupted() {
                bail!("interrupted by signal {sig} while waiting for the package cache {}", dir.display());
            }
            if !told {
                tracing::info!("waiting for another build using the package cache {}", dir.display());
                told = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Binds the shared package cache for `mgr` into the image when `state` has one and the
/// manager supports it (again when the repositories changed since the last bind, which then
/// makes the step refresh the metadata), and locks it for the step. `None`: no cache.
///
/// Errors: a repository file cannot be read, a cache folder cannot be made, the bind fails.
fn use_package_cache(mgr: &dyn PackageManager, c: &mut dyn Chroot, files: &[PathBuf], state: &mut StepState) -> Result<Option<CacheLock>> {
    use anyhow::Context;
    let dirs = mgr.cache_dirs();
    let Some(cache) = state.cache.as_ref().filter(|_| !dirs.is_empty()) else { return Ok(None) };
    let mut keyed = files.to_vec();
    keyed.extend(mgr.cache_key_files(c.root())?);
    let key = cache.key(mgr.kind(), c.root(), &keyed)?;
    let base = cache.dir.join(mgr.kind().to_string()).join(&key);
    if state.bound_key.as_deref() != Some(key.as_str()) {
        let mut binds = Vec::new();
        for (name, guest) in dirs {
            let host = base.join(name);
            std::fs::create_dir_all(&host).with_context(|| format!("creating the package cache folder {}", host.display()))?;
            binds.push((host, PathBuf::from(guest)));
        }
        c.bind_package_cache(&binds)?;
        tracing::info!("package cache {} bound over {}", base.display(), dirs.iter().map(|(_, g)| *g).collect::<Vec<_>>().join(" and "));
        // This cache's metadata may be older than the sources (or absent): refresh it, unless it
        // is the one bound before the session was closed for a snapshot.
        if state.released_key.as_deref() != Some(key.as_str()) {
            state.refreshed = false;
        }
        state.released_key = None;
        state.bound_key = Some(key);
    }
    Ok(Some(CacheLock::acquire(&base)?))
}

/// Applies one `packages` step with `mgr`: refresh, install, remove, purge, hold, in that order,
/// with the repository files rewritten through the mirror map. Under `--lock`, the requested
/// packages at their locked versions, every locked package pinned by [`PackageManager::lock_files`]
/// while the step runs (removed after it, even when it fails), and every installed package checked
/// against its pin afterwards.
///
/// Errors: a failing tool (with the tail of its output), or, under `--lock`, a package not at
/// its locked version (each named).
pub fn apply_step(mgr: &mut dyn PackageManager, c: &mut dyn Chroot, step: &crate::manifest::Packages, state: &mut StepState, timeout: Option<Duration>) -> Result<()> {
    use anyhow::Context;
    let files = mgr.repository_files(c.root())?;
    let cached = state.cache.is_some() && !mgr.cache_dirs().is_empty();
    c.rewrite_sources(&files, mgr.cached_repository().filter(|_| cached))?;
    let _cache_lock = use_package_cache(mgr, c, &files, state)?;
    let Some(pins) = state.pins.clone() else {
        return run_verbs(mgr, c, step, state, None, timeout);
    };
    let lock_files = mgr.lock_files(&pins);
    for (path, content) in &lock_files {
        // Owned like the folder it goes in (root's, in an image).
        let parent = path.parent().unwrap_or(Path::new("/"));
        c.root().mkdir_p(parent, 0o755)?;
        let (uid, gid) = c.root().lstat(parent)?.map_or((0, 0), |st| (st.st_uid, st.st_gid));
        c.root().write(path, content.as_bytes(), 0o644, uid, gid).with_context(|| format!("writing the --lock pins {}", path.display()))?;
    }
    let ran = run_verbs(mgr, c, step, state, Some(&pins), timeout)
        .with_context(|| format!("--lock {}: installing the locked versions (a version the sources no longer have is named above)", pins.source.display()));
    let mut removed = Ok(());
    for (path, _) in &lock_files {
        if let Err(e) = c.root().remove(path) {
            removed = Err(e).with_context(|| format!("removing the --lock pins {}", path.display()));
        }
    }
    ran?;
    removed?;
    let wrong = pins.mismatches(&mgr.installed(c.root())?);
    if !wrong.is_empty() {
        bail!(
            "--lock {}: {} package(s) are not at the locked version (the sources no longer have it, or another step changed it):\n  - {}",
            pins.source.display(),
            wrong.len(),
            wrong.join("\n  - ")
        );
    }
    Ok(())
}

fn run_verbs(mgr: &mut dyn PackageManager, c: &mut dyn Chroot, p: &crate::manifest::Packages, state: &mut StepState, pins: Option<&PackagePins>, timeout: Option<Duration>) -> Result<()> {
    if p.update.unwrap_or(!p.install.is_empty() && !state.refreshed) {
        mgr.refresh(c, timeout)?;
        state.refreshed = true;
    }
    if !p.install.is_empty() {
        let specs: Vec<String> = match pins {
            Some(pins) => p.install.iter().map(|n| pins.packages.get(n.as_str()).map_or_else(|| n.clone(), |l| mgr.locked_spec(n, l))).collect(),
            None => p.install.clone(),
        };
        mgr.install(c, &specs, p.recommends, timeout)?;
    }
    if !p.remove.is_empty() {
        mgr.remove(c, &p.remove, false, timeout)?;
    }
    if !p.purge.is_empty() {
        mgr.remove(c, &p.purge, true, timeout)?;
    }
    if !p.hold.is_empty() {
        mgr.hold(c, &p.hold, timeout)?;
    }
    Ok(())
}

/// A recording [`Chroot`] for unit tests: a real [`GuestRoot`] on a temporary folder, and every
/// command logged instead of run (each answered by `answer`, `Ok` by default).
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    pub struct FakeChroot {
        pub root: GuestRoot,
        /// Every command run, its argv joined with spaces.
        pub commands: std::cell::RefCell<Vec<String>>,
        pub rewritten: Vec<PathBuf>,
        /// Every package cache bind: (host, image) pairs, one entry per call.
        pub cache_binds: Vec<Vec<(PathBuf, PathBuf)>>,
        /// Commands whose joined argv contains this fail with exit code 100.
        pub fail_on: Option<String>,
        _dir: tempfile::TempDir,
    }

    impl FakeChroot {
        pub fn new() -> FakeChroot {
            let dir = tempfile::tempdir().unwrap();
            FakeChroot { root: GuestRoot::open(dir.path()).unwrap(), commands: Default::default(), rewritten: Vec::new(), cache_binds: Vec::new(), fail_on: None, _dir: dir }
        }

        pub fn log(&self) -> Vec<String> {
            self.commands.borrow().clone()
        }
    }

    impl Chroot for FakeChroot {
        fn root(&self) -> &GuestRoot {
            &self.root
        }
        fn run(&self, argv: &[&str], what: &str, _timeout: Option<Duration>) -> Result<Vec<String>, ExecError> {
            let line = argv.join(" ");
            self.commands.borrow_mut().push(line.clone());
            match &self.fail_on {
                Some(f) if line.contains(f.as_str()) => {
                    Err(ExecError::Failed { what: what.into(), status: "exit code 100".into(), code: Some(100), tail: vec!["E: Unable to locate package".into()] })
                }
                _ => Ok(Vec::new()),
            }
        }
        fn rewrite_sources(&mut self, files: &[PathBuf], also: Option<fn(&str) -> String>) -> Result<()> {
            self.rewritten.extend(files.iter().cloned());
            if let Some(f) = also {
                for path in files {
                    if let Some(text) = self.root.read_string(path)? {
                        let st = self.root.lstat(path)?.unwrap();
                        self.root.write(path, f(&text).as_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid)?;
                    }
                }
            }
            Ok(())
        }
        fn bind_package_cache(&mut self, binds: &[(PathBuf, PathBuf)]) -> Result<()> {
            self.cache_binds.push(binds.to_vec());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manager_has_a_backend() {
        for (kind, tool) in [(ManagerKind::Apt, "apt-get"), (ManagerKind::Dnf, "dnf"), (ManagerKind::Dnf, "microdnf"), (ManagerKind::Yum, "yum"), (ManagerKind::Tdnf, "tdnf"), (ManagerKind::Zypper, "zypper")] {
            assert_eq!(backend(&Detected { kind, tool }).unwrap().kind(), kind);
        }
    }

    #[test]
    fn package_databases_are_found_and_read() {
        let d = tempfile::tempdir().unwrap();
        let root = GuestRoot::open(d.path()).unwrap();
        assert_eq!(Database::find(&root), None);
        assert!(installed(&root).unwrap().is_empty());
        assert!(backend_for_database(&root).is_none());
        std::fs::create_dir_all(d.path().join("var/lib/rpm")).unwrap();
        assert_eq!(Database::find(&root), Some(Database::Rpm));
        assert!(installed(&root).unwrap_err().to_string().contains("no rpm program"));
        std::fs::create_dir_all(d.path().join("var/lib/dpkg")).unwrap();
        std::fs::write(d.path().join("var/lib/dpkg/status"), "Package: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1\n").unwrap();
        assert_eq!(Database::find(&root), Some(Database::Dpkg));
        assert_eq!(installed(&root).unwrap()[0].name, "jq");
        assert_eq!(backend_for_database(&root).unwrap().kind(), ManagerKind::Apt);
        // An RPM-family os-release with both databases (kib's EL fixture): the rpmdb.
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/os-release"), "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n").unwrap();
        assert_eq!(Database::find(&root), Some(Database::Rpm));
    }
}
