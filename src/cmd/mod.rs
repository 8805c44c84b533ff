//! One module per subcommand, each with `run(&args) -> Result<ExitCode>`; `main` is one
//! exhaustive `match` over them. Commands sit on top: they use the phases and the shared modules,
//! and nothing imports a command.

pub mod build;
pub mod cache;
pub mod check;
pub mod cleanup;
pub mod completions;
pub mod customize;
pub mod fetch;
pub mod inspect;
pub mod matrix;
pub mod man;
pub mod schema;
pub mod shell;
pub mod sysprep_operations;
pub mod validate;

use anyhow::{bail, Result};

use crate::cli::FetchOptions;
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::{exec, mounts};

/// For the subcommands that attach and mount: checks for root, then enters kib's private mount
/// namespace (before any thread starts) and installs the SIGINT/SIGTERM handlers.
///
/// Errors: not root, or the namespace cannot be entered.
pub fn mounting_as_root(subcommand: &str) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("kib {subcommand} must run as root: it attaches loop devices and mounts filesystems");
    }
    mounts::enter_private_namespace()?;
    exec::install_signal_handlers()?;
    Ok(())
}

/// The fetcher the options and the configuration file describe (see [`Config::fetcher`]).
pub fn fetcher(opts: &FetchOptions) -> Result<Fetcher> {
    let mut f = Config::load(opts.config.as_deref())?.fetcher(&opts.mirror, opts.cache_dir.as_deref(), opts.offline)?;
    f.retry.retries = opts.fetch_retries;
    f.package_cache = !opts.no_package_cache;
    f.progress = Some(download_progress());
    Ok(f)
}

/// Shows every transfer as a task of the progress display ([`crate::progress`]): a bar with
/// bytes, rate and ETA on a terminal, a line every few seconds and one when it ends otherwise,
/// `start`/`progress`/`end` events with `--output json`. The label is `download <URL>`, the URL
/// without credentials. A transfer that never finishes (an error) ends as failed when the
/// fetcher is dropped.
fn download_progress() -> crate::fetch::ProgressHook {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let open: Mutex<HashMap<String, crate::progress::Activity>> = Mutex::new(HashMap::new());
    Arc::new(move |p: &crate::fetch::Progress<'_>| {
        let Ok(mut open) = open.lock() else { return };
        let task = open.entry(p.url.to_string()).or_insert_with(|| crate::progress::Activity::task(format!("download {}", p.url), p.total));
        task.set_position(p.done);
        if p.finished {
            if let Some(task) = open.remove(p.url) {
                task.finish();
            }
        }
    })
}

