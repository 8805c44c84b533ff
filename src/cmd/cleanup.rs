//! `kib cleanup`: remove what crashed or killed runs left (see [`crate::cleanup`]), and say what.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{CleanupArgs, OutputFormat};
use crate::{mounts, out};

pub fn run(args: &CleanupArgs, output: OutputFormat) -> Result<ExitCode> {
    let root = rustix::process::geteuid().is_root();
    if root {
        // binfmt_misc may have to be mounted to find stale handlers: in kib's own namespace.
        mounts::enter_private_namespace()?;
    }
    // A normal user cleans what its guestfs-backend runs left (work directories); loop devices
    // and binfmt_misc handlers are root's, and a loop device found then is an error that says so.
    let mut r = crate::cleanup::run(&args.work_dir, root)?;
    let cache_dir = match &args.cache_dir {
        Some(d) => d.clone(),
        None => crate::config::Config::load(None)?.cache_dir.unwrap_or_else(crate::config::default_cache_dir),
    };
    r.partial_snapshots = crate::buildcache::Store::new(&cache_dir).remove_partials()?;
    if output == OutputFormat::Json {
        out::line(serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    for h in &r.binfmt_handlers {
        out::line(format!("removed binfmt_misc handler {h}"));
    }
    for d in &r.loop_devices {
        out::line(format!("detached loop device {d}"));
    }
    for d in &r.work_dirs {
        out::line(format!("removed work directory {}", d.display()));
    }
    for f in &r.partial_snapshots {
        out::line(format!("removed partial build-cache snapshot {}", f.display()));
    }
    for d in &r.skipped_live {
        out::line(format!("kept {} (its kib process is running)", d.display()));
    }
    if r.loop_devices.is_empty() && r.work_dirs.is_empty() && r.binfmt_handlers.is_empty() && r.partial_snapshots.is_empty() {
        out::line(format!("nothing to clean up in {}", args.work_dir.display()));
    }
    Ok(ExitCode::SUCCESS)
}
