//! The guestfs backend's namespaces. kib runs itself again under util-linux's `unshare`:
//!
//! - a user namespace when it is not root (`--map-root-user --map-auto`: the caller's uid is
//!   root inside, and the first 65535 ids of its `/etc/subuid` and `/etc/subgid` ranges, through
//!   newuidmap/newgidmap, are 1–65535, so that the image's files keep their owners);
//! - a mount namespace (the tree's tmpfs, the chroot's /dev, /sys and /run die with it);
//! - a PID namespace whose init is the inner kib (`--fork --kill-child`): when it dies, however it
//!   dies, the kernel kills guestfish, the appliance's qemu and every chroot command with it.
//!
//! The outer kib only waits: it gives the unshare process `PR_SET_PDEATHSIG` = SIGKILL (so a
//! SIGKILLed outer kib takes the whole namespace down), passes a SIGTERM on to the inner kib,
//! leaves Ctrl-C to the terminal (which signals the inner kib itself) and returns the inner
//! kib's exit status.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Set for the inner kib: the backend's reason, as the outer kib resolved it.
pub const ENV_INSIDE: &str = "KIB_GUESTFS_NAMESPACE";

/// The reason the outer kib passed in, when this kib is the inner one.
pub fn inside() -> Option<String> {
    std::env::var(ENV_INSIDE).ok().filter(|v| !v.is_empty())
}

/// Whether `program` is an executable file in `PATH` (with the sbin folders).
pub fn on_path(program: &str) -> bool {
    std::env::split_paths(&crate::exec::path_with_sbin()).any(|d| is_executable(&d.join(program)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What the guestfs backend lacks on this host, for this user: empty when it can run.
pub fn missing(root: bool) -> Vec<String> {
    let mut missing = Vec::new();
    if !on_path("guestfish") {
        missing.push("libguestfs's guestfish (Debian: libguestfs-tools)".to_string());
    }
    if !on_path("unshare") {
        missing.push("util-linux's unshare".to_string());
    }
    if !root {
        for tool in ["newuidmap", "newgidmap"] {
            if !on_path(tool) {
                missing.push(format!("{tool} (Debian: uidmap)"));
            }
        }
        let uid = rustix::process::getuid().as_raw();
        let name = user_name(uid);
        for file in ["/etc/subuid", "/etc/subgid"] {
            if !has_subordinate_range(&std::fs::read_to_string(file).unwrap_or_default(), uid, name.as_deref()) {
                missing.push(format!("a subordinate id range for {} in {file}", name.as_deref().unwrap_or("this user")));
            }
        }
    }
    missing
}

/// Whether `/etc/subuid`-style text gives `uid` (or `name`) a range of at least 65535 ids.
pub fn has_subordinate_range(text: &str, uid: u32, name: Option<&str>) -> bool {
    text.lines().any(|l| {
        let mut f = l.trim().split(':');
        let (Some(who), Some(_start), Some(count)) = (f.next(), f.next(), f.next()) else { return false };
        (who == uid.to_string() || Some(who) == name) && count.trim().parse::<u64>().is_ok_and(|c| c >= 65535)
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        f.next()?;
        (f.next()? == uid.to_string()).then(|| name.to_string())
    })
}

/// The paragraph for a user who has neither backend.
pub fn neither_paragraph(subcommand: &str, root: bool, loop_why: &str, missing: &[String]) -> String {
    let user = if root { "root".to_string() } else { format!("uid {}", rustix::process::getuid().as_raw()) };
    format!(
        "kib {subcommand} cannot reach the image's filesystems here. Loop devices need root and /dev/loop-control ({user}: {loop_why}). \
         The guestfs backend needs what this host lacks: {}. Either run kib as root (sudo kib {subcommand} …), or install \
         libguestfs-tools and uidmap and give the user a subordinate id range (sudo usermod --add-subuids 100000-165535 \
         --add-subgids 100000-165535 USER); the README's \"Without root\" has the steps",
        missing.join("; ")
    )
}

/// Runs this kib again, with the same arguments, inside the guestfs backend's namespaces, and
/// returns its exit status. `missing` is what [`missing`] found. Must run before any thread starts.
///
/// Errors: a missing tool (one paragraph naming both backends' needs), or `unshare` cannot start.
pub fn reexec(subcommand: &str, reason: &str, loop_why: &str, missing: &[String]) -> Result<ExitCode> {
    let root = rustix::process::geteuid().is_root();
    if !missing.is_empty() {
        bail!("{}", neither_paragraph(subcommand, root, loop_why, missing));
    }
    let exe = std::env::current_exe().context("finding kib's own executable")?;
    let mut cmd = crate::exec::host_tool("unshare");
    if !root {
        cmd.args(["--user", "--map-root-user", "--map-auto"]);
    }
    cmd.args(["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--"]);
    cmd.arg(&exe).args(std::env::args_os().skip(1)).env(ENV_INSIDE, reason);
    crate::exec::die_with_parent(&mut cmd);
    tracing::debug!("backend guestfs ({reason}): running kib again in its own {}mount and PID namespaces", if root { "" } else { "user, " });
    let term = Arc::new(AtomicUsize::new(0));
    signal_hook::flag::register_usize(signal_hook::consts::SIGTERM, Arc::clone(&term), 15).context("installing the SIGTERM handler")?;
    // A terminal's Ctrl-C reaches the inner kib too (same process group); the inner kib cleans up.
    signal_hook::flag::register_usize(signal_hook::consts::SIGINT, Arc::new(AtomicUsize::new(0)), 2).context("installing the SIGINT handler")?;
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", display(&cmd)))?;
    let mut forwarded = false;
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for the inner kib")? {
            break s;
        }
        if !forwarded && term.load(Ordering::Relaxed) != 0 {
            forwarded = true;
            for pid in children(child.id()) {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(s)) => ExitCode::from(128 + s as u8),
        _ => ExitCode::FAILURE,
    })
}

/// The pids of `pid`'s children (the inner kib is the unshare process's only child).
fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn display(cmd: &Command) -> OsString {
    let mut s = OsString::from(cmd.get_program());
    for a in cmd.get_args() {
        s.push(" ");
        s.push(a);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_uid() {
        let text = "alice:100000:65536\n1002:165536:65536\nbob:231072:1000\n";
        assert!(has_subordinate_range(text, 1001, Some("alice")));
        assert!(has_subordinate_range(text, 1002, Some("carol")));
        assert!(!has_subordinate_range(text, 1003, Some("bob")), "1000 ids are too few for an image's owners");
        assert!(!has_subordinate_range(text, 1004, None));
    }

    #[test]
    fn the_paragraph_names_both_backends() {
        let p = neither_paragraph("customize", false, "Permission denied", &["newuidmap (Debian: uidmap)".into()]);
        for want in ["Loop devices need root", "Permission denied", "newuidmap", "sudo usermod --add-subuids", "Without root"] {
            assert!(p.contains(want), "{want}: {p}");
        }
    }
}
