//! `kib customize`: the three phases, end to end.

use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;

use crate::cli::{CustomizeArgs, FetchOptions};
use crate::config::Config;
use crate::fetch::{Fetcher, MirrorMap};
use crate::manifest;
use crate::phase0::{self, Image};
use crate::phase1::{self, binfmt::Emulation, session::Session};
use crate::phase2::bom::{self, Bom, ManifestRecord};
use crate::phase2::convert::{self, Format, Qcow2Compression, Staging};
use crate::phase2::{self, sysprep};

/// Runs Phase 0, 1 and 2. On any error, everything is undone in reverse order by the guards'
/// Drop (mounts, loop devices, work directory, staging folder), and the output folder is left as
/// it was.
pub fn run(args: &CustomizeArgs) -> Result<()> {
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    phase1::set_build_date(&started);
    let t0 = Instant::now();
    // Everything that can be checked without the image is checked first.
    let manifest_path = match (&args.manifest, &args.release_channel) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => release_channel(c)?,
        (None, None) => bail!("give --manifest or --release-channel"),
    };
    let manifest = manifest::load(&manifest_path, &args.set)?;
    let phases = Phases::parse(&args.phases)?;
    let format_names = if args.format.is_empty() { manifest.output.formats.clone() } else { args.format.clone() };
    let mut formats = Format::parse_list(&format_names)?;
    if formats.is_empty() {
        formats.push(Format::Qcow2);
    }
    if !phases.has(2) {
        if !args.format.is_empty() {
            bail!("--format chooses Phase 2's outputs; without Phase 2 (--phases {}) the result is the working copy, <name>.raw", phases);
        }
        formats = vec![Format::Raw];
    }
    if !phases.has(1) && args.lock.is_some() {
        bail!("--lock pins what Phase 1 installs, and --phases {phases} leaves Phase 1 out");
    }
    let compression = match (args.qcow2_compression, &manifest.output.qcow2_compression) {
        (Some(c), _) => c,
        (None, Some(s)) => Qcow2Compression::parse(s).with_context(|| format!("{}: output.qcow2_compression", manifest.path.display()))?,
        (None, None) => Qcow2Compression::None,
    };
    sysprep::validate(&manifest.sysprep.skip).with_context(|| format!("{}", manifest.path.display()))?;
    let name = args.name.clone().unwrap_or_else(|| manifest.name.clone());
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("output name `{name}` must be a plain file name");
    }
    let mut disk_size = match &args.disk_size {
        Some(s) => Some(manifest::parse_disk_size(s).map_err(|e| anyhow::anyhow!("--disk-size: {e}"))?),
        None => manifest.disk_size,
    };
    if !phases.has(0) && disk_size.is_some() {
        if args.disk_size.is_some() {
            bail!("--disk-size grows the disk in Phase 0, and --phases {phases} leaves Phase 0 out");
        }
        tracing::info!("{}: disk.size is not applied: Phase 0, which grows the disk, is left out", manifest.path.display());
        disk_size = None;
    }
    if formats.contains(&Format::Vhd) && disk_size.is_none() && args.disk_image.is_file() {
        // Azure takes only whole MiB: round an odd-sized disk up (disk sizes are already whole).
        let size = phase0::workcopy::inspect(&args.disk_image)?.virtual_size;
        if size % (1 << 20) != 0 {
            if !phases.has(0) {
                bail!("vhd needs a disk of whole MiB and this one has {size} bytes; growing it is Phase 0's, which --phases {phases} leaves out");
            }
            tracing::info!("vhd: rounding the disk up from {size} bytes to a whole MiB");
            disk_size = Some(size.div_ceil(1 << 20) << 20);
        }
    }
    if !args.disk_image.exists() {
        bail!("disk image {} not found", args.disk_image.display());
    }
    let mut fetcher = fetcher(&args.fetch)?;
    if let Some(path) = &args.lock {
        let lock = crate::lock::Lock::load(path)?;
        tracing::info!("--lock {}: {} packages and {} downloads pinned", path.display(), lock.packages.len(), lock.downloads.len());
        fetcher.lock = Some(std::sync::Arc::new(lock));
    }
    phase2::ensure_output_dir(&args.output_dir)?;
    tracing::info!("manifest {} ({} steps), image {}", manifest.path.display(), manifest.steps.len(), args.disk_image.display());

    // Phase 0
    let mut image = Image::open(&phase0::Options {
        image: args.disk_image.clone(),
        verify: phases.has(0) && !args.no_verify,
        work_base: args.work_dir.clone(),
        cache_dir: Some(fetcher.cache_dir.clone()),
        read_only: false,
        grow_to: disk_size,
    })?;
    let phase0_s = t0.elapsed().as_secs_f64();
    let based_on = BasedOn::find(&args.disk_image, &image.input.sha256);
    let staging = Staging::create(&args.output_dir, Some(image.work_dir()))?;
    let unlocked = crate::phase1::unlocked_downloads(&manifest, &image.facts, &fetcher);
    if !unlocked.is_empty() {
        bail!("{} download(s) do not match the lock:\n  - {}", unlocked.len(), unlocked.join("\n  - "));
    }
    if fetcher.offline && phases.has(1) {
        let missing = crate::phase1::missing_downloads(&manifest, &image.facts, &fetcher);
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
    let t1 = Instant::now();
    let facts = image.facts.clone();
    let sysprep_wanted = phases.has(2) && manifest.sysprep.enabled;
    let (mut steps, sysprep_done, packages, phase1_s, t2, emulation) = {
        let (mut session, mut emu) = (None, None);
        if phases.has(1) || sysprep_wanted {
            // A foreign image (arm64 on amd64) runs its programs through qemu-user: make sure a
            // binfmt_misc handler is there for the whole session; one kib registers is removed after.
            emu = Some(Emulation::ensure(image.root(), &facts.arch).context("preparing to run the image's programs on this host")?);
            session = Some(Session::open(image.root(), facts.debian_family(), fetcher.mirrors.clone())?);
        }
        let steps = match &mut session {
            Some(session) if phases.has(1) => phase1::run_steps(session, image.root(), &manifest, &facts, &fetcher)?,
            _ => {
                tracing::info!("Phase 1 is left out (--phases {phases}): the manifest's {} steps do not run", manifest.steps.len());
                Vec::new()
            }
        };
        let phase1_s = t1.elapsed().as_secs_f64();
        if phases.has(1) {
            tracing::info!("phase 1 done in {phase1_s:.1}s");
        }
        let t2 = Instant::now();
        // Phase 2 starts inside the session: sysprep runs `cloud-init clean` in the chroot.
        let sysprep_done = match &session {
            Some(session) if sysprep_wanted => sysprep::run(image.root(), session, &manifest.sysprep.skip)?,
            _ => Vec::new(),
        };
        if let Some(mut session) = session {
            session.close()?;
        }
        let emulation = emu.as_ref().and_then(|e| e.record().cloned());
        if let Some(emu) = emu {
            emu.close()?;
        }
        let packages = bom::packages(image.root())?;
        (steps, sysprep_done, packages, phase1_s, t2, emulation)
    };
    if phases.has(2) {
        phase2::trim(&image)?;
    } else {
        tracing::info!("Phase 2 is left out (--phases {phases}): no sysprep; the result is the working copy as the steps left it");
    }
    image.unmount()?;
    let plan = convert::Plan {
        compression,
        jobs: args.convert_jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        ovf: formats.contains(&Format::Ova).then(|| ovf_info(&image, &manifest, &packages, &started)),
    };
    let artifacts = convert::convert_all(&image.disk, staging.dir(), &name, &formats, &plan)?;
    let mut phase_seconds = IndexMap::new();
    phase_seconds.insert("phase0", round(phase0_s));
    phase_seconds.insert("phase1", round(phase1_s));
    phase_seconds.insert("phase2", round(t2.elapsed().as_secs_f64()));
    if let Some(b) = &based_on {
        tracing::info!("the input was made by the kib build in {} ({} steps, phases {}): its steps open this BOM", b.record.bom.display(), b.steps.len(), b.record.phases.iter().map(u8::to_string).collect::<Vec<_>>().join(","));
    }
    let (based_on, earlier_steps) = based_on.map_or((None, Vec::new()), |b| (Some(b.record), b.steps));
    steps.splice(0..0, earlier_steps);
    let bom = Bom {
        bom_version: 1,
        kib_version: env!("CARGO_PKG_VERSION"),
        build_started: started,
        phases: phases.list(),
        based_on,
        phase_seconds,
        input: image.input.clone(),
        manifest: ManifestRecord::new(&manifest),
        os_release: facts.os_release.clone(),
        architecture: facts.arch.clone(),
        emulation,
        kernels: facts.kernels.clone(),
        partition_table: image.table.kind_name(),
        filesystems: image.filesystems.clone(),
        disk_growth: image.growth.clone(),
        locked_from: args.lock.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        packages,
        steps,
        sysprep: sysprep_done,
        artifacts: artifacts.clone(),
    };
    let bom_json = serde_json::to_vec_pretty(&bom)?;
    std::fs::write(staging.dir().join("bom.json"), &bom_json)?;
    let mut written = vec![("bom.json".to_string(), crate::hash::sha256_bytes(&bom_json))];
    if phases.has(2) {
        written.extend(phase2::sbom::write_all(&phase2::sbom::SbomInput::from_bom(&bom, &name), staging.dir(), &name)?);
    }
    let sums = phase2::sha256sums(artifacts.iter().map(|a| (a.file.as_str(), a.sha256.as_str())).chain(written.iter().map(|(f, s)| (f.as_str(), s.as_str()))));
    std::fs::write(staging.dir().join("SHA256SUMS"), sums)?;
    let mut files: Vec<&str> = artifacts.iter().map(|a| a.file.as_str()).chain(written.iter().map(|(f, _)| f.as_str())).collect();
    files.push("SHA256SUMS");
    staging.commit(&args.output_dir, &files)?;
    image.close()?;
    let phase2_s = t2.elapsed().as_secs_f64();
    tracing::info!(
        "done in {:.1}s (phase 0 {phase0_s:.1}s, phase 1 {phase1_s:.1}s, phase 2 {phase2_s:.1}s): {}",
        t0.elapsed().as_secs_f64(),
        files.iter().map(|f| Path::new(&args.output_dir).join(f).display().to_string()).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// The phases a run does (`--phases`): any non-empty set of 0, 1 and 2. Attaching and mounting
/// happen in every run; what `--phases` leaves out is Phase 0's verification and growth, Phase 1's
/// steps, or Phase 2's sysprep, fstrim, SBOMs and conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases([bool; 3]);

impl Phases {
    /// From `--phases` values (each 0, 1 or 2; clap checks the range).
    ///
    /// Errors: an empty list.
    pub fn parse(list: &[u8]) -> Result<Phases> {
        let mut p = [false; 3];
        for &n in list {
            match p.get_mut(usize::from(n)) {
                Some(slot) => *slot = true,
                None => bail!("--phases: there is no phase {n}; the phases are 0, 1 and 2"),
            }
        }
        if p == [false; 3] {
            bail!("--phases: name at least one of 0, 1 and 2");
        }
        Ok(Phases(p))
    }

    pub fn has(self, n: usize) -> bool {
        self.0.get(n).copied().unwrap_or(false)
    }

    /// The phases, in order: `[0, 1, 2]`.
    pub fn list(self) -> Vec<u8> {
        (0u8..3).filter(|&n| self.has(usize::from(n))).collect()
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.list().iter().map(u8::to_string).collect::<Vec<_>>().join(","))
    }
}

/// The earlier kib build that made this run's input, found by its `bom.json` beside the input
/// listing an artifact with the input's SHA-256 (as a `--phases 0,1` run leaves it).
struct BasedOn {
    record: bom::BasedOn,
    steps: Vec<phase1::StepRecord>,
}

impl BasedOn {
    /// `None` when there is no `bom.json` beside `input`, it cannot be read, or it lists no
    /// artifact with `sha256` (it belongs to another image); the reason is logged at debug level.
    fn find(input: &Path, sha256: &str) -> Option<BasedOn> {
        let path = input.with_file_name("bom.json");
        let text = std::fs::read(&path).ok()?;
        let parsed: Result<bom::EarlierBom, _> = serde_json::from_slice(&text);
        let earlier = match parsed {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!("{} is not a bom.json kib can continue from: {e}", path.display());
                return None;
            }
        };
        if sha256.is_empty() || !earlier.artifacts.iter().any(|a| a.sha256 == sha256) {
            tracing::debug!("{} does not list the input's SHA-256 {sha256}: not its build", path.display());
            return None;
        }
        Some(BasedOn {
            record: bom::BasedOn {
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

/// What the OVA's descriptor says: the image's OS and the versions of what was installed.
fn ovf_info(image: &Image, manifest: &manifest::Manifest, packages: &[bom::Package], started: &str) -> crate::phase2::ova::OvfInfo {
    let installed: IndexMap<String, String> = packages.iter().map(|p| (p.name.clone(), p.version.clone())).collect();
    // A BIOS boot partition means the image boots with BIOS; else it needs EFI.
    let bios = image.table.partitions.iter().any(|p| p.type_id == "21686148-6449-6E6F-744E-656564454649") || image.table.kind_name() == "mbr";
    crate::phase2::ova::OvfInfo {
        name: String::new(),
        os_release: image.facts.os_release.clone(),
        arch: image.facts.arch.clone(),
        firmware: if bios { "bios" } else { "efi" },
        properties: crate::phase2::ova::properties(&installed, &manifest.variables.0, &image.facts.os_release, &image.facts.arch, started),
    }
}

/// Folders searched for shipped manifests: ./manifests, the repository's or installation's
/// manifests beside the executable, /usr/share/kib/manifests.
fn manifest_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs = vec![std::path::PathBuf::from("manifests")];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(3) {
            dirs.push(up.join("manifests"));
            dirs.push(up.join("share/kib/manifests"));
        }
    }
    dirs.push("/usr/share/kib/manifests".into());
    dirs
}

/// The manifest of a release channel such as `1-30` (`k8s-1.30.yaml`).
///
/// Errors: a malformed channel, or none shipped (the message lists the channels there are).
pub fn release_channel(channel: &str) -> Result<std::path::PathBuf> {
    let Some((major, minor)) = channel.split_once('-').filter(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()) else {
        bail!("release channel `{channel}`: expected MAJOR-MINOR, such as 1-30");
    };
    let file = format!("k8s-{major}.{minor}.yaml");
    let dirs = manifest_dirs();
    if let Some(found) = dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
        return Ok(found);
    }
    let mut known: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("k8s-")?.strip_suffix(".yaml").map(|v| v.replace('.', "-")))
        .filter(|v| v.split('-').all(|p| p.parse::<u32>().is_ok()))
        .collect();
    known.sort();
    known.dedup();
    bail!("no manifest for release channel {channel} ({file}); channels available: {}", if known.is_empty() { "none".into() } else { known.join(", ") })
}

/// `kib check`: opens the image read-only and runs [`crate::check::run`].
pub fn check(args: &crate::cli::CheckArgs) -> Result<()> {
    let manifest = args.manifest.as_deref().map(|m| manifest::load(m, &args.set)).transpose()?;
    let bom_path = args.bom.clone().unwrap_or_else(|| args.disk_image.with_file_name("bom.json"));
    let bom: Option<serde_json::Value> = std::fs::read(&bom_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    // Files that name the build date were written with the BOM's date.
    if let Some(date) = bom.as_ref().and_then(|b| b["build_started"].as_str()) {
        phase1::set_build_date(date);
    }
    let image = Image::open(&phase0::Options { image: args.disk_image.clone(), verify: false, work_base: args.work_dir.clone(), cache_dir: None, read_only: true, grow_to: None })?;
    let checks = crate::check::run(image.root(), &image.facts, manifest.as_ref(), bom.as_ref())?;
    image.close()?;
    let failed = checks.iter().filter(|c| !c.ok).count();
    if args.output == "json" {
        crate::out::line(serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            crate::out::line(format!("{} {}{}", if c.ok { "PASS" } else { "FAIL" }, c.name, if c.detail.is_empty() { String::new() } else { format!("  ({})", c.detail) }));
        }
        crate::out::line(format!("{} passed, {failed} failed", checks.len() - failed));
    }
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}

/// The fetcher the options and the configuration file describe.
pub fn fetcher(opts: &FetchOptions) -> Result<Fetcher> {
    let config = Config::load(opts.config.as_deref())?;
    let mirrors = MirrorMap::parse(&config.mirror_specs(&opts.mirror))?;
    let cache_dir = opts.cache_dir.clone().or(config.cache_dir).unwrap_or_else(|| "/var/cache/kib".into());
    Ok(Fetcher::new(mirrors, &cache_dir, opts.offline || config.offline))
}

/// `kib fetch`: downloads every artifact of the manifest's `download` steps (whose `when.arch`
/// matches `arch`) into the cache, and prints each with its SHA-256.
pub fn fetch_all(args: &crate::cli::FetchArgs) -> Result<()> {
    let manifest = manifest::load(&args.manifest, &args.set)?;
    let fetcher = fetcher(&args.fetch)?;
    let arch = args.arch.clone().unwrap_or_else(|| crate::phase0::facts::host_arch().to_string());
    let facts = crate::phase0::facts::Facts { arch, ..Default::default() };
    let vars = phase1::step_vars(&manifest, &facts);
    let mut failed = Vec::new();
    let mut count = 0;
    for step in manifest.steps.iter().filter(|s| s.when.arch.is_empty() || s.when.arch.contains(&facts.arch)) {
        if !step.when.variables.iter().all(|(k, v)| vars.0.get(k) == Some(v)) {
            continue;
        }
        for (url, sha, sha_url) in phase1::artifacts(&step.action, &vars) {
            count += 1;
            let got = phase1::download::expected_sum(&fetcher, &url, sha.as_ref(), sha_url.as_deref(), &facts.arch)
                .and_then(|sum| Ok(fetcher.fetch(&url, &sum)?));
            match got {
                Ok(f) => crate::out::line(format!("{}  {}  ({})", f.sha256, f.url, f.source)),
                Err(e) => failed.push(format!("step `{}`: {e:#}", step.name)),
            }
        }
        if let manifest::Action::Repository(r) = step.action.expand(&vars).map_err(|u| anyhow::anyhow!("undefined variable `${{{}}}`", u.0))? {
            if let (Some(url), None) = (&r.key_url, &r.key_sha256) {
                count += 1;
                match fetcher.fetch_unpinned(url) {
                    Ok(f) => crate::out::line(format!("{}  {}  ({}, unpinned)", f.sha256, f.url, f.source)),
                    Err(e) => failed.push(format!("step `{}`: {e:#}", step.name)),
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} of {count} downloads failed:\n  - {}", failed.len(), failed.join("\n  - "));
    }
    tracing::info!("{count} artifacts in {}", fetcher.cache_dir.display());
    Ok(())
}

fn round(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_any_non_empty_set() {
        assert_eq!(Phases::parse(&[0, 1, 2]).unwrap().list(), [0, 1, 2]);
        assert_eq!(Phases::parse(&[2, 0, 2]).unwrap().to_string(), "0,2");
        let p = Phases::parse(&[1]).unwrap();
        assert!(p.has(1) && !p.has(0) && !p.has(2) && !p.has(7));
        assert!(Phases::parse(&[]).unwrap_err().to_string().contains("at least one"));
        assert!(Phases::parse(&[3]).unwrap_err().to_string().contains("no phase 3"));
    }
}
