//! Sysprep: removing what makes an image one machine rather than a template. Each operation
//! works through [`GuestRoot`] (never leaving the image root) except `cloud-init`, which runs
//! the image's own `cloud-init clean` in the chroot, and the package manager's own
//! (`package-cache`, `hold-packages`), which go through [`crate::pkg`].

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::guest::GuestRoot;
use crate::phase1::session::Session;
use crate::pkg::PackageManager;

/// What an operation works on.
pub struct Ctx<'a> {
    pub root: &'a GuestRoot,
    pub session: &'a mut Session,
    /// The image's package manager; `None` when kib has no backend for it (its operations are
    /// then skipped, with a warning).
    pub manager: Option<&'a mut (dyn PackageManager + 'static)>,
}

/// A sysprep operation: its name (as `sysprep.skip` names it) and what it does.
pub struct Operation {
    pub name: &'static str,
    pub description: &'static str,
    run: fn(&mut Ctx<'_>) -> Result<()>,
}

/// Every operation, in the order they run.
pub const OPERATIONS: &[Operation] = &[
    Operation { name: "machine-id", description: "empty /etc/machine-id (systemd makes a new one at first boot); remove a copied /var/lib/dbus/machine-id", run: machine_id },
    Operation { name: "ssh-host-keys", description: "remove /etc/ssh/ssh_host_* (regenerated at first boot)", run: ssh_host_keys },
    Operation { name: "ssh-authorized-keys", description: "remove root's and every /home user's ~/.ssh/authorized_keys", run: authorized_keys },
    Operation { name: "cloud-init", description: "`cloud-init clean --logs`: forget the instance so cloud-init runs again at first boot", run: cloud_init },
    Operation { name: "package-cache", description: "empty the package manager's metadata and download caches (apt: its lists and archives; dnf/yum, zypper, tdnf: what their `clean all` removes)", run: package_cache },
    Operation { name: "tmp", description: "empty /tmp and /var/tmp", run: tmp },
    Operation { name: "logs", description: "truncate every file under /var/log, delete rotated ones (*.gz, *.1, ...) and the journal", run: logs },
    Operation { name: "shell-history", description: "remove root's and /home users' shell histories", run: shell_history },
    Operation {
        name: "net-rules",
        description: "remove /etc/udev/rules.d/70-persistent-net.rules, and the network configurations bound to one NIC's MAC address: /etc/sysconfig/network-scripts/ifcfg-* with HWADDR= or MACADDR=, NetworkManager connections with mac-address=",
        run: net_rules,
    },
    Operation { name: "hostname", description: "empty /etc/hostname and reset /etc/hosts to localhost entries", run: hostname },
    Operation { name: "hold-packages", description: "hold every installed package so nothing upgrades on the node (apt: dpkg --set-selections)", run: hold_packages },
];

/// Checks `skip` names against [`OPERATIONS`].
pub fn validate(skip: &[String]) -> Result<()> {
    for s in skip {
        if !OPERATIONS.iter().any(|o| o.name == s) && s != crate::selinux::SKIP_NAME {
            bail!(
                "sysprep.skip: unknown operation `{s}`; operations: {}, {}",
                OPERATIONS.iter().map(|o| o.name).collect::<Vec<_>>().join(", "),
                crate::selinux::SKIP_NAME
            );
        }
    }
    Ok(())
}

/// Runs every operation not in `skip`. Returns the names of those that ran.
pub fn run(root: &GuestRoot, session: &mut Session, manager: Option<&mut (dyn PackageManager + 'static)>, skip: &[String]) -> Result<Vec<&'static str>> {
    let mut ctx = Ctx { root, session, manager };
    let mut done = Vec::new();
    for op in OPERATIONS {
        if skip.iter().any(|s| s == op.name) {
            continue;
        }
        (op.run)(&mut ctx).with_context(|| format!("sysprep operation `{}`", op.name))?;
        done.push(op.name);
    }
    Ok(done)
}

fn machine_id(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
    root.truncate(Path::new("/etc/machine-id"))?;
    // On Debian this is a symlink to /etc/machine-id; only a real copy is removed.
    if root.lstat(Path::new("/var/lib/dbus/machine-id"))?.is_some_and(|st| st.st_mode & 0o170000 == 0o100000) {
        root.remove(Path::new("/var/lib/dbus/machine-id"))?;
    }
    Ok(())
}

fn ssh_host_keys(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
    for name in root.read_dir(Path::new("/etc/ssh"))? {
        if name.to_string_lossy().starts_with("ssh_host_") {
            root.remove(&Path::new("/etc/ssh").join(name))?;
        }
    }
    Ok(())
}

fn cloud_init(ctx: &mut Ctx<'_>) -> Result<()> {
    if ctx.session.has("/usr/bin/cloud-init") {
        ctx.session.run(&["cloud-init", "clean", "--logs"], &[], "cloud-init clean", Some(std::time::Duration::from_secs(300)))?;
    }
    Ok(())
}

fn package_cache(ctx: &mut Ctx<'_>) -> Result<()> {
    match &ctx.manager {
        Some(m) => m.clean_caches(ctx.root),
        None => {
            tracing::warn!("sysprep: no package manager kib supports: its caches are left as they are");
            Ok(())
        }
    }
}

fn tmp(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
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

fn authorized_keys(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
    for home in homes(root)? {
        for f in ["authorized_keys", "authorized_keys2"] {
            root.remove(&home.join(".ssh").join(f))?;
        }
    }
    Ok(())
}

fn shell_history(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
    for home in homes(root)? {
        for f in [".bash_history", ".zsh_history", ".history", ".ash_history", ".python_history", ".lesshst", ".viminfo"] {
            root.remove(&home.join(f))?;
        }
    }
    Ok(())
}

fn net_rules(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
    root.remove(Path::new("/etc/udev/rules.d/70-persistent-net.rules"))?;
    remove_mac_bound(root)
}

/// Removes the RPM-family network configurations bound to a MAC address (a clone's NIC has
/// another): ifcfg files with `HWADDR=`/`MACADDR=` (EL 7/8) and NetworkManager keyfiles with
/// `mac-address=` (EL 9). Configurations without an address stay. Only regular files are read.
fn remove_mac_bound(root: &GuestRoot) -> Result<()> {
    let dirs: [(&str, &str, &[&str]); 2] = [
        ("/etc/sysconfig/network-scripts", "ifcfg-", &["HWADDR=", "MACADDR="]),
        ("/etc/NetworkManager/system-connections", "", &["mac-address="]),
    ];
    for (dir, prefix, keys) in dirs {
        for name in root.read_dir(Path::new(dir))? {
            let n = name.to_string_lossy();
            if !n.starts_with(prefix) || n == "ifcfg-lo" {
                continue;
            }
            let path = Path::new(dir).join(&name);
            if !root.lstat(&path)?.is_some_and(|st| st.st_mode & 0o170000 == 0o100000) {
                continue;
            }
            let text = root.read_string(&path)?.unwrap_or_default();
            let bound = text.lines().any(|l| {
                let l = l.trim().trim_start_matches("export ");
                keys.iter().any(|k| l.strip_prefix(k).is_some_and(|v| !v.trim().trim_matches(['"', '\'']).is_empty()))
            });
            if bound {
                root.remove(&path)?;
                tracing::info!("sysprep: removed {} (bound to a MAC address)", path.display());
            }
        }
    }
    Ok(())
}

fn hostname(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
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

fn logs(ctx: &mut Ctx<'_>) -> Result<()> {
    let root = ctx.root;
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

fn hold_packages(ctx: &mut Ctx<'_>) -> Result<()> {
    match ctx.manager.as_deref_mut() {
        Some(m) => m.hold_all(&mut *ctx.session, Some(std::time::Duration::from_secs(300))),
        None => {
            tracing::warn!("sysprep: no package manager kib supports: packages are not held");
            Ok(())
        }
    }
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

    #[test]
    fn mac_bound_network_configurations_go() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = d.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("etc/sysconfig/network-scripts/ifcfg-eth0", "DEVICE=eth0\nHWADDR=52:54:00:12:34:56\nBOOTPROTO=dhcp\n");
        w("etc/sysconfig/network-scripts/ifcfg-eth1", "DEVICE=eth1\nBOOTPROTO=dhcp\nHWADDR=\n");
        w("etc/sysconfig/network-scripts/ifcfg-lo", "DEVICE=lo\nMACADDR=00:00:00:00:00:00\n");
        w("etc/NetworkManager/system-connections/ens3.nmconnection", "[ethernet]\nmac-address=52:54:00:12:34:56\n");
        w("etc/NetworkManager/system-connections/any.nmconnection", "[ethernet]\n");
        let root = GuestRoot::open(d.path()).unwrap();
        remove_mac_bound(&root).unwrap();
        let left = |dir: &str| {
            let mut v: Vec<String> = root.read_dir(Path::new(dir)).unwrap().into_iter().map(|n| n.to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        assert_eq!(left("/etc/sysconfig/network-scripts"), ["ifcfg-eth1", "ifcfg-lo"]);
        assert_eq!(left("/etc/NetworkManager/system-connections"), ["any.nmconnection"]);
    }
}
