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
    Operation { name: "ssh-authorized-keys", description: "remove root's and every /home user's ~/.ssh/authorized_keys", run: authorized_keys },
    Operation { name: "cloud-init", description: "`cloud-init clean --logs`: forget the instance so cloud-init runs again at first boot", run: cloud_init },
    Operation { name: "package-cache", description: "empty apt's package lists and downloaded archives", run: package_cache },
    Operation { name: "tmp", description: "empty /tmp and /var/tmp", run: tmp },
    Operation { name: "logs", description: "truncate every file under /var/log, delete rotated ones (*.gz, *.1, ...) and the journal", run: logs },
    Operation { name: "shell-history", description: "remove root's and /home users' shell histories", run: shell_history },
    Operation { name: "net-rules", description: "remove /etc/udev/rules.d/70-persistent-net.rules", run: net_rules },
    Operation { name: "hostname", description: "empty /etc/hostname and reset /etc/hosts to localhost entries", run: hostname },
    Operation { name: "hold-packages", description: "hold every installed package (dpkg --set-selections) so nothing upgrades on the node", run: hold_packages },
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

/// The home folders of the image: /root and each folder in /home.
fn homes(root: &GuestRoot) -> Result<Vec<std::path::PathBuf>> {
    let mut h = vec![std::path::PathBuf::from("/root")];
    for name in root.read_dir(Path::new("/home"))? {
        h.push(Path::new("/home").join(name));
    }
    Ok(h)
}

fn authorized_keys(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    for home in homes(root)? {
        for f in ["authorized_keys", "authorized_keys2"] {
            root.remove(&home.join(".ssh").join(f))?;
        }
    }
    Ok(())
}

fn shell_history(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    for home in homes(root)? {
        for f in [".bash_history", ".zsh_history", ".history", ".ash_history", ".python_history", ".lesshst", ".viminfo"] {
            root.remove(&home.join(f))?;
        }
    }
    Ok(())
}

fn net_rules(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    root.remove(Path::new("/etc/udev/rules.d/70-persistent-net.rules"))?;
    Ok(())
}

fn hostname(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    if root.lstat(Path::new("/etc/hostname"))?.is_some() {
        root.write(Path::new("/etc/hostname"), b"", 0o644, 0, 0)?;
    }
    let hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";
    root.write(Path::new("/etc/hosts"), hosts.as_bytes(), 0o644, 0, 0)?;
    Ok(())
}

/// Whether a log file name is a rotated copy (`syslog.1`, `dpkg.log.2.gz`, `x.old`).
fn rotated(name: &str) -> bool {
    name.ends_with(".gz") || name.ends_with(".xz") || name.ends_with(".zst") || name.ends_with(".old")
        || name.rsplit('.').next().is_some_and(|ext| !ext.is_empty() && ext.bytes().all(|b| b.is_ascii_digit()))
}

fn logs(root: &GuestRoot, _: &Session<'_>) -> Result<()> {
    root.empty_dir(Path::new("/var/log/journal"))?;
    let mut dirs = vec![std::path::PathBuf::from("/var/log")];
    while let Some(dir) = dirs.pop() {
        for name in root.read_dir(&dir)? {
            let path = dir.join(&name);
            let Some(st) = root.lstat(&path)? else { continue };
            match st.st_mode & 0o170000 {
                0o040000 if path != Path::new("/var/log/journal") => dirs.push(path),
                0o100000 if rotated(&name.to_string_lossy()) => {
                    root.remove(&path)?;
                }
                0o100000 => {
                    root.truncate(&path)?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn hold_packages(_: &GuestRoot, session: &Session<'_>) -> Result<()> {
    if session.has("/usr/bin/dpkg") {
        session.run(
            &["/bin/sh", "-ec", "dpkg-query -W -f '${Package} hold\\n' | dpkg --set-selections"],
            &[],
            "dpkg --set-selections (hold every package)",
            Some(std::time::Duration::from_secs(300)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_log_names() {
        for n in ["syslog.1", "dpkg.log.2.gz", "auth.log.old", "messages.xz"] {
            assert!(rotated(n), "{n}");
        }
        for n in ["syslog", "dpkg.log", "cloud-init.log", "wtmp"] {
            assert!(!rotated(n), "{n}");
        }
    }
}
