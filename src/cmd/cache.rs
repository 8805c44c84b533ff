//! `kib cache ls|prune`: the build cache of Phase 1 snapshots (see [`crate::buildcache`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};

use crate::buildcache::Store;
use crate::cli::{CacheCommand, CacheDirOptions, OutputFormat};
use crate::config::Config;
use crate::out;
use crate::phase0::grow::human;

/// The cache folder: `--cache-dir`, else the configuration's, else /var/cache/kib.
fn cache_dir(o: &CacheDirOptions) -> Result<PathBuf> {
    if let Some(d) = &o.cache_dir {
        return Ok(d.clone());
    }
    Ok(Config::load(o.config.as_deref())?.cache_dir.unwrap_or_else(crate::config::default_cache_dir))
}

/// `3h`, `2d`: a duration in seconds, coarsely.
fn ago(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn run(c: &CacheCommand, output: OutputFormat) -> Result<ExitCode> {
    match c {
        CacheCommand::Ls(a) => {
            let store = Store::new(&cache_dir(&a.dir)?);
            let list = store.list();
            if output == OutputFormat::Json {
                out::line(serde_json::to_string_pretty(&serde_json::json!({"dir": store.dir(), "entries": list}))?);
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                out::line(format!("the build cache {} is empty", store.dir().display()));
                return Ok(ExitCode::SUCCESS);
            }
            out::line(format!("{:<12}  {:<24}  {:<32}  {:>9}  {:>9}  {:>5}", "KEY", "MANIFEST", "AFTER STEP", "SIZE", "LAST USE", "AGE"));
            for l in &list {
                let step = format!("{}{}{}", l.step, if l.end_of_phase1 { " (end)" } else { "" }, if l.valid { "" } else { " [untrusted]" });
                out::line(format!(
                    "{:<12}  {:<24}  {:<32}  {:>9}  {:>9}  {:>5}",
                    crate::buildcache::short(&l.key),
                    l.manifest,
                    step,
                    human(l.size),
                    format!("{} ago", ago(l.idle_seconds)),
                    ago(l.age_seconds)
                ));
            }
            let snapshots = list.iter().filter(|l| l.kind == "snapshot").count();
            out::line(format!("{snapshots} snapshot(s), {} stored output set(s), {} in {}", list.len() - snapshots, human(list.iter().map(|l| l.size).sum()), store.dir().display()));
        }
        CacheCommand::Prune(a) => {
            let store = Store::new(&cache_dir(&a.dir)?);
            let max = if a.all || a.max_size.trim() == "0" {
                0
            } else {
                crate::manifest::parse_disk_size(&a.max_size).map_err(|e| anyhow!("--max-size: {e}"))?
            };
            let r = store.prune(max)?;
            if output == OutputFormat::Json {
                out::line(serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            for k in &r.removed {
                out::line(format!("removed snapshot {k}"));
            }
            for f in &r.stray_files {
                out::line(format!("removed stray file {}", f.display()));
            }
            out::line(format!("freed {}, {} kept in {}", human(r.freed), human(r.kept), store.dir().display()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
