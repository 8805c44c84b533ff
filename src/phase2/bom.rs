//! The bill of materials: what went into the image and what it contains, as `bom.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indexmap::IndexMap;

use crate::guest::GuestRoot;
use crate::phase2::license;
use crate::manifest::{Manifest, SourceFile};
use crate::phase0::{Filesystem, InputRecord};
use crate::phase1::StepRecord;

/// An installed package from the image's package database.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package, when it differs from the name (dpkg's `Source` field, without a
    /// version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Held at this version (`apt-mark hold`).
    pub held: bool,
    /// The licence its machine-readable `/usr/share/doc/<name>/copyright` declares; absent when
    /// that file is missing or free-form. See [`crate::phase2::license`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license: Option<license::PackageLicense>,
}

/// An artifact kib wrote to the output folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Artifact {
    pub file: String,
    pub format: String,
    pub sha256: String,
    /// Size in bytes of the file.
    pub size: u64,
}

/// `bom.json`. Version 1 of its shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bom {
    pub bom_version: u32,
    pub kib_version: &'static str,
    /// When the build started, RFC 3339 UTC.
    pub build_started: String,
    /// The phases this run did (`--phases`): `[0, 1, 2]` for a complete build.
    pub phases: Vec<u8>,
    /// The kib build that made the input image, when its bom.json lies beside the input and
    /// lists the input's SHA-256 among its artifacts (a `--phases 0,1` run, continued here). Its
    /// steps open `steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub based_on: Option<BasedOn>,
    /// Wall time of each phase, in seconds.
    pub phase_seconds: IndexMap<&'static str, f64>,
    pub input: InputRecord,
    pub manifest: ManifestRecord,
    pub os_release: IndexMap<String, String>,
    /// The image's architecture (Debian name: `amd64`, `arm64`), from its binaries and
    /// cross-checked with its dpkg database; not the host's.
    pub architecture: String,
    /// How the image's programs ran when its architecture is not the host's: the binfmt_misc
    /// handler and qemu-user interpreter used. Absent for a native build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emulation: Option<crate::phase1::binfmt::EmulationRecord>,
    pub kernels: Vec<String>,
    pub partition_table: &'static str,
    pub filesystems: Vec<Filesystem>,
    /// What `disk.size` / `--disk-size` grew, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_growth: Option<crate::phase0::grow::Growth>,
    /// The bom.json a `--lock` build was pinned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_from: Option<PathBuf>,
    pub packages: Vec<Package>,
    pub steps: Vec<StepRecord>,
    pub sysprep: Vec<&'static str>,
    pub artifacts: Vec<Artifact>,
}

/// The earlier build a BOM continues (see [`Bom::based_on`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BasedOn {
    /// Its bom.json, and that file's SHA-256.
    pub bom: PathBuf,
    pub bom_sha256: String,
    pub build_started: String,
    pub phases: Vec<u8>,
    /// Its input and manifest records, as it wrote them.
    pub input: serde_json::Value,
    pub manifest: serde_json::Value,
    /// How many of `steps` are its.
    pub steps: usize,
}

/// What kib reads back from an earlier bom.json to continue its build.
#[derive(Debug, serde::Deserialize)]
pub struct EarlierBom {
    pub build_started: String,
    /// BOMs written before `--phases` existed were complete builds.
    #[serde(default = "all_phases")]
    pub phases: Vec<u8>,
    pub input: serde_json::Value,
    pub manifest: serde_json::Value,
    pub steps: Vec<StepRecord>,
    pub artifacts: Vec<ArtifactSum>,
}

/// An artifact's file and SHA-256, as an earlier bom.json lists it.
#[derive(Debug, serde::Deserialize)]
pub struct ArtifactSum {
    pub file: String,
    pub sha256: String,
}

fn all_phases() -> Vec<u8> {
    vec![0, 1, 2]
}

/// The manifest as the BOM records it. Variables are recorded because they decide what was
/// installed; proxy settings and other environment never are.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManifestRecord {
    pub path: PathBuf,
    pub sha256: String,
    pub name: String,
    pub files: Vec<SourceFile>,
    pub variables: IndexMap<String, String>,
}

impl ManifestRecord {
    pub fn new(m: &Manifest) -> Self {
        ManifestRecord {
            path: std::path::absolute(&m.path).unwrap_or_else(|_| m.path.clone()),
            sha256: m.sha256.clone(),
            name: m.name.clone(),
            files: m.files.clone(),
            variables: m.variables.0.clone(),
        }
    }
}

/// Reads the installed packages from the image's dpkg status database, each with the licence
/// its copyright file declares (one small read per package). Empty when the image has no dpkg.
pub fn packages(root: &GuestRoot) -> Result<Vec<Package>> {
    let Some(text) = root.read_string(Path::new("/var/lib/dpkg/status")).context("reading /var/lib/dpkg/status")? else {
        return Ok(Vec::new());
    };
    let mut packages = parse_dpkg_status(&text)?;
    for p in &mut packages {
        p.license = license::read(root, &p.name);
    }
    Ok(packages)
}

/// Parses a dpkg status file, keeping packages whose status is `installed`, sorted by name.
pub fn parse_dpkg_status(text: &str) -> Result<Vec<Package>> {
    let paragraphs = deb822_fast::borrowed::parse_borrowed(text).map_err(|e| anyhow::anyhow!("parsing dpkg status: {e:?}"))?;
    let mut out = Vec::new();
    for p in paragraphs {
        let status = p.get_single("Status").unwrap_or("");
        let words: Vec<&str> = status.split_whitespace().collect();
        if words.last() != Some(&"installed") {
            continue;
        }
        let name = p.get_single("Package").unwrap_or("").to_string();
        let source = p.get_single("Source").map(|s| s.split_whitespace().next().unwrap_or(s).to_string()).filter(|s| *s != name);
        out.push(Package {
            name,
            version: p.get_single("Version").unwrap_or("").to_string(),
            architecture: p.get_single("Architecture").unwrap_or("").to_string(),
            source,
            held: words.first() == Some(&"hold"),
            license: None,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_installed_and_held_packages() {
        let text = "Package: runc\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.1.5+ds1-1+deb12u1\nDescription: x\n multi\n\n\
                    Package: containerd\nStatus: hold ok installed\nArchitecture: amd64\nSource: containerd (1.6.20~ds1-1)\nVersion: 1.6.20~ds1-1+b1\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
                    Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9\n";
        let p = parse_dpkg_status(text).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, "containerd");
        assert!(p[0].held);
        assert_eq!(p[0].source, None);
        assert_eq!(p[1].source.as_deref(), Some("glibc"));
        assert_eq!(p[2].name, "runc");
        assert_eq!(p[2].version, "1.1.5+ds1-1+deb12u1");
        assert!(!p[2].held);
    }
}
