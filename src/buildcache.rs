//! The build cache: snapshots of the working disk after expensive Phase 1 steps and after the
//! last one, so that a rebuild whose first K steps are unchanged starts from the snapshot after
//! step K, and an unchanged manifest skips Phase 1 altogether.
//!
//! **Keys.** A snapshot's key is a chain of SHA-256 digests. The first link covers what decides
//! the disk before any step: the input image's SHA-256, its architecture, kib's version, the
//! disk size (`disk.size` / `--disk-size` grows the working copy), the `--lock` file's SHA-256,
//! and the manifest's package-manager setting. Each step then adds itself as it would run:
//! name, origin, whether its `when` applies, its action with every `${variable}` expanded, a
//! `file.source`'s content hashed, and for `run` steps the variables their environment gets
//! (all but `build_date`, which changes every build; a script that needs it writes
//! `${build_date}` in a field kib expands, where it is part of the key). Mirror maps, proxies and
//! `--offline` are not in the key: they change where bytes come from, not what they are
//! (downloads are pinned by SHA-256). Nothing secret is stored: the chroot session is closed
//! while a snapshot is taken, so sources rewritten through a mirror map (with their credentials),
//! the host's resolv.conf and policy-rc.d are never in one, and the metadata holds the step
//! records as the BOM has them (URLs without credentials).
//!
//! Steps whose result depends on the network without a pin (apt with no versions, `update:
//! true`) are cached by their inputs like any other: `--no-cache`, or `--refresh` (no reuse from
//! the first `packages` step on), is how a build picks up new package versions.
//!
//! **Layout** under `<cache_dir>/build/`:
//! - `entries/<key>.raw`: the snapshot, a sparse raw disk; `entries/<key>.json`: its [`Entry`],
//!   written last. An entry is trusted only when both exist, the JSON parses, names the key and
//!   kib's version, and the raw has the size the JSON records.
//! - `base/<key>.json`: what Phase 0 found in an input ([`BaseRecord`]: architecture, os-release,
//!   kernels, disk growth), so that keys can be computed, and a snapshot used, without mounting
//!   the input first.
//! - `tmp/<key>.<pid>.partial`: a snapshot being written; renamed into `entries/` once complete
//!   and synced. `kib cleanup` removes those whose kib process is gone.
//!
//! **Consistency.** A snapshot is taken with the chroot session closed and every filesystem of
//! the image remounted read-only: the remount writes back every dirty page, commits and
//! checkpoints the journal and marks the filesystem clean, and refuses writes until it is
//! remounted read-write after the copy. A filesystem a process still writes to (a file open for
//! writing) refuses the read-only remount with EBUSY; then no snapshot is taken and the build goes
//! on. fsfreeze (FIFREEZE) would also quiesce the filesystem, but a frozen filesystem outlives a
//! SIGKILLed kib: its superblock stays frozen and its loop device attached after the mount
//! namespace is gone (measured here on Linux 6.18), whereas a read-only mount simply goes.
//!
//! **Copies.** A reflink (`FICLONE`) where the cache's filesystem has them, else a sparse copy
//! of the data extents through `copy_file_range` (see [`crate::phase0::workcopy::clone_or_copy`]).

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::context::BuildContext;
use crate::manifest::{Action, Manifest, ResolvedStep, Vars};
use crate::phase0::facts::Facts;
use crate::phase0::grow::Growth;
use crate::phase0::workcopy::{self, CopyMethod};
use crate::phase1::{StepCache, StepRecord};

/// The default of `--cache-max-size`: after each build that stored a snapshot, the least recently
/// used snapshots are evicted until the build cache holds at most this many bytes (allocated on
/// disk). 20 GiB holds the snapshots of about three node-manifest builds (four to six snapshots of
/// 1 to 1.5 GB each).
pub const DEFAULT_MAX_SIZE: &str = "20GiB";

/// The default of `--cache-min-seconds`: steps that took less are not worth a snapshot (which
/// costs about half a second for a node image on ext4); the last step always gets one.
pub const DEFAULT_MIN_SECONDS: f64 = 2.0;

/// The kill point a test names in `KIB_TEST_KILL_AT` to SIGKILL kib in the middle of writing a
/// snapshot (the data copied, not yet renamed; the filesystems read-only).
pub const KILL_POINT: &str = "build-cache-snapshot";

/// The version of the key scheme and layout; a change makes every older entry a miss.
const SCHEME: &str = "kib-build-cache/1";

/// The build cache's folder, `<cache_dir>/build`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A snapshot's metadata, `entries/<key>.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The key: lowercase hex SHA-256 (see the module documentation).
    pub key: String,
    /// The manifest's `metadata.name` and file, of the build that wrote it.
    pub manifest: String,
    pub manifest_path: PathBuf,
    /// How many leading steps the snapshot holds (1-based: 3 = after the third step).
    pub steps_done: usize,
    /// The name of the last of them.
    pub step_name: String,
    /// Whether that was the manifest's last step (the end of Phase 1).
    pub end_of_phase1: bool,
    pub input_sha256: String,
    pub arch: String,
    pub kib_version: String,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    /// Unix time in milliseconds of the last build that used or wrote it (for LRU eviction).
    pub last_used_ms: u64,
    /// The snapshot's size as a disk, in bytes (its apparent size).
    pub disk_bytes: u64,
    /// How it was written, and how long that took in seconds (remounts included).
    pub method: CopyMethod,
    pub seconds: f64,
    /// Whether the package metadata had been refreshed after the last `repository` step (a
    /// resumed build's next `packages` step then does not refresh it again).
    pub package_metadata_fresh: bool,
    /// The records of the steps it holds, as they ran (for the resumed build's BOM).
    pub steps: Vec<StepRecord>,
}

/// What Phase 0 found in an input at a disk size, `base/<key>.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseRecord {
    pub input_sha256: String,
    pub disk_size: Option<u64>,
    pub kib_version: String,
    pub facts: Facts,
    pub growth: Option<Growth>,
}

/// A cached snapshot as `kib cache ls` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// `snapshot` (a disk after some steps) or `outputs` (the published images of a build).
    pub kind: &'static str,
    pub key: String,
    pub manifest: String,
    /// `3/15 containerd`: steps held, of how many the build had, and the last one's name.
    pub step: String,
    pub steps_done: usize,
    pub end_of_phase1: bool,
    /// Bytes allocated on disk.
    pub size: u64,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// Seconds since it was written, and since it was last used.
    pub age_seconds: u64,
    pub idle_seconds: u64,
    pub arch: String,
    pub kib_version: String,
    /// Whether a build would trust it (see [`Store::entry`]).
    pub valid: bool,
}

/// What `kib cache prune` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Pruned {
    /// The keys of the snapshots removed, least recently used first.
    pub removed: Vec<String>,
    /// Bytes freed (allocated on disk).
    pub freed: u64,
    /// Bytes the cache still holds.
    pub kept: u64,
    /// Partial or orphaned files removed (not entries).
    pub stray_files: Vec<PathBuf>,
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

impl Store {
    /// The build cache under kib's cache folder (`<cache_dir>/build`). Nothing is created yet.
    pub fn new(cache_dir: &Path) -> Store {
        Store { dir: cache_dir.join("build") }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entries(&self) -> PathBuf {
        self.dir.join("entries")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The snapshot file of `key`.
    pub fn raw(&self, key: &str) -> PathBuf {
        self.entries().join(format!("{key}.raw"))
    }

    fn meta(&self, key: &str) -> PathBuf {
        self.entries().join(format!("{key}.json"))
    }

    fn base(&self, key: &str) -> PathBuf {
        self.dir.join("base").join(format!("{key}.json"))
    }

    /// The trusted entry of `key`: its JSON parses and names `key` and this kib's version, and its
    /// raw exists with the size the JSON records. `None` otherwise (a partial write, another
    /// version, a file removed by hand).
    pub fn entry(&self, key: &str) -> Option<Entry> {
        let bytes = std::fs::read(self.meta(key)).ok()?;
        let e: Entry = serde_json::from_slice(&bytes).ok()?;
        let len = std::fs::metadata(self.raw(key)).ok()?.len();
        (e.key == key && e.kib_version == env!("CARGO_PKG_VERSION") && len == e.disk_bytes && e.steps.len() == e.steps_done).then_some(e)
    }

    /// Marks `entry` used now (for LRU). Best effort.
    pub fn touch(&self, entry: &Entry) {
        let mut e = entry.clone();
        e.last_used_ms = now_ms();
        if let Err(err) = serde_json::to_vec_pretty(&e).map_err(std::io::Error::other).and_then(|b| write_atomic(&self.meta(&e.key), &b)) {
            tracing::debug!("build cache: not updating the last use of {}: {err}", e.key);
        }
    }

    /// The Phase 0 record of `key` (see [`base_key`]), if stored.
    pub fn base_record(&self, key: &str) -> Option<BaseRecord> {
        let bytes = std::fs::read(self.base(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores a Phase 0 record under `key`. Best effort: a failure is logged.
    pub fn store_base(&self, key: &str, rec: &BaseRecord) {
        let path = self.base(key);
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
            write_atomic(&path, &serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?)
        })();
        if let Err(e) = r {
            tracing::warn!("build cache: cannot write {}: {e}", path.display());
        }
    }

    /// Copies the raw disk `disk` to a partial snapshot in `tmp/` for `entry` (whose
    /// `disk_bytes` and `method` are filled in here) and returns its path. The caller keeps the
    /// disk's filesystems read-only meanwhile, then [`Store::commit`]s it.
    ///
    /// Errors: the copy fails; the partial file is removed.
    fn copy_partial(&self, disk: &Path, entry: &mut Entry) -> Result<PathBuf> {
        for d in [self.entries(), self.tmp()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let partial = self.tmp().join(format!("{}.{}.partial", entry.key, std::process::id()));
        let _ = std::fs::remove_file(&partial);
        let task = crate::progress::Activity::task(format!("build-cache snapshot after step {} {}", entry.steps_done, entry.step_name), Some(allocated(disk)));
        let copied = workcopy::clone_or_copy(disk, &partial, &task).with_context(|| format!("copying {} to {}", disk.display(), partial.display()));
        match copied {
            Ok(m) => {
                task.finish();
                entry.method = m;
                entry.disk_bytes = std::fs::metadata(&partial)?.len();
                crate::exec::test_kill_point(KILL_POINT);
                Ok(partial)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }

    /// Makes the partial snapshot `partial` the entry `entry`: syncs it to disk (so that a host
    /// crash cannot leave a trusted entry with lost data), renames it into `entries/`, then
    /// writes the JSON (synced and renamed too). `entry.seconds` is set to the time since `t`.
    ///
    /// Errors: the sync or a rename fails; the partial file is removed.
    fn commit(&self, partial: &Path, entry: &mut Entry, t: Instant) -> Result<()> {
        let done = (|| -> Result<()> {
            std::fs::File::open(partial)?.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
            std::fs::rename(partial, self.raw(&entry.key)).with_context(|| format!("renaming {} into {}", partial.display(), self.entries().display()))?;
            entry.seconds = (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            write_atomic(&self.meta(&entry.key), &serde_json::to_vec_pretty(entry)?).with_context(|| format!("writing {}", self.meta(&entry.key).display()))?;
            Ok(())
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(partial);
        }
        done
    }

    #[cfg(test)]
    fn write(&self, disk: &Path, entry: &mut Entry, t: Instant) -> Result<()> {
        let partial = self.copy_partial(disk, entry)?;
        self.commit(&partial, entry, t)
    }

    /// Every entry (trusted or not) with its metadata, most recently used first. Raw files
    /// without a JSON are not listed (see [`Store::prune`]).
    pub fn list(&self) -> Vec<Listed> {
        let now = now_ms();
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.entries()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else { continue };
            let Ok(bytes) = std::fs::read(e.path()) else { continue };
            let Ok(m) = serde_json::from_slice::<Entry>(&bytes) else { continue };
            let valid = self.entry(key).is_some();
            out.push(Listed {
                kind: "snapshot",
                key: key.to_string(),
                manifest: m.manifest.clone(),
                step: format!("{} {}", m.steps_done, m.step_name),
                steps_done: m.steps_done,
                end_of_phase1: m.end_of_phase1,
                size: allocated(&self.raw(key)) + allocated(&e.path()),
                created_ms: m.created_ms,
                last_used_ms: m.last_used_ms,
                age_seconds: now.saturating_sub(m.created_ms) / 1000,
                idle_seconds: now.saturating_sub(m.last_used_ms) / 1000,
                arch: m.arch,
                kib_version: m.kib_version,
                valid,
            });
        }
        for e in std::fs::read_dir(self.dir.join("outputs")).into_iter().flatten().flatten() {
            let dir = e.path();
            let key = e.file_name().to_string_lossy().into_owned();
            let Some(m) = std::fs::read(dir.join("entry.json")).ok().and_then(|b| serde_json::from_slice::<OutputsEntry>(&b).ok()) else { continue };
            let valid = m.key == key && m.files.iter().all(|f| FileStamp::of(&f.name, &dir.join(&f.name)).is_ok_and(|now| now == *f));
            out.push(Listed {
                kind: "outputs",
                key,
                manifest: m.bom.manifest.name.clone(),
                step: format!("outputs {}", m.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(" ")),
                steps_done: m.bom.steps.len(),
                end_of_phase1: true,
                size: m.files.iter().map(|f| allocated(&dir.join(&f.name))).sum::<u64>() + allocated(&dir.join("entry.json")),
                created_ms: m.created_ms,
                last_used_ms: m.last_used_ms,
                age_seconds: now.saturating_sub(m.created_ms) / 1000,
                idle_seconds: now.saturating_sub(m.last_used_ms) / 1000,
                arch: m.bom.architecture.clone(),
                kib_version: m.bom.kib_version.clone(),
                valid,
            });
        }
        out.sort_by(|a, b| b.last_used_ms.cmp(&a.last_used_ms).then(a.key.cmp(&b.key)));
        out
    }

    /// Evicts the least recently used entries until the cache holds at most `max_size` bytes
    /// (allocated on disk; `0` removes every entry). Untrusted entries go first; raw files with
    /// no JSON older than ten minutes (a write that died between its two renames) and partial
    /// files of kib processes that are gone are removed too. Snapshots in use by a running build
    /// stay readable to it (it holds them open).
    ///
    /// Errors: a file that cannot be removed.
    pub fn prune(&self, max_size: u64) -> Result<Pruned> {
        let mut report = Pruned { stray_files: self.remove_partials()?, ..Default::default() };
        let listed = self.list();
        let keys: std::collections::HashSet<&str> = listed.iter().map(|l| l.key.as_str()).collect();
        for e in std::fs::read_dir(self.entries()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| m.elapsed().ok()).is_some_and(|d| d.as_secs() > 600);
            let orphan = name.strip_suffix(".raw").is_some_and(|k| !keys.contains(k)) || name.ends_with(".tmp");
            if orphan && stale {
                std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
                report.stray_files.push(e.path());
            }
        }
        // Least recently used first, the untrusted before all.
        let mut order: Vec<&Listed> = listed.iter().collect();
        order.sort_by(|a, b| a.valid.cmp(&b.valid).then(a.last_used_ms.cmp(&b.last_used_ms)));
        let mut total: u64 = listed.iter().map(|l| l.size).sum();
        for l in order {
            if total <= max_size && l.valid {
                break;
            }
            if l.kind == "outputs" {
                let dir = self.dir.join("outputs").join(&l.key);
                // The entry first: from then on no build trusts the files.
                let _ = std::fs::remove_file(dir.join("entry.json"));
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
                total = total.saturating_sub(l.size);
                report.freed += l.size;
                report.removed.push(l.key.clone());
                continue;
            }
            // The JSON first: from then on no build trusts the raw.
            for p in [self.meta(&l.key), self.raw(&l.key)] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
                }
            }
            total = total.saturating_sub(l.size);
            report.freed += l.size;
            report.removed.push(l.key.clone());
        }
        report.kept = total;
        Ok(report)
    }

    /// Removes the partial snapshots (`tmp/*.partial`) whose kib process is gone: what a build
    /// killed while writing one leaves. Returns them.
    ///
    /// Errors: a file that cannot be removed.
    pub fn remove_partials(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for e in std::fs::read_dir(self.tmp()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".partial") else { continue };
            let pid = stem.rsplit('.').next().and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| p == std::process::id() as i32 || crate::cleanup::live_kib(p)) {
                continue;
            }
            let p = e.path();
            if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.with_context(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
        Ok(removed)
    }
}

/// The key of the Phase 0 record of an input at a disk size.
pub fn base_key(input_sha256: &str, disk_size: Option<u64>) -> String {
    crate::hash::sha256_bytes(format!("{SCHEME}\nbase\nkib {}\ninput {input_sha256}\ndisk {disk_size:?}\n", crate::hash::kib_build_id()).as_bytes())
}

/// What decides the disk before the first step.
#[derive(Debug, Clone)]
pub struct KeyBase {
    pub input_sha256: String,
    pub arch: String,
    pub disk_size: Option<u64>,
    /// The `--lock` file's SHA-256.
    pub lock_sha256: Option<String>,
}

/// The key after each step of `manifest`, in order: `keys[i]` is the key of the snapshot after
/// step `i` (0-based). `facts` are the input's, as Phase 0 found them.
pub fn step_keys(base: &KeyBase, manifest: &Manifest, facts: &Facts, ctx: &BuildContext) -> Vec<String> {
    let vars = crate::phase1::step_vars(manifest, facts, ctx);
    let os_ids = facts.os_ids();
    let mut key = crate::hash::sha256_bytes(
        format!(
            "{SCHEME}\nkib {}\ninput {}\narch {}\ndisk {:?}\nlock {:?}\nmanager {:?}\n",
            ctx.kib_version, base.input_sha256, base.arch, base.disk_size, base.lock_sha256, manifest.packages.manager
        )
        .as_bytes(),
    );
    let mut keys = Vec::with_capacity(manifest.steps.len());
    for step in &manifest.steps {
        let link = describe(step, &os_ids, &facts.arch, &vars);
        key = crate::hash::sha256_bytes(format!("{key}\n{link}").as_bytes());
        keys.push(key.clone());
    }
    keys
}

/// A step as its key sees it: what decides what it does to the image.
fn describe(step: &ResolvedStep, os_ids: &[String], arch: &str, vars: &Vars) -> String {
    let mut s = format!("name {:?}\norigin {:?}\n", step.name, step.origin);
    if !step.applies(os_ids, arch, vars) {
        s.push_str("skipped\n");
        return s;
    }
    let action = match step.action.expand(vars) {
        Ok(a) => a,
        Err(u) => {
            // The step fails when it runs; nothing after it is ever cached.
            s.push_str(&format!("undefined {:?}\n", u.0));
            return s;
        }
    };
    s.push_str(&format!("{action:?}\n"));
    match &action {
        Action::File(f) if f.content.is_none() => {
            if let Some(src) = &f.source {
                let path = step.origin.parent().unwrap_or(Path::new(".")).join(src);
                match crate::hash::sha256_file(&path) {
                    Ok(sum) => s.push_str(&format!("source sha256 {sum}\n")),
                    Err(e) => s.push_str(&format!("source unreadable {e}\n")),
                }
            }
        }
        Action::Run(_) => {
            for (k, v) in vars.0.iter().filter(|(k, _)| k.as_str() != "build_date") {
                s.push_str(&format!("env {k:?}={v:?}\n"));
            }
        }
        _ => {}
    }
    s
}

/// How a build uses the cache (from `customize`'s options).
#[derive(Debug, Clone)]
pub struct Settings {
    /// kib's cache folder.
    pub cache_dir: PathBuf,
    /// Snapshot after steps that took at least this many seconds (and after the last step).
    pub min_seconds: f64,
    /// Evict beyond this many bytes after storing.
    pub max_size: u64,
    /// Reuse nothing from the first `packages` step on (`--refresh`).
    pub refresh: bool,
    /// The `--lock` file.
    pub lock: Option<PathBuf>,
    /// Whether to take and use snapshots after steps. Without them (the guestfs backend, whose
    /// working copy is written once, at the end), only a build's outputs are stored and reused:
    /// an unchanged rebuild publishes them again, any change runs every step.
    pub snapshots: bool,
}

/// The build cache in one build: found before Phase 0 (when the input's SHA-256 is known without
/// reading it), completed after Phase 0, then the [`StepCache`] of Phase 1.
#[derive(Debug)]
pub struct BuildCache {
    store: Store,
    settings: Settings,
    input_sha256: Option<String>,
    lock_sha256: Option<String>,
    disk_size: Option<u64>,
    base: Option<BaseRecord>,
    keys: Vec<String>,
    /// The entry the build starts from.
    hit: Option<Entry>,
    manifest_name: String,
    manifest_path: PathBuf,
    total_steps: usize,
    /// The first `packages` step that applies (for `--refresh`).
    first_packages: Option<usize>,
    /// Set by [`BuildCache::after_phase0`]: the working copy and the host paths of the image's
    /// mounted filesystems, the root first.
    disk: PathBuf,
    mounts: Vec<PathBuf>,
    stored: Vec<crate::bom::StoredSnapshot>,
    /// Snapshots copied and being synced and committed by a thread each, while the build goes on.
    pending: Vec<std::thread::JoinHandle<Result<Entry>>>,
    /// The key of the stored outputs this build published again, when it did.
    outputs_reused: Option<String>,
}

impl BuildCache {
    /// Looks for the deepest snapshot of this build before Phase 0. `input` is the local file
    /// Phase 0 reads; `disk_size` the size Phase 0 grows it to.
    ///
    /// Errors: the `--lock` file cannot be read.
    pub fn prepare(settings: Settings, input: &Path, manifest: &Manifest, ctx: &BuildContext, disk_size: Option<u64>) -> Result<BuildCache> {
        let store = Store::new(&settings.cache_dir);
        let lock_sha256 = settings.lock.as_deref().map(|p| crate::hash::sha256_file(p).with_context(|| format!("reading {}", p.display()))).transpose()?;
        let input_sha256 = crate::phase0::verify::InputCache::new(&settings.cache_dir).lookup(input);
        let mut c = BuildCache {
            store,
            settings,
            input_sha256,
            lock_sha256,
            disk_size,
            base: None,
            keys: Vec::new(),
            hit: None,
            manifest_name: manifest.name.clone(),
            manifest_path: std::path::absolute(&manifest.path).unwrap_or_else(|_| manifest.path.clone()),
            total_steps: manifest.steps.len(),
            first_packages: None,
            disk: PathBuf::new(),
            mounts: Vec::new(),
            stored: Vec::new(),
            pending: Vec::new(),
            outputs_reused: None,
        };
        let Some(sum) = c.input_sha256.clone() else {
            tracing::debug!("build cache: the input's SHA-256 is not known yet (first build from it); Phase 0 computes it");
            return Ok(c);
        };
        let Some(base) = c.store.base_record(&base_key(&sum, disk_size)) else {
            tracing::debug!("build cache: no record of this input at this disk size yet");
            return Ok(c);
        };
        c.compute_keys(manifest, &base.facts, ctx);
        c.base = Some(base);
        c.hit = if c.settings.snapshots { c.deepest() } else { None };
        Ok(c)
    }

    fn compute_keys(&mut self, manifest: &Manifest, facts: &Facts, ctx: &BuildContext) {
        let base = KeyBase { input_sha256: self.input_sha256.clone().unwrap_or_default(), arch: facts.arch.clone(), disk_size: self.disk_size, lock_sha256: self.lock_sha256.clone() };
        self.keys = step_keys(&base, manifest, facts, ctx);
        let vars = crate::phase1::step_vars(manifest, facts, ctx);
        let os_ids = facts.os_ids();
        self.first_packages = manifest.steps.iter().position(|s| s.applies(&os_ids, &facts.arch, &vars) && matches!(s.action, Action::Packages(_)));
    }

    /// The deepest trusted snapshot among this build's keys (before the first `packages` step
    /// with `--refresh`).
    fn deepest(&self) -> Option<Entry> {
        let limit = match (self.settings.refresh, self.first_packages) {
            (true, Some(p)) => p,
            _ => self.keys.len(),
        };
        self.keys[..limit].iter().rev().find_map(|k| self.store.entry(k))
    }

    /// The snapshot Phase 0 should start from, if any.
    pub fn start_from(&self) -> Option<PathBuf> {
        self.hit.as_ref().map(|e| self.store.raw(&e.key))
    }

    /// After Phase 0: with a snapshot, gives the image the facts and growth Phase 0 found in the
    /// input the first time (the snapshot's may differ: a step may have installed a kernel); else
    /// records them, computes the keys if they were not known, and looks for a snapshot once
    /// more (a hit now is not used: the working copy is made already, and that happens only when
    /// the input cache lost the input's checksum). Remembers the working copy and mounts.
    pub fn after_phase0(&mut self, image: &mut crate::phase0::Image, manifest: &Manifest, ctx: &BuildContext) {
        self.disk = image.disk.clone();
        self.mounts = image.filesystems.iter().map(|f| image.root_dir.join(f.mount_point.trim_start_matches('/'))).collect();
        if let (Some(hit), Some(base)) = (&self.hit, &self.base) {
            image.facts = base.facts.clone();
            image.growth = base.growth.clone();
            self.store.touch(hit);
            tracing::info!(
                "build cache: {} of {} steps restored from snapshot {} (after step `{}`)",
                hit.steps_done,
                self.total_steps,
                short(&hit.key),
                hit.step_name
            );
            return;
        }
        let sum = image.input.sha256.clone();
        let rec = BaseRecord { input_sha256: sum.clone(), disk_size: self.disk_size, kib_version: ctx.kib_version.clone(), facts: image.facts.clone(), growth: image.growth.clone() };
        if self.base.as_ref() != Some(&rec) {
            self.store.store_base(&base_key(&sum, self.disk_size), &rec);
        }
        self.input_sha256 = Some(sum);
        self.compute_keys(manifest, &image.facts, ctx);
        self.base = Some(rec);
    }

    /// Waits for the snapshots still being synced and committed (see [`StepCache::snapshot`]),
    /// and notes those that made it. A failure is a warning: the build does not need them.
    pub fn finish(&mut self) {
        for h in std::mem::take(&mut self.pending) {
            match h.join() {
                Ok(Ok(e)) => {
                    tracing::info!("build cache: snapshot {} after step {} `{}` stored ({}, {:.2}s)", short(&e.key), e.steps_done, e.step_name, e.method.name(), e.seconds);
                    self.stored.push(crate::bom::StoredSnapshot { after_step: e.steps_done, key: e.key.clone(), seconds: e.seconds, method: e.method.name().to_string() });
                }
                Ok(Err(e)) => tracing::warn!("build cache: a snapshot was not stored: {e:#}"),
                Err(_) => tracing::warn!("build cache: the thread storing a snapshot panicked"),
            }
        }
        self.stored.sort_by_key(|s| s.after_step);
    }

    /// What the BOM records: the snapshot the build resumed from and the steps it reused, the
    /// snapshots it wrote. Call [`BuildCache::finish`] first.
    pub fn record(&self) -> crate::bom::BuildCacheRecord {
        crate::bom::BuildCacheRecord {
            resumed_from: self.hit.as_ref().map(|h| h.key.clone()),
            reused_steps: self.hit.as_ref().map_or_else(Vec::new, |h| h.steps.iter().map(|s| s.name.clone()).collect()),
            phase1_skipped: self.hit.as_ref().is_some_and(|h| h.steps_done == self.total_steps && self.total_steps > 0),
            stored: self.stored.clone(),
            outputs_reused_from: self.outputs_reused.clone(),
        }
    }

    /// Evicts least recently used snapshots and outputs beyond the size cap, after a build that
    /// stored some.
    /// Best effort: errors are logged.
    pub fn prune(&self) {
        // Without snapshots (guestfs) the build may have stored outputs, which count too.
        if self.stored.is_empty() && self.settings.snapshots {
            return;
        }
        match self.store.prune(self.settings.max_size) {
            Ok(p) if !p.removed.is_empty() => tracing::info!(
                "build cache: evicted {} snapshot(s) ({}) to stay within {}",
                p.removed.len(),
                crate::phase0::grow::human(p.freed),
                crate::phase0::grow::human(self.settings.max_size)
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("build cache: pruning {}: {e:#}", self.store.dir().display()),
        }
    }

    /// Remounts the image's filesystems read-only (deepest first), runs `f`, and remounts them
    /// read-write. `None` when one refuses (EBUSY: a file open for writing), after undoing the
    /// others.
    fn read_only_while<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        use rustix::mount::{mount_remount, MountFlags};
        let mut done: Vec<&PathBuf> = Vec::new();
        let mut refused = None;
        for m in self.mounts.iter().rev() {
            match mount_remount(m, MountFlags::RDONLY, "") {
                Ok(()) => done.push(m),
                Err(e) => {
                    refused = Some((m, e));
                    break;
                }
            }
        }
        let out = if let Some((m, e)) = refused {
            tracing::warn!("build cache: no snapshot: {} cannot be remounted read-only ({e}); a process in the image may still be writing to it", m.display());
            None
        } else {
            Some(f())
        };
        for m in done.into_iter().rev() {
            if let Err(e) = mount_remount(m, MountFlags::empty(), "") {
                // Later steps would fail on a read-only tree; say why.
                tracing::error!("build cache: remounting {} read-write again: {e}", m.display());
            }
        }
        out
    }
}

impl Drop for BuildCache {
    /// A build that fails after a snapshot still stores it (the next build resumes from it once
    /// the failing step is fixed): wait for the commits.
    fn drop(&mut self) {
        self.finish();
    }
}

/// A published file of a build, as it was when the build cache linked or copied it: any write to
/// it since (a VM booted from it in place) changes its ctime and makes the entry untrusted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub name: String,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    fn of(name: &str, path: &Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            name: name.to_string(),
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// The images of a complete build, `outputs/<key>/` with `entry.json`: reused as they are by a
/// build whose every step is unchanged (its last snapshot's key) and whose Phase 2 options are
/// the same, so that an unchanged rebuild neither copies nor converts the disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OutputsEntry {
    pub key: String,
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// The artifacts, in the BOM's order.
    pub files: Vec<FileStamp>,
    /// The BOM of the build that wrote them.
    pub bom: crate::bom::Bom,
}

impl BuildCache {
    /// The key of the outputs of this build: the last step's key and `phase2`, a description
    /// of everything else that decides Phase 2's outputs (formats, compression, name, sysprep,
    /// output and provider settings; the build date where an output embeds it). `None` when
    /// the keys are unknown.
    fn outputs_key(&self, phase2: &str) -> Option<String> {
        let last = self.keys.last()?;
        Some(crate::hash::sha256_bytes(format!("{SCHEME}
outputs
{last}
{phase2}
").as_bytes()))
    }

    fn outputs_dir(&self, key: &str) -> PathBuf {
        self.store.dir.join("outputs").join(key)
    }

    /// The outputs an earlier build made from the same last snapshot with the same Phase 2
    /// options, with the folder holding them, when this build restores its every step and every
    /// file is as it was stored.
    pub fn reusable_outputs(&self, phase2: &str) -> Option<(PathBuf, OutputsEntry)> {
        // Every step's key must be trusted: the last step's snapshot is there, or (without
        // snapshots) the keys are known and --refresh does not ask for the packages again.
        let complete = match &self.hit {
            Some(hit) => hit.steps_done == self.total_steps,
            None => !self.settings.snapshots && self.base.is_some() && self.keys.len() == self.total_steps && !(self.settings.refresh && self.first_packages.is_some()),
        };
        if !complete || self.total_steps == 0 {
            return None;
        }
        let key = self.outputs_key(phase2)?;
        let dir = self.outputs_dir(&key);
        let e: OutputsEntry = serde_json::from_slice(&std::fs::read(dir.join("entry.json")).ok()?).ok()?;
        let intact = e.key == key && e.files.len() == e.bom.artifacts.len() && e.files.iter().all(|f| FileStamp::of(&f.name, &dir.join(&f.name)).is_ok_and(|now| now == *f));
        if !intact {
            tracing::info!("build cache: the stored outputs {} changed since they were stored; not reused", short(&key));
            return None;
        }
        let mut touched = e.clone();
        touched.last_used_ms = now_ms();
        if let Err(err) = serde_json::to_vec_pretty(&touched).map_err(std::io::Error::other).and_then(|b| write_atomic(&dir.join("entry.json"), &b)) {
            tracing::debug!("build cache: not updating the last use of outputs {}: {err}", short(&key));
        }
        Some((dir, e))
    }

    /// Stores the artifacts this build published in `out_dir` as the outputs of its key (see
    /// [`BuildCache::reusable_outputs`]): hard links where the cache is on the output folder's
    /// filesystem, copies otherwise. Best effort: a failure is a warning.
    pub fn store_outputs(&self, phase2: &str, out_dir: &Path, bom: &crate::bom::Bom) {
        let Some(key) = self.outputs_key(phase2) else { return };
        let dir = self.outputs_dir(&key);
        if dir.join("entry.json").exists() && self.reusable_outputs(phase2).is_some() {
            return;
        }
        let partial = self.store.tmp().join(format!("outputs-{key}.{}.partial", std::process::id()));
        let r = (|| -> Result<()> {
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
            let mut files = Vec::new();
            for a in &bom.artifacts {
                let (from, to) = (out_dir.join(&a.file), partial.join(&a.file));
                if std::fs::hard_link(&from, &to).is_err() {
                    let task = crate::progress::Activity::task(format!("build cache: copying {}", a.file), Some(a.size));
                    workcopy::clone_or_copy(&from, &to, &task).with_context(|| format!("copying {} into the build cache", from.display()))?;
                    std::fs::File::open(&to)?.sync_all()?;
                    task.finish();
                }
                files.push(FileStamp::of(&a.file, &to)?);
            }
            let now = now_ms();
            let e = OutputsEntry { key: key.clone(), created_ms: now, last_used_ms: now, files, bom: bom.clone() };
            write_atomic(&partial.join("entry.json"), &serde_json::to_vec_pretty(&e)?)?;
            std::fs::create_dir_all(dir.parent().unwrap_or(&self.store.dir))?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&partial, &dir).with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&partial);
            tracing::warn!("build cache: the outputs were not stored: {e:#}");
        }
    }

    /// The snapshot the build restored (its every step when [`BuildCache::reusable_outputs`]
    /// found outputs), and the base record of the input.
    pub fn restored_base(&self) -> Option<&BaseRecord> {
        self.base.as_ref()
    }

    /// Marks that this build's outputs came from the stored outputs `key` (for the BOM).
    pub fn note_outputs_reused(&mut self, key: &str) {
        self.outputs_reused = Some(key.to_string());
    }
}

/// The first 12 hex digits of a key, as logs show it.
pub fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

impl StepCache for BuildCache {
    fn restored(&self) -> (usize, Vec<StepRecord>, bool) {
        match &self.hit {
            Some(h) => (h.steps_done, h.steps.clone(), h.package_metadata_fresh),
            None => (0, Vec::new(), false),
        }
    }

    fn wants_snapshot(&self, index: usize, record: &StepRecord) -> bool {
        let last = index + 1 == self.total_steps;
        self.settings.snapshots
            && !self.keys.is_empty() && index < self.keys.len() && (last || record.duration_seconds >= self.settings.min_seconds) && self.store.entry(&self.keys[index]).is_none()
    }

    fn snapshot(&mut self, index: usize, records: &[StepRecord], refreshed: bool) -> Result<()> {
        let t = Instant::now();
        let now = now_ms();
        let (Some(key), Some(step)) = (self.keys.get(index), records.last()) else { return Ok(()) };
        let mut entry = Entry {
            key: key.clone(),
            manifest: self.manifest_name.clone(),
            manifest_path: self.manifest_path.clone(),
            steps_done: index + 1,
            step_name: step.name.clone(),
            end_of_phase1: index + 1 == self.total_steps,
            input_sha256: self.input_sha256.clone().unwrap_or_default(),
            arch: self.base.as_ref().map(|b| b.facts.arch.clone()).unwrap_or_default(),
            kib_version: env!("CARGO_PKG_VERSION").to_string(),
            created_ms: now,
            last_used_ms: now,
            disk_bytes: 0,
            method: CopyMethod::SparseCopy,
            seconds: 0.0,
            package_metadata_fresh: refreshed,
            steps: records.to_vec(),
        };
        let disk = self.disk.clone();
        match self.read_only_while(|| self.store.copy_partial(&disk, &mut entry)) {
            None => {}
            Some(Err(e)) => tracing::warn!("build cache: no snapshot after step {} `{}`: {e:#}", index + 1, step.name),
            Some(Ok(partial)) => {
                // The copy is complete and the tree writable again: syncing it to disk (seconds
                // for a GB) overlaps the next steps.
                let store = self.store.clone();
                self.pending.push(std::thread::spawn(move || {
                    store.commit(&partial, &mut entry, t)?;
                    Ok(entry)
                }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, yaml: &str) -> Manifest {
        let p = dir.join("m.yaml");
        std::fs::write(&p, yaml).unwrap();
        crate::manifest::load(&p, &[]).unwrap()
    }

    fn facts() -> Facts {
        let mut f = Facts { arch: "amd64".into(), ..Default::default() };
        f.os_release.insert("ID".into(), "debian".into());
        f
    }

    fn ctx(date: &str) -> BuildContext {
        BuildContext { started: date.into(), build_date: date.into(), kib_version: env!("CARGO_PKG_VERSION").into() }
    }

    fn base() -> KeyBase {
        KeyBase { input_sha256: "a".repeat(64), arch: "amd64".into(), disk_size: None, lock_sha256: None }
    }

    const M: &str = "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: t}\nvariables: {v: one}\nsteps:\n  - name: pkgs\n    packages: {install: [jq]}\n  - name: f\n    file: {path: /etc/x, source: x.txt}\n  - name: r\n    run: {script: \"echo $v\"}\n  - name: last\n    file: {path: /etc/y, content: \"${v}\"}\n";

    #[test]
    fn keys_chain_and_change_from_the_changed_step_on() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.txt"), "x1").unwrap();
        let m = manifest(d.path(), M);
        let k = step_keys(&base(), &m, &facts(), &ctx("2026-01-01T00:00:00Z"));
        assert_eq!(k.len(), 4);
        // Another day: the same keys (build_date is in no step's text).
        assert_eq!(k, step_keys(&base(), &m, &facts(), &ctx("2026-02-02T00:00:00Z")));
        // The file source's content changes: step 2 and later.
        std::fs::write(d.path().join("x.txt"), "x2").unwrap();
        let k2 = step_keys(&base(), &m, &facts(), &ctx("2026-01-01T00:00:00Z"));
        assert_eq!(k2[0], k[0]);
        assert!(k2[1..].iter().zip(&k[1..]).all(|(a, b)| a != b));
        // A variable the run step sees and the last step expands: step 3 on.
        let p = d.path().join("m.yaml");
        let m3 = crate::manifest::load(&p, &["v=two".to_string()]).unwrap();
        let k3 = step_keys(&base(), &m3, &facts(), &ctx("2026-01-01T00:00:00Z"));
        assert_eq!(k3[..2], k2[..2]);
        assert_ne!(k3[2], k2[2]);
        // The input, the disk size, the lock and the arch change everything.
        for b in [
            KeyBase { input_sha256: "b".repeat(64), ..base() },
            KeyBase { disk_size: Some(8 << 30), ..base() },
            KeyBase { lock_sha256: Some("c".repeat(64)), ..base() },
            KeyBase { arch: "arm64".into(), ..base() },
        ] {
            assert_ne!(step_keys(&b, &m, &facts(), &ctx("2026-01-01T00:00:00Z"))[0], k2[0]);
        }
    }

    fn entry(key: &str, last_used: u64) -> Entry {
        Entry {
            key: key.into(),
            manifest: "t".into(),
            manifest_path: "/m.yaml".into(),
            steps_done: 0,
            step_name: "s".into(),
            end_of_phase1: false,
            input_sha256: String::new(),
            arch: "amd64".into(),
            kib_version: env!("CARGO_PKG_VERSION").into(),
            created_ms: last_used,
            last_used_ms: last_used,
            disk_bytes: 0,
            method: CopyMethod::SparseCopy,
            seconds: 0.0,
            package_metadata_fresh: false,
            steps: Vec::new(),
        }
    }

    #[test]
    fn entries_are_trusted_only_whole_and_pruned_lru() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let disk = d.path().join("disk.raw");
        std::fs::write(&disk, vec![7u8; 64 << 10]).unwrap();
        for (k, used) in [("k1", 100), ("k2", 300), ("k3", 200)] {
            let mut e = entry(k, used);
            s.write(&disk, &mut e, Instant::now()).unwrap();
            assert_eq!(e.disk_bytes, 64 << 10);
            // write() stamps nothing it was not given: keep the LRU order of the test.
            assert_eq!(s.entry(k).unwrap().last_used_ms, used);
        }
        assert_eq!(std::fs::read(s.raw("k1")).unwrap(), std::fs::read(&disk).unwrap());
        // A truncated raw, or a JSON without its raw, is not trusted.
        std::fs::OpenOptions::new().write(true).open(s.raw("k3")).unwrap().set_len(10).unwrap();
        assert!(s.entry("k3").is_none());
        assert!(s.entry("nope").is_none());
        let l = s.list();
        assert_eq!(l.iter().map(|x| x.key.as_str()).collect::<Vec<_>>(), ["k2", "k3", "k1"]);
        assert!(l[0].valid && !l[1].valid);
        // A partial file of a dead process goes; ours stays.
        std::fs::write(s.tmp().join("k9.999999999.partial"), b"x").unwrap();
        let mine = s.tmp().join(format!("k8.{}.partial", std::process::id()));
        std::fs::write(&mine, b"x").unwrap();
        // A cap that holds one entry: the untrusted k3 goes first, then k1 (least recently used).
        let one = l[0].size;
        let p = s.prune(one).unwrap();
        assert_eq!(p.removed, ["k3", "k1"]);
        assert_eq!(p.stray_files.len(), 1);
        assert!(mine.exists());
        assert!(s.entry("k2").is_some() && !s.raw("k1").exists());
        let p = s.prune(0).unwrap();
        assert_eq!(p.removed, ["k2"]);
        assert_eq!(p.kept, 0);
        assert!(s.list().is_empty());
    }
}
