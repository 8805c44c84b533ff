//! The apt backend of the `packages` step: apt-get and apt-mark, run inside the chroot.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::session::Session;
use crate::manifest::Packages;

/// What earlier `packages` steps of this run already did.
#[derive(Debug, Default)]
pub struct AptState {
    /// `apt-get update` ran in this session: later steps skip it unless they ask for it.
    pub updated: bool,
    /// `--lock`: the versions to install (see [`crate::lock`]).
    pub lock: Option<std::sync::Arc<crate::lock::Lock>>,
}

/// The apt preferences file that pins the locked versions while a `packages` step runs.
const LOCK_PREFERENCES: &str = "/etc/apt/preferences.d/zz-kib-lock.pref";

const DPKG_OPTS: &[&str] = &["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Use-Pty=0"];

/// Applies one `packages` step: update, install, remove, purge, hold, in that order. Under
/// `--lock`, with the locked versions pinned, then checked (see [`crate::lock`]).
///
/// Writes into the image: whatever apt and the packages' scripts write; under `--lock`, the
/// preferences file [`LOCK_PREFERENCES`] while the step runs (removed after it, even when it
/// fails). Needs from the image: apt-get, apt-mark and dpkg.
pub fn apply(session: &mut Session<'_>, p: &Packages, state: &mut AptState, timeout: Option<Duration>) -> Result<()> {
    let Some(lock) = state.lock.clone() else {
        return run(session, p, state, timeout, None);
    };
    let root = session.root();
    root.mkdir_p(Path::new("/etc/apt/preferences.d"), 0o755)?;
    root.write(Path::new(LOCK_PREFERENCES), lock.apt_preferences().as_bytes(), 0o644, 0, 0).context("writing the --lock apt preferences")?;
    let ran = run(session, p, state, timeout, Some(&lock))
        .with_context(|| format!("--lock {}: installing the locked versions (a version the sources no longer have is named above)", lock.path.display()));
    let removed = session.root().remove(Path::new(LOCK_PREFERENCES)).context("removing the --lock apt preferences");
    ran?;
    removed?;
    let installed = crate::phase2::bom::packages(session.root())?;
    let wrong = lock.mismatches(&installed);
    if !wrong.is_empty() {
        bail!(
            "--lock {}: {} package(s) are not at the locked version (the sources no longer have it, or another step changed it):\n  - {}",
            lock.path.display(),
            wrong.len(),
            wrong.join("\n  - ")
        );
    }
    Ok(())
}

fn run(session: &mut Session<'_>, p: &Packages, state: &mut AptState, timeout: Option<Duration>, lock: Option<&crate::lock::Lock>) -> Result<()> {
    session.rewrite_apt_sources()?;
    let update = p.update.unwrap_or(!p.install.is_empty() && !state.updated);
    if update {
        session.run(&["apt-get", "-q", "update"], &[], "apt-get update", timeout)?;
        state.updated = true;
    }
    if !p.install.is_empty() {
        let mut argv = vec!["apt-get", "-q", "-y", "install"];
        argv.extend_from_slice(DPKG_OPTS);
        if !p.recommends {
            argv.push("--no-install-recommends");
        }
        let names = lock.map_or_else(|| p.install.clone(), |l| l.install_args(&p.install));
        argv.extend(names.iter().map(String::as_str));
        session.run(&argv, &[], &format!("apt-get install {}", names.join(" ")), timeout)?;
    }
    for (verb, list) in [("remove", &p.remove), ("purge", &p.purge)] {
        if !list.is_empty() {
            let mut argv = vec!["apt-get", "-q", "-y", verb];
            argv.extend_from_slice(DPKG_OPTS);
            argv.extend(list.iter().map(String::as_str));
            session.run(&argv, &[], &format!("apt-get {verb} {}", list.join(" ")), timeout)?;
        }
    }
    if !p.hold.is_empty() {
        let mut argv = vec!["apt-mark", "hold"];
        argv.extend(p.hold.iter().map(String::as_str));
        session.run(&argv, &[], &format!("apt-mark hold {}", p.hold.join(" ")), timeout)?;
    }
    Ok(())
}
