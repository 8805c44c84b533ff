//! Foreign architectures: running an arm64 (or other) image's programs on an amd64 host through
//! qemu-user and the kernel's binfmt_misc, with no VM.
//!
//! When the image's architecture differs from the host's, [`Emulation::ensure`] makes sure the
//! kernel hands the image's ELF binaries to a qemu-user interpreter:
//!
//! 1. binfmt_misc is mounted at `/proc/sys/fs/binfmt_misc` if it is not (inside kib's private
//!    mount namespace, so the mount goes away with kib);
//! 2. the host's handlers are read; an enabled one whose magic and mask match the image's own
//!    `/bin/sh` header, with the F (fix-binary) flag, is used as it is (Debian's
//!    `qemu-aarch64` from qemu-user-static is such a handler), and is left alone;
//! 3. otherwise kib registers Debian's static interpreter (`/usr/bin/qemu-aarch64-static`)
//!    under its own name, `kib-qemu-<cpu>-<pid>` (`kib-qemu-<cpu>-<pid>-pidns<inode>` in a
//!    container: see [`handler_name`]), with the F flag only: the kernel opens the
//!    interpreter at registration, so nothing is copied into the image. Magic and mask come from
//!    Debian's `/usr/share/binfmts/qemu-<cpu>` (qemu-user-static), or qemu's own
//!    `qemu-binfmt-conf.sh` values when that file is missing. binfmt_misc tries the most
//!    recently registered handler first, so kib's wins over a host handler without F.
//!
//! [`Emulation::close`] (or, best effort, Drop) removes only the handler kib registered.
//!
//! Lifetime, as measured on this project's hosts (Linux 6.18): handlers belong to the
//! binfmt_misc superblock, which lives as long as some mount of binfmt_misc does. On a host that
//! has it mounted (systemd's automount), a handler left by a SIGKILLed run stays registered, and
//! `kib cleanup` removes it once the pid in its name is no longer a running kib
//! ([`remove_stale`]). On a host without that mount, the only mount is the one kib made in its
//! private namespace, and the kernel drops kib's handler with it, however kib ends.
//!
//! Safety: a handler whose magic matched the host's own binaries would send every program on
//! the host (the interpreter included) to qemu, so kib refuses to register one that matches the
//! interpreter's own ELF header.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::guest::GuestRoot;
use crate::phase0::facts;

/// Where binfmt_misc is mounted.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
/// The prefix of every handler kib registers: `kib-qemu-<cpu>-<pid>`.
pub const KIB_PREFIX: &str = "kib-qemu-";
/// Debian's binfmt-support definitions, installed by qemu-user-static.
pub const DEBIAN_BINFMTS: &str = "/usr/share/binfmts";

/// A binfmt_misc handler as the kernel lists it (`/proc/sys/fs/binfmt_misc/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    pub enabled: bool,
    pub interpreter: String,
    /// Flag letters, such as `PF` or `POCF`.
    pub flags: String,
    /// Byte offset of the magic in the file.
    pub offset: usize,
    pub magic: Vec<u8>,
    /// Same length as `magic`; all ones when the kernel lists no mask.
    pub mask: Vec<u8>,
}

impl Handler {
    /// Parses the kernel's listing of a handler. `None` for extension-matching handlers and
    /// anything unreadable.
    pub fn parse(name: &str, text: &str) -> Option<Handler> {
        let mut h = Handler { name: name.to_string(), enabled: false, interpreter: String::new(), flags: String::new(), offset: 0, magic: Vec::new(), mask: Vec::new() };
        for line in text.lines() {
            match line.split_once(' ').map(|(k, v)| (k.trim_end_matches(':'), v.trim())) {
                _ if line == "enabled" => h.enabled = true,
                _ if line == "disabled" => h.enabled = false,
                Some(("interpreter", v)) => h.interpreter = v.to_string(),
                Some(("flags", v)) => h.flags = v.to_string(),
                Some(("offset", v)) => h.offset = v.parse().ok()?,
                Some(("magic", v)) => h.magic = hex::decode(v).ok()?,
                Some(("mask", v)) => h.mask = hex::decode(v).ok()?,
                Some(("extension", _)) => return None,
                _ => {}
            }
        }
        if h.magic.is_empty() {
            return None;
        }
        if h.mask.is_empty() {
            h.mask = vec![0xff; h.magic.len()];
        }
        (h.mask.len() == h.magic.len()).then_some(h)
    }

    /// Whether the kernel would hand a file starting with `header` to this handler (ignoring
    /// whether it is enabled): `header[offset..]` masked equals the magic masked.
    pub fn matches(&self, header: &[u8]) -> bool {
        let Some(bytes) = header.get(self.offset..self.offset + self.magic.len()) else { return false };
        bytes.iter().zip(&self.magic).zip(&self.mask).all(|((b, m), k)| b & k == m & k)
    }

    /// Whether the F flag is set: the interpreter was opened when the handler was registered,
    /// so it works inside a chroot that does not contain it.
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}

/// The handlers registered now, sorted by name. Errors when binfmt_misc cannot be read.
pub fn handlers(dir: &Path) -> Result<Vec<Handler>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        // A handler removed between the listing and the read is simply gone.
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            out.extend(Handler::parse(&name, &text));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// qemu-user's name for a Debian architecture (`arm64` → `aarch64`).
pub fn qemu_cpu(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "arm64" => "aarch64",
        "armhf" | "armel" => "arm",
        "riscv64" => "riscv64",
        "ppc64el" => "ppc64le",
        "s390x" => "s390x",
        "amd64" => "x86_64",
        "i386" => "i386",
        _ => return None,
    })
}

/// What to register for a qemu cpu: magic, mask, offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub magic: Vec<u8>,
    pub mask: Vec<u8>,
    pub offset: usize,
    /// Where the values came from (a Debian binfmts file, or qemu's built-in list).
    pub source: String,
}

/// qemu's `qemu-binfmt-conf.sh` values (ELF header: class, data, type, machine), used when
/// Debian's file is missing.
fn builtin_definition(cpu: &str) -> Option<(&'static [u8; 20], &'static [u8; 20])> {
    const MASK_LE: &[u8; 20] = b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";
    Some(match cpu {
        "aarch64" => (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00", MASK_LE),
        "arm" => (b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00", MASK_LE),
        "riscv64" => (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00", MASK_LE),
        "ppc64le" => (
            b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
        ),
        "s390x" => (
            b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
            b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
        ),
        _ => return None,
    })
}

/// Decodes binfmt-support's `\xNN` escapes (other characters stand for themselves).
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 4;
        } else if b[i] == b'\\' {
            out.push(*b.get(i + 1)?);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Parses a binfmt-support definition (`/usr/share/binfmts/qemu-aarch64`: `magic \x7f...`,
/// `mask ...`, `offset 0`).
pub fn parse_debian_definition(text: &str, source: &str) -> Result<Definition> {
    let mut magic = None;
    let mut mask = None;
    let mut offset = 0;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("magic", v)) => magic = Some(unescape(v.trim()).with_context(|| format!("{source}: bad magic"))?),
            Some(("mask", v)) => mask = Some(unescape(v.trim()).with_context(|| format!("{source}: bad mask"))?),
            Some(("offset", v)) => offset = v.trim().parse().with_context(|| format!("{source}: bad offset"))?,
            _ => {}
        }
    }
    let magic = magic.with_context(|| format!("{source} has no magic"))?;
    let mask = mask.unwrap_or_else(|| vec![0xff; magic.len()]);
    if mask.len() != magic.len() {
        bail!("{source}: magic and mask differ in length");
    }
    Ok(Definition { magic, mask, offset, source: source.to_string() })
}

/// The magic and mask to register for `cpu`: Debian's definition when qemu-user-static
/// installed one, else qemu's built-in values.
pub fn definition(cpu: &str) -> Result<Definition> {
    let path = Path::new(DEBIAN_BINFMTS).join(format!("qemu-{cpu}"));
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_debian_definition(&text, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (magic, mask) = builtin_definition(cpu).with_context(|| format!("no binfmt definition for qemu-{cpu} ({} is missing)", path.display()))?;
            Ok(Definition { magic: magic.to_vec(), mask: mask.to_vec(), offset: 0, source: "qemu-binfmt-conf.sh".into() })
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The registration string binfmt_misc's `register` file takes:
/// `:name:M:offset:magic:mask:interpreter:flags`, with magic and mask as `\xNN` escapes.
pub fn registration(name: &str, def: &Definition, interpreter: &Path, flags: &str) -> String {
    let esc = |b: &[u8]| b.iter().map(|x| format!("\\x{x:02x}")).collect::<String>();
    format!(":{name}:M:{}:{}:{}:{}:{flags}", def.offset, esc(&def.magic), esc(&def.mask), interpreter.display())
}

/// How the image's programs run, for the BOM: the binfmt_misc handler used.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EmulationRecord {
    /// The image's architecture (Debian name).
    pub image_architecture: String,
    /// The host's architecture (Debian name).
    pub host_architecture: String,
    /// The handler's name in /proc/sys/fs/binfmt_misc.
    pub handler: String,
    /// Its interpreter (a host path).
    pub interpreter: String,
    /// Its flags, such as `F` or `PF`.
    pub flags: String,
    /// Whether kib registered it for this build (and removed it after), or found it.
    pub registered_by_kib: bool,
}

/// The emulation set up for one build. Dropping it removes what it registered (best effort);
/// [`Emulation::close`] does the same and reports errors. Closing twice is harmless.
#[derive(Debug)]
pub struct Emulation {
    record: Option<EmulationRecord>,
    dir: PathBuf,
    /// The handler kib registered (its entry name), to remove on close.
    registered: Option<String>,
    /// kib mounted binfmt_misc (in its private namespace), to unmount on close.
    mounted: bool,
}

/// The first bytes of the image's shell (the same file [`facts::collect`] reads the
/// architecture from).
fn guest_elf_header(root: &GuestRoot) -> Result<Vec<u8>> {
    for sh in ["/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash"] {
        if let Ok(mut f) = root.open_read(Path::new(sh)) {
            let mut head = vec![0u8; 64];
            let n = f.read(&mut head).with_context(|| format!("reading {sh} in the image"))?;
            head.truncate(n);
            if facts::elf_arch(&head).is_some() {
                return Ok(head);
            }
        }
    }
    bail!("the image has no ELF shell (/bin/sh, /bin/bash) to match a binfmt_misc handler against")
}

/// Whether the host's kernel runs `image_arch` binaries natively.
fn runs_natively(image_arch: &str, host_arch: &str) -> bool {
    image_arch == host_arch || (host_arch == "amd64" && image_arch == "i386")
}

impl Emulation {
    /// Makes sure the image's programs can run on this host (see the module docs). Returns an
    /// empty guard when the image's architecture is the host's.
    ///
    /// Errors: binfmt_misc cannot be mounted or is disabled, the architecture has no qemu-user
    /// name, or its static interpreter is missing (the message says to install
    /// qemu-user-static), or the kernel refuses the registration.
    pub fn ensure(root: &GuestRoot, image_arch: &str) -> Result<Emulation> {
        Self::ensure_in(root, image_arch, Path::new(BINFMT_DIR))
    }

    fn ensure_in(root: &GuestRoot, image_arch: &str, dir: &Path) -> Result<Emulation> {
        let host_arch = facts::host_arch();
        let mut emu = Emulation { record: None, dir: dir.to_path_buf(), registered: None, mounted: false };
        if image_arch.is_empty() || runs_natively(image_arch, host_arch) {
            return Ok(emu);
        }
        let cpu = qemu_cpu(image_arch).with_context(|| format!("the image is {image_arch}, which kib cannot emulate on this {host_arch} host"))?;
        let header = guest_elf_header(root)?;
        if !dir.join("register").exists() {
            rustix::mount::mount("binfmt_misc", dir, "binfmt_misc", rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOEXEC, None)
                .with_context(|| format!("mounting binfmt_misc at {} (needed to run the image's {image_arch} programs on this {host_arch} host)", dir.display()))?;
            emu.mounted = true;
        }
        let status = std::fs::read_to_string(dir.join("status")).with_context(|| format!("reading {}/status", dir.display()))?;
        if status.trim() != "enabled" {
            bail!("binfmt_misc is disabled on this host ({}/status says `{}`): kib cannot run the image's {image_arch} programs; enable it with `echo 1 > {}/status`", dir.display(), status.trim(), dir.display());
        }
        let existing = handlers(dir)?;
        let candidates: Vec<&Handler> = existing.iter().filter(|h| h.enabled && h.matches(&header)).collect();
        // A handler of the host's that works in a chroot: F, or an interpreter the image has.
        if let Some(h) = candidates.iter().find(|h| !h.name.starts_with(KIB_PREFIX) && (h.fix_binary() || root.exists(Path::new(&h.interpreter)))) {
            tracing::info!("the image is {image_arch}: its programs run through the host's binfmt_misc handler {} ({}, flags {})", h.name, h.interpreter, h.flags);
            emu.record = Some(EmulationRecord {
                image_architecture: image_arch.into(),
                host_architecture: host_arch.into(),
                handler: h.name.clone(),
                interpreter: h.interpreter.clone(),
                flags: h.flags.clone(),
                registered_by_kib: false,
            });
            return Ok(emu);
        }
        // Another kib run's handler goes when that run ends: never borrowed, and no reason to warn.
        for h in candidates.iter().filter(|h| !h.name.starts_with(KIB_PREFIX)) {
            tracing::warn!(
                "the host's binfmt_misc handler {} ({}, flags {}) matches {image_arch} but cannot work in a chroot (no F flag, and the image has no {}); kib registers its own",
                h.name,
                h.interpreter,
                h.flags,
                h.interpreter
            );
        }
        let interpreter = PathBuf::from(format!("/usr/bin/qemu-{cpu}-static"));
        if !interpreter.is_file() {
            bail!(
                "the image is {image_arch} and this host is {host_arch}: kib runs the image's programs through qemu-user, but {} is missing and no binfmt_misc handler for {image_arch} is registered. Install it with `apt-get install qemu-user-static`",
                interpreter.display()
            );
        }
        let def = definition(cpu)?;
        let name = handler_name(cpu, std::process::id(), pid_namespace());
        let ours = Handler { name: name.clone(), enabled: true, interpreter: String::new(), flags: String::new(), offset: def.offset, magic: def.magic.clone(), mask: def.mask.clone() };
        if !ours.matches(&header) {
            bail!("the binfmt definition for qemu-{cpu} ({}) does not match the image's /bin/sh: is the image really {image_arch}?", def.source);
        }
        let mut interp_header = vec![0u8; 64];
        let n = std::fs::File::open(&interpreter).and_then(|mut f| f.read(&mut interp_header)).with_context(|| format!("reading {}", interpreter.display()))?;
        if ours.matches(&interp_header[..n]) {
            bail!("the binfmt definition for qemu-{cpu} ({}) matches the host's own programs ({}): registering it would break every program on this host", def.source, interpreter.display());
        }
        // A handler of this name can only be a dead run's whose pid was reused: replace it.
        if dir.join(&name).exists() {
            remove_handler(dir, &name)?;
        }
        let line = registration(&name, &def, &interpreter, "F");
        std::fs::write(dir.join("register"), &line)
            .with_context(|| format!("registering the binfmt_misc handler {name} ({}, flags F) in {}/register", interpreter.display(), dir.display()))?;
        emu.registered = Some(name.clone());
        let listed = std::fs::read_to_string(dir.join(&name)).ok().and_then(|t| Handler::parse(&name, &t));
        let flags = listed.map_or_else(|| "F".to_string(), |h| h.flags);
        tracing::info!("the image is {image_arch}: registered the binfmt_misc handler {name} ({}, flags {flags}; magic from {}), removed after the build", interpreter.display(), def.source);
        emu.record = Some(EmulationRecord {
            image_architecture: image_arch.into(),
            host_architecture: host_arch.into(),
            handler: name,
            interpreter: interpreter.display().to_string(),
            flags,
            registered_by_kib: true,
        });
        Ok(emu)
    }

    /// The handler in use, for the BOM. `None` when the image runs natively.
    pub fn record(&self) -> Option<&EmulationRecord> {
        self.record.as_ref()
    }

    fn release(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(name) = self.registered.take() {
            match remove_handler(&self.dir, &name) {
                Ok(()) => tracing::debug!("removed the binfmt_misc handler {name}"),
                Err(e) => result = Err(e),
            }
        }
        if std::mem::take(&mut self.mounted) {
            if let Err(e) = crate::mounts::unmount_tree(&self.dir) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Removes the handler kib registered and unmounts binfmt_misc if kib mounted it.
    pub fn close(mut self) -> Result<()> {
        self.release()
    }
}

impl Drop for Emulation {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("removing kib's binfmt_misc handler: {e:#}");
        }
    }
}

/// Removes the handler `name` (writes `-1` to its entry). A handler already gone is fine.
fn remove_handler(dir: &Path, name: &str) -> Result<()> {
    match std::fs::write(dir.join(name), "-1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing the binfmt_misc handler {name}")),
    }
}

/// The inode of the initial (the host's) pid namespace, `PROC_PID_INIT_INO` of the kernel.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// The pid namespace kib runs in: `None` for the host's, else its inode number (a container's).
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let inode: u64 = link.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()?;
    (inode != PROC_PID_INIT_INO).then_some(inode)
}

/// The name of the handler kib registers: `kib-qemu-<cpu>-<pid>` on a host, and
/// `kib-qemu-<cpu>-<pid>-pidns<inode>` in a pid namespace of its own (a container). The
/// binfmt_misc instance belongs to the user namespace, so rootful containers on one host share the
/// host's, and kib is pid 1 in each of them: without the namespace in the name, one container's
/// run would replace, then remove, another's handler.
fn handler_name(cpu: &str, pid: u32, pid_ns: Option<u64>) -> String {
    match pid_ns {
        None => format!("{KIB_PREFIX}{cpu}-{pid}"),
        Some(ns) => format!("{KIB_PREFIX}{cpu}-{pid}-pidns{ns}"),
    }
}

/// The pid in a kib handler's name and the pid namespace it is a pid of (`None`: the host's):
/// `kib-qemu-aarch64-1234` → (1234, None), `kib-qemu-aarch64-1-pidns4026532001` →
/// (1, Some(4026532001)).
pub fn owner(name: &str) -> Option<(i32, Option<u64>)> {
    let rest = name.strip_prefix(KIB_PREFIX)?;
    let (rest, ns) = match rest.rsplit_once("-pidns") {
        Some((rest, ns)) => (rest, Some(ns.parse().ok()?)),
        None => (rest, None),
    };
    Some((rest.rsplit_once('-')?.1.parse().ok()?, ns))
}

/// For `kib cleanup`: removes the `kib-qemu-*-<pid>` handlers whose pid `is_live` says is no
/// longer a running kib, and returns their names. binfmt_misc is mounted first when needed (the
/// caller runs in kib's private mount namespace, so that mount goes away with it). Handlers of
/// the host and of live runs are left alone, and so are those of runs in another pid namespace
/// (another container's, or the host's when cleanup runs in a container), whose pids mean nothing
/// here.
pub fn remove_stale(is_live: impl Fn(i32) -> bool) -> Result<Vec<String>> {
    let dir = Path::new(BINFMT_DIR);
    if !dir.join("register").exists()
        && rustix::mount::mount("binfmt_misc", dir, "binfmt_misc", rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOEXEC, None).is_err()
    {
        // No binfmt_misc on this kernel: nothing can have been registered.
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    let here = pid_namespace();
    for h in handlers(dir)? {
        if let Some((pid, ns)) = owner(&h.name) {
            if ns == here && !is_live(pid) {
                remove_handler(dir, &h.name)?;
                removed.push(format!("{} ({})", h.name, h.interpreter));
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTED: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\n\
                          magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn arm64_header() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[6] = 1;
        h[16] = 3; // ET_DYN: the mask's 0xfe lets both EXEC (2) and DYN (3) match
        h[18] = 0xB7;
        h
    }

    #[test]
    fn parses_and_matches_a_kernel_listing() {
        let h = Handler::parse("qemu-aarch64", LISTED).unwrap();
        assert!(h.enabled && h.fix_binary());
        assert_eq!(h.interpreter, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P");
        assert_eq!(h.magic.len(), 20);
        let mut hdr = arm64_header();
        assert!(h.matches(&hdr));
        hdr[18] = 0x3E; // x86-64
        assert!(!h.matches(&hdr));
        assert!(!h.matches(b"\x7fELF"));
        let disabled = Handler::parse("x", &LISTED.replace("enabled", "disabled").replace("POCF", "P")).unwrap();
        assert!(!disabled.enabled && !disabled.fix_binary());
        assert!(Handler::parse("jar", "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n").is_none());
    }

    #[test]
    fn debian_definition_and_registration_string() {
        let text = "package qemu-user-static\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
                    magic \\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00\n\
                    offset 0\nmask \\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff\n\
                    credentials no\nfix_binary yes\n";
        let d = parse_debian_definition(text, "qemu-aarch64").unwrap();
        let (magic, mask) = builtin_definition("aarch64").unwrap();
        assert_eq!(d.magic, magic.to_vec());
        assert_eq!(d.mask, mask.to_vec());
        let line = registration("kib-qemu-aarch64-42", &d, Path::new("/usr/bin/qemu-aarch64-static"), "F");
        assert!(line.starts_with(":kib-qemu-aarch64-42:M:0:\\x7f\\x45\\x4c\\x46\\x02"), "{line}");
        assert!(line.ends_with("\\xfe\\xff\\xff\\xff:/usr/bin/qemu-aarch64-static:F"), "{line}");
        // Every builtin definition matches an ELF header of its own machine.
        for (arch, cpu) in [("arm64", "aarch64"), ("riscv64", "riscv64"), ("ppc64el", "ppc64le")] {
            let (magic, mask) = builtin_definition(cpu).unwrap();
            let h = Handler { name: cpu.into(), enabled: true, interpreter: String::new(), flags: "F".into(), offset: 0, magic: magic.to_vec(), mask: mask.to_vec() };
            let mut hdr = magic.to_vec();
            hdr.resize(64, 0);
            assert!(h.matches(&hdr), "{cpu}");
            assert_eq!(facts::elf_arch(&hdr), Some(arch));
            assert_eq!(qemu_cpu(arch), Some(cpu));
        }
    }

    #[test]
    fn owner_pids_of_kib_handlers() {
        assert_eq!(owner("kib-qemu-aarch64-1234"), Some((1234, None)));
        assert_eq!(owner("kib-qemu-ppc64le-7"), Some((7, None)));
        assert_eq!(owner("kib-qemu-aarch64-1-pidns4026532001"), Some((1, Some(4026532001))));
        assert_eq!(owner("kib-qemu-aarch64-1-pidnsx"), None);
        assert_eq!(owner("qemu-aarch64"), None);
        assert_eq!(owner("kib-mkbase-qemu-aarch64"), None);
        assert_eq!(owner("kib-qemu-aarch64"), None);
        for ns in [None, Some(4026532001)] {
            assert_eq!(owner(&handler_name("aarch64", 42, ns)), Some((42, ns)));
        }
        let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
        assert_eq!(pid_namespace().is_none(), link == Path::new("pid:[4026531836]"), "{}", link.display());
    }
}
