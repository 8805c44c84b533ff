//! The guestfs backend: the image's filesystems through libguestfs's appliance, a small VM that
//! boots its own kernel (never the image's), so that kib needs neither root nor loop devices.
//! It calls Debian's libguestfs tools (guestfish) as commands; the `guestfs` crate is
//! unmaintained (DESIGN §4).
//!
//! How a build runs (the README's "Without root" explains the choice):
//! 1. kib runs itself again in a user, mount and PID namespace ([`ns`]).
//! 2. Phase 0: the working copy is made as for loop devices; then one appliance session, read
//!    only, inspects the disk, mounts its filesystems as its fstab says and streams the whole tree
//!    as a tar ([`extract`]), which the host's GNU tar unpacks into a tmpfs that belongs to kib's
//!    namespace, owners, modes, ACLs, xattrs and file capabilities kept. Device nodes in the
//!    image's `/dev` are left out (a user namespace cannot make them; they stay in the image).
//!    [`TreeState`] then records every path and the newest ctime.
//! 3. Phase 1 and sysprep run on that tree exactly as on a loop-mounted one: the same chroot
//!    session, at the host's native speed.
//! 4. Phase 2: what changed (a ctime newer than the extraction, a path that is new or gone, a file
//!    type that changed) is written back in a second appliance session ([`write_back`]): removals
//!    first, then one tar of the changed paths, then fstrim of every filesystem.
//!
//! The appliance: `LIBGUESTFS_BACKEND=direct`; a fixed appliance in
//! [`FIXED_APPLIANCE`] when one is there and `LIBGUESTFS_PATH` is not set (`scripts/guestfs-setup.sh`
//! makes it); KVM when `/dev/kvm` opens and the appliance starts under it within
//! [`KVM_PROBE`], TCG otherwise (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`). Its temporary files
//! live in the run's work directory.

pub mod ns;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::exec::{self, ExecError};

/// A fixed appliance (kernel, initrd, root, README.fixed) that `scripts/guestfs-setup.sh`
/// builds with libguestfs-make-fixed-appliance; used when `LIBGUESTFS_PATH` is not set.
pub const FIXED_APPLIANCE: &str = "/var/cache/kib/guestfs/appliance";

/// How long the appliance may take to start under KVM before kib falls back to TCG.
pub const KVM_PROBE: Duration = Duration::from_secs(30);

/// How long one appliance session (extraction or write-back) may take by default
/// (`--appliance-timeout`).
pub const SESSION_LIMIT: Duration = Duration::from_secs(3600);

/// The guestfs backend's settings for one run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// kib's cache folder for libguestfs's supermin appliance and the KVM verdict (unused for
    /// the appliance itself when a fixed one is installed).
    pub cache: PathBuf,
    /// How long one appliance session (reading the tree out, writing the changes back) may
    /// take, appliance start included; then it is killed and kib says so (`--appliance-timeout`).
    pub session_limit: Duration,
}

/// What the BOM lists as the guestfs backend's differences from a loop-backend build.
pub const DIFFERENCES: &[&str] = &[
    "the image's tree is read out through libguestfs's appliance into a tmpfs and the changes are written back with tar (owners, modes, ACLs, xattrs, file capabilities and SELinux labels kept)",
    "device nodes in the image's /dev are not read out; they stay in the image as they were",
    "the build cache takes no snapshots after steps (the working copy is written once, at the end): an unchanged rebuild publishes the stored outputs again, any change runs every step",
];

/// The environment every guestfish of this run gets.
#[derive(Debug, Clone)]
pub struct Appliance {
    env: Vec<(String, OsString)>,
    /// `kvm` or `tcg`, as decided.
    pub accel: &'static str,
    /// How long one session may take (see [`Settings::session_limit`]).
    pub limit: Duration,
}

impl Appliance {
    /// Decides the appliance's environment: its temporary folder `tmp` (made), the supermin
    /// cache `cache` (when no fixed appliance is used), and KVM or TCG (a probe boot when KVM
    /// opens and the caller set no `LIBGUESTFS_BACKEND_SETTINGS`; its verdict is kept in
    /// `cache/kvm-verdict` with the host's boot id, so it is probed once per boot).
    ///
    /// Errors: the folders cannot be made, or the appliance starts under neither KVM nor TCG (the
    /// error names libguestfs-test-tool and the README).
    pub fn prepare(tmp: &Path, cache: &Path, limit: Duration) -> Result<Appliance> {
        std::fs::create_dir_all(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut env: Vec<(String, OsString)> = vec![("TMPDIR".into(), tmp.into())];
        if std::env::var_os("LIBGUESTFS_BACKEND").is_none() {
            env.push(("LIBGUESTFS_BACKEND".into(), "direct".into()));
        }
        if std::env::var_os("LIBGUESTFS_PATH").is_none() && Path::new(FIXED_APPLIANCE).join("README.fixed").is_file() {
            env.push(("LIBGUESTFS_PATH".into(), FIXED_APPLIANCE.into()));
        } else if std::env::var_os("LIBGUESTFS_CACHEDIR").is_none() {
            std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
            env.push(("LIBGUESTFS_CACHEDIR".into(), cache.into()));
        }
        let mut a = Appliance { env, accel: "tcg", limit };
        if let Some(s) = std::env::var_os("LIBGUESTFS_BACKEND_SETTINGS") {
            a.accel = if s.to_string_lossy().contains("force_tcg") { "tcg" } else { "kvm" };
        } else if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() {
            // The probe's verdict holds until the host reboots: kept in the cache with the boot id.
            let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string();
            let verdict_file = cache.join("kvm-verdict");
            let known = std::fs::read_to_string(&verdict_file).ok().and_then(|v| v.strip_prefix(&format!("{boot_id} ")).map(|v| v.trim() == "kvm"));
            let kvm = match known {
                Some(k) => k,
                None => {
                    let t = Instant::now();
                    let ok = match exec::run(&mut a.guestfish(&["-a", "/dev/null", "run"]), "guestfish (KVM probe)", Some(KVM_PROBE)) {
                        Ok(_) => {
                            tracing::info!("libguestfs's appliance starts under KVM ({:.1?})", t.elapsed());
                            true
                        }
                        Err(e) => {
                            tracing::info!("libguestfs's appliance does not start under KVM ({e}); using TCG until the host reboots");
                            false
                        }
                    };
                    if !boot_id.is_empty() && std::fs::create_dir_all(cache).is_ok() {
                        let _ = std::fs::write(&verdict_file, format!("{boot_id} {}\n", if ok { "kvm" } else { "tcg" }));
                    }
                    ok
                }
            };
            if kvm {
                a.accel = "kvm";
            } else {
                a.env.push(("LIBGUESTFS_BACKEND_SETTINGS".into(), "force_tcg".into()));
            }
        } else {
            a.env.push(("LIBGUESTFS_BACKEND_SETTINGS".into(), "force_tcg".into()));
        }
        Ok(a)
    }

    /// A guestfish command with this run's environment.
    pub fn guestfish(&self, args: &[&str]) -> Command {
        let mut c = exec::host_tool("guestfish");
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// A filesystem the appliance mounted: its device in the appliance (`/dev/sda1`) and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub device: String,
    pub mount_point: String,
}

impl Mounted {
    /// The partition number of a `/dev/sdX<N>` device; `None` for a whole disk or an LV.
    pub fn partition(&self) -> Option<u32> {
        let d = self.device.strip_prefix("/dev/")?;
        let digits = d.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        (d.starts_with("sd") && !digits.is_empty()).then(|| digits.parse().ok()).flatten()
    }
}

/// Parses guestfish's `mountpoints` output (`/dev/sda1: /`), shallowest mount point first.
pub fn parse_mountpoints(text: &str) -> Vec<Mounted> {
    let mut v: Vec<Mounted> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(d, m)| d.starts_with("/dev/") && m.starts_with('/'))
        .map(|(d, m)| Mounted { device: d.trim().to_string(), mount_point: m.trim().to_string() })
        .collect();
    v.sort_by_key(|m| (m.mount_point.matches('/').count() - usize::from(m.mount_point == "/"), m.mount_point.clone()));
    v
}

/// The host tar options shared by reading the tree out and writing changes back.
const TAR_KEEP: &[&str] = &["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--selinux"];

/// What the read-only session found besides the tree.
#[derive(Debug, Default)]
pub struct Extracted {
    /// The filesystems the appliance mounted, shallowest mount point first.
    pub mounted: Vec<Mounted>,
    /// Every device holding a filesystem libguestfs recognizes, with its type (`list-filesystems`:
    /// `/dev/rootvg/rootlv` → `xfs`).
    pub filesystems: Vec<(String, String)>,
    /// lvm's `pvs` and `lvs -a --segments` JSON reports ([`crate::phase0::lvm::report_args`], the
    /// loop backend's very fields), run in the appliance on the physical volumes' partitions; `None`
    /// when there are none, or when lvm failed there (its error is in the log).
    pub lvm_reports: Option<(String, String)>,
}

/// The appliance's device for partition `number` of its only disk (`/dev/sda3`; `/dev/sda` for
/// the whole disk, number 0). libguestfs names the first added disk `/dev/sda`.
pub fn device_of(number: u32) -> String {
    if number == 0 {
        "/dev/sda".into()
    } else {
        format!("/dev/sda{number}")
    }
}

/// The guestfish lines that print the session's findings after the tree: section markers
/// (`@mountpoints`, `@filesystems`, `@pvs`, `@lvs`) each followed by a command's output. The lvm
/// reports run through the appliance's `debug sh` (libguestfs has no call for lvm's own JSON
/// reports), prefixed with `-` so that a failing one leaves its section empty. guestfish splits
/// `debug`'s argument at white space and drops quotes, so the reports run without kib's
/// `--config` string (the appliance's lvm has its own configuration and sees only this disk).
fn findings_script(pv_partitions: &[u32]) -> String {
    let mut s = String::from("echo @mountpoints\nmountpoints\necho @filesystems\nlist-filesystems\n");
    s.push_str(&lvm_reports_script(pv_partitions));
    s
}

/// The `@pvs` and `@lvs` sections of [`findings_script`]: lvm's reports on `pv_partitions`
/// (nothing without any).
fn lvm_reports_script(pv_partitions: &[u32]) -> String {
    let mut s = String::new();
    if pv_partitions.is_empty() {
        return s;
    }
    let devices: Vec<String> = pv_partitions.iter().map(|&n| device_of(n)).collect();
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    for (marker, report) in [("@pvs", crate::phase0::lvm::Report::Pvs), ("@lvs", crate::phase0::lvm::Report::Lvs)] {
        let mut words = vec!["lvm".to_string()];
        let mut args = crate::phase0::lvm::report_args(report, &devices).into_iter();
        while let Some(a) = args.next() {
            if a == "--config" {
                args.next();
            } else {
                words.push(a);
            }
        }
        s.push_str(&format!("echo {marker}\n-debug sh \"{}\"\n", words.join(" ")));
    }
    s
}

/// Splits the session's standard output into [`Extracted`] (without the mounts' check).
pub fn parse_findings(text: &str) -> Extracted {
    let mut sections: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut current = "";
    for line in text.lines() {
        match line.trim() {
            m @ ("@mountpoints" | "@filesystems" | "@pvs" | "@lvs") => current = m,
            _ => sections.entry(current).or_default().push(line),
        }
    }
    let section = |k: &str| sections.get(k).map(|l| l.join("\n")).unwrap_or_default();
    let filesystems = section("@filesystems")
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(d, _)| d.starts_with("/dev/"))
        .map(|(d, t)| (d.trim().to_string(), t.trim().to_string()))
        .collect();
    let (pvs, lvs) = (section("@pvs"), section("@lvs"));
    let lvm_reports = (!pvs.trim().is_empty() && !lvs.trim().is_empty()).then_some((pvs, lvs));
    Extracted { mounted: parse_mountpoints(&section("@mountpoints")), filesystems, lvm_reports }
}

/// Streams the disk's tree, mounted as its fstab says, into `root` (an empty directory kib owns,
/// a tmpfs), in one read-only appliance session; with `pv_partitions` (the partitions blkid calls
/// LVM physical volumes), lvm's reports on them too. Returns what the session found.
///
/// Errors: no operating system found in the disk, the appliance fails (the tail of its output),
/// or tar fails.
pub fn extract(app: &Appliance, disk: &Path, root: &Path, work: &Path, pv_partitions: &[u32]) -> Result<Extracted> {
    let fifo = work.join("tree.fifo");
    mkfifo(&fifo)?;
    let script = work.join("extract.guestfish");
    std::fs::write(
        &script,
        format!("tar-out / {} numericowner:true xattrs:true selinux:true acls:true\n{}", quote(fifo.as_os_str().as_bytes())?, findings_script(pv_partitions)),
    )?;
    // tar stops at the archive's end marker; `cat` drains the rest so that guestfish never gets
    // EPIPE. Device nodes cannot be made in a user namespace: /dev's entries stay in the image.
    let mut tar = exec::host_tool("sh");
    tar.arg("-c").arg(r#"r=$1; shift; { tar -xpf - -C "$r" "$@" --exclude=./dev/*; s=$?; cat >/dev/null; exit $s; } < "$0""#);
    tar.arg(&fifo).arg(root);
    tar.args(TAR_KEEP);
    let limit = app.limit;
    let reader = std::thread::spawn(move || exec::run(&mut tar, "tar (unpacking the tree)", Some(limit)));
    let disk_s = disk.to_string_lossy();
    let script_s = script.to_string_lossy();
    let mut gf = app.guestfish(&["--ro", "--format=raw", "-a", &disk_s, "-i", "-f", &script_s]);
    let ran = run_capturing(&mut gf, "guestfish (reading the tree out)", &work.join("findings.txt"), app.limit);
    unblock_fifo(&fifo, false);
    let unpacked = reader.join().map_err(|_| anyhow::anyhow!("the tar thread panicked"))?;
    let out = ran.map_err(|e| appliance_error(e, "reading the image's tree out through libguestfs's appliance"))?;
    unpacked.map_err(anyhow::Error::new).context("unpacking the image's tree")?;
    let _ = std::fs::remove_file(&fifo);
    let found = parse_findings(&out);
    if !found.mounted.iter().any(|m| m.mount_point == "/") {
        bail!("libguestfs's inspection mounted no root filesystem (guestfish's mountpoints said: {})", out.trim());
    }
    if !pv_partitions.is_empty() && found.lvm_reports.is_none() {
        tracing::warn!("lvm's reports could not be read in the appliance (see the log); the BOM records no volume groups");
    }
    Ok(found)
}

/// Runs guestfish with its standard output captured in `out` (in the run's work directory, so
/// that a killed run leaves it to `kib cleanup`): returns that output, or the error with the tail
/// of its standard error.
fn run_capturing(cmd: &mut Command, what: &str, out: &Path, limit: Duration) -> Result<String, ExecError> {
    // stderr goes through exec::run's log and tail; stdout (mountpoints) into the file.
    let mut sh = wrap_stdout(cmd, out);
    exec::run(&mut sh, what, Some(limit))?;
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let _ = std::fs::remove_file(out);
    Ok(text)
}

/// `sh -c 'exec "$@" >FILE'`: exec::run merges stdout into its log, so the command's standard
/// output is redirected to `file` by a shell around it.
fn wrap_stdout(cmd: &Command, file: &Path) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(r#"f=$1; shift; exec "$@" >"$f""#).arg("sh").arg(file).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

/// The appliance's failure, with where to look when it did not start (not for an interruption).
fn appliance_error(e: ExecError, doing: &str) -> anyhow::Error {
    let hint = match &e {
        ExecError::Interrupted { .. } => String::new(),
        ExecError::TimedOut { limit, .. } => format!(
            "; the appliance session did not finish within --appliance-timeout ({} s; under TCG, without KVM, reading a 2 GiB image takes about 2 minutes): it was stopped, and nothing of it is left running",
            limit.as_secs()
        ),
        _ => "; if the appliance cannot start, `libguestfs-test-tool` shows why, and the README's \"Without root\" lists what it needs".into(),
    };
    anyhow::Error::new(e).context(format!("{doing}{hint}"))
}

fn mkfifo(p: &Path) -> Result<()> {
    let _ = std::fs::remove_file(p);
    rustix::fs::mknodat(rustix::fs::CWD, p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).with_context(|| format!("making the pipe {}", p.display()))
}

/// After the appliance's side of a FIFO exited: opens the other end without blocking, so that a
/// host tar still waiting in open(2) (the appliance failed before it opened the pipe) gets EOF
/// (`write`: false) or EPIPE (`write`: true) instead of waiting for ever.
fn unblock_fifo(p: &Path, for_writer: bool) {
    let flags = if for_writer { rustix::fs::OFlags::RDONLY } else { rustix::fs::OFlags::WRONLY };
    let _ = rustix::fs::open(p, flags | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty());
}

/// A path for a guestfish script, double-quoted. Refuses a newline, which no escape carries.
fn quote(p: &[u8]) -> Result<String> {
    let s = String::from_utf8_lossy(p);
    if s.contains('\n') || s.contains('\r') || std::str::from_utf8(p).is_err() {
        bail!("the path {s:?} cannot be passed to guestfish (a newline or bytes that are not UTF-8)");
    }
    Ok(format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// The extracted tree as it was before the steps: every path (relative, `.` for the root) with
/// its file type, and the newest ctime (ns) among them.
#[derive(Debug, Default)]
pub struct TreeState {
    types: HashMap<PathBuf, u32>,
    newest_ctime: i128,
}

impl TreeState {
    /// Walks `root`, not following symlinks and not crossing into other filesystems. Then waits
    /// for the clock to pass the newest ctime, so that any later change has a newer one.
    pub fn record(root: &Path) -> Result<TreeState> {
        let mut s = TreeState::default();
        let dev = std::fs::symlink_metadata(root)?.dev();
        walk(root, Path::new("."), dev, &mut |rel, m| {
            s.types.insert(rel.to_path_buf(), m.mode() & 0o170000);
            s.newest_ctime = s.newest_ctime.max(ctime_ns(m));
        })?;
        std::thread::sleep(Duration::from_millis(30));
        Ok(s)
    }

    /// How many paths the tree had.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether the tree was empty.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// What changed in `root` since [`TreeState::record`]: paths to remove in the image (gone, or
    /// of another file type now; outermost only), and paths to write (a newer ctime, or new),
    /// parents before children.
    pub fn changes(&self, root: &Path) -> Result<Changes> {
        let dev = std::fs::symlink_metadata(root)?.dev();
        let mut now: HashMap<PathBuf, u32> = HashMap::with_capacity(self.types.len());
        let mut write = Vec::new();
        walk(root, Path::new("."), dev, &mut |rel, m| {
            let kind = m.mode() & 0o170000;
            now.insert(rel.to_path_buf(), kind);
            if ctime_ns(m) > self.newest_ctime || self.types.get(rel) != Some(&kind) {
                write.push(rel.to_path_buf());
            }
        })?;
        let mut gone: Vec<&PathBuf> = self.types.iter().filter(|(p, k)| now.get(*p) != Some(k)).map(|(p, _)| p).collect();
        gone.sort();
        let mut remove: Vec<PathBuf> = Vec::new();
        for p in gone {
            if !remove.iter().any(|r| p.starts_with(r)) {
                remove.push(p.clone());
            }
        }
        Ok(Changes { remove, write })
    }
}

/// What [`write_back`] applies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Relative paths (`./etc/x`) to remove first, recursively.
    pub remove: Vec<PathBuf>,
    /// Relative paths to write, in walk order (a directory before its entries).
    pub write: Vec<PathBuf>,
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

fn walk(root: &Path, rel: &Path, dev: u64, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) -> Result<()> {
    let path = root.join(rel);
    let m = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    f(rel, &m);
    if m.is_dir() && m.dev() == dev {
        let mut names: Vec<OsString> = std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
        names.sort();
        for n in names {
            walk(root, &rel.join(n), dev, f)?;
        }
    }
    Ok(())
}

/// A filesystem to grow to its partition, which Phase 0 grew in the disk's table (`disk.size`):
/// done at the start of the write-back session, before the changes go in.
#[derive(Debug, Clone)]
pub struct Grow {
    /// The appliance's device (`/dev/sda1`; `/dev/sda` for a whole-disk filesystem;
    /// `/dev/VG/LV` for a logical volume).
    pub device: String,
    pub fstype: String,
    /// Where it is mounted in the session (`/`, `/var`).
    pub mount_point: String,
    /// For a filesystem on a logical volume: the PV and LV to grow first.
    pub lvm: Option<GrowLv>,
}

/// The LVM part of a [`Grow`]: the PV on the grown partition fills it (`pvresize`), then the LV
/// takes the free extents that follow it, as one contiguous run (`lvextend --alloc contiguous`;
/// Phase 0 checked that no other LV follows it on its PV, as the loop backend does).
#[derive(Debug, Clone)]
pub struct GrowLv {
    /// The PV's device in the appliance (`/dev/sda3`).
    pub pv: String,
    /// `VG/LV`.
    pub lv: String,
    /// Every LVM physical volume's partition, for lvm's reports after the growth.
    pub pv_partitions: Vec<u32>,
}

impl Grow {
    /// The guestfish commands that grow it: ext2/3/4 unmounted (`e2fsck-f`, `resize2fs`, before
    /// the mounts), xfs and btrfs mounted (`xfs-growfs`, `btrfs-filesystem-resize`, after them).
    /// Returns (before the mounts, after them).
    ///
    /// Errors: another filesystem type (kib grows ext2/3/4, xfs and btrfs).
    pub fn commands(&self) -> Result<(String, String)> {
        let mp = quote(self.mount_point.as_bytes())?;
        let (before, after) = match self.fstype.as_str() {
            "ext2" | "ext3" | "ext4" => (format!("e2fsck-f {d}\nresize2fs {d}\n", d = self.device), String::new()),
            "xfs" => (String::new(), format!("xfs-growfs {mp}\n")),
            "btrfs" => (String::new(), format!("btrfs-filesystem-resize {mp}\n")),
            other => bail!("kib cannot grow a {other} filesystem (it grows ext2/3/4, xfs and btrfs)"),
        };
        let lvm = match &self.lvm {
            // guestfish's lvresize-free cannot say `contiguous`; lvm itself can, through debug sh
            // (a failure there stops the session: no `-` prefix).
            Some(l) => format!("pvresize {}\ndebug sh \"lvm lvextend --alloc contiguous -l +100%FREE {} {}\"\n", l.pv, l.lv, l.pv),
            None => String::new(),
        };
        Ok((lvm + &before, after))
    }
}

/// Writes `changes` of `root` into the disk in one read-write appliance session: with `grow`, the
/// root filesystem grown to its (already grown) partition first; the filesystems mounted where
/// Phase 0 found them, the removals, one tar of the changed paths (streamed, never stored), and
/// with `trim` an fstrim of each filesystem.
///
/// Returns lvm's reports after growing a logical volume (`None` otherwise).
///
/// Errors: the appliance or tar fails (the tail of their output), or a removed path cannot be
/// passed to guestfish.
#[allow(clippy::too_many_arguments)]
pub fn write_back(app: &Appliance, disk: &Path, root: &Path, work: &Path, mounted: &[Mounted], changes: &Changes, grow: Option<&Grow>, trim: bool) -> Result<Option<(String, String)>> {
    let fifo = work.join("changes.fifo");
    mkfifo(&fifo)?;
    let list = work.join("changes.list");
    let mut l = std::io::BufWriter::new(std::fs::File::create(&list)?);
    for p in &changes.write {
        l.write_all(p.as_os_str().as_bytes())?;
        l.write_all(b"\0")?;
    }
    l.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let mut script = format!("add {} format:raw discard:besteffort\nrun\n", quote(disk.as_os_str().as_bytes())?);
    let (grow_unmounted, grow_mounted) = grow.map(Grow::commands).transpose()?.unwrap_or_default();
    script.push_str(&grow_unmounted);
    for m in mounted {
        script.push_str(&format!("mount {} {}\n", m.device, quote(m.mount_point.as_bytes())?));
    }
    script.push_str(&grow_mounted);
    for p in &changes.remove {
        let guest = Path::new("/").join(p.strip_prefix(".").unwrap_or(p));
        script.push_str(&format!("rm-rf {}\n", quote(guest.as_os_str().as_bytes())?));
    }
    script.push_str(&format!("tar-in {} / xattrs:true selinux:true acls:true\n", quote(fifo.as_os_str().as_bytes())?));
    if trim {
        for m in mounted {
            script.push_str(&format!("fstrim {}\n", quote(m.mount_point.as_bytes())?));
        }
    }
    if let Some(l) = grow.and_then(|g| g.lvm.as_ref()) {
        script.push_str(&lvm_reports_script(&l.pv_partitions));
    }
    script.push_str("umount-all\nshutdown\n");
    let script_path = work.join("write-back.guestfish");
    std::fs::write(&script_path, script)?;
    let mut tar = exec::host_tool("tar");
    tar.arg("-cf").arg(&fifo).arg("-C").arg(root).args(TAR_KEEP).args(["--no-recursion", "--null", "-T"]).arg(&list);
    let limit = app.limit;
    let writer = std::thread::spawn(move || exec::run(&mut tar, "tar (packing the changes)", Some(limit)));
    let mut gf = app.guestfish(&["-f", &script_path.to_string_lossy()]);
    let ran = run_capturing(&mut gf, "guestfish (writing the changes back)", &work.join("write-back.txt"), app.limit);
    unblock_fifo(&fifo, true);
    let packed = writer.join().map_err(|_| anyhow::anyhow!("the tar thread panicked"))?;
    let out = ran.map_err(|e| appliance_error(e, "writing the changes back through libguestfs's appliance"))?;
    packed.map_err(anyhow::Error::new).context("packing the changed files")?;
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_file(&list);
    Ok(parse_findings(&out).lvm_reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoints_shallowest_first_with_partitions() {
        let m = parse_mountpoints("/dev/sda15: /boot/efi\n/dev/sda1: /\n/dev/sda16: /boot\n/dev/vg0/root: /srv\n");
        let order: Vec<&str> = m.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(order, ["/", "/boot", "/srv", "/boot/efi"]);
        assert_eq!(m[0].partition(), Some(1));
        assert_eq!(m[3].partition(), Some(15));
        assert_eq!(m[2].partition(), None);
    }

    #[test]
    fn findings_sections_and_lvm_reports() {
        let script = findings_script(&[3]);
        assert!(script.contains("-debug sh \"lvm pvs --readonly --devices /dev/sda3 --reportformat json"), "{script}");
        assert!(!script.contains("--config") && !script.contains('\''), "{script}");
        assert_eq!(findings_script(&[]), "echo @mountpoints\nmountpoints\necho @filesystems\nlist-filesystems\n");
        let out = "@mountpoints\n/dev/rootvg/rootlv: /\n/dev/sda2: /boot\n@filesystems\n/dev/sda1: unknown\n/dev/rootvg/rootlv: xfs\n@pvs\n  {\"report\": []}\n@lvs\n  {\"report\": []}\n";
        let f = parse_findings(out);
        assert_eq!(f.mounted.iter().map(|m| m.device.as_str()).collect::<Vec<_>>(), ["/dev/rootvg/rootlv", "/dev/sda2"]);
        assert_eq!(f.filesystems[1], ("/dev/rootvg/rootlv".to_string(), "xfs".to_string()));
        assert_eq!(f.lvm_reports, Some(("  {\"report\": []}".to_string(), "  {\"report\": []}".to_string())));
        assert_eq!(parse_findings("@mountpoints\n/dev/sda1: /\n@pvs\n@lvs\n").lvm_reports, None, "a failed report leaves its section empty");
    }

    #[test]
    fn growth_commands_per_filesystem() {
        let g = |fstype: &str| Grow { device: "/dev/sda2".into(), fstype: fstype.into(), mount_point: "/".into(), lvm: None }.commands();
        assert_eq!(g("ext4").unwrap(), ("e2fsck-f /dev/sda2\nresize2fs /dev/sda2\n".to_string(), String::new()));
        assert_eq!(g("xfs").unwrap(), (String::new(), "xfs-growfs \"/\"\n".to_string()));
        assert_eq!(g("btrfs").unwrap().1, "btrfs-filesystem-resize \"/\"\n");
        assert_eq!(g("vfat").unwrap_err().to_string(), "kib cannot grow a vfat filesystem (it grows ext2/3/4, xfs and btrfs)");
        let lv = Grow { device: "/dev/rootvg/varlv".into(), fstype: "xfs".into(), mount_point: "/var".into(), lvm: Some(GrowLv { pv: "/dev/sda3".into(), lv: "rootvg/varlv".into(), pv_partitions: vec![3] }) };
        assert_eq!(
            lv.commands().unwrap(),
            ("pvresize /dev/sda3\ndebug sh \"lvm lvextend --alloc contiguous -l +100%FREE rootvg/varlv /dev/sda3\"\n".to_string(), "xfs-growfs \"/var\"\n".to_string())
        );
    }

    #[test]
    fn quoting_refuses_newlines_and_escapes_quotes() {
        assert_eq!(quote(br#"/a "b"\c"#).unwrap(), r#""/a \"b\"\\c""#);
        assert!(quote(b"/a\nb").is_err());
    }

    #[test]
    fn changes_find_new_changed_gone_and_retyped_paths() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("etc/old")).unwrap();
        std::fs::write(r.join("etc/old/a"), "a").unwrap();
        std::fs::write(r.join("etc/keep"), "k").unwrap();
        std::fs::write(r.join("etc/edit"), "1").unwrap();
        std::fs::write(r.join("etc/retype"), "f").unwrap();
        let before = TreeState::record(r).unwrap();
        assert_eq!(before.len(), 7);
        std::fs::remove_dir_all(r.join("etc/old")).unwrap();
        std::fs::write(r.join("etc/edit"), "2").unwrap();
        std::fs::write(r.join("etc/new"), "n").unwrap();
        std::fs::remove_file(r.join("etc/retype")).unwrap();
        std::fs::create_dir(r.join("etc/retype")).unwrap();
        let c = before.changes(r).unwrap();
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(c.remove, [p("./etc/old"), p("./etc/retype")]);
        assert_eq!(c.write, [p("./etc"), p("./etc/edit"), p("./etc/new"), p("./etc/retype")]);
        assert!(!c.write.contains(&p("./etc/keep")));
    }
}
