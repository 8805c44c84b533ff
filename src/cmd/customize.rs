//! `kib customize`: Phase 0 → Phase 1 → Phase 2, then the records. Everything that can be checked
//! without the image is checked first ([`Plan::new`]); on any error later, the guards undo
//! everything in reverse order (mounts, loop devices, work directory, staging folder), and the
//! output folder is left as it was.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;

use crate::bom::{Bom, Continuation, ManifestRecord};
use crate::buildcache::{self, BuildCache};
use crate::cli::CustomizeArgs;
use crate::context::{BuildContext, Phase, PhaseSet};
use crate::fetch::image::{self, Check, FetchedImage};
use crate::fetch::{redact, Fetcher};
use crate::format::{Format, Qcow2Compression};
use crate::lock::Lock;
use crate::manifest::{self, Manifest};
use crate::phase2::convert::Staging;
use crate::phase2::sysprep;
use crate::progress::{self, Activity, Event, OutputFile, Status};
use crate::{phase0, phase1, phase2};

/// What a run will do, decided from the arguments and the manifest before the image is touched.
#[derive(Debug)]
pub struct Plan {
    pub manifest: Manifest,
    pub phases: PhaseSet,
    pub formats: Vec<Format>,
    pub compression: Qcow2Compression,
    /// The outputs' base name.
    pub name: String,
    /// Grow the disk to this many bytes in Phase 0.
    pub disk_size: Option<u64>,
}

impl Plan {
    /// Checks the arguments against each other and the manifest.
    ///
    /// Errors: a missing or bad manifest, contradicting options (`--format` or `--disk-size` or
    /// `--lock` with a phase left out that they belong to), a bad output name, a missing image
    /// (a URL is fetched later, by [`input_file`]).
    pub fn new(args: &CustomizeArgs) -> Result<Plan> {
        let manifest_path = match (&args.manifest, &args.release_channel) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => manifest::catalogue::release_channel(c)?,
            (None, None) => bail!("give --manifest or --release-channel"),
        };
        let manifest = manifest::load_with(&manifest_path, &args.set, args.provider.as_deref())?;
        let phases = PhaseSet::from_numbers(&args.phases)?;
        let mut formats = Format::dedup(&default_formats(&args.format, args.provider.is_some(), &manifest));
        if formats.is_empty() {
            formats.push(Format::Qcow2);
        }
        if !phases.contains(Phase::Artifacts) {
            if !args.format.is_empty() {
                bail!("--format chooses Phase 2's outputs; without Phase 2 (--phases {phases}) the result is the working copy, <name>.raw");
            }
            formats = vec![Format::Raw];
        }
        if !phases.contains(Phase::Customization) && args.lock.is_some() {
            bail!("--lock pins what Phase 1 installs, and --phases {phases} leaves Phase 1 out");
        }
        let compression = args.qcow2_compression.or(manifest.output.qcow2_compression).unwrap_or_default();
        sysprep::validate(&manifest.sysprep.skip).map_err(|e| e.context(manifest.path.display().to_string()))?;
        let name = args.name.clone().unwrap_or_else(|| manifest.name.clone());
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("output name `{name}` must be a plain file name");
        }
        let mut disk_size = match &args.disk_size {
            Some(s) => Some(manifest::parse_disk_size(s).map_err(|e| anyhow::anyhow!("--disk-size: {e}"))?),
            None => manifest.disk_size,
        };
        if !phases.contains(Phase::Base) && disk_size.is_some() {
            if args.disk_size.is_some() {
                bail!("--disk-size grows the disk in Phase 0, and --phases {phases} leaves Phase 0 out");
            }
            tracing::info!("{}: disk.size is not applied: Phase 0, which grows the disk, is left out", manifest.path.display());
            disk_size = None;
        }
        let is_url = args.disk_image.to_str().is_some_and(image::is_url);
        if !is_url && !args.disk_image.exists() {
            bail!("disk image {} not found", args.disk_image.display());
        }
        if args.disk_image_sha256.is_some() && !is_url {
            bail!("--disk-image-sha256 pins a --disk-image URL; {} is a local file (its SHA256SUMS beside it is used)", args.disk_image.display());
        }
        let mut plan = Plan { manifest, phases, formats, compression, name, disk_size };
        if !is_url {
            plan.fit_input(&args.disk_image)?;
        }
        Ok(plan)
    }

    /// Adjusts the plan to the input file: a vhd output needs a disk of whole MiB, so an odd
    /// size is rounded up (disk sizes from `disk.size` are whole already).
    ///
    /// Errors: the input is no image qemu-img reads, or it needs growing and Phase 0 is left out.
    pub fn fit_input(&mut self, input: &Path) -> Result<()> {
        let phases = self.phases;
        if self.formats.contains(&Format::Vhd) && self.disk_size.is_none() && input.is_file() {
            let size = phase0::workcopy::inspect(input)?.virtual_size;
            if size % (1 << 20) != 0 {
                if !phases.contains(Phase::Base) {
                    bail!("vhd needs a disk of whole MiB and this one has {size} bytes; growing it is Phase 0's, which --phases {phases} leaves out");
                }
                tracing::info!("vhd: rounding the disk up from {size} bytes to a whole MiB");
                self.disk_size = Some(size.div_ceil(1 << 20) << 20);
            }
        }
        Ok(())
    }

    /// The files the run will write into the output folder: the images, bom.json, with Phase 2
    /// the SBOMs, and SHA256SUMS.
    pub fn outputs(&self) -> Vec<String> {
        let mut files: Vec<String> = self.formats.iter().map(|f| f.file_name(&self.name)).collect();
        files.push("bom.json".into());
        if self.phases.contains(Phase::Artifacts) {
            for f in [phase2::sbom::SbomFormat::Spdx, phase2::sbom::SbomFormat::Cyclonedx] {
                files.push(format!("{}.{}", self.name, f.suffix()));
            }
        }
        files.push("SHA256SUMS".into());
        files
    }
}

/// The output formats: `--format`; else, with `--provider`, the profile's; else the manifest's
/// `output.formats`; else the profile's (one the manifest names or includes itself). Empty when
/// none says (the caller's default is qcow2).
pub fn default_formats(flag: &[Format], provider_flag: bool, manifest: &Manifest) -> Vec<Format> {
    let profile: &[Format] = manifest.provider.as_ref().map_or(&[], |(_, p)| &p.formats);
    if !flag.is_empty() {
        flag.to_vec()
    } else if provider_flag && !profile.is_empty() {
        profile.to_vec()
    } else if !manifest.output.formats.is_empty() {
        manifest.output.formats.clone()
    } else {
        profile.to_vec()
    }
}

/// Refuses an image the provider profile says its platform cannot run: another architecture,
/// or a disk that boots with none of the platform's firmware.
///
/// Errors: the mismatch, naming the profile file, what it allows and what the image has.
pub fn check_provider_fits(manifest: &Manifest, arch: &str, table: &crate::phase0::partition::Table) -> Result<()> {
    let Some((path, p)) = &manifest.provider else { return Ok(()) };
    if !p.arches.is_empty() && !p.arches.iter().any(|a| a == arch) {
        bail!("provider `{}` ({}) runs {} images, and this image is {arch}", p.name, path.display(), p.arches.join(", "));
    }
    let has: Vec<&str> = [(table.boots_bios(), "bios"), (table.boots_uefi(), "uefi")].into_iter().filter(|(b, _)| *b).map(|(_, n)| n).collect();
    if !p.firmware.is_empty() && !p.firmware.iter().any(|f| has.contains(&f.name())) {
        bail!(
            "provider `{}` ({}) boots with {} firmware, and this image's disk boots with {} (its partition table: {:?}, partition types {})",
            p.name,
            path.display(),
            p.firmware.iter().map(|f| f.name()).collect::<Vec<_>>().join(" or "),
            if has.is_empty() { "neither BIOS nor UEFI".to_string() } else { has.join(" and ") },
            table.kind,
            table.partitions.iter().map(|x| x.type_id.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Runs `kib customize`.
pub fn run(args: &CustomizeArgs) -> Result<ExitCode> {
    match super::mounting("customize", args.backend)? {
        super::Entered::Ran(code) => Ok(code),
        super::Entered::Here(choice) => run_in_namespace(args, &choice),
    }
}

/// Runs the build, once [`super::mounting`] has been called (by `customize` or `build`), with the
/// backend it chose.
pub fn run_in_namespace(args: &CustomizeArgs, backend: &crate::backend::Choice) -> Result<ExitCode> {
    let ctx = BuildContext::now();
    let t0 = Instant::now();
    let guestfs = backend.backend == crate::backend::Backend::Guestfs;
    let mut plan = Plan::new(args)?;
    let mut fetcher = super::fetcher(&args.fetch)?;
    let lock = args.lock.as_deref().map(Lock::load).transpose()?;
    if let Some(lock) = &lock {
        tracing::info!("--lock {}: {} packages and {} downloads pinned", lock.path.display(), lock.packages.packages.len(), lock.downloads.sums.len());
        fetcher.pins = Some(Arc::new(lock.downloads.clone()));
    }
    let (input, fetched) = input_file(args, &fetcher, lock.as_ref())?;
    if fetched.is_some() {
        plan.fit_input(&input)?;
    }
    let (manifest, phases) = (&plan.manifest, plan.phases);
    let outputs: Vec<PathBuf> = plan.outputs().iter().map(|f| args.output_dir.join(f)).collect();
    crate::input::refuse_outputs_on_input(&input, &outputs)?;
    let _output_dir = phase2::ensure_output_dir(&args.output_dir)?;
    tracing::info!("manifest {} ({} steps), image {}", manifest.path.display(), manifest.steps.len(), args.disk_image.display());
    let mut cache = build_cache(args, &plan, &input, &fetcher.cache_dir, &ctx, !guestfs)?;
    if guestfs && cache.is_some() {
        tracing::info!("build cache: the guestfs backend stores and reuses a build's outputs, and takes no snapshots after steps");
    }
    let phase2_key = phase2_description(&plan, &ctx, backend.backend);
    if let (Some(c), Some(k)) = (&mut cache, &phase2_key) {
        if let Some((dir, stored)) = c.reusable_outputs(k) {
            return publish_stored_outputs(args, &plan, &input, fetched.as_ref(), c, &dir, stored, &ctx, t0);
        }
    }
    let start_from = cache.as_ref().and_then(|c| c.start_from());

    // Phase 0
    let activity = Activity::phase(if phases.contains(Phase::Base) { "Phase 0: verify, working copy, mount" } else { "Phase 0 (attach and mount only)" });
    let mut image = phase0::run(&phase0::Options {
        image: input.clone(),
        // A URL input was verified when it was fetched.
        verify: phases.contains(Phase::Base) && !args.no_verify && fetched.is_none(),
        work_base: args.work_dir.clone(),
        cache_dir: Some(fetcher.cache_dir.clone()),
        read_only: false,
        // A snapshot is grown already.
        grow_to: if start_from.is_some() { None } else { plan.disk_size },
        start_from,
        backend: backend.backend,
        guestfs: Some(super::guestfs_settings(&fetcher.cache_dir, args.appliance_timeout)),
    })?;
    if let Some(f) = &fetched {
        image.input.url = Some(f.fetched.url.clone());
        image.input.verified_against = f.verified_against.clone();
    }
    activity.finish();
    let phase0_s = t0.elapsed().as_secs_f64();
    check_provider_fits(manifest, &image.facts.arch, &image.table)?;
    check_expected_os(args, &image.facts.os_release, &input)?;
    if phases.contains(Phase::Artifacts) && !manifest.sysprep.skip.iter().any(|s| s == crate::selinux::SKIP_NAME) {
        // An SELinux image kib could not label fails now, not after Phase 1.
        if let Err(e) = crate::selinux::detect(image.root()) {
            return Err(e.context(format!("{}: checking the image's SELinux policy before customizing it", input.display())));
        }
    }
    let continuation = Continuation::find(&input, &image.input.sha256);
    if continuation.is_some() {
        cache = None; // its build date decides the steps; see build_cache
    }
    if let Some(c) = &mut cache {
        c.after_phase0(&mut image, manifest, &ctx);
    }
    let ctx = match &continuation {
        Some(c) => {
            tracing::info!(
                "the input was made by the kib build in {} ({} steps, phases {}): its steps open this BOM",
                c.record.bom.display(),
                c.steps.len(),
                c.record.phases.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
            );
            ctx.with_build_date(&c.record.build_started)
        }
        None => ctx,
    };
    let staging = Staging::create(&args.output_dir, Some(image.work_dir()))?;
    let unlocked = phase1::unlocked_downloads(manifest, &image.facts, &ctx, &fetcher);
    if !unlocked.is_empty() {
        bail!("{} download(s) do not match the lock:\n  - {}", unlocked.len(), unlocked.join("\n  - "));
    }
    if fetcher.offline && phases.contains(Phase::Customization) {
        let missing = phase1::missing_downloads(manifest, &image.facts, &ctx, &fetcher);
        if !missing.is_empty() {
            bail!(
                "--offline: {} artifact(s) are not in the cache {}; fill it on a connected host with `kib fetch --manifest {} --arch {}` and copy the cache over:\n  - {}",
                missing.len(),
                fetcher.cache_dir.display(),
                manifest.path.display(),
                image.facts.arch,
                missing.join("\n  - ")
            );
        }
    }

    // Phase 1
    let activity = Activity::phase(if phases.contains(Phase::Customization) { "Phase 1: the manifest's steps" } else { "Phase 1 (left out)" });
    let step_cache = cache.as_mut().map(|c| c as &mut dyn phase1::StepCache);
    let mut p1 = phase1::run(&image, manifest, &ctx, &fetcher, phases, lock.as_ref().map(|l| Arc::new(l.packages.clone())), step_cache)?;
    activity.finish();
    let phase1_s = p1.seconds;
    let steps_run = std::mem::take(&mut p1.steps);

    // Phase 2
    let t2 = Instant::now();
    let activity = Activity::phase(if phases.contains(Phase::Artifacts) { "Phase 2: sysprep, BOM, conversion" } else { "Phase 2 (left out: the working copy as it is)" });
    let p2 = phase2::run(&mut image, p1, manifest, &ctx, staging.dir(), &phase2::Options {
        phases,
        formats: plan.formats.clone(),
        compression: plan.compression,
        jobs: args.convert_jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        name: plan.name.clone(),
    })?;
    if let Some(c) = &mut cache {
        c.finish();
    }
    let (based_on, mut steps) = continuation.map_or((None, Vec::new()), |c| (Some(c.record), c.steps));
    steps.extend(steps_run);
    let bom = Bom {
        bom_version: Bom::VERSION,
        kib_version: ctx.kib_version.clone(),
        build_started: ctx.started.clone(),
        phases: phases.numbers(),
        based_on,
        phase_seconds: IndexMap::from([("phase0".to_string(), round(phase0_s)), ("phase1".to_string(), round(phase1_s)), ("phase2".to_string(), round(t2.elapsed().as_secs_f64()))]),
        input: image.input.clone(),
        manifest: ManifestRecord::new(manifest),
        os_release: image.facts.os_release.clone(),
        architecture: image.facts.arch.clone(),
        emulation: p2.emulation,
        kernels: image.facts.kernels.clone(),
        partition_table: image.table.kind_name().to_string(),
        filesystems: image.filesystems.clone(),
        volume_groups: image.volume_groups.clone(),
        selinux: p2.selinux.clone(),
        disk_growth: image.growth.clone(),
        locked_from: args.lock.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        packages: p2.packages,
        steps,
        sysprep: p2.sysprep,
        artifacts: p2.artifacts,
        build_cache: cache.as_ref().map(BuildCache::record),
        backend: Some(crate::backend::BackendRecord {
            name: backend.backend,
            reason: backend.reason.clone(),
            differences: if guestfs { crate::guestfs::DIFFERENCES.iter().map(|d| d.to_string()).collect() } else { Vec::new() },
        }),
    };
    let files = phase2::write_records(&bom, &plan.name, phases.contains(Phase::Artifacts), staging.dir())?;
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    staging.commit(&args.output_dir, &names)?;
    image.close()?;
    if let Some(c) = &cache {
        if let Some(k) = &phase2_key {
            c.store_outputs(k, &args.output_dir, &bom);
        }
        c.prune();
    }
    activity.finish();
    let phase2_s = t2.elapsed().as_secs_f64();
    progress::emit(Event::Result { status: Status::Ok, seconds: t0.elapsed().as_secs_f64(), outputs: output_files(&args.output_dir, &files)?, error: None });
    tracing::debug!(
        "done in {:.1}s (phase 0 {phase0_s:.1}s, phase 1 {phase1_s:.1}s, phase 2 {phase2_s:.1}s): {}",
        t0.elapsed().as_secs_f64(),
        files.iter().map(|f| Path::new(&args.output_dir).join(f).display().to_string()).collect::<Vec<_>>().join(" ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Refuses an image whose os-release is not what `kib build`'s OS catalogue promised.
fn check_expected_os(args: &CustomizeArgs, os_release: &IndexMap<String, String>, input: &Path) -> Result<()> {
    if let Some((id, version)) = &args.expect_os {
        let got_id = os_release.get("ID").map_or("", String::as_str);
        let got_version = os_release.get("VERSION_ID").map_or("", String::as_str);
        if got_id != id || version.as_deref().is_some_and(|v| !crate::bases::version_matches(v, got_version)) {
            bail!(
                "{}: the OS catalogue promises os-release ID={id}{}, and the image says ID={got_id} VERSION_ID={got_version}",
                input.display(),
                version.as_deref().map(|v| format!(" VERSION_ID={v}")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// What decides Phase 2's outputs besides the disk after the last step, for the build cache's
/// stored outputs: `None` without Phase 2 (nothing is stored or reused then).
fn phase2_description(plan: &Plan, ctx: &BuildContext, backend: crate::backend::Backend) -> Option<String> {
    if !plan.phases.contains(Phase::Artifacts) {
        return None;
    }
    let m = &plan.manifest;
    // The OVF descriptor names the build date.
    let date = if plan.formats.contains(&Format::Ova) { ctx.build_date.as_str() } else { "" };
    Some(format!("formats {:?}
compression {:?}
name {}
sysprep {:?}
output {:?}
provider {:?}
manifest name {}
date {date}
backend {backend}
", plan.formats, plan.compression, plan.name, m.sysprep, m.output, m.provider, m.name))
}

/// The fast path of an unchanged rebuild: the build cache holds the outputs of an earlier build
/// with the same last snapshot and Phase 2 options, so they are copied (reflinked where the
/// filesystem can) into the output folder with a BOM that is that build's, with this build's
/// date, input and manifest records and a `build_cache` record saying so. Nothing is mounted.
///
/// Errors: the input does not match the checksum list beside it, `kib build`'s OS check, a
/// copy or a record that cannot be written.
#[allow(clippy::too_many_arguments)]
fn publish_stored_outputs(
    args: &CustomizeArgs,
    plan: &Plan,
    input: &Path,
    fetched: Option<&FetchedImage>,
    cache: &mut BuildCache,
    dir: &Path,
    stored: buildcache::OutputsEntry,
    ctx: &BuildContext,
    t0: Instant,
) -> Result<ExitCode> {
    let activity = Activity::phase("Phases 0-2: nothing changed, the outputs come from the build cache");
    let base = cache.restored_base().context("the build cache restored no input record")?.clone();
    check_expected_os(args, &base.facts.os_release, input)?;
    let format = phase0::workcopy::inspect(input)?;
    let mut record = phase0::InputRecord {
        path: std::path::absolute(input).unwrap_or_else(|_| input.to_path_buf()),
        url: fetched.map(|f| f.fetched.url.clone()),
        sha256: base.input_sha256.clone(),
        format: format.format,
        virtual_size: format.virtual_size,
        verified_against: fetched.and_then(|f| f.verified_against.clone()),
        sha256_source: "cache".into(),
    };
    if plan.phases.contains(Phase::Base) && !args.no_verify && fetched.is_none() {
        match phase0::verify::expected_sum(input).with_context(|| format!("reading the checksum list beside {}", input.display()))? {
            Some(e) if e.sha256 != record.sha256 => bail!(
                "checksum mismatch for {}: {} lists sha256 {}, but the file's sha256 is {}. The download may be corrupt or tampered with; fetch it again, or pass --no-verify to skip this check",
                input.display(),
                e.list.display(),
                e.sha256,
                record.sha256
            ),
            Some(e) => record.verified_against = Some(e.list.display().to_string()),
            None => tracing::warn!("no SHA256SUMS or sha256sum.txt beside {} lists it: not verified", input.display()),
        }
    }
    let phase0_s = t0.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let staging = Staging::create(&args.output_dir, None)?;
    for f in &stored.files {
        let task = Activity::task(format!("{} from the build cache", f.name), Some(f.size));
        phase0::workcopy::clone_or_copy(&dir.join(&f.name), &staging.dir().join(&f.name), &task).with_context(|| format!("copying {} from the build cache", f.name))?;
        task.finish();
    }
    cache.note_outputs_reused(&stored.key);
    cache.finish();
    let earlier = stored.bom.build_started.clone();
    let mut bom = stored.bom;
    bom.build_started = ctx.started.clone();
    bom.phases = plan.phases.numbers();
    bom.based_on = None;
    bom.phase_seconds = IndexMap::from([("phase0".to_string(), round(phase0_s)), ("phase1".to_string(), 0.0), ("phase2".to_string(), round(t2.elapsed().as_secs_f64()))]);
    bom.input = record;
    bom.manifest = ManifestRecord::new(&plan.manifest);
    bom.locked_from = args.lock.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    bom.build_cache = Some(cache.record());
    let files = phase2::write_records(&bom, &plan.name, true, staging.dir())?;
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    staging.commit(&args.output_dir, &names)?;
    activity.finish();
    tracing::info!("build cache: nothing changed; published the outputs {} of the build of {}", buildcache::short(&stored.key), earlier);
    progress::emit(Event::Result { status: Status::Ok, seconds: t0.elapsed().as_secs_f64(), outputs: output_files(&args.output_dir, &files)?, error: None });
    Ok(ExitCode::SUCCESS)
}

/// The build cache of this run ([`crate::buildcache`]), looked up before Phase 0: `None` with
/// `--no-cache`, when Phase 0 or Phase 1 is left out, or when the input continues an earlier
/// `--phases 0,1` build (whose recorded date its steps see).
///
/// Errors: a bad `--cache-max-size`, an unreadable `--lock`.
fn build_cache(args: &CustomizeArgs, plan: &Plan, input: &Path, cache_dir: &Path, ctx: &BuildContext, snapshots: bool) -> Result<Option<BuildCache>> {
    let o = &args.cache;
    if o.no_cache || !plan.phases.contains(Phase::Base) || !plan.phases.contains(Phase::Customization) {
        return Ok(None);
    }
    if input.with_file_name("bom.json").exists() && crate::phase0::verify::InputCache::new(cache_dir).lookup(input).is_some_and(|s| Continuation::find(input, &s).is_some()) {
        tracing::info!("build cache: not used, the input continues an earlier kib build");
        return Ok(None);
    }
    let max_size = manifest::parse_disk_size(&o.cache_max_size).map_err(|e| anyhow::anyhow!("--cache-max-size: {e}"))?;
    let settings = buildcache::Settings { cache_dir: cache_dir.to_path_buf(), min_seconds: o.cache_min_seconds, max_size, refresh: o.refresh, lock: args.lock.clone(), snapshots };
    Ok(Some(BuildCache::prepare(settings, input, &plan.manifest, ctx, plan.disk_size)?))
}

/// The local file to build from: `--disk-image` itself, or for a URL its verified copy in the
/// cache (downloaded first when the cache lacks it; see [`crate::fetch::image`]), with what was
/// fetched. The copy's SHA-256 is recorded for Phase 0, which then does not hash it again.
///
/// Errors: as [`crate::fetch::Fetcher::fetch_image`]; `--disk-image-sha256` and a `--lock`
/// that disagree.
pub fn input_file(args: &CustomizeArgs, fetcher: &Fetcher, lock: Option<&Lock>) -> Result<(PathBuf, Option<FetchedImage>)> {
    let Some(url) = args.disk_image.to_str().filter(|s| image::is_url(s)) else {
        return Ok((args.disk_image.clone(), None));
    };
    let locked = lock.and_then(|l| l.input.as_ref().filter(|(u, _)| *u == redact(url)).map(|(_, sum)| (l, sum)));
    let check = match (&args.disk_image_sha256, locked) {
        (Some(pin), Some((l, sum))) if !pin.eq_ignore_ascii_case(sum) => {
            bail!("--disk-image-sha256 {pin} and --lock {} (sha256 {sum}) disagree about {}", l.path.display(), redact(url))
        }
        (Some(pin), _) => Check::Pinned { sha256: pin.clone(), by: "--disk-image-sha256".into() },
        (None, Some((l, sum))) => Check::Pinned { sha256: sum.clone(), by: format!("--lock {}", l.path.display()) },
        (None, None) if args.no_verify => Check::Unverified,
        (None, None) => Check::Lists,
    };
    let got = fetcher.fetch_image(url, &check).with_context(|| format!("fetching the base image {}", redact(url)))?;
    phase0::verify::InputCache::new(&fetcher.cache_dir).store(&got.fetched.path, &got.fetched.sha256);
    Ok((got.fetched.path.clone(), Some(got)))
}

/// The published files with their sizes and sums (from SHA256SUMS; its own sum is computed).
fn output_files(dir: &Path, files: &[String]) -> Result<Vec<OutputFile>> {
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path).with_context(|| format!("reading {}", sums_path.display()))?;
    let listed: std::collections::HashMap<&str, &str> = sums.lines().filter_map(|l| l.split_once("  ")).map(|(s, f)| (f, s)).collect();
    files
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let bytes = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
            let sha256 = match listed.get(f.as_str()) {
                Some(s) => s.to_string(),
                None => crate::hash::sha256_file(&path).with_context(|| format!("reading {}", path.display()))?,
            };
            Ok(OutputFile { path, bytes, sha256 })
        })
        .collect()
}

fn round(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}
