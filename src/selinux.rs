//! SELinux labels on an image tree, offline: Phase 2 labels the whole tree with the image's own
//! policy ([`relabel`]) and `kib check` verifies the labels with a dry run ([`verify`]).
//!
//! An image has SELinux when its `/etc/selinux/config` says `SELINUX=enforcing` or
//! `SELINUX=permissive`; its policy is `SELINUXTYPE` (`targeted` on RHEL, `default` on
//! Debian), and the labels come from `/etc/selinux/<type>/contexts/files/file_contexts`. A file
//! a chroot step wrote has no label at all (the host runs no SELinux for the image), and a node
//! booted from such an image is denied its own files; `/.autorelabel` would fix it only at the
//! cost of an extra reboot on every node's first boot, so kib labels at build time, as
//! osbuild's selinux stage and mkosi do.
//!
//! How (measured in `testdata/lvm/NOTES.md` §5): the host's `setfiles` (policycoreutils) with
//! `-r <root>` and the image's own file_contexts, and `-c <the image's binary policy>` so that
//! every context is checked against it. setfiles never crosses a mount point, so the root
//! filesystem is labelled through a non-recursive bind mount of it (which also shows the
//! directories other filesystems are mounted on, such as `/var` under an LVM /var), and every
//! other filesystem of the image where it is mounted. The image's file_contexts files and
//! policy are copied out through [`GuestRoot`] first, so a hostile image cannot point setfiles
//! at a host file with a symlink.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::guest::GuestRoot;
use crate::phase0::Filesystem;
use crate::sys::{self, MountFlags, Mounted, Sys};

/// The name `sysprep.skip` takes to turn the relabel off.
pub const SKIP_NAME: &str = "selinux-relabel";

/// What the BOM records of the labelling.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelinuxRecord {
    /// `SELINUX=` of the image's config: `enforcing` or `permissive`.
    pub mode: String,
    /// `SELINUXTYPE=`: the policy's name (`default`, `targeted`, …).
    pub policy: String,
    /// Whether kib labelled the tree (false: `sysprep.skip: [selinux-relabel]`).
    pub relabelled: bool,
    /// Wall time of the labelling, seconds.
    #[serde(default)]
    pub seconds: f64,
}

/// The image's SELinux policy, as its config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: String,
    pub name: String,
    /// The image path of its file_contexts.
    pub file_contexts: PathBuf,
}

/// Reads `/etc/selinux/config`. `None` when it is missing or says `disabled` (or anything but
/// enforcing/permissive).
///
/// Errors: a `SELINUXTYPE` that is not a plain name, or a policy without file_contexts (naming
/// the policy and the path expected).
pub fn detect(root: &GuestRoot) -> Result<Option<Policy>> {
    let Some(text) = root.read_string(Path::new("/etc/selinux/config")).context("reading the image's /etc/selinux/config")? else {
        return Ok(None);
    };
    let get = |key: &str| {
        text.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .next_back()
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let mode = get("SELINUX").unwrap_or_default().to_ascii_lowercase();
    if mode != "enforcing" && mode != "permissive" {
        return Ok(None);
    }
    let name = get("SELINUXTYPE").unwrap_or_else(|| "targeted".into());
    if name.is_empty() || name == "." || name == ".." || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        bail!("the image's /etc/selinux/config says SELINUX={mode} with SELINUXTYPE={name:?}, which is not a policy name");
    }
    let file_contexts = PathBuf::from(format!("/etc/selinux/{name}/contexts/files/file_contexts"));
    if !root.exists(&file_contexts) {
        bail!(
            "the image's /etc/selinux/config says SELINUX={mode} and SELINUXTYPE={name}, but that policy has no file contexts: {} \
             is missing in the image, so kib cannot label the files the steps write (a node would be denied them). Install the \
             policy's package completely, set SELINUX=disabled, or turn the labelling off with `sysprep: {{skip: [{SKIP_NAME}]}}`",
            file_contexts.display()
        );
    }
    Ok(Some(Policy { mode, name, file_contexts }))
}

/// The image's files setfiles reads, copied into `dir`: file_contexts and the files that go with
/// it (`.local`, `.homedirs`, `.subs`, `.subs_dist`), and the newest binary policy when there is
/// one. Returns (file_contexts copy, policy copy).
fn copy_policy(root: &GuestRoot, policy: &Policy, dir: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    const MAX: u64 = 256 << 20;
    let fc = dir.join("file_contexts");
    for suffix in ["", ".local", ".homedirs", ".subs", ".subs_dist"] {
        let guest = PathBuf::from(format!("{}{suffix}", policy.file_contexts.display()));
        if let Some(bytes) = root.read_regular_capped(&guest, MAX).with_context(|| format!("reading {} in the image", guest.display()))? {
            std::fs::write(dir.join(format!("file_contexts{suffix}")), bytes)?;
        } else if suffix.is_empty() {
            bail!("{} in the image is not a regular file", guest.display());
        }
    }
    let policy_dir = PathBuf::from(format!("/etc/selinux/{}/policy", policy.name));
    let mut versions: Vec<(u32, std::ffi::OsString)> = root
        .read_dir(&policy_dir)?
        .into_iter()
        .filter_map(|n| n.to_str().and_then(|s| s.strip_prefix("policy.")).and_then(|v| v.parse().ok()).map(|v| (v, n.clone())))
        .collect();
    versions.sort();
    let bin = match versions.last() {
        Some((_, n)) => {
            let guest = policy_dir.join(n);
            match root.read_regular_capped(&guest, MAX)? {
                Some(bytes) => {
                    let p = dir.join(n);
                    std::fs::write(&p, bytes)?;
                    Some(p)
                }
                None => None,
            }
        }
        None => None,
    };
    Ok((fc, bin))
}

/// What to label: the root filesystem through a non-recursive bind mount at `bind`, and the
/// other filesystems at their mount points below `root_dir`.
struct Plan<'a> {
    root_dir: &'a Path,
    bind: PathBuf,
    others: Vec<PathBuf>,
}

fn plan<'a>(root_dir: &'a Path, filesystems: &[Filesystem], work: &Path) -> Plan<'a> {
    let others = filesystems.iter().filter(|f| f.mount_point != "/").map(|f| root_dir.join(f.mount_point.trim_start_matches('/'))).collect();
    Plan { root_dir, bind: work.join("selinux-rootfs"), others }
}

/// The setfiles command lines for `plan`: the root filesystem, then the others.
fn commands(p: &Plan<'_>, fc: &Path, bin: Option<&Path>, dry_run: bool) -> Vec<Command> {
    let mut out = Vec::new();
    let base = |root: &Path| {
        let mut c = crate::exec::host_tool("setfiles");
        if dry_run {
            c.args(["-n", "-v"]);
        }
        c.arg("-r").arg(root);
        if let Some(b) = bin {
            c.arg("-c").arg(b);
        }
        c.arg(fc);
        c
    };
    let mut c = base(&p.bind);
    c.arg(&p.bind);
    out.push(c);
    if !p.others.is_empty() {
        let mut c = base(p.root_dir);
        c.args(&p.others);
        out.push(c);
    }
    out
}

fn with_bind<T>(sys: &Arc<dyn Sys>, root_dir: &Path, bind: &Path, read_only: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::fs::create_dir_all(bind).with_context(|| format!("creating {}", bind.display()))?;
    let src = root_dir.to_string_lossy().into_owned();
    let spec = sys::MountSpec { source: &src, source_at: Some(root_dir), target: bind, at: bind, fstype: "", flags: MountFlags::BIND, data: None };
    let m = Mounted::mount(sys, &spec).context("bind-mounting the image's root filesystem (non-recursive) for setfiles")?;
    let r = f();
    m.close()?;
    let _ = std::fs::remove_dir(bind);
    let _ = read_only;
    r
}

/// Labels every filesystem of the image with its policy (see the module docs). `work` is a
/// private folder for the policy's copies and the bind mount. Returns the record for the BOM;
/// logs the wall time.
///
/// Errors: no host `setfiles` (install policycoreutils), or setfiles failing (its output shown).
pub fn relabel(sys: &Arc<dyn Sys>, root: &GuestRoot, root_dir: &Path, filesystems: &[Filesystem], policy: &Policy, work: &Path) -> Result<SelinuxRecord> {
    let t = Instant::now();
    let (fc, bin) = copy_policy(root, policy, &work.join("selinux-policy"))?;
    let p = plan(root_dir, filesystems, work);
    with_bind(sys, root_dir, &p.bind, false, || {
        for mut c in commands(&p, &fc, bin.as_deref(), false) {
            sys.run(&mut c, &format!("setfiles (labelling the image with SELinux policy {})", policy.name), None).map_err(|e| match e {
                crate::exec::ExecError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => anyhow::anyhow!(
                    "the image runs SELinux ({}) and this host has no `setfiles` to label it; install policycoreutils (Debian: apt-get install policycoreutils)",
                    policy.mode
                ),
                e => anyhow::Error::new(e),
            })?;
        }
        Ok(())
    })?;
    let seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        "SELinux: labelled {} filesystem(s) with the image's policy {} ({}) in {seconds:.1} s",
        1 + p.others.len(),
        policy.name,
        policy.mode
    );
    Ok(SelinuxRecord { mode: policy.mode.clone(), policy: policy.name.clone(), relabelled: true, seconds: (seconds * 1000.0).round() / 1000.0 })
}

/// The dry run: which files setfiles would relabel (`Would relabel PATH from OLD to NEW`
/// lines, paths shown as image paths). Empty: every label matches file_contexts.
///
/// Errors: as [`relabel`].
pub fn verify(sys: &Arc<dyn Sys>, root: &GuestRoot, root_dir: &Path, filesystems: &[Filesystem], policy: &Policy, work: &Path) -> Result<Vec<String>> {
    let (fc, bin) = copy_policy(root, policy, &work.join("selinux-policy"))?;
    let p = plan(root_dir, filesystems, work);
    let bind = p.bind.to_string_lossy().into_owned();
    let root_s = root_dir.to_string_lossy().into_owned();
    with_bind(sys, root_dir, &p.bind, true, || {
        let mut would = Vec::new();
        for mut c in commands(&p, &fc, bin.as_deref(), true) {
            let out = sys.output(&mut c, "setfiles -n -v (checking the image's SELinux labels)")?;
            // setfiles exits 0 either way: what it prints is the answer.
            for l in out.lines().filter(|l| !l.trim().is_empty()) {
                if l.starts_with("Would relabel") {
                    would.push(l.replace(&bind, "").replace(&root_s, ""));
                } else {
                    tracing::debug!("setfiles: {l}");
                }
            }
        }
        Ok(would)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    fn image(files: &[(&str, &str)]) -> (tempfile::TempDir, GuestRoot) {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let dest = d.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(dest, c).unwrap();
        }
        let r = GuestRoot::open(d.path()).unwrap();
        (d, r)
    }

    const FC: &str = "/etc/selinux/default/contexts/files/file_contexts";

    #[test]
    fn detects_the_policy_from_the_config() {
        let (_d, r) = image(&[]);
        assert_eq!(detect(&r).unwrap(), None, "no config: no SELinux");
        let (_d, r) = image(&[("/etc/selinux/config", "SELINUX=disabled\nSELINUXTYPE=default\n")]);
        assert_eq!(detect(&r).unwrap(), None);
        let (_d, r) = image(&[("/etc/selinux/config", "# x\nSELINUX=permissive\nSELINUXTYPE=default\n"), (FC, "/etc(/.*)? system_u:object_r:etc_t:s0\n")]);
        assert_eq!(detect(&r).unwrap(), Some(Policy { mode: "permissive".into(), name: "default".into(), file_contexts: FC.into() }));
        let (_d, r) = image(&[("/etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=../../x\n")]);
        assert!(detect(&r).unwrap_err().to_string().contains("not a policy name"));
    }

    #[test]
    fn a_policy_without_file_contexts_is_a_clear_error() {
        let (_d, r) = image(&[("/etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=targeted\n"), ("/etc/selinux/targeted/contexts/files/file_contexts.homedirs", "")]);
        let e = detect(&r).unwrap_err().to_string();
        assert!(e.contains("SELINUX=enforcing and SELINUXTYPE=targeted") && e.contains("/etc/selinux/targeted/contexts/files/file_contexts is missing"), "{e}");
        assert!(e.contains("skip: [selinux-relabel]"), "{e}");
    }

    #[test]
    fn labels_the_root_through_a_bind_mount_and_the_other_filesystems_where_they_are() {
        let (d, r) = image(&[
            ("/etc/selinux/config", "SELINUX=permissive\nSELINUXTYPE=default\n"),
            (FC, "/.* system_u:object_r:default_t:s0\n"),
            ("/etc/selinux/default/contexts/files/file_contexts.subs_dist", "/run /var/run\n"),
            ("/etc/selinux/default/policy/policy.33", "bin"),
        ]);
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeSys::new(work.path()));
        let sys: Arc<dyn Sys> = fake.clone();
        let policy = detect(&r).unwrap().unwrap();
        let fss = |mp: &str| Filesystem { partition: 1, lv: None, fstype: "xfs".into(), uuid: String::new(), mount_point: mp.into() };
        let rec = relabel(&sys, &r, d.path(), &[fss("/"), fss("/boot"), fss("/var")], &policy, work.path()).unwrap();
        assert_eq!((rec.policy.as_str(), rec.mode.as_str(), rec.relabelled), ("default", "permissive", true));
        let root = d.path().display().to_string();
        assert_eq!(
            fake.log(),
            vec![
                format!("bind {root} on $T/selinux-rootfs"),
                "run setfiles -r $T/selinux-rootfs -c $T/selinux-policy/policy.33 $T/selinux-policy/file_contexts $T/selinux-rootfs".to_string(),
                format!("run setfiles -r {root} -c $T/selinux-policy/policy.33 $T/selinux-policy/file_contexts {root}/boot {root}/var"),
                "unmount $T/selinux-rootfs".to_string(),
            ]
        );
        assert!(work.path().join("selinux-policy/file_contexts.subs_dist").exists());
        crate::sys::fake::check_unwound(&fake.log()).unwrap();
    }

    #[test]
    fn a_symlinked_file_contexts_is_not_followed_out_of_the_image() {
        // An absolute symlink resolves with the image as `/`: the image's /etc/passwd, never
        // the host's.
        let (d, r) = image(&[("/etc/selinux/config", "SELINUX=permissive\nSELINUXTYPE=default\n"), ("/etc/passwd", "image-passwd\n")]);
        std::fs::create_dir_all(d.path().join("etc/selinux/default/contexts/files")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join(FC.trim_start_matches('/'))).unwrap();
        let work = tempfile::tempdir().unwrap();
        let sys: Arc<dyn Sys> = Arc::new(FakeSys::new(work.path()));
        let policy = detect(&r).unwrap().expect("the link resolves inside the image");
        relabel(&sys, &r, d.path(), &[], &policy, work.path()).unwrap();
        assert_eq!(std::fs::read_to_string(work.path().join("selinux-policy/file_contexts")).unwrap(), "image-passwd\n");
        // A link that leads nowhere inside the image is a missing file_contexts.
        std::fs::remove_file(d.path().join("etc/passwd")).unwrap();
        assert!(detect(&r).unwrap_err().to_string().contains("is missing"));
    }
}
