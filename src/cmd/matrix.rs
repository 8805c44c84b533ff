//! `kib matrix plan|run|render`: image matrices (see [`crate::matrix`]). `run` starts one
//! `kib customize` child process per build, so that each has its own log, output folder and
//! failure; kib itself stays a single-image builder.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::{FetchOptions, MatrixCommand, MatrixOutputOptions, MatrixPlanArgs, MatrixRenderArgs, MatrixRunArgs, OutputFormat};
use crate::matrix::run::{self as runner, RunOptions, Status};
use crate::matrix::{LoadOptions, Plan};
use crate::backend::Backend;
use crate::{exec, out};

pub fn run(c: &MatrixCommand, output: OutputFormat) -> Result<ExitCode> {
    match c {
        MatrixCommand::Plan(a) => plan(a, output),
        MatrixCommand::Run(a) => run_builds(a),
        MatrixCommand::Render(a) => render(a),
    }
}

/// Loads the plan with a fetcher on the cache folder (for URL bases' checksum lists). Returns it
/// and that folder (`--cache-dir`, the configuration's, or the user's default).
fn load(file: &Path, o: &MatrixOutputOptions) -> Result<(Plan, std::path::PathBuf)> {
    let fetcher = super::fetcher(&FetchOptions { mirror: Vec::new(), offline: false, cache_dir: o.cache_dir.clone(), config: o.config.clone(), fetch_retries: 4, no_package_cache: false })?;
    let mut opts = LoadOptions::new();
    opts.output_dir = o.output_dir.clone();
    opts.fetcher = Some(&fetcher);
    Ok((Plan::load(file, &opts)?, fetcher.cache_dir.clone()))
}

fn plan(a: &MatrixPlanArgs, output: OutputFormat) -> Result<ExitCode> {
    let (plan, _) = load(&a.file, &a.out)?;
    let root = &plan.output_dir;
    match output {
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct Row<'a> {
                #[serde(flatten)]
                build: &'a crate::matrix::Build,
                up_to_date: bool,
                output_dir: std::path::PathBuf,
                log: std::path::PathBuf,
            }
            #[derive(serde::Serialize)]
            struct Doc<'a> {
                name: &'a str,
                matrix: &'a Path,
                output_dir: &'a Path,
                builds: Vec<Row<'a>>,
            }
            let doc = Doc {
                name: &plan.name,
                matrix: &plan.path,
                output_dir: root,
                builds: plan.builds.iter().map(|b| Row { build: b, up_to_date: b.up_to_date(root), output_dir: b.output_dir(root), log: b.log_file(root) }).collect(),
            };
            out::line(serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Text => {
            let w = plan.builds.iter().map(|b| b.name.len()).max().unwrap_or(5).max(5);
            out::line(format!("{} ({}): {} builds into {}", plan.name, plan.path.display(), plan.builds.len(), root.display()));
            out::line(format!("{:>3}  {:<w$}  {:<12}  {:<10}  {:<14}  {}", "#", "BUILD", "KEY", "STATUS", "FORMATS", "INPUT"));
            for b in &plan.builds {
                out::line(format!(
                    "{:>3}  {:<w$}  {:<12}  {:<10}  {:<14}  {}",
                    b.index,
                    b.name,
                    &b.key[..12],
                    if b.up_to_date(root) { "up to date" } else { "to build" },
                    b.formats.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
                    b.input.image
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_builds(a: &MatrixRunArgs) -> Result<ExitCode> {
    let (plan, cache_dir) = load(&a.file, &a.out)?;
    let builds = match (a.index, a.arch) {
        (Some(i), None) => vec![plan.build(i)?],
        (Some(i), Some(arch)) => {
            let of_arch: Vec<_> = plan.builds.iter().filter(|b| b.arch == arch).collect();
            match of_arch.get(i) {
                Some(b) => vec![*b],
                None => bail!("--index {i} is out of range: {} has {} {arch} builds (indexes 0 to {})", plan.path.display(), of_arch.len(), of_arch.len().saturating_sub(1)),
            }
        }
        (None, arch) => {
            let b: Vec<_> = plan.selected(a.only.as_deref()).into_iter().filter(|b| arch.is_none_or(|a| b.arch == a)).collect();
            if b.is_empty() {
                bail!("--only {} / --arch: no build of {} matches (they are: {})", a.only.as_deref().unwrap_or(""), plan.path.display(), plan.builds.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", "));
            }
            b
        }
    };
    // Each build resolves --backend itself; the matrix stops early where none could run.
    let host = crate::backend::Host::probe();
    let backend = crate::backend::choose(a.backend, &host);
    match backend.backend {
        Backend::Loop if !host.root => bail!(
            "kib matrix run --backend loop must run as root: each build attaches loop devices and mounts filesystems. As a normal user, \
             run it with --backend guestfs (or auto, the default); see the README's \"Without root\""
        ),
        Backend::Guestfs if !host.guestfs_missing.is_empty() => {
            bail!("{}", crate::guestfs::ns::neither_paragraph("matrix run", host.root, host.loop_control.as_ref().err().map_or("it opens", String::as_str), &host.guestfs_missing))
        }
        _ => tracing::info!("backend {} ({}) for every build", backend.backend, backend.reason),
    }
    exec::install_signal_handlers()?;
    let kib = std::env::current_exe().context("finding kib's own executable")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = RunOptions {
        kib,
        jobs: a.jobs,
        force: a.force,
        cache_dir,
        backend: a.backend,
        appliance_timeout: a.appliance_timeout,
        config: a.out.config.clone(),
        work_dir: a.work_dir.clone(),
        convert_jobs: a.convert_jobs.unwrap_or((cpus / a.jobs as usize).max(1)),
        tail_lines: 15,
    };
    let root = &plan.output_dir;
    let t0 = std::time::Instant::now();
    // --index runs (one pod each) do not share matrix.json: concurrent pods would race on it.
    let results = runner::run(&plan, &builds, root, &opts, a.index.is_none())?;
    let w = results.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    out::line(format!("{:<w$}  {:<11}  {:>8}  {}", "BUILD", "STATUS", "TIME", "OUTPUTS"));
    for r in &results {
        out::line(format!(
            "{:<w$}  {:<11}  {:>7.1}s  {}",
            r.name,
            r.status.name(),
            r.seconds,
            if r.outputs.is_empty() { r.log.display().to_string() } else { r.outputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ") }
        ));
    }
    let failed: Vec<_> = results.iter().filter(|r| !r.status.ok()).collect();
    for r in &failed {
        eprintln!("\nbuild {} {}: {}; log {}, last lines:", r.name, r.status.name(), r.error.as_deref().unwrap_or(""), r.log.display());
        for l in &r.log_tail {
            eprintln!("  | {l}");
        }
    }
    let built = results.iter().filter(|r| r.status == Status::Built).count();
    let fresh = results.iter().filter(|r| r.status == Status::UpToDate).count();
    out::line(format!(
        "{} builds in {:.1}s: {built} built, {fresh} up to date, {} failed{}",
        results.len(),
        t0.elapsed().as_secs_f64(),
        failed.len(),
        if a.index.is_none() { format!("; {}", runner::MatrixRecord::path(root).display()) } else { String::new() }
    ));
    if let Some(sig) = exec::interrupted() {
        return Ok(ExitCode::from(128 + sig as u8));
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn render(a: &MatrixRenderArgs) -> Result<ExitCode> {
    let (plan, _) = load(&a.file, &MatrixOutputOptions { output_dir: None, cache_dir: Some("/var/cache/kib".into()), config: None })?;
    let measured = runner::MatrixRecord::read(a.measured.as_deref().unwrap_or(&plan.output_dir));
    let yaml = crate::matrix::render::render(&plan, &crate::matrix::render::RenderOptions {
        target: a.target,
        image: a.image.clone(),
        jobs: a.jobs,
        cache_pvc: a.cache_pvc.clone(),
        output_pvc: a.output_pvc.clone(),
        emulate_foreign: a.emulate_foreign,
        retries: a.retries,
        measured,
    })?;
    match &a.output_file {
        Some(f) => {
            let tmp = f.with_file_name(format!(".{}.tmp{}", f.file_name().map_or("render".into(), |n| n.to_string_lossy().into_owned()), std::process::id()));
            std::fs::write(&tmp, &yaml).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, f).with_context(|| format!("writing {}", f.display()))?;
        }
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}
