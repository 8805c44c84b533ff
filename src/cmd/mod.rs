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

/// The guestfs backend's settings: its folder in kib's cache `cache`, and `--appliance-timeout`.
pub fn guestfs_settings(cache: &std::path::Path, appliance_timeout_s: u64) -> crate::guestfs::Settings {
    crate::guestfs::Settings { cache: cache.join("guestfs"), session_limit: std::time::Duration::from_secs(appliance_timeout_s) }
}

/// What [`mounting`] did: the backend to use here, or the whole command already ran in the guestfs
/// backend's namespaces (its exit status).
#[derive(Debug)]
pub enum Entered {
    Here(crate::backend::Choice),
    Ran(std::process::ExitCode),
}

/// For the subcommands that open an image with `--backend`: resolves it (see
/// [`crate::backend::choose`]); for loop, [`mounting_as_root`]; for guestfs, runs kib again in its
/// namespaces ([`crate::guestfs::ns::reexec`]) unless this is that inner kib, which installs the
/// signal handlers. Logs the choice and its reason.
///
/// Errors: loop without root; guestfs without its tools (one paragraph naming both backends).
pub fn mounting(subcommand: &str, arg: crate::backend::BackendArg) -> Result<Entered> {
    use crate::backend::{self, Backend, Choice};
    if let Some(reason) = crate::guestfs::ns::inside() {
        exec::install_signal_handlers()?;
        tracing::info!("backend guestfs ({reason})");
        return Ok(Entered::Here(Choice { backend: Backend::Guestfs, reason }));
    }
    let host = backend::Host::probe();
    let choice = backend::choose(arg, &host);
    match choice.backend {
        Backend::Loop => {
            mounting_as_root(subcommand)?;
            tracing::info!("backend loop ({})", choice.reason);
            Ok(Entered::Here(choice))
        }
        Backend::Guestfs => {
            let loop_why = match (&host.loop_control, host.root) {
                (_, false) => "not root".to_string(),
                (Err(e), true) => format!("/dev/loop-control: {e}"),
                (Ok(()), true) => "not chosen".to_string(),
            };
            Ok(Entered::Ran(crate::guestfs::ns::reexec(subcommand, &choice.reason, &loop_why, &host.guestfs_missing)?))
        }
    }
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

