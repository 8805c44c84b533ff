//! Running external programs: host tools (qemu-img, blkid, fstrim) and commands inside the
//! chroot. Output is streamed to the log at debug level, and the last lines are kept for the
//! error message when the command fails. A command is stopped when its time limit passes or when
//! kib receives SIGINT/SIGTERM.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How many lines of output a failure shows.
pub const TAIL_LINES: usize = 25;

/// The system directories that hold the host tools kib runs (sfdisk, blkid, lvm, setfiles,
/// fstrim, e2fsck, mkfs.*): a normal user's `PATH` on Debian lacks them, and so may a root
/// shell reached with `env -i` or a sudo without `secure_path`.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// `PATH` with the sbin directories ([`SBIN_DIRS`]) appended where they are missing; what
/// [`host_tool`] gives the commands it makes. The value is colon-separated, as `PATH` is.
pub fn path_with_sbin() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
    for d in SBIN_DIRS {
        if !dirs.iter().any(|p| p.as_os_str() == d) {
            dirs.push(d.into());
        }
    }
    std::env::join_paths(dirs).unwrap_or(path)
}

/// A [`Command`] for a host tool that lives in an sbin directory (sfdisk, blkid, lvm, setfiles,
/// fstrim, e2fsck, resize2fs, xfs_growfs, mkfs.*), or for a `sh -c` that runs one: its `PATH` is
/// [`path_with_sbin`], which std also searches for `program` itself. Nothing else is changed.
pub fn host_tool(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", path_with_sbin());
    c
}

/// The signal kib received (SIGINT or SIGTERM), or 0. Set by the handler that
/// [`install_signal_handlers`] registers; everything else only reads it.
static INTERRUPTED: once_flag::Flag = once_flag::Flag::new();

mod once_flag {
    use super::*;
    pub struct Flag(std::sync::OnceLock<Arc<AtomicUsize>>);
    impl Flag {
        pub const fn new() -> Self {
            Flag(std::sync::OnceLock::new())
        }
        pub fn get(&self) -> &Arc<AtomicUsize> {
            self.0.get_or_init(|| Arc::new(AtomicUsize::new(0)))
        }
    }
}

/// Registers SIGINT and SIGTERM so that they set a flag instead of killing kib: the running
/// command is stopped, the guards clean up in order, and kib exits with 130 or 143. A second
/// signal exits at once (with the same status): the mounts go with kib's mount namespace, the
/// loop devices with autoclear, the image's processes with their parent-death signal; only the
/// work directory stays, for `kib cleanup`.
pub fn install_signal_handlers() -> std::io::Result<()> {
    let second = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Runs before the flag below is set: exits only if an earlier signal set it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&second))?;
        signal_hook::flag::register(sig, Arc::clone(&second))?;
        signal_hook::flag::register_usize(sig, Arc::clone(INTERRUPTED.get()), sig as usize)?;
    }
    Ok(())
}

/// The signal number that interrupted kib, if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.get().load(Ordering::Relaxed) {
        0 => None,
        s => Some(s as i32),
    }
}

/// For crash tests: when the environment variable `KIB_TEST_KILL_AT` equals `point`, kib sends
/// itself SIGKILL here, as a host that loses power or an OOM kill would stop it. The points are
/// named where they are (such as [`crate::buildcache::KILL_POINT`]).
pub fn test_kill_point(point: &str) {
    if std::env::var_os("KIB_TEST_KILL_AT").is_some_and(|v| v == point) {
        tracing::debug!("KIB_TEST_KILL_AT={point}: SIGKILL");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{what} failed with {status}{}", format_tail(tail))]
    Failed { what: String, status: String, code: Option<i32>, tail: Vec<String> },
    #[error("{what} did not finish within {} and was stopped{}", humantime::format_duration(*limit), format_tail(tail))]
    TimedOut { what: String, limit: Duration, tail: Vec<String> },
    #[error("interrupted by signal {signal} while running {what}")]
    Interrupted { what: String, signal: i32 },
}

impl ExecError {
    /// The last lines of output, when the command ran.
    pub fn tail(&self) -> &[String] {
        match self {
            ExecError::Failed { tail, .. } | ExecError::TimedOut { tail, .. } => tail,
            _ => &[],
        }
    }
}

/// Whether `e` means a full filesystem: an `io::Error` (or rustix `Errno`) ENOSPC anywhere in its
/// chain, or a command that failed saying so in its last lines, where no errno reaches kib:
/// the C library's `No space left on device` (dpkg: `failed to write (No space left on device)`;
/// apt: `Write error - write (28: No space left on device)`), and apt's own check before it
/// downloads, `You don't have enough free space in`.
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    let enospc = rustix::io::Errno::NOSPC;
    e.chain().any(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(enospc.raw_os_error());
        }
        if let Some(errno) = c.downcast_ref::<rustix::io::Errno>() {
            return *errno == enospc;
        }
        if let Some(x) = c.downcast_ref::<ExecError>() {
            return x.tail().iter().any(|l| l.contains("No space left on device") || l.contains("You don't have enough free space in"));
        }
        false
    })
}

fn format_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return " (it printed nothing)".to_string();
    }
    let mut s = format!("; last {} lines of its output:", tail.len());
    for l in tail {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}

fn describe(status: ExitStatus) -> (String, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (format!("exit code {c}"), Some(c)),
        (None, Some(s)) => (format!("signal {s}"), None),
        _ => ("an unknown status".to_string(), None),
    }
}

/// Runs `cmd` to completion with stdout and stderr merged, logging each line at debug level
/// under `what`. Returns the last [`TAIL_LINES`] lines.
///
/// Errors: the program cannot start, exits non-zero, runs past `timeout`, or kib is interrupted
/// (the command is then killed with SIGKILL; commands in the chroot run under
/// `unshare --kill-child`, so their whole PID namespace goes with it).
pub fn run(cmd: &mut Command, what: &str, timeout: Option<Duration>) -> Result<Vec<String>, ExecError> {
    let (reader, writer) = std::io::pipe().map_err(|source| ExecError::Spawn { what: what.into(), source })?;
    let writer2 = writer.try_clone().map_err(|source| ExecError::Spawn { what: what.into(), source })?;
    // Its own process group: a terminal's Ctrl-C reaches kib only, and kib stops the whole group.
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    die_with_parent(cmd);
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn { what: what.into(), source })?;
    // Drop our copies of the write end (held by `cmd`) so that EOF arrives when the child exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let label = what.to_string();
    let output = std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            tracing::debug!(target: "kib::output", "[{label}] {text}");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text);
            line.clear();
        }
        tail.into_iter().collect::<Vec<_>>()
    });
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let start = Instant::now();
    let kill = || {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    };
    let status = loop {
        let slice = match timeout {
            Some(t) => t.saturating_sub(start.elapsed()).min(Duration::from_millis(200)),
            None => Duration::from_millis(200),
        };
        match rx.recv_timeout(slice) {
            Ok(status) => break status,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(signal) = interrupted() {
                    kill();
                    let _ = rx.recv();
                    return Err(ExecError::Interrupted { what: what.into(), signal });
                }
                if let Some(t) = timeout {
                    if start.elapsed() >= t {
                        kill();
                        let _ = rx.recv();
                        let tail = output.join().unwrap_or_default();
                        return Err(ExecError::TimedOut { what: what.into(), limit: t, tail });
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the waiter thread always sends"),
        }
    };
    let status = status.map_err(|source| ExecError::Spawn { what: what.into(), source })?;
    let tail = output.join().unwrap_or_default();
    if status.success() {
        Ok(tail)
    } else {
        let (status, code) = describe(status);
        Err(ExecError::Failed { what: what.into(), status, code, tail })
    }
}

/// Runs `cmd` with kib's standard input, output and error (a terminal, for an interactive
/// shell) and returns its exit status. It stays in kib's process group, the terminal's
/// foreground group, so that it can read the terminal; an interactive shell with job control
/// moves itself into a group of its own and takes the terminal, so a Ctrl-C at its prompt never
/// reaches kib. A Ctrl-C or SIGTERM that does reach kib kills the command (for chroot commands,
/// its whole PID namespace) and returns [`ExecError::Interrupted`].
///
/// Errors: the program cannot start, or kib is interrupted.
pub fn interactive(cmd: &mut Command, what: &str) -> Result<ExitStatus, ExecError> {
    die_with_parent(cmd);
    cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn { what: what.into(), source })?;
    loop {
        if let Some(status) = child.try_wait().map_err(|source| ExecError::Spawn { what: what.into(), source })? {
            return Ok(status);
        }
        if let Some(signal) = interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Interrupted { what: what.into(), signal });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the child get SIGKILL when the thread that started it (and so kib) dies, however it
/// dies. For chroot commands, `unshare --kill-child` passes it on to the whole PID namespace.
pub fn die_with_parent(cmd: &mut Command) {
    signal_with_parent(cmd, rustix::process::Signal::KILL);
}

/// Makes the child get `signal` when the thread that started it (and so kib) dies, however it
/// dies; `kib matrix run` gives its `kib customize` children SIGTERM, so that they clean up.
#[allow(unsafe_code)]
pub fn signal_with_parent(cmd: &mut Command, signal: rustix::process::Signal) {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are async-signal-safe and touch no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(signal))?;
            // kib died between fork and prctl: the signal will never come, so do not start.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("kib exited before the command started"));
            }
            Ok(())
        });
    }
}

/// Runs a host tool and returns its standard output. Errors carry its standard error.
pub fn capture(cmd: &mut Command, what: &str) -> Result<String, ExecError> {
    die_with_parent(cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| ExecError::Spawn { what: what.into(), source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let (status, code) = describe(out.status);
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<String> = err.lines().map(str::to_string).collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].to_vec();
        Err(ExecError::Failed { what: what.into(), status, code, tail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_shows_code_and_tail() {
        let e = run(Command::new("sh").args(["-c", "for i in $(seq 1 40); do echo line $i; done; echo oops >&2; exit 3"]), "test script", None)
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("test script failed with exit code 3; last 25 lines"), "{msg}");
        assert!(msg.ends_with("  | oops"), "{msg}");
        assert!(!msg.contains("line 16\n") && msg.contains("line 40"), "{msg}");
    }

    #[test]
    fn timeout_stops_the_command() {
        let start = Instant::now();
        let e = run(Command::new("sh").args(["-c", "echo started; sleep 30"]), "sleeper", Some(Duration::from_millis(300))).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, ExecError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("did not finish within 300ms") && e.to_string().contains("| started"), "{e}");
    }

    #[test]
    fn a_full_disk_is_known_by_its_errno_or_by_what_the_tool_printed() {
        let io = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert!(is_disk_full(&anyhow::Error::new(io).context("writing /big.bin in the image").context("step 1/1")));
        assert!(is_disk_full(&anyhow::Error::new(rustix::io::Errno::NOSPC).context("x")));
        let failed = |line: &str| ExecError::Failed { what: "apt-get install".into(), status: "exit code 100".into(), code: Some(100), tail: vec!["Unpacking x ...".into(), line.into()] };
        for line in [
            "E: Write error - write (28: No space left on device)",
            "dpkg: error processing archive /var/cache/apt/archives/x.deb (--unpack): cannot copy extracted data for './usr/bin/x' to '/usr/bin/x.dpkg-new': failed to write (No space left on device)",
            "E: You don't have enough free space in /var/cache/apt/archives/.",
        ] {
            assert!(is_disk_full(&anyhow::Error::new(failed(line)).context("step")), "{line}");
        }
        // Other errors are not, even when their message says the words: only errnos and tool
        // output count.
        assert!(!is_disk_full(&anyhow::Error::new(failed("E: Unable to locate package jq"))));
        assert!(!is_disk_full(&anyhow::Error::new(std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()))));
        assert!(!is_disk_full(&anyhow::anyhow!("a file named No space left on device")));
    }

    #[test]
    fn success_returns_tail_and_capture_returns_stdout() {
        assert_eq!(run(Command::new("echo").arg("hi"), "echo", None).unwrap(), ["hi"]);
        assert_eq!(capture(Command::new("echo").arg("hi"), "echo").unwrap(), "hi\n");
        let e = capture(Command::new("sh").args(["-c", "echo bad >&2; exit 2"]), "sh").unwrap_err();
        assert!(e.to_string().contains("exit code 2") && e.to_string().contains("| bad"));
    }
}
