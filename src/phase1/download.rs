//! The `download` step: fetch through [`Fetcher`], then write the file or unpack the archive
//! into the image through [`GuestRoot`], so that neither the archive's paths nor the image's
//! symlinks can place anything outside the image root.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::FileRecord;
use crate::fetch::{Fetched, Fetcher};
use crate::guest::GuestRoot;
use crate::manifest::{parse_mode, DownloadStep, Sha256Spec};

/// The SHA-256 `url` must have: the pinned one (for `arch`), or the one published at
/// `sha256_url` (fetched through the mirror map, cached for offline builds). Under `--lock`,
/// the one the locked BOM recorded (see [`crate::fetch::DownloadPins::sum_for`]).
pub fn expected_sum(fetcher: &Fetcher, url: &str, sha256: Option<&Sha256Spec>, sha256_url: Option<&str>, arch: &str) -> Result<String> {
    if let Some(pins) = &fetcher.pins {
        let pinned = sha256.map(|s| s.for_arch(arch)).transpose().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        return pins.sum_for(url, pinned.as_deref()).map_err(anyhow::Error::msg);
    }
    match (sha256, sha256_url) {
        (Some(s), _) => s.for_arch(arch).map_err(|e| anyhow::anyhow!("{url}: {e}")),
        (None, Some(u)) => Ok(fetcher.published_sum(u, url)?),
        (None, None) => unreachable!("checked when the manifest was loaded"),
    }
}

/// Runs one download step; returns what was fetched and records what was written in `files`.
pub fn apply(root: &GuestRoot, fetcher: &Fetcher, d: &DownloadStep, arch: &str, files: &mut Vec<FileRecord>) -> Result<Fetched> {
    let sum = expected_sum(fetcher, &d.url, d.sha256.as_ref(), d.sha256_url.as_deref(), arch)?;
    let fetched = fetcher.fetch(&d.url, &sum)?;
    if let Some(path) = &d.path {
        let mode = d.mode.as_deref().map(parse_mode).transpose().map_err(anyhow::Error::msg)?.unwrap_or(0o755);
        let mut file = std::fs::File::open(&fetched.path).with_context(|| format!("reading {} from the cache", fetched.path.display()))?;
        root.write_from(Path::new(path), &mut file, mode, 0, 0).with_context(|| format!("writing {path} in the image"))?;
        files.push(FileRecord { path: path.clone(), sha256: fetched.sha256.clone(), size: fetched.size, mode: format!("{mode:04o}"), owner: "0:0".into() });
    } else if let Some(dir) = &d.extract {
        extract(root, &fetched.path, Path::new(dir), d.strip_components, files).with_context(|| format!("unpacking {} into {dir}", fetched.url))?;
    }
    Ok(fetched)
}

/// Unpacks a tar archive (gzip-compressed or not, told by its first bytes) into `dir`.
fn extract(root: &GuestRoot, archive: &Path, dir: &Path, strip: usize, files: &mut Vec<FileRecord>) -> Result<()> {
    let mut f = std::fs::File::open(archive)?;
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = std::fs::File::open(archive)?;
    let reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    let mut ar = tar::Archive::new(reader);
    root.mkdir_p(dir, 0o755)?;
    for entry in ar.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = strip_path(&raw, strip)? else { continue };
        let dest = dir.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                root.mkdir_p(&dest, 0o755)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // Streamed: an entry may be larger than memory.
                let (size, sha256) = root.write_from(&dest, &mut entry, mode, 0, 0).with_context(|| format!("writing {}", dest.display()))?;
                files.push(FileRecord {
                    path: dest.to_string_lossy().into_owned(),
                    sha256,
                    size,
                    mode: format!("{mode:04o}"),
                    owner: "0:0".into(),
                });
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                root.symlink(&target, &dest)?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {}
            other => bail!("{}: archive entries of type {other:?} (hard links, devices, fifos) are not supported", raw.display()),
        }
    }
    Ok(())
}

/// The entry path with `strip` leading components removed; `None` when nothing is left.
/// Errors on `..` and absolute paths.
fn strip_path(p: &Path, strip: usize) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    let mut n = 0;
    for c in p.components() {
        match c {
            Component::Normal(x) => {
                if n >= strip {
                    out.push(x);
                }
                n += 1;
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                bail!("archive entry {} leaves its folder (absolute or `..`); refused", p.display())
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_and_refuses_escapes() {
        assert_eq!(strip_path(Path::new("./cni/bin/bridge"), 1).unwrap().unwrap(), Path::new("bin/bridge"));
        assert_eq!(strip_path(Path::new("crictl"), 0).unwrap().unwrap(), Path::new("crictl"));
        assert!(strip_path(Path::new("top"), 1).unwrap().is_none());
        for bad in ["../../etc/passwd", "/etc/passwd"] {
            let e = strip_path(Path::new(bad), 0).unwrap_err().to_string();
            assert_eq!(e, format!("archive entry {bad} leaves its folder (absolute or `..`); refused"));
        }
    }

    #[test]
    fn unpacks_a_tarball_inside_the_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED unpacks_a_tarball_inside_the_root: needs root (extracted files are made root's)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root_dir = d.path().join("root");
        std::fs::create_dir_all(root_dir.join("usr/local")).unwrap();
        // The image's /usr/local/bin points out of the image.
        std::os::unix::fs::symlink(d.path().join("host"), root_dir.join("usr/local/bin")).unwrap();
        std::fs::create_dir_all(root_dir.join(d.path().join("host").strip_prefix("/").unwrap())).unwrap();
        std::fs::create_dir_all(d.path().join("host")).unwrap();
        let tgz = d.path().join("crictl.tar.gz");
        {
            let enc = flate2::write::GzEncoder::new(std::fs::File::create(&tgz).unwrap(), flate2::Compression::fast());
            let mut b = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            h.set_size(6);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "crictl", &b"binary"[..]).unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let root = GuestRoot::open(&root_dir).unwrap();
        let mut files = Vec::new();
        extract(&root, &tgz, Path::new("/usr/local/bin"), 0, &mut files).unwrap();
        assert!(!d.path().join("host/crictl").exists(), "wrote through the image's symlink to the host");
        assert_eq!(files[0].path, "/usr/local/bin/crictl");
        assert_eq!(files[0].mode, "0755");
        assert_eq!(files[0].sha256, crate::hash::sha256_bytes(b"binary"));
    }
}
