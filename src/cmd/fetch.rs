//! `kib fetch`: downloads every artifact of a manifest (whose `when.arch` matches), and with
//! `--disk-image URL` the base image (verified as `kib customize` verifies it), into the cache,
//! for air-gapped builds with `--offline`, and prints each with its SHA-256.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::{FetchArgs, OutputFormat};
use crate::context::BuildContext;
use crate::fetch::image::{self, Check};
use crate::fetch::redact;
use crate::phase0::facts::{self, Facts};
use crate::{manifest, out, phase1};

pub fn run(args: &FetchArgs, output: OutputFormat) -> Result<ExitCode> {
    let fetcher = super::fetcher(&args.fetch)?;
    let mut count = 0;
    // (sha256, url, where from, pinned or verified)
    let mut fetched: Vec<(String, String, String, bool)> = Vec::new();
    if let Some(url) = &args.disk_image {
        if !image::is_url(url) {
            bail!("--disk-image {url}: kib fetch takes an http://, https:// or file:// URL (a local image needs no fetching)");
        }
        let check = match &args.disk_image_sha256 {
            Some(pin) => Check::Pinned { sha256: pin.clone(), by: "--disk-image-sha256".into() },
            None => Check::Lists,
        };
        let got = fetcher.fetch_image(url, &check).with_context(|| format!("fetching the base image {}", redact(url)))?;
        count += 1;
        let against = got.verified_against.as_deref().unwrap_or("nothing");
        fetched.push((got.fetched.sha256, got.fetched.url, format!("{}, verified against {against}", got.fetched.source), true));
    }
    let manifest = match &args.manifest {
        Some(path) => Some(manifest::load_with(path, &args.set, args.provider.as_deref())?),
        None => None,
    };
    let mut failed = Vec::new();
    if let Some(manifest) = &manifest {
        let arch = args.arch.clone().unwrap_or_else(|| facts::host_arch().to_string());
        let facts = Facts { arch, ..Default::default() };
        let vars = phase1::step_vars(&manifest, &facts, &BuildContext::now());
        for step in manifest.steps.iter().filter(|s| s.when.arch.is_empty() || s.when.arch.contains(&facts.arch)) {
            if !step.when.variables.iter().all(|(k, v)| vars.0.get(k) == Some(v)) {
                continue;
            }
            for (url, sha, sha_url) in phase1::artifacts(&step.action, &vars) {
                count += 1;
                let got = phase1::download::expected_sum(&fetcher, &url, sha.as_ref(), sha_url.as_deref(), &facts.arch)
                    .and_then(|sum| Ok(fetcher.fetch(&url, &sum)?));
                match got {
                    Ok(f) => fetched.push((f.sha256, f.url, f.source.to_string(), true)),
                    Err(e) => failed.push(format!("step `{}`: {e:#}", step.name)),
                }
            }
            if let manifest::Action::Repository(r) = step.action.expand(&vars).map_err(|u| anyhow::anyhow!("undefined variable `${{{}}}`", u.0))? {
                if let (Some(url), None) = (&r.key_url, &r.key_sha256) {
                    count += 1;
                    match fetcher.fetch_unpinned(url) {
                        Ok(f) => fetched.push((f.sha256, f.url, f.source.to_string(), false)),
                        Err(e) => failed.push(format!("step `{}`: {e:#}", step.name)),
                    }
                }
            }
        }
    }
    match output {
        OutputFormat::Json => {
            let list: Vec<_> = fetched.iter().map(|(sha256, url, source, pinned)| serde_json::json!({"sha256": sha256, "url": url, "source": source, "pinned": pinned})).collect();
            out::line(serde_json::to_string_pretty(&list)?);
        }
        OutputFormat::Text => {
            for (sha256, url, source, pinned) in &fetched {
                out::line(format!("{sha256}  {url}  ({source}{})", if *pinned { "" } else { ", unpinned" }));
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} of {count} downloads failed:\n  - {}", failed.len(), failed.join("\n  - "));
    }
    tracing::info!("{count} artifacts in {}", fetcher.cache_dir.display());
    Ok(ExitCode::SUCCESS)
}
