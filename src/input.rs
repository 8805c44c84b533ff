//! kib never modifies its input image. [`refuse_outputs_on_input`] stops a run before Phase 0
//! when one of its outputs would land on the input file, however the path reaches it: the same
//! path, a symlink (to the file or a folder on the way), a hard link, or a bind mount.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where `path` is, as far as it can be known before it exists: the canonical path of its folder
/// joined with its name (the name itself may be a symlink: then its target, canonical).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(dir.canonicalize().ok()?.join(path.file_name()?))
}

/// Errors when an output in `outputs` is the file `input`: both resolve to the same canonical
/// path, or both exist and share device and inode (a hard link, or the same file reached through
/// a bind mount). The error names both paths. An input that does not exist is not checked here.
pub fn refuse_outputs_on_input(input: &Path, outputs: &[PathBuf]) -> Result<()> {
    let Ok(meta) = std::fs::metadata(input) else { return Ok(()) };
    let canonical = input.canonicalize().with_context(|| format!("resolving {}", input.display()))?;
    for out in outputs {
        let same_path = resolved(out).is_some_and(|o| o == canonical);
        let same_file = std::fs::metadata(out).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if same_path || same_file {
            bail!(
                "the output {} would replace the input image {}{}; kib never modifies its input. Choose another --output-dir or --name, \
                 or move the input elsewhere",
                out.display(),
                input.display(),
                if same_path { "" } else { " (the same file, through a hard link or a bind mount)" }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_on_the_input_is_refused_however_it_is_reached() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir(t.join("out")).unwrap();
        let input = t.join("out/node.qcow2");
        std::fs::write(&input, b"disk").unwrap();
        // The same path, spelled otherwise.
        let e = refuse_outputs_on_input(&input, &[t.join("out/./bom.json"), t.join("out/../out/node.qcow2")]).unwrap_err().to_string();
        assert!(e.contains("would replace the input image") && e.contains("out/../out/node.qcow2") && e.contains(&input.display().to_string()), "{e}");
        // A symlinked output folder.
        std::os::unix::fs::symlink(t.join("out"), t.join("link")).unwrap();
        assert!(refuse_outputs_on_input(&input, &[t.join("link/node.qcow2")]).is_err_and(|e| e.to_string().contains("link/node.qcow2")));
        // A hard link to the input where an output goes.
        std::fs::create_dir(t.join("out2")).unwrap();
        std::fs::hard_link(&input, t.join("out2/node.qcow2")).unwrap();
        let e = refuse_outputs_on_input(&input, &[t.join("out2/node.qcow2")]).unwrap_err().to_string();
        assert!(e.contains("through a hard link or a bind mount"), "{e}");
        // Outputs elsewhere, or beside it under other names, are fine.
        refuse_outputs_on_input(&input, &[t.join("out/node.raw"), t.join("out2/bom.json"), t.join("nowhere/x.qcow2")]).unwrap();
    }

    #[test]
    fn through_a_bind_mount_when_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped (needs root): an output folder bind-mounted over the input's");
            return;
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("disk.raw"), b"disk").unwrap();
        rustix::mount::mount_bind(&a, &b).unwrap();
        let _guard = Unmount(b.clone());
        let e = refuse_outputs_on_input(&a.join("disk.raw"), &[b.join("bom.json"), b.join("disk.raw")]).unwrap_err().to_string();
        assert!(e.contains("b/disk.raw would replace the input image") && e.contains("a/disk.raw") && e.contains("bind mount"), "{e}");
    }
}
