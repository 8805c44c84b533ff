//! `kib customize --lock bom.json`: rebuild with every package and artifact pinned to what an
//! earlier build's BOM recorded, so that the same inputs give the same installed binaries.
//!
//! The BOM is read through [`crate::bom::Bom`] and split into two kinds of pins, each used where
//! it applies, so that neither the fetcher nor the package backends depend on the BOM:
//! - [`crate::fetch::DownloadPins`]: downloads (`download` and `images` archives, repository
//!   keys) must have the SHA-256 the BOM recorded for their URL; `sha256_url` checksum files are
//!   not consulted. A URL the BOM does not list, or a manifest pin that disagrees with it, stops
//!   the build before anything is fetched.
//! - [`crate::pkg::PackagePins`]: the package manager installs the BOM's version of every package
//!   a step names, pins every package of the BOM while `packages` steps run (apt: a
//!   priority-1001 preferences file), and after each `packages` step every recorded package that
//!   is installed must have its recorded version (see [`crate::pkg::apply_step`]).
//! - [`Lock::input`]: a base image taken from a URL must have the SHA-256 the BOM recorded for
//!   that URL (instead of its checksum list's).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use indexmap::IndexMap;

use crate::bom::Bom;
use crate::fetch::DownloadPins;
use crate::pkg::PackagePins;

/// The pins read from a BOM.
#[derive(Debug, Clone)]
pub struct Lock {
    /// The bom.json it was read from.
    pub path: PathBuf,
    pub packages: PackagePins,
    pub downloads: DownloadPins,
    /// The base image's URL (credentials removed) and SHA-256, when the locked build took it
    /// from a URL: a build from the same URL must get the same image.
    pub input: Option<(String, String)>,
}

impl Lock {
    /// Reads the pins of `path`, a `bom.json` that `kib customize` wrote.
    ///
    /// Errors: the file cannot be read, or is not a kib BOM (the message names the field), or
    /// it records two different SHA-256 for one URL.
    pub fn load(path: &Path) -> Result<Lock> {
        let bom = Bom::read(path).map_err(|e| e.context("--lock"))?;
        Self::from_bom(path, &bom)
    }

    /// The pins of an already parsed BOM; `path` names it in messages.
    ///
    /// Errors: two different SHA-256 recorded for one URL.
    pub fn from_bom(path: &Path, bom: &Bom) -> Result<Lock> {
        let packages = bom.packages.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let mut sums: IndexMap<String, String> = IndexMap::new();
        for d in bom.steps.iter().flat_map(|s| &s.downloads) {
            if let Some(old) = sums.insert(d.url.clone(), d.sha256.clone()) {
                if old != d.sha256 {
                    bail!("--lock: {} records two different sha256 for {}: {old} and {}", path.display(), d.url, d.sha256);
                }
            }
        }
        Ok(Lock {
            path: path.to_path_buf(),
            packages: PackagePins { source: path.to_path_buf(), packages },
            downloads: DownloadPins { source: path.to_path_buf(), sums },
            input: bom.input.url.clone().map(|u| (u, bom.input.sha256.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bom(downloads: serde_json::Value) -> Bom {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/bom/kib-b8de4e5-phases-2.json")).unwrap()).unwrap();
        v["steps"][0]["downloads"] = downloads;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pins_downloads_by_url_and_packages_by_name() {
        let d = serde_json::json!([{"url": "https://dl.k8s.io/v1/kubectl", "source": "cache", "sha256": "ab".repeat(32), "size": 1}]);
        let l = Lock::from_bom(Path::new("old/bom.json"), &bom(d)).unwrap();
        assert_eq!(l.packages.packages["bash"].version, "5.2.15-2+b13");
        let p = &l.downloads;
        assert_eq!(p.sum_for("https://dl.k8s.io/v1/kubectl", None).unwrap(), "ab".repeat(32));
        assert_eq!(p.sum_for("https://dl.k8s.io/v1/kubectl", Some(&"AB".repeat(32))).unwrap(), "ab".repeat(32));
        let e = p.sum_for("https://dl.k8s.io/v1/kubectl", Some(&"cd".repeat(32))).unwrap_err();
        assert!(e.contains("the manifest pins sha256 cdcd") && e.contains("the lock abab"), "{e}");
        let e = p.sum_for("https://dl.k8s.io/v2/kubectl", None).unwrap_err();
        assert!(e.contains("old/bom.json: https://dl.k8s.io/v2/kubectl is not in the lock"), "{e}");
    }

    #[test]
    fn pins_a_base_image_taken_from_a_url() {
        let mut b = bom(serde_json::json!([]));
        assert_eq!(Lock::from_bom(Path::new("b.json"), &b).unwrap().input, None);
        b.input.url = Some("https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.raw".into());
        b.input.sha256 = "ef".repeat(32);
        // Written and read back, the BOM still pins it.
        let b = Bom::from_slice(&b.to_json().unwrap(), Path::new("b.json")).unwrap();
        let l = Lock::from_bom(Path::new("b.json"), &b).unwrap();
        assert_eq!(l.input, Some((b.input.url.clone().unwrap(), "ef".repeat(32))));
    }

    #[test]
    fn refuses_contradictions_and_what_is_not_a_bom() {
        let d = serde_json::json!([
            {"url": "https://x/a", "source": "cache", "sha256": "ab".repeat(32), "size": 1},
            {"url": "https://x/a", "source": "cache", "sha256": "cd".repeat(32), "size": 1}
        ]);
        let e = Lock::from_bom(Path::new("b.json"), &bom(d)).unwrap_err().to_string();
        assert!(e.contains("records two different sha256 for https://x/a"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.json");
        std::fs::write(&f, r#"{"packages": []}"#).unwrap();
        let e = format!("{:#}", Lock::load(&f).unwrap_err());
        assert!(e.starts_with("--lock: ") && e.contains("x.json is not a kib bom.json"), "{e}");
    }
}
