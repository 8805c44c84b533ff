//! `kib shell`: Phase 0 on a working copy, then a shell or one command inside the image, in the
//! chroot session the steps use (loop devices as root, or, with `--backend guestfs`, the tree
//! read out through libguestfs's appliance, as a normal user). For finding out by hand what a
//! step should do, and for images customized by hand: `--save` keeps the result as a raw disk
//! for `kib customize --phases 2` (with guestfs, after writing the changes back).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::ShellArgs;
use crate::phase0::{self, Image};
use crate::phase1::OpenSession;
use crate::phase2::convert::{self, Staging};

/// The command run when none is given: root's login shell from the image's /etc/passwd when the
/// image has it, else `/bin/sh`. The shell is a login shell (`-l`), so the image's profile is read.
fn default_command(image: &Image) -> Vec<String> {
    let passwd = image.root().read_string(Path::new("/etc/passwd")).ok().flatten().unwrap_or_default();
    let shell = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == "root")
        .map(|f| f[6].to_string())
        .filter(|s| s.starts_with('/') && image.root().exists(Path::new(s)))
        .unwrap_or_else(|| "/bin/sh".into());
    vec![shell, "-l".into()]
}

/// Runs `kib shell`. Returns the command's exit status (128 + N when a signal N ended it), which
/// kib exits with.
///
/// Errors: whatever Phase 0 reports (a missing image, a checksum mismatch, no Linux root), a
/// `--save` folder that does not exist, an image whose programs cannot run on this host, or a
/// failing conversion while saving. The input image is never modified, and nothing is left
/// behind: the working copy goes with the work directory unless `--save` keeps it.
pub fn run(args: &ShellArgs, output: crate::cli::OutputFormat) -> Result<ExitCode> {
    if output == crate::cli::OutputFormat::Json {
        bail!("kib shell is interactive and exits with the command's status; --output json does not apply");
    }
    let backend = match super::mounting("shell", args.backend)? {
        super::Entered::Ran(code) => return Ok(code),
        super::Entered::Here(choice) => choice.backend,
    };
    let save_dir = match &args.save {
        Some(p) => {
            if p.file_name().is_none() || p.is_dir() {
                bail!("--save {}: give the path of a file to write, such as out/node.raw", p.display());
            }
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !dir.is_dir() {
                bail!("--save {}: folder {} does not exist", p.display(), dir.display());
            }
            crate::input::refuse_outputs_on_input(&args.disk_image, std::slice::from_ref(p))?;
            Some(dir.to_path_buf())
        }
        None => None,
    };
    let grow_to = args.disk_size.as_deref().map(|s| crate::manifest::parse_disk_size(s).map_err(|e| anyhow::anyhow!("--disk-size: {e}"))).transpose()?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(crate::config::default_cache_dir);
    let mut image = Image::open(&phase0::Options {
        image: args.disk_image.clone(),
        verify: !args.no_verify,
        work_base: args.work_dir.clone(),
        cache_dir: Some(cache_dir.clone()),
        read_only: false,
        grow_to,
        start_from: None,
        backend,
        guestfs: Some(super::guestfs_settings(&cache_dir, args.appliance_timeout)),
    })?;
    let argv = if args.command.is_empty() { default_command(&image) } else { args.command.clone() };
    let what = format!("`{}` in the image", argv.join(" "));
    let status = {
        let open = OpenSession::open(&image, crate::fetch::MirrorMap::default())?;
        if args.command.is_empty() {
            tracing::info!("a shell in {} ({}); `exit` ends it{}", args.disk_image.display(), image.facts.arch, if args.save.is_some() { ", and `exit 0` saves the result" } else { "; nothing is kept" });
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let status = crate::exec::interactive(&mut open.session.command(&argv, &[]), &what);
        open.close()?;
        status?
    };
    let code = exit_code(status);
    let saving = args.save.is_some() && code == 0;
    if saving {
        // guestfs: the shell changed the tree in kib's namespace; into the disk with it (loop:
        // nothing to do, the writes are in place).
        image.write_back(true)?;
    }
    image.unmount()?;
    if let (Some(save), Some(dir)) = (&args.save, &save_dir) {
        if !saving {
            tracing::warn!("{what} exited with status {code}: {} is not written", save.display());
        } else {
            save_raw(&image.disk, image.work_dir(), dir, save)?;
            tracing::info!("saved the image as {} (not sysprepped: `kib customize --phases 2` finishes it)", save.display());
        }
    }
    image.close()?;
    Ok(ExitCode::from(code))
}

/// The working copy, written as a sparse raw file at `dest` through a staging folder, so that
/// `dest` appears complete or not at all (a copy across filesystems is made in the staging
/// folder, then renamed).
fn save_raw(disk: &Path, work: &Path, dir: &Path, dest: &Path) -> Result<()> {
    let staging = Staging::create(dir, Some(work))?;
    let staged = staging.dir().join("saved.raw");
    convert::move_raw(disk, &staged)?;
    std::fs::rename(&staged, dest).with_context(|| format!("moving the image to {}", dest.display()))?;
    Ok(())
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        (None, None) => 1,
    }
}
