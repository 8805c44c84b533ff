//! How kib reaches the image's filesystems: the **loop** backend (root: a loop device per
//! partition or logical volume, mounted in kib's private mount namespace) or the **guestfs**
//! backend (no root needed: libguestfs's appliance reads the tree out of the disk and writes the
//! changes back; see [`crate::guestfs`]). `--backend auto`, the default, picks loop when kib runs
//! as root and `/dev/loop-control` opens, and guestfs otherwise. The choice and its reason are
//! logged and recorded in the BOM ([`BackendRecord`]).

use std::fmt;

/// What `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendArg {
    /// Loop devices when kib is root and `/dev/loop-control` works; libguestfs otherwise.
    #[default]
    Auto,
    /// Loop devices and mounts (needs root).
    Loop,
    /// libguestfs's appliance (no root, no loop devices; see the README's "Without root").
    Guestfs,
}

/// The backend a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Loop,
    Guestfs,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Loop => "loop",
            Backend::Guestfs => "guestfs",
        })
    }
}

/// A backend and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    pub reason: String,
}

/// What the host offers, as [`choose`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub root: bool,
    /// `Err(why)` when `/dev/loop-control` cannot be opened for reading and writing.
    pub loop_control: Result<(), String>,
    /// What the guestfs backend lacks here (empty: it can run; see [`crate::guestfs::ns::missing`]).
    pub guestfs_missing: Vec<String>,
}

impl Host {
    /// This process's view: its effective uid, whether `/dev/loop-control` opens, and what the
    /// guestfs backend lacks.
    pub fn probe() -> Host {
        let loop_control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control").map(drop).map_err(|e| e.to_string());
        let root = rustix::process::geteuid().is_root();
        Host { root, loop_control, guestfs_missing: crate::guestfs::ns::missing(root) }
    }
}

/// Resolves `--backend` against the host. Pure: the tests call it with made-up hosts. `auto`:
/// loop for root with `/dev/loop-control`; guestfs for a normal user; for root without
/// `/dev/loop-control`, guestfs when it can run, else loop (whose errors name what is missing).
pub fn choose(arg: BackendArg, host: &Host) -> Choice {
    match arg {
        BackendArg::Loop => Choice { backend: Backend::Loop, reason: "--backend loop".into() },
        BackendArg::Guestfs => Choice { backend: Backend::Guestfs, reason: "--backend guestfs".into() },
        BackendArg::Auto => match (&host.loop_control, host.root) {
            (Ok(()), true) => Choice { backend: Backend::Loop, reason: "--backend auto: root, and /dev/loop-control works".into() },
            (_, false) => Choice { backend: Backend::Guestfs, reason: "--backend auto: not root".into() },
            (Err(e), true) if host.guestfs_missing.is_empty() => Choice { backend: Backend::Guestfs, reason: format!("--backend auto: /dev/loop-control cannot be opened ({e})") },
            // Root without libguestfs (a container without --device /dev/loop-control, say): loop
            // devices, whose own setup may still find the node (devtmpfs) or says which flag is missing.
            (Err(e), true) => Choice { backend: Backend::Loop, reason: format!("--backend auto: root; /dev/loop-control cannot be opened ({e}) and libguestfs is not installed") },
        },
    }
}

/// The BOM's record of the backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendRecord {
    pub name: Backend,
    /// Why it was chosen: the flag, or what `auto` found.
    pub reason: String,
    /// How this build differs from a loop-backend build of the same manifest (empty for loop).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_loop_for_root_with_loop_control() {
        let c = choose(BackendArg::Auto, &Host { root: true, loop_control: Ok(()), guestfs_missing: Vec::new() });
        assert_eq!(c.backend, Backend::Loop);
        assert!(c.reason.contains("root"), "{}", c.reason);
    }

    #[test]
    fn auto_picks_guestfs_for_a_normal_user_and_for_root_without_loop_devices() {
        let user = choose(BackendArg::Auto, &Host { root: false, loop_control: Err("Permission denied".into()), guestfs_missing: vec!["guestfish".into()] });
        assert_eq!((user.backend, user.reason.as_str()), (Backend::Guestfs, "--backend auto: not root"));
        let root = choose(BackendArg::Auto, &Host { root: true, loop_control: Err("No such file or directory".into()), guestfs_missing: Vec::new() });
        assert_eq!(root.backend, Backend::Guestfs);
        assert!(root.reason.contains("No such file"), "{}", root.reason);
    }

    #[test]
    fn auto_keeps_loop_for_root_without_loop_control_or_libguestfs() {
        // A container without --device /dev/loop-control: the loop backend's own error names the flag.
        let c = choose(BackendArg::Auto, &Host { root: true, loop_control: Err("No such file or directory".into()), guestfs_missing: vec!["guestfish".into()] });
        assert_eq!(c.backend, Backend::Loop);
        assert!(c.reason.contains("libguestfs is not installed"), "{}", c.reason);
    }

    #[test]
    fn explicit_choices_are_kept() {
        let h = Host { root: false, loop_control: Err(String::new()), guestfs_missing: Vec::new() };
        assert_eq!(choose(BackendArg::Loop, &h).backend, Backend::Loop);
        assert_eq!(choose(BackendArg::Guestfs, &Host { root: true, loop_control: Ok(()), guestfs_missing: Vec::new() }).backend, Backend::Guestfs);
    }
}
