//! `kib build --os OS --provider NAME --release-channel 1-30`: EKS Anywhere's entry point. It
//! picks three things and runs `customize` with them:
//! - the base image, from the OS catalogue (`bases/catalogue.yaml`, see [`crate::bases`]) or
//!   `--base-image PATH|URL`; a download goes through the mirror map and the cache, and is
//!   verified against its checksum list before Phase 0;
//! - the release channel's manifest ([`crate::manifest::catalogue::release_channel`]);
//! - the provider profile (`--provider`, or `--hypervisor vsphere|baremetal|nutanix`), whose
//!   formats are the default outputs.
//!
//! After Phase 0 the image's os-release must be what the catalogue says it is.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::bases::{self, Catalogue};
use crate::cli::{BuildArgs, CustomizeArgs, FetchOptions};
use crate::fetch::sums::{self, Algo, Sum};
use crate::fetch::{redact, Fetcher};
use crate::manifest;

/// The Debian name of the host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Downloads (or takes from the cache) the catalogue's image for `src`, verified against its
/// checksum list or pin. Returns the cached file.
///
/// Errors: the list or image cannot be fetched (offline and not cached, HTTP failure), the list
/// does not name the image, or the digest differs (both shown; nothing is cached).
pub fn fetch_base(fetcher: &Fetcher, src: &bases::Source) -> Result<PathBuf> {
    let name = src.url.rsplit('/').next().unwrap_or(&src.url).to_string();
    let (sum, against) = match (&src.pinned, &src.list) {
        (Some(pin), _) => {
            let algo = match src.algorithm {
                bases::Algorithm::Sha256 => Algo::Sha256,
                bases::Algorithm::Sha512 => Algo::Sha512,
            };
            (Sum { algo, hex: pin.to_ascii_lowercase() }, "the OS catalogue's pin".to_string())
        }
        (None, Some((list_url, _format))) => {
            // The list is read as `kib customize --disk-image URL` reads one (GNU or BSD lines,
            // SHA-256 or SHA-512) and cached with the others in <cache>/sums/.
            let text = fetcher.checksum_list(list_url).with_context(|| format!("fetching the checksum list of {name}"))?;
            let sum = sums::find(&text, &name).with_context(|| format!("{}: the checksum list does not name {name}", redact(list_url)))?;
            (sum, redact(list_url))
        }
        (None, None) => bail!("{}: no checksum list and no pin", src.url),
    };
    let got = fetcher.fetch_image_with_sum(&src.url, sum.clone(), &against)?;
    tracing::info!("base image {name} ({sum}, verified against {against}) from {}: {}", got.fetched.source, got.fetched.path.display());
    Ok(got.fetched.path)
}

/// Runs `kib build`.
pub fn run(args: &BuildArgs) -> Result<ExitCode> {
    let backend = match super::mounting("build", args.backend)? {
        super::Entered::Ran(code) => return Ok(code),
        super::Entered::Here(choice) => choice,
    };
    let provider = match (&args.provider, args.hypervisor) {
        (Some(p), _) => p.clone(),
        (None, Some(h)) => h.provider().to_string(),
        (None, None) => bail!("give --provider NAME or --hypervisor vsphere|baremetal|nutanix"),
    };
    let manifest_path = manifest::catalogue::release_channel(&args.release_channel)?;
    // Check the manifest with its profile before anything is downloaded.
    manifest::load_with(&manifest_path, &args.set, Some(&provider))?;
    let (catalogue_path, catalogue) = Catalogue::load(args.catalogue.as_deref())?;
    let (key, base) = catalogue.find(&args.os).with_context(|| format!("--os (catalogue {})", catalogue_path.display()))?;
    let arch = args.arch.clone().unwrap_or_else(|| host_arch().to_string());
    let fetch_opts = || FetchOptions {
        mirror: args.fetch.mirror.clone(),
        offline: args.fetch.offline,
        cache_dir: args.fetch.cache_dir.clone(),
        config: args.fetch.config.clone(),
        fetch_retries: args.fetch.fetch_retries,
        no_package_cache: args.fetch.no_package_cache,
    };
    let fetcher = super::fetcher(&fetch_opts())?;
    let (disk_image, verified) = match &args.base_image {
        // A URL: customize fetches it as `--disk-image URL` (the checksum lists beside it, the
        // cache, the URL in the BOM).
        Some(b) if is_url(b) => (PathBuf::from(b), false),
        // A local file: Phase 0 verifies it against the SHA256SUMS beside it, as customize does.
        Some(b) => (PathBuf::from(b), false),
        None => {
            let src = base.source(key, &arch, args.variant.as_deref())?;
            (fetch_base(&fetcher, &src)?, true)
        }
    };
    tracing::info!("kib build: {key} ({arch}), provider {provider}, release channel {} ({})", args.release_channel, manifest_path.display());
    let customize = CustomizeArgs {
        disk_image,
        disk_image_sha256: None,
        manifest: Some(manifest_path),
        release_channel: None,
        provider: Some(provider),
        output_dir: args.output_dir.clone(),
        format: args.format.clone(),
        set: args.set.clone(),
        no_verify: verified,
        work_dir: args.work_dir.clone(),
        fetch: fetch_opts(),
        name: args.name.clone(),
        disk_size: args.disk_size.clone(),
        lock: None,
        convert_jobs: None,
        qcow2_compression: None,
        phases: vec![0, 1, 2],
        cache: args.cache.clone(),
        expect_os: Some((base.os_release.id.clone(), base.os_release.version_id.clone())),
        backend: args.backend,
        appliance_timeout: args.appliance_timeout,
    };
    super::customize::run_in_namespace(&customize, &backend)
}
