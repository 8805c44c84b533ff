//! The apt backend of the `packages` step: apt-get and apt-mark, run inside the chroot.

use std::time::Duration;

use anyhow::Result;

use super::session::Session;
use crate::manifest::Packages;

/// What earlier `packages` steps of this run already did.
#[derive(Debug, Default)]
pub struct AptState {
    /// `apt-get update` ran in this session: later steps skip it unless they ask for it.
    pub updated: bool,
}

const DPKG_OPTS: &[&str] = &["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Use-Pty=0"];

/// Applies one `packages` step: update, install, remove, purge, hold, in that order.
pub fn apply(session: &mut Session<'_>, p: &Packages, state: &mut AptState, timeout: Option<Duration>) -> Result<()> {
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
        argv.extend(p.install.iter().map(String::as_str));
        session.run(&argv, &[], &format!("apt-get install {}", p.install.join(" ")), timeout)?;
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
