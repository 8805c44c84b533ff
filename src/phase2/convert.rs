//! Converting the working copy into the requested disk formats with `qemu-img convert`.
//! Each output is written under a hidden temporary name in the output folder and renamed into
//! place only when complete, so a failed or interrupted build leaves no partial image there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::exec;
use crate::phase2::bom::Artifact;

/// A disk format kib can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain raw disk (sparse).
    Raw,
    /// qcow2 (OpenStack, Proxmox, Nutanix, KubeVirt), compression per [`Qcow2Compression`].
    Qcow2,
    /// streamOptimized VMDK (vSphere, AWS import).
    Vmdk,
    /// VHDX (Hyper-V).
    Vhdx,
}

impl Format {
    /// Every format, as `--format` spells it.
    pub const ALL: &'static [(&'static str, Format)] = &[("raw", Format::Raw), ("qcow2", Format::Qcow2), ("vmdk", Format::Vmdk), ("vhdx", Format::Vhdx)];

    /// The name used in `--format`, which is also the file extension.
    pub fn name(self) -> &'static str {
        Format::ALL.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).expect("every format is listed")
    }

    /// Parses a list of names, keeping the first occurrence of each.
    ///
    /// Errors: an unknown name (the message lists the known ones).
    pub fn parse_list(names: &[String]) -> Result<Vec<Format>> {
        let mut out = Vec::new();
        for n in names.iter().flat_map(|n| n.split(',')).map(str::trim).filter(|n| !n.is_empty()) {
            let Some((_, f)) = Format::ALL.iter().find(|(name, _)| *name == n) else {
                bail!("unknown output format `{n}`; kib writes: {}", Format::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "));
            };
            if !out.contains(f) {
                out.push(*f);
            }
        }
        Ok(out)
    }
}

/// qcow2 cluster compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qcow2Compression {
    None,
    Zlib,
    Zstd,
}

impl Qcow2Compression {
    /// Parses `none`, `zlib` or `zstd`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "zlib" => Ok(Self::Zlib),
            "zstd" => Ok(Self::Zstd),
            _ => bail!("qcow2 compression `{s}`: expected none, zlib or zstd"),
        }
    }
}

/// A hidden staging folder inside the output folder. Artifacts are written there and moved
/// into the output folder together by [`Staging::commit`] once all of them are complete; if the
/// build fails first, dropping the staging folder removes them, so the output folder never holds
/// a partial or unverified artifact.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates `<out_dir>/.kib-staging-<pid>`.
    pub fn create(out_dir: &Path) -> Result<Self> {
        let dir = out_dir.join(format!(".kib-staging-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Staging { dir, committed: false })
    }

    /// The staging folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves `files` (names in the staging folder), in this order, into `out_dir`, replacing
    /// files of the same names, then removes the staging folder.
    pub fn commit(mut self, out_dir: &Path, files: &[&str]) -> Result<()> {
        for f in files {
            std::fs::rename(self.dir.join(f), out_dir.join(f)).with_context(|| format!("moving {f} into {}", out_dir.display()))?;
        }
        self.committed = true;
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn qemu_args(format: Format, compression: Qcow2Compression) -> Vec<&'static str> {
    match format {
        Format::Raw => vec!["-O", "raw"],
        Format::Qcow2 => match compression {
            Qcow2Compression::None => vec!["-O", "qcow2"],
            Qcow2Compression::Zlib => vec!["-O", "qcow2", "-c"],
            Qcow2Compression::Zstd => vec!["-O", "qcow2", "-c", "-o", "compression_type=zstd"],
        },
        Format::Vmdk => vec!["-O", "vmdk", "-o", "subformat=streamOptimized"],
        Format::Vhdx => vec!["-O", "vhdx", "-o", "subformat=dynamic"],
    }
}

/// Writes `<name>.<format>` for each format into `dir` (a [`Staging`] folder) from the raw
/// `disk`, in parallel.
/// Raw output comes last and is the working copy itself, renamed, when it lies on the same
/// filesystem (so `disk` may be gone afterwards). Returns each artifact with its SHA-256.
pub fn convert_all(disk: &Path, dir: &Path, name: &str, formats: &[Format], compression: Qcow2Compression) -> Result<Vec<Artifact>> {
    let mut written: Vec<(Format, PathBuf)> = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let jobs: Vec<_> = formats
            .iter()
            .filter(|f| **f != Format::Raw)
            .map(|&f| {
                s.spawn(move || -> Result<(Format, PathBuf)> {
                    let dest = dir.join(format!("{name}.{}", f.name()));
                    let t = std::time::Instant::now();
                    exec::run(
                        Command::new("qemu-img").args(["convert", "-f", "raw"]).args(qemu_args(f, compression)).arg(disk).arg(&dest),
                        &format!("qemu-img convert to {}", f.name()),
                        None,
                    )?;
                    tracing::info!("converted to {} in {:.1}s", f.name(), t.elapsed().as_secs_f64());
                    Ok((f, dest))
                })
            })
            .collect();
        let mut first_err = None;
        for j in jobs {
            match j.join().expect("conversion thread panicked") {
                Ok(w) => written.push(w),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    })?;
    if formats.contains(&Format::Raw) {
        let dest = dir.join(format!("{name}.raw"));
        let t = std::time::Instant::now();
        if std::fs::rename(disk, &dest).is_err() {
            exec::run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(disk).arg(&dest), "qemu-img convert to raw", None)?;
        }
        tracing::info!("raw image ready in {:.1}s", t.elapsed().as_secs_f64());
        written.push((Format::Raw, dest));
    }
    // Hash every artifact in parallel, in the requested order.
    written.sort_by_key(|(f, _)| formats.iter().position(|x| x == f));
    std::thread::scope(|s| {
        let jobs: Vec<_> = written
            .iter()
            .map(|(f, p)| {
                s.spawn(move || -> Result<Artifact> {
                    Ok(Artifact {
                        file: p.file_name().expect("artifact has a name").to_string_lossy().into_owned(),
                        format: f.name().to_string(),
                        sha256: crate::hash::sha256_file(p).with_context(|| format!("hashing {}", p.display()))?,
                        size: std::fs::metadata(p)?.len(),
                    })
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().expect("hash thread panicked")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_lists() {
        let f = Format::parse_list(&["qcow2,raw".into(), "qcow2".into()]).unwrap();
        assert_eq!(f, [Format::Qcow2, Format::Raw]);
        let e = Format::parse_list(&["qcow3".into()]).unwrap_err().to_string();
        assert!(e.contains("unknown output format `qcow3`") && e.contains("qcow2"), "{e}");
    }

    #[test]
    fn converts_and_leaves_no_partials() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        let mut data = vec![0u8; 4 << 20];
        data[12345] = 1;
        std::fs::write(&disk, &data).unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let staging = Staging::create(&out).unwrap();
        let arts = convert_all(&disk, staging.dir(), "node", &[Format::Qcow2, Format::Vmdk, Format::Raw], Qcow2Compression::Zstd).unwrap();
        staging.commit(&out, &["node.qcow2", "node.vmdk", "node.raw"]).unwrap();
        assert_eq!(arts.iter().map(|a| a.file.as_str()).collect::<Vec<_>>(), ["node.qcow2", "node.vmdk", "node.raw"]);
        assert_eq!(std::fs::read(out.join("node.raw")).unwrap(), data);
        for a in &arts {
            assert_eq!(a.sha256, crate::hash::sha256_file(&out.join(&a.file)).unwrap());
        }
        let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(out.join("node.qcow2")).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["format"], "qcow2");
        assert_eq!(v["format-specific"]["data"]["compression-type"], "zstd");
        let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // A failing conversion leaves nothing behind.
        let staging = Staging::create(&out).unwrap();
        let e = convert_all(&d.path().join("missing.raw"), staging.dir(), "bad", &[Format::Qcow2], Qcow2Compression::None);
        assert!(e.is_err());
        drop(staging);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
    }
}
