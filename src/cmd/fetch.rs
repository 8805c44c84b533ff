//! `kib fetch`: downloads every artifact of a manifest (whose `when.arch` matches) into the
//! cache, for air-gapped builds with `--offline`, and prints each with its SHA-256.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{FetchArgs, OutputFormat};
use crate::context::BuildContext;
use crate::phase0::facts::{self, Facts};
use crate::{manifest, out, phase1};

pub fn run(args: &FetchArgs, output: OutputFormat) -> Result<ExitCode> {
    let manifest = manifest::load(&args.manifest, &args.set)?;
    let fetcher = super::fetcher(&args.fetch)?;
    let arch = args.arch.clone().unwrap_or_else(|| facts::host_arch().to_string());
    let facts = Facts { arch, ..Default::default() };
    let vars = phase1::step_vars(&manifest, &facts, &BuildContext::now());
    let mut failed = Vec::new();
    let mut count = 0;
    let mut fetched = Vec::new();
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
