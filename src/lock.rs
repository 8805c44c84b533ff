//! `kib customize --lock bom.json`: rebuild with every package and artifact pinned to what an
//! earlier build's BOM recorded, so that the same inputs give the same installed binaries.
//!
//! - Downloads (`download` and `images` archives, repository keys) must have the SHA-256 the BOM
//!   recorded for their URL; `sha256_url` checksum files are not consulted. A URL the BOM does not
//!   list, or a manifest pin that disagrees with it, stops the build before anything is fetched.
//! - apt installs the BOM's version of every package it names (`apt-get install name=version`),
//!   and an apt preferences file pins every package of the BOM at priority 1001 while `packages`
//!   steps run, so that dependencies resolve to the recorded versions too. After each `packages`
//!   step every recorded package that is installed must have its recorded version; the error names
//!   each that does not, and apt's own error names a version the sources no longer have.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indexmap::IndexMap;

use crate::phase2::bom::Package;

/// The pins read from a BOM.
#[derive(Debug, Clone)]
pub struct Lock {
    /// The bom.json it was read from.
    pub path: PathBuf,
    /// Package name to (version, architecture), from the BOM's `packages`.
    pub packages: IndexMap<String, (String, String)>,
    /// Download URL (credentials removed, as the BOM records it) to SHA-256, from every step's
    /// `downloads`.
    pub downloads: IndexMap<String, String>,
}

impl Lock {
    /// Reads the pins of `path`, a `bom.json` that `kib customize` wrote.
    ///
    /// Errors: the file cannot be read, is not JSON, or is not a kib BOM (no `bom_version`,
    /// `packages` or `steps`).
    pub fn load(path: &Path) -> Result<Lock> {
        let bytes = std::fs::read(path).with_context(|| format!("--lock: reading {}", path.display()))?;
        let bom: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| format!("--lock: {} is not JSON", path.display()))?;
        Self::from_bom(path, &bom)
    }

    /// The pins of an already parsed BOM; `path` names it in messages.
    pub fn from_bom(path: &Path, bom: &serde_json::Value) -> Result<Lock> {
        let (Some(_), Some(pkgs), Some(steps)) = (bom.get("bom_version"), bom["packages"].as_array(), bom["steps"].as_array()) else {
            bail!("--lock: {} is not a kib bom.json (it needs bom_version, packages and steps)", path.display());
        };
        let mut packages = IndexMap::new();
        for p in pkgs {
            let (Some(name), Some(version)) = (p["name"].as_str(), p["version"].as_str()) else {
                bail!("--lock: {}: a package entry without name or version: {p}", path.display());
            };
            packages.insert(name.to_string(), (version.to_string(), p["architecture"].as_str().unwrap_or("").to_string()));
        }
        let mut downloads = IndexMap::new();
        for d in steps.iter().filter_map(|s| s["downloads"].as_array()).flatten() {
            let (Some(url), Some(sum)) = (d["url"].as_str(), d["sha256"].as_str()) else {
                bail!("--lock: {}: a download without url or sha256: {d}", path.display());
            };
            if let Some(old) = downloads.insert(url.to_string(), sum.to_string()) {
                if old != sum {
                    bail!("--lock: {} records two different sha256 for {url}: {old} and {sum}", path.display());
                }
            }
        }
        Ok(Lock { path: path.to_path_buf(), packages, downloads })
    }

    /// The SHA-256 `url` must have. `pinned` is the manifest's own pin, if any.
    ///
    /// Errors: the BOM has no such URL (the manifest changed since the locked build), or the
    /// manifest pins another sum.
    pub fn sum_for(&self, url: &str, pinned: Option<&str>) -> Result<String> {
        let shown = crate::fetch::redact(url);
        let Some(locked) = self.downloads.get(&shown) else {
            bail!(
                "--lock {}: {shown} is not in the lock; the locked build downloaded no such artifact (the manifest or its variables changed since)",
                self.path.display()
            );
        };
        if let Some(p) = pinned.filter(|p| !p.eq_ignore_ascii_case(locked)) {
            bail!("--lock {}: {shown}: the manifest pins sha256 {p}, the lock {locked}", self.path.display());
        }
        Ok(locked.clone())
    }

    /// `name=version` for each name the lock holds, else `name` as given. A name that already
    /// says a version (`name=...`) or a release (`name/...`) is kept.
    pub fn install_args(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .map(|n| match self.packages.get(n.as_str()) {
                Some((v, _)) if !n.contains('=') && !n.contains('/') => format!("{n}={v}"),
                _ => n.clone(),
            })
            .collect()
    }

    /// An apt preferences file pinning every locked package to its version, priority 1001 (apt
    /// installs, upgrades or downgrades to it when the sources have it).
    pub fn apt_preferences(&self) -> String {
        let mut s = format!("# kib --lock {}: removed after the build\n", self.path.display());
        for (name, (version, _)) in &self.packages {
            s.push_str(&format!("\nPackage: {name}\nPin: version {version}\nPin-Priority: 1001\n"));
        }
        s
    }

    /// The installed packages whose version differs from the lock's, as `name version (locked
    /// version)` lines.
    pub fn mismatches(&self, installed: &[Package]) -> Vec<String> {
        installed
            .iter()
            .filter_map(|p| {
                let (v, _) = self.packages.get(&p.name)?;
                (v != &p.version).then(|| format!("{} {} (locked {v})", p.name, p.version))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lock {
        let bom = serde_json::json!({
            "bom_version": 1,
            "packages": [
                {"name": "jq", "version": "1.6-2.1", "architecture": "amd64", "held": false},
                {"name": "libjq1", "version": "1.6-2.1", "architecture": "amd64", "held": false}
            ],
            "steps": [
                {"name": "a", "downloads": [{"url": "https://dl.k8s.io/v1/kubectl", "source": "cache", "sha256": "ab".repeat(32), "size": 1}]},
                {"name": "b"}
            ]
        });
        Lock::from_bom(Path::new("old/bom.json"), &bom).unwrap()
    }

    #[test]
    fn pins_downloads_by_url() {
        let l = lock();
        assert_eq!(l.sum_for("https://dl.k8s.io/v1/kubectl", None).unwrap(), "ab".repeat(32));
        assert_eq!(l.sum_for("https://dl.k8s.io/v1/kubectl", Some(&"AB".repeat(32))).unwrap(), "ab".repeat(32));
        let e = l.sum_for("https://dl.k8s.io/v1/kubectl", Some(&"cd".repeat(32))).unwrap_err().to_string();
        assert!(e.contains("the manifest pins sha256 cdcd") && e.contains("the lock abab"), "{e}");
        let e = l.sum_for("https://dl.k8s.io/v2/kubectl", None).unwrap_err().to_string();
        assert!(e.contains("old/bom.json: https://dl.k8s.io/v2/kubectl is not in the lock"), "{e}");
    }

    #[test]
    fn pins_packages() {
        let l = lock();
        assert_eq!(l.install_args(&["jq".into(), "curl".into(), "libjq1=9".into()]), ["jq=1.6-2.1", "curl", "libjq1=9"]);
        let prefs = l.apt_preferences();
        assert!(prefs.contains("Package: jq\nPin: version 1.6-2.1\nPin-Priority: 1001\n"), "{prefs}");
        let installed = crate::phase2::bom::parse_dpkg_status(
            "Package: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1+deb12u1\n\nPackage: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7\n",
        )
        .unwrap();
        assert_eq!(l.mismatches(&installed), ["jq 1.6-2.1+deb12u1 (locked 1.6-2.1)"]);
    }

    #[test]
    fn refuses_what_is_not_a_bom() {
        let e = Lock::from_bom(Path::new("x.json"), &serde_json::json!({"packages": []})).unwrap_err().to_string();
        assert!(e.contains("x.json is not a kib bom.json"), "{e}");
    }
}
