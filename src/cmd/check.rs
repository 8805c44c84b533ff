//! `kib check`: opens an image read-only and runs [`crate::check::run`] on it, with its manifest
//! and bom.json when given. Exits non-zero when a check fails.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::bom::Bom;
use crate::cli::{CheckArgs, OutputFormat};
use crate::context::BuildContext;
use crate::phase0::{self, Image};
use crate::{manifest, out};

pub fn run(args: &CheckArgs, output: OutputFormat) -> Result<ExitCode> {
    let backend = match super::mounting("check", args.backend)? {
        super::Entered::Ran(code) => return Ok(code),
        super::Entered::Here(choice) => choice.backend,
    };
    let manifest = args.manifest.as_deref().map(|m| manifest::load_with(m, &args.set, args.provider.as_deref())).transpose()?;
    let bom_path = args.bom.clone().unwrap_or_else(|| args.disk_image.with_file_name("bom.json"));
    let bom = match Bom::read(&bom_path) {
        Ok(b) => Some(b),
        // An explicit --bom must be one; the default one beside the image is optional.
        Err(e) if args.bom.is_some() => return Err(e),
        Err(e) => {
            tracing::debug!("no bom.json to check against: {e:#}");
            None
        }
    };
    // Files that name the build date were written with the BOM's date.
    let ctx = match &bom {
        Some(b) => BuildContext::now().with_build_date(&b.build_started),
        None => BuildContext::now(),
    };
    let image = Image::open(&phase0::Options { image: args.disk_image.clone(), verify: false, work_base: args.work_dir.clone(), cache_dir: None, read_only: true, grow_to: None, start_from: None, backend, guestfs: Some(super::guestfs_settings(&crate::config::default_cache_dir(), args.appliance_timeout)) })?;
    let mut checks = crate::check::run(image.root(), &image.facts, &ctx, manifest.as_ref(), bom.as_ref())?;
    checks.extend(crate::check::selinux_labels(&image)?);
    let expect = crate::check::boot_expectations(manifest.as_ref(), &image.facts, &ctx, bom.as_ref());
    let (arch, uefi) = (image.facts.arch.clone(), !image.table.boots_bios() && image.table.boots_uefi());
    image.close()?;
    if args.boot {
        let report = crate::boot::run(
            &crate::boot::Options {
                image: args.disk_image.clone(),
                arch,
                uefi,
                work_base: args.work_dir.clone(),
                timeout: std::time::Duration::from_secs(args.boot_timeout),
                accel: args.accel,
                memory_mib: args.memory,
                console_log: args.console_log.clone(),
            },
            &expect,
        )?;
        tracing::info!("booted under {:?} and checked in {:.1}s", report.accel, report.seconds);
        checks.extend(report.checks);
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    match output {
        OutputFormat::Json => out::line(serde_json::to_string_pretty(&checks)?),
        OutputFormat::Text => {
            for c in &checks {
                out::line(format!("{} {}{}", if c.ok { "PASS" } else { "FAIL" }, c.name, if c.detail.is_empty() { String::new() } else { format!("  ({})", c.detail) }));
            }
            out::line(format!("{} passed, {failed} failed", checks.len() - failed));
        }
    }
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(ExitCode::SUCCESS)
}
