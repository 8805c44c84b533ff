//! The bill of materials, `bom.json`: what went into an image and what it holds. One typed
//! [`Bom`], serialized by Phase 2 and read back through the same type by `--lock`
//! ([`crate::lock`]), `kib check`, build continuation ([`Continuation`]) and the SBOMs; no other
//! code reads bom.json as untyped JSON.
//!
//! Shape (version 1, unchanged since the first kib): `bom_version`, `kib_version`,
//! `build_started`, `phases`, `based_on`, `phase_seconds`, `input`, `manifest`, `os_release`,
//! `architecture`, `emulation`, `kernels`, `partition_table`, `filesystems`, `disk_growth`,
//! `locked_from`, `packages`, `steps`, `sysprep`, `artifacts`, `build_cache`, `backend`. Fields added after the first
//! version have defaults, so older BOMs still read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indexmap::IndexMap;

use crate::manifest::{Manifest, SourceFile};
use crate::phase0::grow::Growth;
use crate::phase0::{Filesystem, InputRecord};
use crate::phase1::binfmt::EmulationRecord;
use crate::phase1::StepRecord;
use crate::pkg::Package;

/// An artifact kib wrote to the output folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    pub file: String,
    /// The format's name (`qcow2`, `raw.zst`, ...).
    pub format: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes of the file.
    pub size: u64,
}

/// `bom.json`, version 1.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bom {
    pub bom_version: u32,
    pub kib_version: String,
    /// When the build started, RFC 3339 UTC.
    pub build_started: String,
    /// The phases this run did (`--phases`): `[0, 1, 2]` for a complete build. BOMs written
    /// before `--phases` existed were complete builds.
    #[serde(default = "all_phases")]
    pub phases: Vec<u8>,
    /// The kib build that made the input image, when its bom.json lies beside the input and
    /// lists the input's SHA-256 among its artifacts (a `--phases 0,1` run, continued here). Its
    /// steps open `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<BasedOn>,
    /// Wall time of each phase (`phase0`, `phase1`, `phase2`), in seconds.
    pub phase_seconds: IndexMap<String, f64>,
    pub input: InputRecord,
    pub manifest: ManifestRecord,
    pub os_release: IndexMap<String, String>,
    /// The image's architecture (Debian name: `amd64`, `arm64`), from its binaries and
    /// cross-checked with its dpkg database; not the host's.
    pub architecture: String,
    /// How the image's programs ran when its architecture is not the host's: the binfmt_misc
    /// handler and qemu-user interpreter used. Absent for a native build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulation: Option<EmulationRecord>,
    pub kernels: Vec<String>,
    /// `gpt`, `mbr` or `no partition table`.
    pub partition_table: String,
    pub filesystems: Vec<Filesystem>,
    /// The image's LVM volume groups with their PVs and LVs (empty without LVM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_groups: Vec<crate::phase0::lvmap::VgRecord>,
    /// The SELinux labelling, when the image has SELinux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<crate::selinux::SelinuxRecord>,
    /// What `disk.size` / `--disk-size` grew, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_growth: Option<Growth>,
    /// The bom.json a `--lock` build was pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_from: Option<PathBuf>,
    pub packages: Vec<Package>,
    pub steps: Vec<StepRecord>,
    /// The sysprep operations that ran, by name.
    #[serde(default)]
    pub sysprep: Vec<String>,
    pub artifacts: Vec<Artifact>,
    /// What the build cache did: the snapshot the build resumed from and the steps it reused,
    /// the snapshots it wrote. Absent with `--no-cache` (and in BOMs older than the cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_cache: Option<BuildCacheRecord>,
    /// How the image's filesystems were reached (loop devices or libguestfs), why, and what that
    /// changes. Absent in BOMs older than the guestfs backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<crate::backend::BackendRecord>,
}

/// The build cache's part in a build (see [`crate::buildcache`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuildCacheRecord {
    /// The key of the snapshot the build started from, when it resumed from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// The names of the leading steps that snapshot held, in order: they did not run in this
    /// build, and their records in `steps` are those of the build that ran them.
    #[serde(default)]
    pub reused_steps: Vec<String>,
    /// Whether every step was reused: Phase 1 ran no step, only Phase 2 ran on the snapshot.
    #[serde(default)]
    pub phase1_skipped: bool,
    /// The snapshots this build wrote.
    #[serde(default)]
    pub stored: Vec<StoredSnapshot>,
    /// When nothing changed, not even the output options: the key of the stored outputs of an
    /// earlier build that were published again (Phase 0, 1 and 2 did not run; `artifacts` are
    /// those files, and the records of the image are that build's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_reused_from: Option<String>,
}

/// A snapshot a build wrote into the build cache.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredSnapshot {
    /// How many leading steps it holds.
    pub after_step: usize,
    pub key: String,
    /// Seconds it took (remounts, copy, sync).
    pub seconds: f64,
    /// `reflink` or `sparse-copy`.
    pub method: String,
}

fn all_phases() -> Vec<u8> {
    vec![0, 1, 2]
}

/// The earlier build a BOM continues (see [`Bom::based_on`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BasedOn {
    /// Its bom.json, and that file's SHA-256.
    pub bom: PathBuf,
    pub bom_sha256: String,
    pub build_started: String,
    pub phases: Vec<u8>,
    /// Its input and manifest records, as it wrote them.
    pub input: InputRecord,
    pub manifest: ManifestRecord,
    /// How many of `steps` are its.
    pub steps: usize,
}

/// The manifest as the BOM records it. Variables are recorded because they decide what was
/// installed; proxy settings and other environment never are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestRecord {
    pub path: PathBuf,
    pub sha256: String,
    pub name: String,
    pub files: Vec<SourceFile>,
    pub variables: IndexMap<String, String>,
}

impl ManifestRecord {
    pub fn new(m: &Manifest) -> Self {
        ManifestRecord {
            path: std::path::absolute(&m.path).unwrap_or_else(|_| m.path.clone()),
            sha256: m.sha256.clone(),
            name: m.name.clone(),
            files: m.files.clone(),
            variables: m.variables.0.clone(),
        }
    }
}

impl Bom {
    /// The current shape's version.
    pub const VERSION: u32 = 1;

    /// Parses a bom.json; `path` names it in errors.
    ///
    /// Errors: not JSON (`is not JSON`), or not a kib BOM (`is not a kib bom.json`, naming the
    /// first field that does not fit, with its JSON path).
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Bom> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => anyhow::anyhow!("{} is not a kib bom.json: {at}: {inner}", path.display()),
                _ => anyhow::anyhow!("{} is not JSON: {inner}", path.display()),
            }
        })
    }

    /// Reads and parses the bom.json at `path`.
    ///
    /// Errors: as [`Bom::from_slice`], or the file cannot be read.
    pub fn read(path: &Path) -> Result<Bom> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Bom::from_slice(&bytes, path)
    }

    /// The BOM as written to bom.json: pretty-printed JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).context("serializing bom.json")
    }

    /// The step records named `step`.
    pub fn steps_named<'a>(&'a self, step: &'a str) -> impl Iterator<Item = &'a StepRecord> + 'a {
        self.steps.iter().filter(move |s| s.name == step)
    }
}

/// The earlier kib build that made a run's input: found by its `bom.json` beside the input
/// listing an artifact with the input's SHA-256 (as a `--phases 0,1` run leaves it). Its steps
/// open the new BOM's `steps`, and its date is the new build's `${build_date}`.
#[derive(Debug, Clone)]
pub struct Continuation {
    pub record: BasedOn,
    pub steps: Vec<StepRecord>,
}

impl Continuation {
    /// `None` when there is no `bom.json` beside `input`, it cannot be read or parsed, or it lists
    /// no artifact with `sha256` (it belongs to another image); the reason is logged at debug
    /// level.
    pub fn find(input: &Path, sha256: &str) -> Option<Continuation> {
        let path = input.with_file_name("bom.json");
        let text = std::fs::read(&path).ok()?;
        let earlier = match Bom::from_slice(&text, &path) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!("not continuing from {}: {e:#}", path.display());
                return None;
            }
        };
        if sha256.is_empty() || !earlier.artifacts.iter().any(|a| a.sha256 == sha256) {
            tracing::debug!("{} does not list the input's SHA-256 {sha256}: not its build", path.display());
            return None;
        }
        Some(Continuation {
            record: BasedOn {
                bom: std::path::absolute(&path).unwrap_or(path),
                bom_sha256: crate::hash::sha256_bytes(&text),
                build_started: earlier.build_started,
                phases: earlier.phases,
                input: earlier.input,
                manifest: earlier.manifest,
                steps: earlier.steps.len(),
            },
            steps: earlier.steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/bom/kib-b8de4e5-phases-2.json")).unwrap()
    }

    #[test]
    fn a_bom_written_by_earlier_kib_parses_and_round_trips() {
        let bytes = fixture();
        let bom = Bom::from_slice(&bytes, Path::new("fixture")).unwrap();
        assert_eq!(bom.phases, [2]);
        assert_eq!(bom.based_on.as_ref().unwrap().phases, [0, 1]);
        assert_eq!(bom.based_on.as_ref().unwrap().steps, 2);
        assert_eq!(bom.input.sha256_source, "read");
        assert_eq!(bom.packages.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["apt", "bash", "libc6", "tzdata"]);
        assert!(bom.packages.iter().all(|p| p.held));
        assert_eq!(bom.sysprep.len(), 11);
        // Through the type and back, the JSON is the same value: no field lost, none added.
        let again: serde_json::Value = serde_json::from_slice(&bom.to_json().unwrap()).unwrap();
        let original: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(again, original);
        assert_eq!(Bom::from_slice(&bom.to_json().unwrap(), Path::new("x")).unwrap(), bom);
    }

    #[test]
    fn older_boms_default_what_they_lack_and_bad_ones_say_where() {
        let mut v: serde_json::Value = serde_json::from_slice(&fixture()).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["phases", "based_on", "sysprep"] {
            o.remove(k);
        }
        o["input"].as_object_mut().unwrap().remove("sha256_source");
        let bom = Bom::from_slice(&serde_json::to_vec(&v).unwrap(), Path::new("old.json")).unwrap();
        assert_eq!(bom.phases, [0, 1, 2]);
        assert!(bom.based_on.is_none() && bom.sysprep.is_empty());
        v["packages"][1]["version"] = 5.into();
        let e = Bom::from_slice(&serde_json::to_vec(&v).unwrap(), Path::new("bad.json")).unwrap_err().to_string();
        assert!(e.starts_with("bad.json is not a kib bom.json: packages[1].version: invalid type: integer `5`"), "{e}");
        let e = Bom::from_slice(b"{\"packages\": []}", Path::new("x.json")).unwrap_err().to_string();
        assert!(e.starts_with("x.json is not a kib bom.json: ") && e.contains("missing field"), "{e}");
        let e = Bom::from_slice(b"apiVersion: kib/v1\n", Path::new("m.yaml")).unwrap_err().to_string();
        assert!(e.starts_with("m.yaml is not JSON: expected value at line 1 column 1"), "{e}");
    }

    #[test]
    fn continuation_needs_the_inputs_sum_among_the_artifacts() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("node.raw");
        std::fs::write(d.path().join("bom.json"), fixture()).unwrap();
        let bom = Bom::from_slice(&fixture(), Path::new("f")).unwrap();
        let sum = &bom.artifacts[0].sha256;
        let c = Continuation::find(&input, sum).unwrap();
        assert_eq!(c.record.build_started, bom.build_started);
        assert_eq!(c.record.steps, c.steps.len());
        assert_eq!(c.record.bom_sha256, crate::hash::sha256_bytes(&fixture()));
        assert!(Continuation::find(&input, &"0".repeat(64)).is_none());
        assert!(Continuation::find(&d.path().join("sub/x.raw"), sum).is_none());
    }
}
