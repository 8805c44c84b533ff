//! The OS catalogue, `bases/catalogue.yaml`: each operating system's official cloud image per
//! architecture and the checksum list that vouches for it (the schema is in bases/README.md).
//! `kib build --os KEY` picks its base image here. The catalogue is data: adding an OS is adding
//! an entry, not Rust.
//!
//! It is found in `./bases`, beside kib's executable (a checkout's or an installation's `bases/`
//! and `share/kib/bases/`), and in `/usr/share/kib/bases`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The catalogue file. Fields not listed here (`confirmed`, `notes`, `partitions`, ...) are
/// documentation for people and are ignored.
#[derive(Debug, Deserialize)]
pub struct Catalogue {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub bases: BTreeMap<String, Base>,
}

/// One operating system.
#[derive(Debug, Deserialize, Clone)]
pub struct Base {
    #[serde(default)]
    pub aliases: Vec<String>,
    /// What the image's /etc/os-release must say.
    pub os_release: OsRelease,
    /// Per Debian architecture name (`amd64`, `arm64`).
    #[serde(default)]
    pub arches: BTreeMap<String, ArchImage>,
    /// Named variants, such as Debian's `generic` (`genericcloud` replaced in the URL).
    #[serde(default)]
    pub variants: BTreeMap<String, Variant>,
}

/// The os-release fields an image must have. `version_id` may end in `*` (a prefix).
#[derive(Debug, Deserialize, Clone)]
pub struct OsRelease {
    pub id: String,
    #[serde(default)]
    pub version_id: Option<String>,
}

/// One architecture's image.
#[derive(Debug, Deserialize, Clone)]
pub struct ArchImage {
    /// The image's URL; empty when none is published.
    #[serde(default)]
    pub url: String,
    /// With `file_pattern`: the folder whose checksum list names the image.
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub file_pattern: Option<String>,
    /// The disk is inside an archive (not supported yet).
    #[serde(default)]
    pub container: Option<String>,
    pub checksums: Checksums,
}

/// Where the image's digest comes from.
#[derive(Debug, Deserialize, Clone)]
pub struct Checksums {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    pub format: ListFormat,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub sha512: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// A checksum list's line format (bases/README.md).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// `<hex>  <name>` or `<hex> *<name>`.
    Gnu,
    /// `SHA256 (<name>) = <hex>`.
    Bsd,
    /// No list: the digest is in the catalogue.
    Pinned,
    /// Nothing downloadable.
    None,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Variant {
    pub url_replace: UrlReplace,
}

#[derive(Debug, Deserialize, Clone)]
pub struct UrlReplace {
    pub from: String,
    pub to: String,
}

/// Folders searched for `catalogue.yaml`, in order.
pub fn catalogue_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("bases")];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(3) {
            dirs.push(up.join("bases"));
            dirs.push(up.join("share/kib/bases"));
        }
    }
    dirs.push("/usr/share/kib/bases".into());
    dirs
}

impl Catalogue {
    /// Loads `path`, or the first `catalogue.yaml` in [`catalogue_dirs`].
    ///
    /// Errors: none found (the message lists where it looked), unreadable, or not a
    /// `kib/v1 BaseCatalogue`.
    pub fn load(path: Option<&Path>) -> Result<(PathBuf, Catalogue)> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let dirs = catalogue_dirs();
                match dirs.iter().map(|d| d.join("catalogue.yaml")).find(|p| p.is_file()) {
                    Some(p) => p,
                    None => bail!(
                        "no OS catalogue (catalogue.yaml) found; looked in: {}",
                        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading the OS catalogue {}", path.display()))?;
        let c: Catalogue = yaml_serde::from_str(&text).with_context(|| format!("parsing the OS catalogue {}", path.display()))?;
        if c.api_version != "kib/v1" || c.kind != "BaseCatalogue" {
            bail!("{}: expected apiVersion kib/v1 and kind BaseCatalogue", path.display());
        }
        Ok((path, c))
    }

    /// The entry for `os`: a key or an alias.
    ///
    /// Errors: unknown (the message lists the keys).
    pub fn find(&self, os: &str) -> Result<(&str, &Base)> {
        if let Some((k, b)) = self.bases.get_key_value(os) {
            return Ok((k, b));
        }
        if let Some((k, b)) = self.bases.iter().find(|(_, b)| b.aliases.iter().any(|a| a == os)) {
            return Ok((k, b));
        }
        bail!("unknown OS `{os}`; the catalogue has: {}", self.bases.keys().cloned().collect::<Vec<_>>().join(", "))
    }
}

/// What to download for one OS and architecture: the image URL and how to verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub algorithm: Algorithm,
    /// The checksum list's URL, or `None` when the digest is pinned in the catalogue.
    pub list: Option<(String, ListFormat)>,
    pub pinned: Option<String>,
}

impl Base {
    /// The download for `arch`, with a variant applied.
    ///
    /// Errors: no image for that architecture, none published, an archive container (not
    /// supported yet), a `dir` + `file_pattern` entry (not supported yet: give --base-image),
    /// an unknown variant, or a pinned entry without its digest.
    pub fn source(&self, key: &str, arch: &str, variant: Option<&str>) -> Result<Source> {
        let Some(a) = self.arches.get(arch) else {
            bail!("{key}: the catalogue has no {arch} image (it has: {})", self.arches.keys().cloned().collect::<Vec<_>>().join(", "));
        };
        if a.checksums.format == ListFormat::None || (a.url.is_empty() && a.dir.is_none()) {
            bail!("{key} ({arch}): no downloadable image is published; give --base-image PATH|URL");
        }
        if a.dir.is_some() || a.file_pattern.is_some() {
            bail!("{key} ({arch}): the image's name is found in a folder listing (`dir` + `file_pattern`), which kib does not resolve yet; give --base-image PATH|URL");
        }
        if let Some(c) = &a.container {
            bail!("{key} ({arch}): the disk is inside a {c} archive, which kib does not unpack yet; give --base-image PATH|URL");
        }
        let mut url = a.url.clone();
        if let Some(v) = variant {
            let Some(var) = self.variants.get(v) else {
                bail!("{key}: no variant `{v}` (it has: {})", self.variants.keys().cloned().collect::<Vec<_>>().join(", "));
            };
            url = url.replace(&var.url_replace.from, &var.url_replace.to);
        }
        let algorithm = a.checksums.algorithm.unwrap_or(Algorithm::Sha256);
        match a.checksums.format {
            ListFormat::Pinned => {
                let pin = match algorithm {
                    Algorithm::Sha256 => a.checksums.sha256.clone(),
                    Algorithm::Sha512 => a.checksums.sha512.clone(),
                }
                .filter(|p| !p.is_empty());
                let Some(pin) = pin else {
                    bail!("{key} ({arch}): the catalogue pins the {} of the image but the pin is empty; fill it in from the vendor's page, or give --base-image", algorithm.name());
                };
                Ok(Source { url, algorithm, list: None, pinned: Some(pin.to_ascii_lowercase()) })
            }
            f => {
                let Some(list) = a.checksums.url.clone() else {
                    bail!("{key} ({arch}): checksums.url is missing");
                };
                Ok(Source { url, algorithm, list: Some((list, f)), pinned: None })
            }
        }
    }
}

/// Whether an os-release `VERSION_ID` matches a catalogue's `version_id` (a trailing `*` is a
/// prefix match).
pub fn version_matches(pattern: &str, version: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => version.starts_with(prefix),
        None => pattern == version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalogue_parses_and_resolves() {
        let (_, c) = Catalogue::load(Some(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bases/catalogue.yaml"))).unwrap();
        for key in ["ubuntu-22.04", "ubuntu-24.04", "debian-12", "rocky-9", "almalinux-9", "amazonlinux-2023", "azurelinux-3", "photon-5", "oraclelinux-9", "centos-stream-9"] {
            assert!(c.bases.contains_key(key), "{key}");
        }
        let (k, b) = c.find("bookworm").unwrap();
        assert_eq!(k, "debian-12");
        let s = b.source(k, "amd64", None).unwrap();
        assert_eq!(s.url, "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2");
        assert_eq!(s.algorithm, Algorithm::Sha512);
        assert_eq!(s.list, Some(("https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS".into(), ListFormat::Gnu)));
        assert!(b.source(k, "amd64", Some("generic")).unwrap().url.ends_with("debian-12-generic-amd64.qcow2"));
        assert_eq!(c.find("rocky-9").unwrap().1.source("rocky-9", "amd64", None).unwrap().list.unwrap().1, ListFormat::Bsd);
        let e = c.find("azurelinux-3").unwrap().1.source("azurelinux-3", "amd64", None).unwrap_err().to_string();
        assert!(e.contains("--base-image"), "{e}");
        let e = c.find("windows").unwrap_err().to_string();
        assert!(e.contains("debian-12") && e.contains("ubuntu-24.04"), "{e}");
        assert!(c.find("ubuntu").unwrap().0 == "ubuntu-24.04");
    }

    #[test]
    fn the_catalogues_list_formats_parse_with_kibs_checksum_list_reader() {
        use crate::fetch::sums::{find, Algo};
        let h512 = "ab".repeat(64);
        let gnu = format!("# comment\n{h512}  debian-12-genericcloud-amd64.qcow2\n{}  other.qcow2\n", "cd".repeat(64));
        let s = find(&gnu, "debian-12-genericcloud-amd64.qcow2").unwrap();
        assert_eq!((s.algo, s.hex), (Algo::Sha512, h512.clone()));
        assert_eq!(find(&format!("{h512} *dir/x.img\n"), "x.img").unwrap().hex, h512);
        let h = "0f".repeat(32);
        let bsd = format!("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# Rocky-9.qcow2: 123 bytes\nSHA256 (Rocky-9.qcow2) = {h}\nSHA256 (Rocky-9-LVM.qcow2) = {}\n", "1f".repeat(32));
        assert_eq!(find(&bsd, "Rocky-9.qcow2").unwrap().hex, h);
        assert!(find(&bsd, "Rocky-8.qcow2").is_none());
        assert!(version_matches("9.*", "9.4") && version_matches("12", "12") && !version_matches("12", "11"));
    }
}
