//! Phase 1: customization. The manifest's steps run in order against the mounted image, with
//! the image's own programs running in a [`session::Session`].

pub mod apt;
pub mod binfmt;
pub mod download;
pub mod images;
pub mod repository;
pub mod session;
pub mod users;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::fetch::{Fetched, Fetcher};
use crate::guest::GuestRoot;
use crate::hash::sha256_bytes;
use crate::manifest::{self, Action, Manifest, Vars};
use crate::phase0::facts::Facts;
use session::Session;

/// A file a step wrote, for the BOM.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

static BUILD_DATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Fixes `${build_date}` (for `kib check`, to the date a BOM recorded). Returns false when it
/// was already fixed.
pub fn set_build_date(date: &str) -> bool {
    BUILD_DATE.set(date.to_string()).is_ok()
}

/// The build's start time, UTC, RFC 3339 (`${build_date}`): fixed at the first call.
pub fn build_date() -> &'static str {
    BUILD_DATE.get_or_init(|| humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
}

/// The variables a step sees: the manifest's, plus the builtins (`arch`, `os_id`,
/// `os_version_id`, `os_codename`, `kib_version`, `build_date`, `manifest_name`).
pub fn step_vars(manifest: &Manifest, facts: &Facts) -> Vars {
    let mut v = manifest.variables.clone();
    let get = |k: &str| facts.os_release.get(k).cloned().unwrap_or_default();
    v.0.insert("arch".into(), facts.arch.clone());
    v.0.insert("os_id".into(), get("ID"));
    v.0.insert("os_version_id".into(), get("VERSION_ID"));
    v.0.insert("os_codename".into(), get("VERSION_CODENAME"));
    v.0.insert("kib_version".into(), env!("CARGO_PKG_VERSION").into());
    v.0.insert("build_date".into(), build_date().into());
    v.0.insert("manifest_name".into(), manifest.name.clone());
    v
}

/// Runs every step of `manifest` in order. Stops at the first failing step with an error that
/// names it, its origin and the tail of its output.
pub fn run_steps(session: &mut Session<'_>, root: &GuestRoot, manifest: &Manifest, facts: &Facts, fetcher: &Fetcher) -> Result<Vec<StepRecord>> {
    let vars = step_vars(manifest, facts);
    let os_ids = facts.os_ids();
    let total = manifest.steps.len();
    let mut state = apt::AptState { lock: fetcher.lock.clone(), ..Default::default() };
    let mut records = Vec::with_capacity(total);
    for (i, step) in manifest.steps.iter().enumerate() {
        if let Some(sig) = crate::exec::interrupted() {
            bail!("interrupted by signal {sig} before step {}/{total} `{}`", i + 1, step.name);
        }
        let kind = step.action.kind();
        let mut record = StepRecord { name: step.name.clone(), kind: kind.to_string(), origin: step.origin.clone(), status: "ok".into(), duration_seconds: 0.0, files: Vec::new(), downloads: Vec::new(), images: Vec::new() };
        if !step.applies(&os_ids, &facts.arch, &vars) {
            tracing::info!("step {}/{total} `{}` ({kind}) skipped: its `when` does not match this image", i + 1, step.name);
            record.status = "skipped".into();
            records.push(record);
            continue;
        }
        tracing::info!("step {}/{total} `{}` ({kind})", i + 1, step.name);
        let start = Instant::now();
        let action = step.action.expand(&vars).map_err(|u| anyhow!("undefined variable `${{{}}}`", u.0));
        let mut ctx = StepContext { session: &mut *session, root, vars: &vars, facts, fetcher, apt: &mut state };
        let result = action.and_then(|a| execute(&mut ctx, step, &a, &mut record));
        record.duration_seconds = start.elapsed().as_secs_f64();
        if let Err(e) = result {
            let e = if format!("{e:#}").contains("No space left on device") {
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
        tracing::info!("step {}/{total} `{}` done in {:.2}s", i + 1, step.name, record.duration_seconds);
        records.push(record);
    }
    Ok(records)
}

/// What a step's executor works with.
struct StepContext<'s, 'r> {
    session: &'s mut Session<'r>,
    root: &'s GuestRoot,
    vars: &'s Vars,
    facts: &'s Facts,
    fetcher: &'s Fetcher,
    apt: &'s mut apt::AptState,
}

fn execute(ctx: &mut StepContext<'_, '_>, step: &manifest::ResolvedStep, action: &Action, record: &mut StepRecord) -> Result<()> {
    let (session, root, vars, facts, state) = (&mut *ctx.session, ctx.root, ctx.vars, ctx.facts, &mut *ctx.apt);
    let files = &mut record.files;
    let timeout = Some(step.timeout);
    match action {
        Action::Packages(p) => {
            if !facts.debian_family() || !session.has("/usr/bin/apt-get") {
                bail!(
                    "`packages` supports apt (Debian-family images) only so far; this image is {}",
                    facts.os_release.get("PRETTY_NAME").map_or("unknown", String::as_str)
                );
            }
            apt::apply(session, p, state, timeout)
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
            if !facts.debian_family() {
                bail!("`repository` supports apt (Debian-family images) only so far");
            }
            repository::apply(root, ctx.fetcher, r, record)?;
            state.updated = false; // the next packages step refreshes the lists
            Ok(())
        }
        Action::Images(i) => images::apply(session, root, ctx.fetcher, i, &facts.arch, timeout, record),
    }
}

/// The downloads of the steps that apply to this image, with their expected SHA-256, that the
/// cache lacks (or whose checksum file it lacks). Used by `--offline` to report every missing
/// artifact at once, before any step runs.
pub fn missing_downloads(manifest: &Manifest, facts: &Facts, fetcher: &Fetcher) -> Vec<String> {
    let vars = step_vars(manifest, facts);
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
pub fn unlocked_downloads(manifest: &Manifest, facts: &Facts, fetcher: &Fetcher) -> Vec<String> {
    let Some(lock) = &fetcher.lock else { return Vec::new() };
    let vars = step_vars(manifest, facts);
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
                out.push(format!("{e:#} (step `{}`)", step.name));
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
