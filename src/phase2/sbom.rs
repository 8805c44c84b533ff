//! Software bills of materials in the two standard formats: SPDX 2.3 JSON (`<name>.spdx.json`)
//! and CycloneDX 1.5 JSON (`<name>.cdx.json`), for vulnerability scanners and auditors.
//!
//! Both are built from one neutral [`SbomInput`]: `kib customize` makes it from the [`Bom`]
//! ([`SbomInput::from_bom`]), `kib inspect --sbom` from what the image's package database says
//! ([`SbomInput::for_image`]). They list:
//! - the image itself (the document's subject; for a build, with the sha256 of each artifact),
//! - its operating system (os-release `ID` and `VERSION_ID`), which scanners use to pick a
//!   vulnerability feed,
//! - every installed package, with its purl
//!   (`pkg:deb/debian/containerd@1.6.20~ds1-1%2Bb1?arch=amd64&distro=debian-12`, plus
//!   `upstream=<source package>` where it differs, as syft writes it and grype matches Debian's
//!   source-package advisories) and, where its copyright file declares one, its licence,
//! - every downloaded artifact, with its URL (as the manifest names it, credentials already
//!   redacted by the fetcher: never the mirror) and sha256, and a generic purl
//!   (`pkg:generic/crictl-v1.30.0-linux-amd64.tar.gz?checksum=sha256:…&download_url=…`),
//! - every pre-loaded container image, with its digest and an OCI purl
//!   (`pkg:oci/pause@sha256:…?repository_url=registry.k8s.io/pause&tag=3.9`; the purl spec leaves
//!   `:` unencoded everywhere).
//!
//! Crates (checked on crates.io before adopting):
//! - `cyclonedx-bom` (the CycloneDX organization's own Rust library, 0.8, current, used by
//!   cargo-cyclonedx) models and serializes CycloneDX 1.5; its `validate` is run on every
//!   document built.
//! - `packageurl` (scm-rs, maintained) builds purls with the spec's encoding rules. 0.6 is used
//!   because 0.7 needs a newer Rust than the project's declared `rust-version`.
//! - `oci-spec` (the youki/containers project) parses image references, with Docker's
//!   normalization (`pause:3.9` is `docker.io/library/pause`).
//! - `spdx` (Embark Studios) validates licence identifiers and expressions (see
//!   [`crate::phase2::license`]).
//! - SPDX itself is written with typed serde structs here: `spdx-rs`, the one Rust SPDX model,
//!   writes SPDX 2.2 documents, is edition 2018 and little maintained, and the subset of
//!   SPDX 2.3 needed is small.

use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use cyclonedx_bom::external_models::date_time::DateTime;
use cyclonedx_bom::external_models::normalized_string::NormalizedString;
use cyclonedx_bom::external_models::uri::{Purl, Uri};
use cyclonedx_bom::models::bom::{Bom as CdxBom, UrnUuid};
use cyclonedx_bom::models::component::{Classification, Component, Components};
use cyclonedx_bom::models::external_reference::{ExternalReference, ExternalReferenceType, ExternalReferences};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::license::{License, LicenseChoice, Licenses};
use cyclonedx_bom::models::metadata::Metadata;
use cyclonedx_bom::models::property::{Properties, Property};
use cyclonedx_bom::models::tool::{Tool, Tools};
use cyclonedx_bom::validation::Validate;
use indexmap::IndexMap;
use packageurl::PackageUrl;
use serde::Serialize;

use crate::bom::Bom;
use crate::pkg::{Package, PackageKind};

/// An SBOM format, as `kib inspect --sbom` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SbomFormat {
    /// SPDX 2.3, JSON.
    Spdx,
    /// CycloneDX 1.5, JSON.
    Cyclonedx,
}

impl SbomFormat {
    /// The file name suffix kib gives it: `spdx.json` or `cdx.json`.
    pub fn suffix(self) -> &'static str {
        match self {
            SbomFormat::Spdx => "spdx.json",
            SbomFormat::Cyclonedx => "cdx.json",
        }
    }

    /// The document, pretty-printed JSON.
    pub fn render(self, input: &SbomInput) -> Result<Vec<u8>> {
        match self {
            SbomFormat::Spdx => spdx_json(input),
            SbomFormat::Cyclonedx => cyclonedx_json(input),
        }
    }
}

/// Writes `<name>.spdx.json` and `<name>.cdx.json` into `dir` (the build's staging folder).
/// Returns each file name with the SHA-256 (hex) of what was written, for `SHA256SUMS`.
pub fn write_all(input: &SbomInput, dir: &std::path::Path, name: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for format in [SbomFormat::Spdx, SbomFormat::Cyclonedx] {
        let file = format!("{name}.{}", format.suffix());
        let bytes = format.render(input).with_context(|| format!("building {file}"))?;
        let path = dir.join(&file);
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        out.push((file, crate::hash::sha256_bytes(&bytes)));
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, renamed over it, so
/// a reader never sees half a document and a failure leaves no file.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok(())
}

/// A downloaded artifact, as the SBOMs list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The URL as the manifest names it, credentials redacted (never the mirror it came from).
    pub url: String,
    /// Lowercase hex SHA-256 of its content.
    pub sha256: String,
    /// The step that fetched it.
    pub step: String,
}

/// A container image pre-loaded into the image's containerd store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// Its reference, such as `registry.k8s.io/pause:3.9`.
    pub reference: String,
    /// The manifest or index digest, `sha256:<hex>`.
    pub digest: String,
    /// The containerd namespace, such as `k8s.io`.
    pub namespace: String,
}

/// A file the SBOM's subject consists of: an output artifact and its SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectFile {
    pub file: String,
    pub sha256: String,
}

/// Everything both SBOM formats are built from; independent of where it came from.
#[derive(Debug, Clone)]
pub struct SbomInput {
    /// The subject: the output name of a build, or the image file name for `kib inspect`.
    pub name: String,
    /// When the document was made, RFC 3339 UTC with seconds (`2024-05-01T10:00:00Z`).
    pub created: String,
    /// A fresh random UUID: the CycloneDX serial number and the tail of the SPDX namespace,
    /// so that the two documents of one build share it.
    pub serial: uuid::Uuid,
    /// The files the subject consists of (a build's artifacts); empty for `kib inspect`.
    pub files: Vec<SubjectFile>,
    /// The image's `/etc/os-release`.
    pub os_release: IndexMap<String, String>,
    /// The image's architecture (`amd64`, `arm64`).
    pub architecture: String,
    pub packages: Vec<Package>,
    /// Distinct by URL and sha256, in the order the steps fetched them.
    pub downloads: Vec<Download>,
    /// Distinct by reference and digest, in load order.
    pub images: Vec<ContainerImage>,
}

impl SbomInput {
    /// The input for the image a build made: its packages, downloads and images from `bom`, and
    /// its artifacts with their sha256.
    pub fn from_bom(bom: &Bom, name: &str) -> Self {
        let mut downloads: Vec<Download> = Vec::new();
        let mut images: Vec<ContainerImage> = Vec::new();
        for step in &bom.steps {
            for d in &step.downloads {
                let d = Download { url: d.url.clone(), sha256: d.sha256.clone(), step: step.name.clone() };
                if !downloads.iter().any(|x| x.url == d.url && x.sha256 == d.sha256) {
                    downloads.push(d);
                }
            }
            for i in &step.images {
                let i = ContainerImage { reference: i.name.clone(), digest: i.digest.clone(), namespace: i.namespace.clone() };
                if !images.iter().any(|x| x.reference == i.reference && x.digest == i.digest) {
                    images.push(i);
                }
            }
        }
        SbomInput {
            name: name.to_string(),
            created: bom.build_started.clone(),
            serial: uuid::Uuid::new_v4(),
            files: bom.artifacts.iter().map(|a| SubjectFile { file: a.file.clone(), sha256: a.sha256.clone() }).collect(),
            os_release: bom.os_release.clone(),
            architecture: bom.architecture.clone(),
            packages: bom.packages.clone(),
            downloads,
            images,
        }
    }

    /// The input for an image inspected read-only (`kib inspect --sbom`): `name` (the image's
    /// file name), its os-release, architecture and installed packages. Downloads and
    /// pre-loaded images are not recorded inside an image, so they are absent.
    pub fn for_image(name: &str, os_release: IndexMap<String, String>, architecture: &str, packages: Vec<Package>) -> Self {
        SbomInput {
            name: name.to_string(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            serial: uuid::Uuid::new_v4(),
            files: Vec::new(),
            os_release,
            architecture: architecture.to_string(),
            packages,
            downloads: Vec::new(),
            images: Vec::new(),
        }
    }

    fn os_id(&self) -> String {
        self.os_release.get("ID").map_or_else(|| "linux".to_string(), |s| s.to_ascii_lowercase())
    }

    fn os_version(&self) -> Option<&str> {
        self.os_release.get("VERSION_ID").map(String::as_str).filter(|s| !s.is_empty())
    }
}

/// The purl of an installed package, by the purl spec's rules for its type:
/// - deb: `pkg:deb/<os id>/<name>@<version>?arch=<arch>&distro=<id>-<version_id>[&upstream=<source>]`;
/// - rpm: `pkg:rpm/<os id>/<name>@<version>-<release>?arch=<arch>[&epoch=<n>]&distro=<id>-<version_id>[&upstream=<source rpm>]`.
pub fn package_purl(input: &SbomInput, p: &Package) -> Result<String> {
    let ns = input.os_id();
    let (ty, version) = match p.kind {
        PackageKind::Deb => ("deb", p.version.clone()),
        PackageKind::Rpm => ("rpm", p.release.as_deref().map_or_else(|| p.version.clone(), |r| format!("{}-{r}", p.version))),
    };
    let e = |e: packageurl::Error| anyhow!("purl of package `{}`: {e}", p.name);
    let mut purl = PackageUrl::new(ty, p.name.as_str()).with_context(|| format!("purl of package `{}`", p.name))?;
    purl.with_namespace(ns.as_str()).map_err(|e| anyhow!("purl namespace `{ns}`: {e}"))?;
    if !version.is_empty() {
        purl.with_version(version).map_err(e)?;
    }
    if !p.architecture.is_empty() {
        purl.add_qualifier("arch", p.architecture.as_str()).map_err(e)?;
    }
    if let Some(epoch) = p.epoch {
        purl.add_qualifier("epoch", epoch.to_string()).map_err(e)?;
    }
    if let Some(v) = input.os_version() {
        purl.add_qualifier("distro", format!("{ns}-{v}")).map_err(e)?;
    }
    if let Some(src) = &p.source {
        purl.add_qualifier("upstream", src.as_str()).map_err(e)?;
    }
    Ok(purl.to_string())
}

fn kind_name(k: PackageKind) -> &'static str {
    match k {
        PackageKind::Deb => "deb",
        PackageKind::Rpm => "rpm",
    }
}

/// The last path segment of a URL, without query or fragment: the artifact's file name.
fn url_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path).to_string()
}

/// The purl of a downloaded artifact: `pkg:generic/<file name>?checksum=sha256:<hex>&download_url=<url>`.
pub fn download_purl(d: &Download) -> Result<String> {
    let name = url_file_name(&d.url);
    let mut purl = PackageUrl::new("generic", name.as_str()).with_context(|| format!("purl of download {}", d.url))?;
    purl.add_qualifier("checksum", format!("sha256:{}", d.sha256)).map_err(|e| anyhow!("purl of download {}: {e}", d.url))?;
    purl.add_qualifier("download_url", d.url.as_str()).map_err(|e| anyhow!("purl of download {}: {e}", d.url))?;
    Ok(purl.to_string())
}

/// An image reference split the way the OCI purl wants it.
struct ImageRef {
    /// `registry/repository`, such as `registry.k8s.io/pause` or `docker.io/library/nginx`.
    repository_url: String,
    /// The last repository segment: the purl's name.
    name: String,
    tag: Option<String>,
}

fn image_ref(reference: &str) -> Result<ImageRef> {
    let r = oci_spec::distribution::Reference::from_str(reference).map_err(|e| anyhow!("image reference `{reference}`: {e}"))?;
    let repository = r.repository();
    Ok(ImageRef {
        repository_url: format!("{}/{repository}", r.registry()),
        name: repository.rsplit('/').next().unwrap_or(repository).to_ascii_lowercase(),
        tag: r.tag().map(str::to_string),
    })
}

/// The purl of a pre-loaded image: `pkg:oci/<name>@sha256:<hex>?repository_url=<registry/repo>&tag=<tag>`.
pub fn image_purl(i: &ContainerImage) -> Result<String> {
    let r = image_ref(&i.reference)?;
    let mut purl = PackageUrl::new("oci", r.name.as_str()).with_context(|| format!("purl of image {}", i.reference))?;
    purl.with_version(i.digest.as_str()).map_err(|e| anyhow!("purl of image {}: {e}", i.reference))?;
    purl.add_qualifier("repository_url", r.repository_url.as_str()).map_err(|e| anyhow!("purl of image {}: {e}", i.reference))?;
    if let Some(tag) = &r.tag {
        purl.add_qualifier("tag", tag.as_str()).map_err(|e| anyhow!("purl of image {}: {e}", i.reference))?;
    }
    Ok(purl.to_string())
}

fn is_archive(file: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar.bz2", ".zip"].iter().any(|s| file.ends_with(s))
}

fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------------
// SPDX 2.3

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxDocument {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<SpdxPackage>,
    relationships: Vec<Relationship>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
    license_list_version: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    name: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    download_location: String,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<SpdxChecksum>,
    license_concluded: String,
    license_declared: String,
    copyright_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<SpdxExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxChecksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

const NOASSERTION: &str = "NOASSERTION";

impl SpdxPackage {
    fn new(name: String, spdx_id: String) -> Self {
        SpdxPackage {
            name,
            spdx_id,
            version_info: None,
            download_location: NOASSERTION.into(),
            files_analyzed: false,
            checksums: Vec::new(),
            license_concluded: NOASSERTION.into(),
            license_declared: NOASSERTION.into(),
            copyright_text: NOASSERTION.into(),
            source_info: None,
            primary_package_purpose: None,
            external_refs: Vec::new(),
            comment: None,
        }
    }

    fn purl(&mut self, purl: String) {
        self.external_refs.push(SpdxExternalRef { reference_category: "PACKAGE-MANAGER", reference_type: "purl", reference_locator: purl });
    }
}

/// `SPDXRef-<kind>-<n>-<name>`, with the characters SPDX ids forbid replaced; `n` keeps it
/// unique.
fn spdx_ref(kind: &str, n: usize, name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    format!("SPDXRef-{kind}-{n}-{clean}")
}

/// The SPDX 2.3 document, pretty-printed JSON.
pub fn spdx_json(input: &SbomInput) -> Result<Vec<u8>> {
    let safe_name: String = input.name.chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '-' }).collect();
    let mut packages = Vec::new();
    let mut relationships = Vec::new();
    let root_id = "SPDXRef-Image".to_string();
    let mut root = SpdxPackage::new(input.name.clone(), root_id.clone());
    root.primary_package_purpose = Some("FILE");
    if !input.files.is_empty() {
        root.comment = Some(format!(
            "Disk image built by kib, written as: {}",
            input.files.iter().map(|f| format!("{} (sha256 {})", f.file, f.sha256)).collect::<Vec<_>>().join(", ")
        ));
    }
    packages.push(root);
    relationships.push(Relationship { spdx_element_id: "SPDXRef-DOCUMENT".into(), relationship_type: "DESCRIBES", related_spdx_element: root_id.clone() });
    let contains = |id: &str| Relationship { spdx_element_id: root_id.clone(), relationship_type: "CONTAINS", related_spdx_element: id.to_string() };

    let os_id = input.os_id();
    let mut os = SpdxPackage::new(os_id.clone(), "SPDXRef-OperatingSystem".into());
    os.version_info = input.os_version().map(str::to_string);
    os.primary_package_purpose = Some("OPERATING_SYSTEM");
    os.comment = input.os_release.get("PRETTY_NAME").cloned();
    relationships.push(contains(&os.spdx_id));
    packages.push(os);

    for (n, p) in input.packages.iter().enumerate() {
        let mut pkg = SpdxPackage::new(p.name.clone(), spdx_ref(&format!("Package-{}", kind_name(p.kind)), n + 1, &p.name));
        pkg.version_info = Some(p.full_version()).filter(|v| !v.is_empty());
        pkg.source_info = p.source.as_ref().map(|s| format!("built package from: {s}"));
        if let Some(l) = &p.license {
            if let Some(e) = &l.spdx {
                pkg.license_declared = e.clone();
            }
            pkg.comment = Some(format!("Licences in /usr/share/doc/{}/copyright: {}", p.name, l.declared.join(", ")));
        }
        pkg.purl(package_purl(input, p)?);
        relationships.push(contains(&pkg.spdx_id));
        packages.push(pkg);
    }
    for (n, d) in input.downloads.iter().enumerate() {
        let file = url_file_name(&d.url);
        let mut pkg = SpdxPackage::new(file.clone(), spdx_ref("Download", n + 1, &file));
        pkg.download_location = d.url.clone();
        pkg.checksums.push(SpdxChecksum { algorithm: "SHA256", checksum_value: d.sha256.clone() });
        pkg.primary_package_purpose = Some(if is_archive(&file) { "ARCHIVE" } else { "FILE" });
        pkg.comment = Some(format!("Downloaded by kib step `{}`", d.step));
        pkg.purl(download_purl(d)?);
        relationships.push(contains(&pkg.spdx_id));
        packages.push(pkg);
    }
    for (n, i) in input.images.iter().enumerate() {
        let r = image_ref(&i.reference)?;
        let mut pkg = SpdxPackage::new(r.repository_url.clone(), spdx_ref("ContainerImage", n + 1, &r.name));
        pkg.version_info = Some(r.tag.clone().unwrap_or_else(|| i.digest.clone()));
        if let Some(hex) = digest_hex(&i.digest) {
            pkg.checksums.push(SpdxChecksum { algorithm: "SHA256", checksum_value: hex.to_string() });
        }
        pkg.primary_package_purpose = Some("CONTAINER");
        pkg.comment = Some(format!("Pre-loaded as {} ({}) in containerd namespace {}", i.reference, i.digest, i.namespace));
        pkg.purl(image_purl(i)?);
        relationships.push(contains(&pkg.spdx_id));
        packages.push(pkg);
    }
    let doc = SpdxDocument {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: input.name.clone(),
        document_namespace: format!("https://spdx.org/spdxdocs/kib-{safe_name}-{}", input.serial),
        creation_info: CreationInfo {
            created: input.created.clone(),
            creators: vec![format!("Tool: kib-{}", env!("CARGO_PKG_VERSION"))],
            // SPDX 2.3 §6.7: "M.N"; the spdx crate says "3.29.0", which pyspdxtools refuses.
            license_list_version: spdx::license_version().split('.').take(2).collect::<Vec<_>>().join("."),
        },
        packages,
        relationships,
    };
    let mut out = serde_json::to_vec_pretty(&doc).context("serializing the SPDX document")?;
    out.push(b'\n');
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// CycloneDX 1.5

fn sha256_hash(hex: &str) -> Hash {
    Hash { alg: HashAlgorithm::SHA_256, content: HashValue(hex.to_string()) }
}

fn property(name: &str, value: &str) -> Property {
    Property::new(name, value)
}

fn component(kind: Classification, name: &str, version: Option<&str>, bom_ref: String) -> Component {
    let mut c = Component::new(kind, name, version.unwrap_or(""), Some(bom_ref));
    c.version = version.filter(|v| !v.is_empty()).map(NormalizedString::new);
    c
}

/// The CycloneDX 1.5 document, pretty-printed JSON. The document is checked with the
/// `cyclonedx-bom` crate's validation; findings are logged as warnings (the JSON schema tests
/// are the gate).
pub fn cyclonedx_json(input: &SbomInput) -> Result<Vec<u8>> {
    let created = DateTime::try_from(input.created.clone()).map_err(|e| anyhow!("SBOM timestamp `{}`: {e}", input.created))?;
    let root_ref = format!("kib:image:{}", input.name);
    let mut root = component(Classification::File, &input.name, None, root_ref);
    let mut root_props = vec![property("kib:architecture", &input.architecture)];
    for f in &input.files {
        root_props.push(property("kib:artifact", &format!("{} sha256:{}", f.file, f.sha256)));
    }
    root.properties = Some(Properties(root_props));
    let mut metadata = Metadata { timestamp: Some(created), ..Default::default() };
    metadata.tools = Some(Tools::List(vec![Tool::new("kib", "kib", env!("CARGO_PKG_VERSION"))]));
    metadata.component = Some(root);

    let mut components = Vec::new();
    let os_id = input.os_id();
    let mut os = component(Classification::OperatingSystem, &os_id, input.os_version(), format!("kib:os:{os_id}"));
    os.description = input.os_release.get("PRETTY_NAME").map(|s| NormalizedString::new(s));
    components.push(os);
    for p in &input.packages {
        let purl = package_purl(input, p)?;
        let mut c = component(Classification::Library, &p.name, Some(&p.full_version()), purl.clone());
        c.purl = Some(Purl::from_str(&purl).map_err(|()| anyhow!("purl {purl}"))?);
        if let Some(l) = &p.license {
            c.licenses = Some(Licenses(match &l.spdx {
                Some(e) if spdx::license_id(e).is_some_and(|id| id.name == e) => vec![LicenseChoice::License(License::license_id(e))],
                Some(e) => vec![LicenseChoice::expression(e)],
                None => l.declared.iter().map(|n| LicenseChoice::License(License::named_license(n))).collect(),
            }));
        }
        let mut props = Vec::new();
        if let Some(s) = &p.source {
            props.push(property(&format!("kib:{}:source", kind_name(p.kind)), s));
        }
        if p.held {
            props.push(property(&format!("kib:{}:held", kind_name(p.kind)), "true"));
        }
        if !props.is_empty() {
            c.properties = Some(Properties(props));
        }
        components.push(c);
    }
    for d in &input.downloads {
        let purl = download_purl(d)?;
        let mut c = component(Classification::File, &url_file_name(&d.url), None, purl.clone());
        c.purl = Some(Purl::from_str(&purl).map_err(|()| anyhow!("purl {purl}"))?);
        c.hashes = Some(Hashes(vec![sha256_hash(&d.sha256)]));
        c.external_references = Some(ExternalReferences(vec![ExternalReference::new(ExternalReferenceType::Distribution, Uri::new(&d.url))]));
        c.properties = Some(Properties(vec![property("kib:step", &d.step)]));
        components.push(c);
    }
    for i in &input.images {
        let r = image_ref(&i.reference)?;
        let purl = image_purl(i)?;
        let mut c = component(Classification::Container, &r.repository_url, Some(r.tag.as_deref().unwrap_or(&i.digest)), purl.clone());
        c.purl = Some(Purl::from_str(&purl).map_err(|()| anyhow!("purl {purl}"))?);
        if let Some(hex) = digest_hex(&i.digest) {
            c.hashes = Some(Hashes(vec![sha256_hash(hex)]));
        }
        c.properties = Some(Properties(vec![property("kib:image:reference", &i.reference), property("kib:image:digest", &i.digest), property("kib:containerd:namespace", &i.namespace)]));
        components.push(c);
    }
    let bom = CdxBom {
        serial_number: Some(UrnUuid::from(input.serial)),
        metadata: Some(metadata),
        components: Some(Components(components)),
        spec_version: cyclonedx_bom::models::bom::SpecVersion::V1_5,
        ..Default::default()
    };
    let result = bom.validate_version(cyclonedx_bom::models::bom::SpecVersion::V1_5);
    if !result.passed() {
        tracing::warn!("the CycloneDX document does not pass cyclonedx-bom's validation: {result:?}");
    }
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out).map_err(|e| anyhow!("serializing the CycloneDX document: {e}"))?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
#[path = "../../tests/common/sbom_schema.rs"]
mod sbom_schema;

#[cfg(test)]
mod tests {
    use super::sbom_schema::{assert_schema_valid, schema_errors, SbomKind};
    use super::*;
    use crate::pkg::dpkg::parse_status as parse_dpkg_status;
    use crate::pkg::license::parse_copyright;

    const SHA_A: &str = "7c3807c0f5c1b30110a2ff1e55da1d112a6d0096201f1beb81b269f582b5d1c5";
    const SHA_B: &str = "0d6f0b8ab82a8b5b5dd46cd34acb1ab0c8ddba1ac96ac29b03d4c4a3b1b9a45f";

    fn input() -> SbomInput {
        let status = "Package: containerd\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 1.6.20~ds1-1+b1\n\n\
                      Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u7\n\n\
                      Package: libstdc++6\nStatus: install ok installed\nArchitecture: amd64\nSource: gcc-12 (12.2.0-14)\nVersion: 12.2.0-14\n\n\
                      Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n";
        let mut packages = parse_dpkg_status(status).unwrap();
        let dep5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n";
        packages[0].license = parse_copyright(&format!("{dep5}Files: *\nLicense: Apache-2.0\n\nFiles: vendor/*\nLicense: Expat\n"));
        packages[1].license = parse_copyright(&format!("{dep5}Files: *\nLicense: LGPL-2.1+\n\nFiles: debian/*\nLicense: GPL-2+\n"));
        packages[2].license = parse_copyright(&format!("{dep5}Files: *\nLicense: GPL-3+ with GCC-exception-3.1\n"));
        packages[3].license = parse_copyright(&format!("{dep5}Files: *\nLicense: public-domain and SomethingElse\n"));
        let os_release = [("PRETTY_NAME", "Debian GNU/Linux 12 (bookworm)"), ("NAME", "Debian GNU/Linux"), ("VERSION_ID", "12"), ("ID", "debian")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SbomInput {
            name: "k8s-node-debian".into(),
            created: "2024-05-01T10:00:00Z".into(),
            serial: uuid::Uuid::parse_str("8c4e1ba6-4f5b-4b5e-9d0e-3f2c1a7b9e10").unwrap(),
            files: vec![SubjectFile { file: "k8s-node-debian.qcow2".into(), sha256: SHA_B.into() }],
            os_release,
            architecture: "amd64".into(),
            packages,
            downloads: vec![
                Download { url: "https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubectl".into(), sha256: SHA_A.into(), step: "kubectl".into() },
                Download { url: "https://***@artifacts.example.com/crictl-v1.30.0-linux-amd64.tar.gz?x=1".into(), sha256: SHA_B.into(), step: "crictl".into() },
            ],
            images: vec![
                ContainerImage { reference: "registry.k8s.io/pause:3.9".into(), digest: format!("sha256:{SHA_A}"), namespace: "k8s.io".into() },
                ContainerImage { reference: "nginx:1.25".into(), digest: format!("sha256:{SHA_B}"), namespace: "k8s.io".into() },
            ],
        }
    }

    #[test]
    fn purls_follow_the_purl_spec() {
        let i = input();
        assert_eq!(package_purl(&i, &i.packages[0]).unwrap(), "pkg:deb/debian/containerd@1.6.20~ds1-1%2Bb1?arch=amd64&distro=debian-12");
        assert_eq!(package_purl(&i, &i.packages[2]).unwrap(), "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12&upstream=gcc-12");
        assert_eq!(
            image_purl(&i.images[0]).unwrap(),
            format!("pkg:oci/pause@sha256:{SHA_A}?repository_url=registry.k8s.io/pause&tag=3.9")
        );
        assert_eq!(
            image_purl(&i.images[1]).unwrap(),
            format!("pkg:oci/nginx@sha256:{SHA_B}?repository_url=docker.io/library/nginx&tag=1.25")
        );
        let d = download_purl(&i.downloads[0]).unwrap();
        assert_eq!(d, format!("pkg:generic/kubectl?checksum=sha256:{SHA_A}&download_url=https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubectl"));
        // Every purl reads back with the other purl implementation (the one cyclonedx-bom validates with).
        for p in [package_purl(&i, &i.packages[1]).unwrap(), image_purl(&i.images[0]).unwrap(), download_purl(&i.downloads[1]).unwrap()] {
            let parsed = PackageUrl::from_str(&p).unwrap();
            assert!(["deb", "oci", "generic"].contains(&parsed.ty()), "{p}");
        }
    }

    #[test]
    fn spdx_document_is_valid_and_complete() {
        let i = input();
        let doc: serde_json::Value = serde_json::from_slice(&spdx_json(&i).unwrap()).unwrap();
        assert_schema_valid(&doc, SbomKind::Spdx23);
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["documentNamespace"], "https://spdx.org/spdxdocs/kib-k8s-node-debian-8c4e1ba6-4f5b-4b5e-9d0e-3f2c1a7b9e10");
        let pkgs = doc["packages"].as_array().unwrap();
        // image, OS, 4 packages, 2 downloads, 2 images
        assert_eq!(pkgs.len(), 10);
        let ids: std::collections::HashSet<&str> = pkgs.iter().map(|p| p["SPDXID"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), pkgs.len(), "SPDX ids are not unique");
        let by_name = |n: &str| pkgs.iter().find(|p| p["name"] == n).unwrap_or_else(|| panic!("{n} missing"));
        let c = by_name("containerd");
        assert_eq!(c["externalRefs"][0]["referenceLocator"], "pkg:deb/debian/containerd@1.6.20~ds1-1%2Bb1?arch=amd64&distro=debian-12");
        assert_eq!(c["licenseDeclared"], "Apache-2.0 AND MIT");
        assert_eq!(by_name("libc6")["licenseDeclared"], "LGPL-2.1-or-later AND GPL-2.0-or-later");
        assert_eq!(by_name("libc6")["sourceInfo"], "built package from: glibc");
        assert_eq!(by_name("libstdc++6")["licenseDeclared"], "GPL-3.0-or-later WITH GCC-exception-3.1");
        assert_eq!(by_name("tzdata")["licenseDeclared"], "NOASSERTION");
        assert_eq!(by_name("debian")["primaryPackagePurpose"], "OPERATING_SYSTEM");
        let kubectl = by_name("kubectl");
        assert_eq!(kubectl["downloadLocation"], "https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubectl");
        assert_eq!(kubectl["checksums"][0]["checksumValue"], SHA_A);
        let crictl = by_name("crictl-v1.30.0-linux-amd64.tar.gz");
        assert_eq!(crictl["primaryPackagePurpose"], "ARCHIVE");
        let pause = by_name("registry.k8s.io/pause");
        assert_eq!(pause["versionInfo"], "3.9");
        assert_eq!(pause["checksums"][0]["checksumValue"], SHA_A);
        let rels = doc["relationships"].as_array().unwrap();
        assert_eq!(rels.iter().filter(|r| r["relationshipType"] == "DESCRIBES").count(), 1);
        assert_eq!(rels.iter().filter(|r| r["relationshipType"] == "CONTAINS").count(), 9);
    }

    #[test]
    fn cyclonedx_document_is_valid_and_complete() {
        let i = input();
        let bytes = cyclonedx_json(&i).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_schema_valid(&doc, SbomKind::CycloneDx15);
        // The CycloneDX library reads it back and finds nothing to object to (purls, SPDX ids,
        // expressions, hashes, URLs).
        let back = CdxBom::parse_from_json_v1_5(bytes.as_slice()).unwrap();
        let result = back.validate_version(cyclonedx_bom::models::bom::SpecVersion::V1_5);
        assert!(result.passed(), "{result:?}");
        assert_eq!(doc["specVersion"], "1.5");
        assert_eq!(doc["serialNumber"], "urn:uuid:8c4e1ba6-4f5b-4b5e-9d0e-3f2c1a7b9e10");
        assert_eq!(doc["metadata"]["component"]["name"], "k8s-node-debian");
        let comps = doc["components"].as_array().unwrap();
        assert_eq!(comps.len(), 9);
        let by_name = |n: &str| comps.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(by_name("debian")["type"], "operating-system");
        assert_eq!(by_name("debian")["version"], "12");
        let c = by_name("containerd");
        assert_eq!(c["purl"], "pkg:deb/debian/containerd@1.6.20~ds1-1%2Bb1?arch=amd64&distro=debian-12");
        assert_eq!(c["bom-ref"], c["purl"]);
        assert_eq!(c["licenses"][0]["expression"], "Apache-2.0 AND MIT");
        assert_eq!(by_name("tzdata")["licenses"][0]["license"]["name"], "public-domain and SomethingElse");
        let kubectl = by_name("kubectl");
        assert_eq!(kubectl["hashes"][0]["alg"], "SHA-256");
        assert_eq!(kubectl["hashes"][0]["content"], SHA_A);
        assert_eq!(kubectl["externalReferences"][0]["url"], "https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubectl");
        let nginx = by_name("docker.io/library/nginx");
        assert_eq!(nginx["type"], "container");
        assert_eq!(nginx["purl"], format!("pkg:oci/nginx@sha256:{SHA_B}?repository_url=docker.io/library/nginx&tag=1.25"));
    }

    #[test]
    fn a_lone_spdx_identifier_is_a_cyclonedx_license_id() {
        let mut i = input();
        i.packages[0].license = parse_copyright("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-2+\n");
        let doc: serde_json::Value = serde_json::from_slice(&cyclonedx_json(&i).unwrap()).unwrap();
        assert_schema_valid(&doc, SbomKind::CycloneDx15);
        assert_eq!(doc["components"][1]["licenses"][0]["license"]["id"], "GPL-2.0-or-later");
    }

    #[test]
    fn the_schemas_reject_broken_documents() {
        let i = input();
        let mut spdx: serde_json::Value = serde_json::from_slice(&spdx_json(&i).unwrap()).unwrap();
        spdx["packages"][2]["externalRefs"][0]["referenceCategory"] = "PACKAGE MANAGER".into();
        spdx.as_object_mut().unwrap().remove("creationInfo");
        assert_eq!(schema_errors(&spdx, SbomKind::Spdx23).len(), 2, "{:?}", schema_errors(&spdx, SbomKind::Spdx23));
        let mut cdx: serde_json::Value = serde_json::from_slice(&cyclonedx_json(&i).unwrap()).unwrap();
        cdx["components"][1]["licenses"][0] = serde_json::json!({"license": {"id": "GPL-2+"}});
        assert!(!schema_errors(&cdx, SbomKind::CycloneDx15).is_empty(), "a bad SPDX id in spdx.schema.json's enum passed");
    }

    #[test]
    fn an_inspected_image_has_packages_only() {
        let i = input();
        let from = SbomInput::for_image("debian-12.qcow2", i.os_release.clone(), "arm64", i.packages.clone());
        assert_eq!(from.name, "debian-12.qcow2");
        assert_eq!(from.packages.len(), 4);
        assert!(from.downloads.is_empty() && from.images.is_empty() && from.files.is_empty());
        let doc: serde_json::Value = serde_json::from_slice(&spdx_json(&from).unwrap()).unwrap();
        assert_schema_valid(&doc, SbomKind::Spdx23);
    }

    #[test]
    fn rpm_purls_follow_the_purl_spec() {
        let mut i = input();
        i.os_release.insert("ID".into(), "rocky".into());
        i.os_release.insert("VERSION_ID".into(), "9.4".into());
        let p = Package {
            name: "containerd.io".into(),
            kind: PackageKind::Rpm,
            epoch: Some(0),
            version: "1.7.20".into(),
            release: Some("3.1.el9".into()),
            architecture: "x86_64".into(),
            source: None,
            held: true,
            license: None,
        };
        assert_eq!(package_purl(&i, &p).unwrap(), "pkg:rpm/rocky/containerd.io@1.7.20-3.1.el9?arch=x86_64&distro=rocky-9.4&epoch=0");
        assert_eq!(p.full_version(), "0:1.7.20-3.1.el9");
        i.packages = vec![p];
        let doc: serde_json::Value = serde_json::from_slice(&cyclonedx_json(&i).unwrap()).unwrap();
        assert_schema_valid(&doc, SbomKind::CycloneDx15);
        assert_eq!(doc["components"][1]["version"], "0:1.7.20-3.1.el9");
    }
}
