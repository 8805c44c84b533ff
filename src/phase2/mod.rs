//! Phase 2: artifacts. Sysprep (in the chroot session Phase 1 leaves open), the package list for
//! the BOM, fstrim, unmount, conversion to each format ([`run`]); then bom.json, the SBOMs and
//! `SHA256SUMS` ([`write_records`]). Without Phase 2 in `--phases`, [`run`] only closes the session,
//! reads the packages and unmounts, and the working copy itself is the result (`<name>.raw`).

pub mod convert;
pub mod ova;
pub mod sbom;
pub mod stream;
pub mod sysprep;

use std::path::Path;

use anyhow::{Context, Result};

use crate::bom::{Artifact, Bom};
use crate::progress::Activity;
use crate::context::{BuildContext, Phase, PhaseSet};
use crate::format::{Format, Qcow2Compression};
use crate::manifest::Manifest;
use crate::phase0::Image;
use crate::phase1::binfmt::EmulationRecord;
use crate::phase1::Phase1Output;
use crate::pkg::Package;

/// How Phase 2 runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub phases: PhaseSet,
    /// The formats to write; only [`Format::Raw`] without Phase 2.
    pub formats: Vec<Format>,
    pub compression: Qcow2Compression,
    /// How many conversions run at once (at least 1).
    pub jobs: usize,
    /// The outputs' base name.
    pub name: String,
}

/// What Phase 2 did, for the BOM.
#[derive(Debug)]
pub struct Phase2Output {
    /// The sysprep operations that ran, by name.
    pub sysprep: Vec<String>,
    /// Every installed package, after sysprep (so holds show).
    pub packages: Vec<Package>,
    /// How the image's programs ran on this host, when emulated.
    pub emulation: Option<EmulationRecord>,
    /// The images written into the staging folder, with their SHA-256.
    pub artifacts: Vec<Artifact>,
    /// The SELinux labelling, when the image has SELinux.
    pub selinux: Option<crate::selinux::SelinuxRecord>,
}

/// Runs Phase 2 on `image` with the session `p1` left open: sysprep (when Phase 2 runs and the
/// manifest has it on), closing the session, the package list, fstrim, unmounting, and writing
/// `opts.formats` into `staging`.
///
/// Errors: a failing sysprep operation, package database or conversion; the session and mounts
/// are undone by their guards.
pub fn run(image: &mut Image, p1: Phase1Output, manifest: &Manifest, ctx: &BuildContext, staging: &Path, opts: &Options) -> Result<Phase2Output> {
    let artifacts_phase = opts.phases.contains(Phase::Artifacts);
    let Phase1Output { session, mut manager, .. } = p1;
    let mut emulation = None;
    let mut sysprep = Vec::new();
    if let Some(mut open) = session {
        if artifacts_phase && manifest.sysprep.enabled {
            let root = image.root().try_clone().context("opening the image root for sysprep")?;
            let activity = Activity::step("sysprep");
            let ran = sysprep::run(&root, &mut open.session, manager.as_deref_mut(), &manifest.sysprep.skip);
            match ran {
                Ok(done) => {
                    activity.finish();
                    sysprep = done.into_iter().map(str::to_string).collect();
                }
                Err(e) => {
                    if let Err(c) = open.close() {
                        tracing::warn!("closing the chroot session: {c:#}");
                    }
                    return Err(e);
                }
            }
        }
        emulation = open.close()?;
    }
    // After the last write into the tree (the steps, sysprep's rewrites of /etc/hosts and
    // dpkg's status, the session's restored files), before the package list and fstrim.
    let selinux = if artifacts_phase { label(image, manifest)? } else { None };
    let activity = Activity::step("package list for the BOM");
    let packages = match &manager {
        Some(m) => m.installed(image.root())?,
        None => crate::pkg::installed(image.root())?,
    };
    activity.finish();
    if image.backend() == crate::backend::Backend::Guestfs {
        let activity = Activity::step("write the changes back through libguestfs");
        image.write_back(artifacts_phase)?;
        activity.finish();
    } else if artifacts_phase {
        let activity = Activity::step("fstrim");
        trim(image);
        activity.finish();
    }
    if !artifacts_phase {
        tracing::info!("Phase 2 is left out (--phases {}): no sysprep; the result is the working copy as the steps left it", opts.phases);
    }
    let activity = Activity::step("unmount and detach");
    image.unmount()?;
    activity.finish();
    let plan = convert::Plan {
        compression: opts.compression,
        jobs: opts.jobs.max(1),
        ovf: opts.formats.contains(&Format::Ova).then(|| ova::OvfInfo::for_image(image, manifest, &packages, &ctx.build_date)),
    };
    let artifacts = convert::convert_all(&image.disk, staging, &opts.name, &opts.formats, &plan)?;
    Ok(Phase2Output { sysprep, packages, emulation, artifacts, selinux })
}

/// Labels the tree with the image's SELinux policy when it has one (see [`crate::selinux`]);
/// `sysprep.skip: [selinux-relabel]` turns it off (recorded as not relabelled).
fn label(image: &Image, manifest: &Manifest) -> Result<Option<crate::selinux::SelinuxRecord>> {
    let skip = manifest.sysprep.skip.iter().any(|s| s == crate::selinux::SKIP_NAME);
    let policy = match crate::selinux::detect(image.root()) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(e) if skip => {
            tracing::warn!("{e:#} (sysprep.skip has {}: not labelled)", crate::selinux::SKIP_NAME);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if skip {
        tracing::warn!("the image runs SELinux ({}, policy {}) and sysprep.skip has {}: files the steps wrote stay unlabelled", policy.mode, policy.name, crate::selinux::SKIP_NAME);
        return Ok(Some(crate::selinux::SelinuxRecord { mode: policy.mode, policy: policy.name, relabelled: false, seconds: 0.0 }));
    }
    let rec = crate::selinux::relabel(image.sys(), image.root(), &image.root_dir, &image.filesystems, &policy, image.work_dir())?;
    Ok(Some(rec))
}

/// Writes `bom.json`, with `sboms` the SPDX and CycloneDX documents, and `SHA256SUMS` (the
/// artifacts and those files) into `staging`. Returns the names of every file to publish, in
/// order: the artifacts, bom.json, the SBOMs, SHA256SUMS.
///
/// Errors: a file cannot be written, or an SBOM cannot be built.
pub fn write_records(bom: &Bom, name: &str, sboms: bool, staging: &Path) -> Result<Vec<String>> {
    let bom_json = bom.to_json()?;
    let path = staging.join("bom.json");
    std::fs::write(&path, &bom_json).with_context(|| format!("writing {}", path.display()))?;
    let mut written = vec![("bom.json".to_string(), crate::hash::sha256_bytes(&bom_json))];
    if sboms {
        written.extend(sbom::write_all(&sbom::SbomInput::from_bom(bom, name), staging, name)?);
    }
    let artifacts = &bom.artifacts;
    let sums = sha256sums(artifacts.iter().map(|a| (a.file.as_str(), a.sha256.as_str())).chain(written.iter().map(|(f, s)| (f.as_str(), s.as_str()))));
    let path = staging.join("SHA256SUMS");
    std::fs::write(&path, sums).with_context(|| format!("writing {}", path.display()))?;
    let mut files: Vec<String> = artifacts.iter().map(|a| a.file.clone()).chain(written.into_iter().map(|(f, _)| f)).collect();
    files.push("SHA256SUMS".into());
    Ok(files)
}

/// Discards unused blocks of every mounted filesystem of the image, so that the working copy's
/// free space becomes holes and the outputs shrink. A filesystem that does not support it is
/// noted and skipped.
pub fn trim(image: &Image) {
    for fs in &image.filesystems {
        let dir = image.root_dir.join(fs.mount_point.trim_start_matches('/'));
        match image.sys().run(crate::exec::host_tool("fstrim").arg("-v").arg(&dir), "fstrim", None) {
            Ok(out) => tracing::info!("fstrim {}: {}", fs.mount_point, out.last().map_or("", |l| l.rsplit(": ").next().unwrap_or(""))),
            Err(e) => tracing::warn!("fstrim {} failed, continuing without it: {e}", fs.mount_point),
        }
    }
}

/// `SHA256SUMS` text in sha256sum's format for `(file, sha256)` pairs.
pub fn sha256sums<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    entries.into_iter().map(|(f, s)| format!("{s}  {f}\n")).collect()
}

/// The output folder, made (with its parents) when missing. A folder made here is removed again
/// when the guard drops while it is still empty (a build that failed before writing its
/// outputs), so that a failed build leaves no folder behind; one that held files, or that was
/// there before, stays.
///
/// Errors: the folder cannot be made.
pub fn ensure_output_dir(dir: &Path) -> Result<OutputDir> {
    let created = !dir.is_dir();
    std::fs::create_dir_all(dir).with_context(|| format!("creating output folder {}", dir.display()))?;
    Ok(OutputDir { path: dir.to_path_buf(), created })
}

/// See [`ensure_output_dir`].
#[derive(Debug)]
pub struct OutputDir {
    path: std::path::PathBuf,
    created: bool,
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.created {
            // Only an empty folder goes (remove_dir refuses any other).
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}
