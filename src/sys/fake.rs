//! A recording [`Sys`] for unit tests that need no root: every call is logged as one line, and
//! any call that can fail (attach, mount, probe, run) can be made to. Nothing is attached or
//! mounted; instead, mounting a fake loop device writes the files given for its byte range into
//! the mount point (a real temporary folder), and unmounting empties it again, so that code
//! reading the mounted tree (os-release, fstab) sees what a real mount would show.
//!
//! Log lines, with the fake's `base` folder written as `$T`:
//! `attach /dev/loop0 = $T/disk.raw@1048576+20971520 rw` (devices numbered from 0), `detach /dev/loop0`,
//! `probe $T/disk.raw@1048576+20971520`, `mount /dev/loop0 on $T/root type ext4 flags [RDONLY] data noload`,
//! `bind /dev/null on $T/root/dev/null`, `unmount $T/root`, `unmount --lazy $T/root`,
//! `run sfdisk --relocate gpt-bak-std $T/disk.raw`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::{LoopDevice, LoopSpec, MountFlags, MountSpec, Probe, Sys};
use crate::exec::ExecError;

/// What a byte range of the fake disk holds.
#[derive(Debug, Clone, Default)]
pub struct FakeFs {
    /// What [`Sys::probe`] answers (`TYPE`, `UUID`, `LABEL`).
    pub probe: Probe,
    /// Files a mount shows: image path and content.
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<String>,
    /// Calls that can fail, counted from 0.
    failable: usize,
    next_loop: u32,
    /// Loop device path to the offset it was attached at.
    loops: HashMap<PathBuf, u64>,
}

/// The recording fake. Configure it, share it as `Arc<dyn Sys>`, read [`FakeSys::log`].
#[derive(Debug, Default)]
pub struct FakeSys {
    /// Written as `$T` in the log.
    pub base: PathBuf,
    /// What each byte range holds, by offset.
    pub disks: HashMap<u64, FakeFs>,
    /// Fail the failable call with this index (0: the first attach, mount, probe or run).
    pub fail_at: Option<usize>,
    /// The errno of that failure; EIO by default.
    pub fail_errno: Option<rustix::io::Errno>,
    /// Fail every mount of this filesystem type with ENODEV (a kernel without vfat).
    pub unmountable_fstype: Option<String>,
    /// Answer this many unmounts with EBUSY first.
    pub busy_unmounts: Mutex<u32>,
    /// Programs that really run (sfdisk on the test's own file), besides being logged.
    pub passthrough: Vec<String>,
    /// What [`Sys::output`] answers: the first entry whose key the logged command line
    /// (`lvm pvs --readonly ...`) contains gives the standard output; none answers "".
    pub outputs: Vec<(String, String)>,
    state: Mutex<State>,
}

impl FakeSys {
    /// A fake whose log writes `base` as `$T`.
    pub fn new(base: &Path) -> FakeSys {
        FakeSys { base: base.to_path_buf(), ..Default::default() }
    }

    /// Every call so far, in order.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().expect("fake state").log.clone()
    }

    /// How many failable calls were made: with [`FakeSys::fail_at`] from 0 to this, every one
    /// of them fails once.
    pub fn failable_calls(&self) -> usize {
        self.state.lock().expect("fake state").failable
    }

    fn show(&self, p: &Path) -> String {
        match p.strip_prefix(&self.base) {
            Ok(rest) if rest.as_os_str().is_empty() => "$T".to_string(),
            Ok(rest) => format!("$T/{}", rest.display()),
            Err(_) => p.display().to_string(),
        }
    }

    /// Logs a failable call; fails it when it is the chosen one.
    fn failable(&self, line: String) -> io::Result<()> {
        let mut s = self.state.lock().expect("fake state");
        let n = s.failable;
        s.failable += 1;
        if self.fail_at == Some(n) {
            s.log.push(format!("{line} -> fails"));
            return Err(io::Error::from_raw_os_error(self.fail_errno.unwrap_or(rustix::io::Errno::IO).raw_os_error()));
        }
        s.log.push(line);
        Ok(())
    }
}

fn empty_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let _ = if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

impl Sys for FakeSys {
    fn loop_attach(&self, spec: &LoopSpec<'_>) -> io::Result<LoopDevice> {
        let n = self.state.lock().expect("fake state").next_loop;
        self.failable(format!("attach /dev/loop{n} = {}@{}+{} {}", self.show(spec.file), spec.offset, spec.size, if spec.read_only { "ro" } else { "rw" }))?;
        let mut s = self.state.lock().expect("fake state");
        let path = PathBuf::from(format!("/dev/loop{n}"));
        s.next_loop += 1;
        s.loops.insert(path.clone(), spec.offset);
        Ok(LoopDevice::at(path))
    }

    fn loop_detach(&self, dev: &mut LoopDevice) -> io::Result<()> {
        let mut s = self.state.lock().expect("fake state");
        s.log.push(format!("detach {}", dev.path.display()));
        s.loops.remove(&dev.path);
        Ok(())
    }

    fn mount(&self, spec: &MountSpec<'_>) -> io::Result<()> {
        let line = if spec.flags.contains(MountFlags::BIND) {
            format!("bind {} on {}", self.show(spec.source_at.unwrap_or(Path::new(spec.source))), self.show(spec.at))
        } else {
            let flags = spec.flags.iter_names().map(|(n, _)| n).collect::<Vec<_>>().join(",");
            let mut l = format!("mount {} on {} type {}", spec.source, self.show(spec.at), spec.fstype);
            if !flags.is_empty() {
                l.push_str(&format!(" flags [{flags}]"));
            }
            if let Some(d) = spec.data {
                l.push_str(&format!(" data {d}"));
            }
            l
        };
        if self.unmountable_fstype.as_deref() == Some(spec.fstype) {
            self.state.lock().expect("fake state").log.push(format!("{line} -> ENODEV"));
            return Err(io::Error::from_raw_os_error(rustix::io::Errno::NODEV.raw_os_error()));
        }
        self.failable(line)?;
        let offset = self.state.lock().expect("fake state").loops.get(Path::new(spec.source)).copied();
        if let Some(fs) = offset.and_then(|o| self.disks.get(&o)) {
            for (p, content) in &fs.files {
                let dest = spec.at.join(p.trim_start_matches('/'));
                std::fs::create_dir_all(dest.parent().expect("a file has a folder"))?;
                std::fs::write(dest, content)?;
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path, lazy: bool) -> io::Result<()> {
        let mut busy = self.busy_unmounts.lock().expect("fake state");
        let mut s = self.state.lock().expect("fake state");
        if !lazy && *busy > 0 {
            *busy -= 1;
            s.log.push(format!("unmount {} -> EBUSY", self.show(target)));
            return Err(io::Error::from_raw_os_error(rustix::io::Errno::BUSY.raw_os_error()));
        }
        s.log.push(format!("unmount {}{}", if lazy { "--lazy " } else { "" }, self.show(target)));
        drop(s);
        empty_dir(target);
        Ok(())
    }

    fn probe(&self, file: &Path, offset: u64, size: u64) -> io::Result<Probe> {
        self.failable(format!("probe {}@{offset}+{size}", self.show(file)))?;
        Ok(self.disks.get(&offset).map(|d| d.probe.clone()).unwrap_or_default())
    }

    fn run(&self, cmd: &mut Command, what: &str, timeout: Option<Duration>) -> Result<Vec<String>, ExecError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let args: Vec<String> = cmd.get_args().map(|a| self.show(Path::new(a))).collect();
        if let Err(e) = self.failable(format!("run {program} {}", args.join(" ")).trim_end().to_string()) {
            return Err(ExecError::Failed { what: what.into(), status: "exit code 125".into(), code: Some(125), tail: vec![format!("injected: {e}")] });
        }
        if self.passthrough.contains(&program) {
            return crate::exec::run(cmd, what, timeout);
        }
        Ok(Vec::new())
    }

    /// Logged as `output ENV=VALUE ... PROGRAM ARGS` (the environment the caller set, sorted).
    fn output(&self, cmd: &mut Command, what: &str) -> Result<String, ExecError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        // PATH is exec::host_tool's (the sbin directories), the same for every host tool: not logged.
        let mut env: Vec<String> = cmd.get_envs().filter(|(k, _)| *k != "PATH").map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.map(|v| self.show(Path::new(v))).unwrap_or_default())).collect();
        env.sort();
        let args: Vec<String> = cmd.get_args().map(|a| self.show(Path::new(a))).collect();
        let line = format!("{program} {}", args.join(" ")).trim_end().to_string();
        let logged = if env.is_empty() { format!("output {line}") } else { format!("output {} {line}", env.join(" ")) };
        if let Err(e) = self.failable(logged) {
            return Err(ExecError::Failed { what: what.into(), status: "exit code 5".into(), code: Some(5), tail: vec![format!("injected: {e}")] });
        }
        Ok(self.outputs.iter().find(|(k, _)| line.contains(k.as_str())).map(|(_, v)| v.clone()).unwrap_or_default())
    }
}

/// Checks that `log` (a [`FakeSys::log`]) undoes what it sets up strictly in reverse order and
/// leaves nothing attached or mounted. Returns a description of the first violation.
pub fn check_unwound(log: &[String]) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    for line in log {
        if line.ends_with("-> fails") || line.ends_with("-> ENODEV") || line.ends_with("-> EBUSY") {
            continue;
        }
        let (verb, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb {
            "attach" => stack.push(rest.split(" = ").next().unwrap_or(rest).to_string()),
            "mount" | "bind" => stack.push(rest.split(" on ").nth(1).unwrap_or("").split(" type ").next().unwrap_or("").to_string()),
            "detach" | "unmount" => {
                let what = rest.trim_start_matches("--lazy ").to_string();
                match stack.pop() {
                    Some(top) if top == what => {}
                    Some(top) => return Err(format!("`{line}` while {top} is the last set up (not reverse order)")),
                    None => return Err(format!("`{line}` undoes nothing set up")),
                }
            }
            _ => {}
        }
    }
    if stack.is_empty() { Ok(()) } else { Err(format!("left attached or mounted: {stack:?}")) }
}
