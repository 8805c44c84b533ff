//! Sysprep: removing what makes an image one machine rather than a template. Each operation
//! works through [`GuestRoot`] (never leaving the image root) except `cloud-init`, which runs
//! the image's own `cloud-init clean` in the chroot.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::guest::GuestRoot;
use crate::phase1::session::Session;

/// A sysprep operation: its name (as `sysprep.skip` names it) and what it does.
pub struct Operation {
    pub name: &'static str,
    pub description: &'static str,
    run: fn(&GuestRoot, &Session<'_>) -> Result<()>,
}

/// Every operation, in the order they run.
pub const OPERATIONS: &[Operation] = &[
    Operation { name: "machine-id", description: "empty /etc/machine-id (systemd makes a new one at first boot); remove a copied /var/lib/dbus/machine-id", run: machine_id },
    Operation { name: "ssh-host-keys", description: "remove /etc/ssh/ssh_host_* (regenerated at first boot)", run: ssh_host_keys },
    Operation { name: "cloud-init", description: "`cloud-init clean --logs`: forget the instance so cloud-init runs again at first boot", run: cloud_init },
    Operation { name: "package-cache", description: "empty apt's package lists and downloaded archives", run: package_cache },
    Operation { name: "tmp", description: "empty /tmp and /var/tmp", run: tmp },
];

/// Checks `skip` names against [`OPERATIONS`].
pub fn validate(skip: &[String]) -> Result<()> {
    for s in skip {
        if !OPERATIONS.iter().any(|o| o.name == s) {
            bail!("sysprep.skip: unknown operation `{s}`; operations: {}", OPERATIONS.iter().map(|o| o.name).collect::<Vec<_>>().join(", "));
        }
    }
    Ok(())
}

/// Runs every operation not in `skip`. Returns the names of those that ran.
pub fn run(root: &GuestRoot, session: &Session<'_>, skip: &[String]) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
    for op in OPERATIONS {
        if skip.iter().any(|s| s == op.name) {
            continue;
        }
        (op.run)(root, session).with_context(|| format!("sysprep operation `{}`", op.name))?;
        done.push(op.name);
    }
    Ok(done)
}

fn machine_id(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    root.truncate(Path::new("/etc/machine-id"))?;
    // On Debian this is a symlink to /etc/machine-id; only a real copy is removed.
    if root.lstat(Path::new("/var/lib/dbus/machine-id"))?.is_some_and(|st| st.st_mode & 0o170000 == 0o100000) {
        root.remove(Path::new("/var/lib/dbus/machine-id"))?;
    }
    Ok(())
}

fn ssh_host_keys(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    for name in root.read_dir(Path::new("/etc/ssh"))? {
        if name.to_string_lossy().starts_with("ssh_host_") {
            root.remove(&Path::new("/etc/ssh").join(name))?;
        }
    }
    Ok(())
}

fn cloud_init(_: &GuestRoot, session: &Session<'_>) -> Result<()> {
    if session.has("/usr/bin/cloud-init") {
        session.run(&["cloud-init", "clean", "--logs"], &[], "cloud-init clean", Some(std::time::Duration::from_secs(300)))?;
    }
    Ok(())
}

fn package_cache(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    for dir in ["/var/lib/apt/lists", "/var/cache/apt/archives"] {
        for name in root.read_dir(Path::new(dir))? {
            let keep = name == "partial" || name == "lock";
            if !keep {
                root.remove(&Path::new(dir).join(&name))?;
            }
        }
        root.empty_dir(&Path::new(dir).join("partial"))?;
    }
    for name in root.read_dir(Path::new("/var/cache/apt"))? {
        if name.to_string_lossy().ends_with(".bin") {
            root.remove(&Path::new("/var/cache/apt").join(name))?;
        }
    }
    Ok(())
}

fn tmp(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    root.empty_dir(Path::new("/tmp"))?;
    root.empty_dir(Path::new("/var/tmp"))?;
    Ok(())
}
