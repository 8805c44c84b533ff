//! Phase 1: customization. The manifest's steps run in order against the mounted image, with
//! the image's own programs running in a [`session::Session`]. [`run`] is the phase: it opens
//! the session (with qemu-user for a foreign image), picks the package manager, runs the steps,
//! and hands the still-open session on to Phase 2 in a [`Phase1Output`].
//!
//! Package steps go through [`crate::pkg`]; this module knows no package manager.

pub mod binfmt;
pub mod download;
pub mod images;
pub mod repository;
pub mod session;
pub mod users;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::context::{BuildContext, Phase, PhaseSet};
use crate::fetch::{Fetched, Fetcher};
use crate::guest::GuestRoot;
use crate::hash::sha256_bytes;
use crate::manifest::{self, Action, Manifest, Vars};
use crate::phase0::facts::Facts;
use crate::phase0::Image;
use crate::pkg::{self, PackageManager};
use binfmt::{Emulation, EmulationRecord};
use session::Session;

/// A file a step wrote, for the BOM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    /// Image path.
    pub path: String,
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Octal permission bits, such as `0644`.
    pub mode: String,
    /// `uid:gid`.
    pub owner: String,
}

/// What a step did, for the BOM. Read back from an earlier bom.json when a build continues
/// from a `--phases 0,1` run's image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub kind: String,
    /// The YAML file that defines it.
    pub origin: PathBuf,
    /// `ok`, or `skipped` when its `when` did not match the image.
    pub status: String,
    /// Wall time in seconds.
    pub duration_seconds: f64,
    pub files: Vec<FileRecord>,
    /// What a `download`, `repository` or `images` step fetched: URL, where from, SHA-256, size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downloads: Vec<Fetched>,
    /// Container images an `images` step loaded: name and digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<images::LoadedImage>,
}

/// The variables a step sees: the manifest's, plus the builtins (`arch`, `os_id`,
/// `os_version_id`, `os_codename`, `os_family` (debian | rhel | amzn | suse | photon, empty
/// when unknown), `package_format` (deb | rpm), `kib_version`, `build_date`, `manifest_name`).
pub fn step_vars(manifest: &Manifest, facts: &Facts, ctx: &BuildContext) -> Vars {
    let mut v = manifest.variables.clone();
    let get = |k: &str| facts.os_release.get(k).cloned().unwrap_or_default();
    v.0.insert("arch".into(), facts.arch.clone());
    v.0.insert("os_id".into(), get("ID"));
    v.0.insert("os_version_id".into(), get("VERSION_ID"));
    v.0.insert("os_codename".into(), get("VERSION_CODENAME"));
    let family = pkg::detect::os_family(&facts.os_ids());
    v.0.insert("os_family".into(), family.into());
    v.0.insert("package_format".into(), pkg::detect::package_format(family).into());
    v.0.insert("kib_version".into(), ctx.kib_version.clone());
    v.0.insert("build_date".into(), ctx.build_date.clone());
    v.0.insert("manifest_name".into(), manifest.name.clone());
    v
}

/// The chroot session with what runs the image's programs on this host, open from Phase 1 into
/// Phase 2 (sysprep runs in it).
pub struct OpenSession {
    pub session: Session,
    emulation: Emulation,
}

impl OpenSession {
    /// Opens the session on `image`: qemu-user for a foreign architecture first, then the chroot
    /// (see [`Session::open`]). On error, what was set up is undone.
    pub fn open(image: &Image, mirrors: crate::fetch::MirrorMap) -> Result<OpenSession> {
        // A foreign image (arm64 on amd64) runs its programs through qemu-user: make sure a
        // binfmt_misc handler is there for the whole session; one kib registers is removed after.
        let emulation = Emulation::ensure(image.root(), &image.facts.arch).context("preparing to run the image's programs on this host")?;
        let session = Session::open(image.sys(), image.root(), image.facts.debian_family(), mirrors)?;
        Ok(OpenSession { session, emulation })
    }

    /// Closes the session, then removes a binfmt_misc handler kib registered. Returns how the
    /// image's programs ran (absent for a native image), for the BOM.
    pub fn close(mut self) -> Result<Option<EmulationRecord>> {
        self.session.close()?;
        let record = self.emulation.record().cloned();
        self.emulation.close()?;
        Ok(record)
    }
}

/// A build cache around the steps ([`crate::buildcache`] implements it): which leading steps
/// the restored working copy already holds, and snapshots of the image after steps.
pub trait StepCache {
    /// How many leading steps the working copy already holds (restored from a snapshot), their
    /// records as they ran then, and whether the package metadata was fresh after them.
    fn restored(&self) -> (usize, Vec<StepRecord>, bool);
    /// Whether to snapshot the image after step `index` (0-based), which ran as `record` says.
    fn wants_snapshot(&self, index: usize, record: &StepRecord) -> bool;
    /// Snapshots the image after step `index`, while the chroot session is closed; `records` are
    /// the records of every step so far, `refreshed` the package state after them.
    ///
    /// Errors: only what must stop the build; a snapshot that cannot be taken is a warning.
    fn snapshot(&mut self, index: usize, records: &[StepRecord], refreshed: bool) -> Result<()>;
}

/// What Phase 1 hands on to Phase 2.
pub struct Phase1Output {
    /// What each step did (skipped ones too), in order.
    pub steps: Vec<StepRecord>,
    /// The chroot session, still open, when Phase 1 ran or Phase 2's sysprep needs it.
    pub session: Option<OpenSession>,
    /// The image's package manager, when kib has a backend for it.
    pub manager: Option<Box<dyn PackageManager>>,
    /// Wall time, in seconds.
    pub seconds: f64,
}

/// Runs Phase 1 on the mounted `image` when `phases` has it: opens the chroot session (also
/// when only Phase 2's sysprep needs it), finds the package manager, runs every step of
/// `manifest`. `pins` are `--lock`'s package versions; `cache`, the build cache: the steps it
/// restored are not run again, and it snapshots the image after expensive steps.
///
/// Errors: a `packages` step on an image with no package manager kib supports (before the
/// first step runs), or the first failing step (see [`run_steps`]). The session is closed on
/// error.
pub fn run(image: &Image, manifest: &Manifest, ctx: &BuildContext, fetcher: &Fetcher, phases: PhaseSet, pins: Option<std::sync::Arc<pkg::PackagePins>>, cache: Option<&mut dyn StepCache>) -> Result<Phase1Output> {
    let t = Instant::now();
    let steps_run = phases.contains(Phase::Customization);
    let sysprep = phases.contains(Phase::Artifacts) && manifest.sysprep.enabled;
    if !steps_run && !sysprep {
        tracing::info!("Phase 1 is left out (--phases {phases}): the manifest's {} steps do not run", manifest.steps.len());
        return Ok(Phase1Output { steps: Vec::new(), session: None, manager: None, seconds: 0.0 });
    }
    let root = image.root();
    let detected = pkg::detect(&image.facts.os_ids(), &pkg::detect::tools_in(root), manifest.packages.manager);
    // Sysprep needs the manager too; without its tools, the one of the image's package database.
    let manager = match &detected {
        Ok(d) => pkg::backend(d).ok(),
        Err(_) => pkg::backend_for_database(root),
    };
    if steps_run && needs_package_manager(manifest, &image.facts, ctx) {
        // Stop before the first step: name what was found.
        let d = detected?;
        pkg::backend(&d)?;
        tracing::info!("package manager: {} ({})", d.kind, d.tool);
    }
    let mut open = OpenSession::open(image, fetcher.mirrors.clone())?;
    let mut manager = manager;
    let steps = if steps_run {
        let package_cache = fetcher.package_cache.then(|| pkg::PackageCache { dir: fetcher.cache_dir.join("packages"), arch: image.facts.arch.clone() });
        let mut state = pkg::StepState { pins, cache: package_cache, ..Default::default() };
        let ran = run_steps(&mut open.session, root, manifest, &image.facts, ctx, fetcher, manager.as_deref_mut(), &mut state, cache)
            // The image's own package folders again, for sysprep (and Phase 2's unmount).
            .and_then(|steps| open.session.release_package_cache().map(|()| steps));
        match ran {
            Ok(steps) => steps,
            Err(e) => {
                if let Err(c) = open.close() {
                    tracing::warn!("closing the chroot session: {c:#}");
                }
                return Err(e);
            }
        }
    } else {
        tracing::info!("Phase 1 is left out (--phases {phases}): the manifest's {} steps do not run", manifest.steps.len());
        Vec::new()
    };
    let seconds = t.elapsed().as_secs_f64();
    if steps_run {
        tracing::debug!("phase 1 done in {seconds:.1}s");
    }
    Ok(Phase1Output { steps, session: Some(open), manager, seconds })
}

/// Whether a step that applies to this image needs the package manager (`packages`,
/// `repository`).
fn needs_package_manager(manifest: &Manifest, facts: &Facts, ctx: &BuildContext) -> bool {
    let vars = step_vars(manifest, facts, ctx);
    let os_ids = facts.os_ids();
    manifest.steps.iter().any(|s| s.applies(&os_ids, &facts.arch, &vars) && matches!(s.action, Action::Packages(_) | Action::Repository(_)))
}

/// Runs every step of `manifest` in order, `packages` steps with `manager`. Stops at the first
/// failing step with an error that names it, its origin and the tail of its output. With a
/// `cache`, the steps it restored are recorded as they ran then and not run, and the image is
/// snapshotted after the steps it asks for, with the session closed (see
/// [`Session::closed_while`]).
#[allow(clippy::too_many_arguments)]
pub fn run_steps(
    session: &mut Session,
    root: &GuestRoot,
    manifest: &Manifest,
    facts: &Facts,
    ctx: &BuildContext,
    fetcher: &Fetcher,
    mut manager: Option<&mut (dyn PackageManager + 'static)>,
    state: &mut pkg::StepState,
    mut cache: Option<&mut dyn StepCache>,
) -> Result<Vec<StepRecord>> {
    let vars = step_vars(manifest, facts, ctx);
    let os_ids = facts.os_ids();
    let total = manifest.steps.len();
    let mut records = Vec::with_capacity(total);
    let mut restored = 0;
    if let Some(c) = cache.as_deref() {
        let (n, done, refreshed) = c.restored();
        restored = n.min(total);
        records.extend(done.into_iter().take(restored));
        state.refreshed = refreshed;
    }
    for (i, step) in manifest.steps.iter().enumerate().skip(restored) {
        if let Some(sig) = crate::exec::interrupted() {
            bail!("interrupted by signal {sig} before step {}/{total} `{}`", i + 1, step.name);
        }
        let kind = step.action.kind();
        let mut record = StepRecord { name: step.name.clone(), kind: kind.to_string(), origin: step.origin.clone(), status: "ok".into(), duration_seconds: 0.0, files: Vec::new(), downloads: Vec::new(), images: Vec::new() };
        if !step.applies(&os_ids, &facts.arch, &vars) {
            tracing::debug!("step {}/{total} `{}` ({kind}) skipped: its `when` does not match this image", i + 1, step.name);
            crate::progress::Activity::step(format!("step {}/{total} {} ({kind}, `when` does not match)", i + 1, step.name)).skip();
            record.status = "skipped".into();
            records.push(record);
            snapshot_after(session, &mut cache, i, &records, state)?;
            continue;
        }
        tracing::debug!("step {}/{total} `{}` ({kind})", i + 1, step.name);
        let activity = crate::progress::Activity::step(format!("step {}/{total} {} ({kind})", i + 1, step.name));
        let start = Instant::now();
        let action = step.action.expand(&vars).map_err(|u| anyhow!("undefined variable `${{{}}}`", u.0));
        let mut sctx = StepContext { session: &mut *session, root, vars: &vars, facts, fetcher, manager: manager.as_deref_mut(), packages: &mut *state };
        let result = action.and_then(|a| execute(&mut sctx, step, &a, &mut record));
        record.duration_seconds = start.elapsed().as_secs_f64();
        if let Err(e) = result {
            let e = if crate::exec::is_disk_full(&e) {
                e.context(
                    "no space left in the image: its filesystem is full. Grow the disk before the steps run \
                     with the manifest's disk.size (`disk: {size: 20GiB}`) or `--disk-size 20GiB`",
                )
            } else {
                e
            };
            return Err(e.context(format!(
                "step {}/{total} `{}` ({kind}, from {}) failed after {:.1}s",
                i + 1,
                step.name,
                step.origin.display(),
                record.duration_seconds
            )));
        }
        activity.finish();
        tracing::debug!("step {}/{total} `{}` done in {:.2}s", i + 1, step.name, record.duration_seconds);
        records.push(record);
        snapshot_after(session, &mut cache, i, &records, state)?;
    }
    Ok(records)
}

/// Lets the build cache snapshot the image after step `index` when it wants to, with the session
/// closed meanwhile. Closing it releases the shared package cache's binds too (the snapshot
/// holds the image's own package folders, never the cache's), so the next packages step binds
/// it again.
fn snapshot_after(session: &mut Session, cache: &mut Option<&mut dyn StepCache>, index: usize, records: &[StepRecord], state: &mut pkg::StepState) -> Result<()> {
    let Some(cache) = cache.as_deref_mut() else { return Ok(()) };
    let Some(last) = records.last() else { return Ok(()) };
    if !cache.wants_snapshot(index, last) {
        return Ok(());
    }
    let refreshed = state.refreshed;
    state.session_closed();
    session.closed_while(|| cache.snapshot(index, records, refreshed))
}

/// What a step's executor works with.
struct StepContext<'s> {
    session: &'s mut Session,
    root: &'s GuestRoot,
    vars: &'s Vars,
    facts: &'s Facts,
    fetcher: &'s Fetcher,
    manager: Option<&'s mut (dyn PackageManager + 'static)>,
    packages: &'s mut pkg::StepState,
}

fn execute(ctx: &mut StepContext<'_>, step: &manifest::ResolvedStep, action: &Action, record: &mut StepRecord) -> Result<()> {
    let (session, root, vars, facts, state) = (&mut *ctx.session, ctx.root, ctx.vars, ctx.facts, &mut *ctx.packages);
    let files = &mut record.files;
    let timeout = Some(step.timeout);
    match action {
        Action::Packages(p) => {
            let Some(manager) = ctx.manager.as_deref_mut() else {
                bail!("`packages` needs a package manager kib supports, and this image has none")
            };
            pkg::apply_step(manager, session, p, state, timeout)
        }
        Action::File(f) => {
            let content = match (&f.content, &f.source) {
                (Some(c), _) => c.clone().into_bytes(),
                (None, Some(src)) => {
                    let base = step.origin.parent().unwrap_or(Path::new("."));
                    let path = base.join(src);
                    std::fs::read(&path).with_context(|| format!("reading file.source {}", path.display()))?
                }
                (None, None) => unreachable!("checked when the manifest was loaded"),
            };
            let mode = f.mode.as_deref().map(manifest::parse_mode).transpose().map_err(|e| anyhow!(e))?.unwrap_or(0o644);
            let (uid, gid) = match &f.owner {
                Some(owner) => users::resolve_owner(root, owner)?,
                None => (0, 0),
            };
            write_recorded(root, &f.path, &content, mode, uid, gid, files)
        }
        Action::Run(r) => {
            let shell = r.shell.as_deref().unwrap_or("/bin/sh");
            let env: Vec<(String, String)> = vars.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            session.run(&[shell, "-ec", &r.script, "kib-step"], &env, &format!("run step `{}`", step.name), timeout)?;
            Ok(())
        }
        Action::Systemd(s) => {
            if !session.has("/bin/systemctl") && !session.has("/usr/bin/systemctl") {
                bail!("`systemd` needs systemctl in the image, and it has none");
            }
            for (verb, units) in [("unmask", &s.unmask), ("enable", &s.enable), ("disable", &s.disable), ("mask", &s.mask)] {
                if units.is_empty() {
                    continue;
                }
                let mut argv = vec!["systemctl", verb];
                argv.extend(units.iter().map(String::as_str));
                session.run(&argv, &[], &format!("systemctl {verb} {}", units.join(" ")), timeout)?;
            }
            Ok(())
        }
        Action::Sysctl(s) => {
            check_file_name(&s.file)?;
            let mut text = format!("# Written by kib (step `{}`).\n", step.name);
            for (k, v) in &s.settings {
                text.push_str(&format!("{k} = {v}\n"));
            }
            write_recorded(root, &format!("/etc/sysctl.d/{}", s.file), text.as_bytes(), 0o644, 0, 0, files)
        }
        Action::KernelModules(k) => {
            check_file_name(&k.file)?;
            if !k.load.is_empty() {
                let mut text = format!("# Written by kib (step `{}`): modules to load at boot.\n", step.name);
                for m in &k.load {
                    text.push_str(m);
                    text.push('\n');
                }
                write_recorded(root, &format!("/etc/modules-load.d/{}", k.file), text.as_bytes(), 0o644, 0, 0, files)?;
            }
            if !k.options.is_empty() {
                let mut text = format!("# Written by kib (step `{}`).\n", step.name);
                for (m, o) in &k.options {
                    text.push_str(&format!("options {m} {o}\n"));
                }
                write_recorded(root, &format!("/etc/modprobe.d/{}", k.file), text.as_bytes(), 0o644, 0, 0, files)?;
            }
            Ok(())
        }
        Action::Download(d) => {
            let fetched = download::apply(root, ctx.fetcher, d, &facts.arch, files)?;
            record.downloads.push(fetched);
            Ok(())
        }
        Action::Repository(r) => {
            let Some(kind) = ctx.manager.as_deref().map(|m| m.kind()) else {
                bail!("`repository` needs a package manager kib supports, and this image has none")
            };
            repository::apply(root, session, ctx.fetcher, r, kind, record)?;
            state.refreshed = false; // the next packages step refreshes the lists
            Ok(())
        }
        Action::Images(i) => images::apply(session, root, ctx.fetcher, i, &facts.arch, timeout, record),
    }
}

/// The downloads of the steps that apply to this image, with their expected SHA-256, that the
/// cache lacks (or whose checksum file it lacks). Used by `--offline` to report every missing
/// artifact at once, before any step runs.
pub fn missing_downloads(manifest: &Manifest, facts: &Facts, ctx: &BuildContext, fetcher: &Fetcher) -> Vec<String> {
    let vars = step_vars(manifest, facts, ctx);
    let os_ids = facts.os_ids();
    let mut missing = Vec::new();
    for step in manifest.steps.iter().filter(|s| s.applies(&os_ids, &facts.arch, &vars)) {
        if let Ok(Action::Repository(r)) = step.action.expand(&vars) {
            if let (Some(url), None) = (&r.key_url, &r.key_sha256) {
                if !fetcher.has_unpinned(url) {
                    missing.push(format!("{} (unpinned key, step `{}`)", crate::fetch::redact(url), step.name));
                }
            }
        }
        for (url, sha, sha_url) in artifacts(&step.action, &vars) {
            match download::expected_sum(fetcher, &url, sha.as_ref(), sha_url.as_deref(), &facts.arch) {
                Ok(sum) if fetcher.cached_path(&sum).exists() => {}
                Ok(sum) => missing.push(format!("{} (sha256 {sum}, step `{}`)", crate::fetch::redact(&url), step.name)),
                Err(e) => missing.push(format!("{e:#} (step `{}`)", step.name)),
            }
        }
    }
    missing
}

/// Under `--lock`: every artifact of the steps that apply to this image whose URL the lock
/// lacks or whose pin disagrees with it, as messages. Checked before the first step runs.
pub fn unlocked_downloads(manifest: &Manifest, facts: &Facts, ctx: &BuildContext, fetcher: &Fetcher) -> Vec<String> {
    let Some(lock) = &fetcher.pins else { return Vec::new() };
    let vars = step_vars(manifest, facts, ctx);
    let os_ids = facts.os_ids();
    let mut out = Vec::new();
    for step in manifest.steps.iter().filter(|s| s.applies(&os_ids, &facts.arch, &vars)) {
        let mut urls: Vec<(String, Option<String>)> = Vec::new();
        for (url, sha, _) in artifacts(&step.action, &vars) {
            match sha.map(|s| s.for_arch(&facts.arch)).transpose() {
                Ok(pinned) => urls.push((url, pinned)),
                Err(e) => out.push(format!("{url}: {e} (step `{}`)", step.name)),
            }
        }
        if let Ok(Action::Repository(r)) = step.action.expand(&vars) {
            if let (Some(url), None) = (r.key_url, r.key_sha256) {
                urls.push((url, None));
            }
        }
        for (url, pinned) in urls {
            if let Err(e) = lock.sum_for(&url, pinned.as_deref()) {
                out.push(format!("{e} (step `{}`)", step.name));
            }
        }
    }
    out
}

/// Every artifact an action downloads: URL, pinned SHA-256, checksum URL. Unpinned repository
/// keys are listed with neither (the cache keeps them by URL).
pub fn artifacts(action: &Action, vars: &Vars) -> Vec<(String, Option<manifest::Sha256Spec>, Option<String>)> {
    match action.expand(vars) {
        Ok(Action::Download(d)) => vec![(d.url, d.sha256, d.sha256_url)],
        Ok(Action::Images(i)) => i.archives.into_iter().map(|a| (a.url, a.sha256, a.sha256_url)).collect(),
        Ok(Action::Repository(r)) => match (r.key_url, r.key_sha256) {
            (Some(u), Some(s)) => vec![(u, Some(manifest::Sha256Spec::One(s)), None)],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("`file: {name}` must be a plain file name, without `/`");
    }
    Ok(())
}

fn write_recorded(root: &GuestRoot, path: &str, content: &[u8], mode: u32, uid: u32, gid: u32, files: &mut Vec<FileRecord>) -> Result<()> {
    root.write(Path::new(path), content, mode, uid, gid).with_context(|| format!("writing {path} in the image"))?;
    files.push(FileRecord {
        path: path.to_string(),
        sha256: sha256_bytes(content),
        size: content.len() as u64,
        mode: format!("{mode:04o}"),
        owner: format!("{uid}:{gid}"),
    });
    Ok(())
}
