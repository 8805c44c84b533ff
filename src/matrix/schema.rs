//! The image matrix schema: what a `kind: ImageMatrix` YAML file may contain.
//!
//! Every struct denies unknown fields, so a typo is an error naming the file, line, column and
//! field, exactly as for manifests (the same parser, [`crate::manifest::parse_yaml`]).
//!
//! ```yaml
//! apiVersion: kib/v1
//! kind: ImageMatrix
//! metadata: {name: debian-12-nodes}
//! bases:                          # base name -> architecture -> image
//!   debian-12:
//!     amd64: {path: /var/cache/kib/base/debian-12-genericcloud-amd64.raw}   # SHA256SUMS beside it
//!     arm64: {url: https://cloud.debian.org/.../debian-12-genericcloud-arm64.raw, sha256: "…"}
//! release_channels: ["1-30", "1-37"]   # and/or manifests: [manifests/k8s-node-debian.yaml]
//! arches: [amd64, arm64]
//! formats: [qcow2, ova]           # every build writes these
//! variables: {preload_images: "false"}
//! overrides:                      # per-axis variables (and formats)
//!   - when: {arch: arm64}
//!     variables: {kubelet_extra_args: "--v=2"}
//! exclude:
//!   - {manifest: k8s-1.37, arch: arm64}
//! output: {dir: out/matrix, name: "<manifest>-<base>-<arch>"}
//! ```

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::format::{Format, Qcow2Compression};

/// One `kind: ImageMatrix` file.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    /// Must be `kib/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Must be `ImageMatrix`.
    pub kind: MatrixKind,
    #[serde(default)]
    pub metadata: MatrixMetadata,
    /// Named base images: base name to architecture to image. A base lacking an architecture
    /// that `arches` lists is an error unless an `exclude` entry removes that combination.
    pub bases: IndexMap<String, IndexMap<Arch, BaseImage>>,
    /// Manifest files (relative to this file's folder), one axis value each, named by the file
    /// stem (`manifests/k8s-node-debian.yaml` is `k8s-node-debian`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<String>,
    /// Release channels (`1-30`), resolved as `kib customize --release-channel` does, named by
    /// their manifest's stem (`k8s-1.30`). Joins `manifests` on the same axis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release_channels: Vec<String>,
    /// Provider axis: each value is passed to `kib customize --provider NAME` (which the providers
    /// work adds; until it is merged, a matrix with providers fails at run time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// The architectures to build.
    pub arches: Vec<Arch>,
    /// The formats every build writes (one customization, several conversions). Default: the
    /// manifest's own `output.formats`, else qcow2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<Format>,
    /// qcow2 compression for every build; default: the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qcow2_compression: Option<Qcow2Compression>,
    /// Variables for every build (`kib customize --set`); each must be declared by the manifest.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub variables: IndexMap<String, String>,
    /// Per-axis overrides, applied in order after `variables`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// Combinations not to build. Each entry removes the builds matching all of its keys; a value
    /// that is no axis value, or an entry that removes nothing, is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Selector>,
    #[serde(default)]
    pub output: MatrixOutput,
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
pub enum MatrixKind {
    ImageMatrix,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct MatrixMetadata {
    /// The matrix's name (the Job and Workflow names); defaults to the file's stem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An image architecture, Debian's spelling.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// `amd64` or `arm64`, as `${arch}` and Kubernetes' `kubernetes.io/arch` label spell it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One base image: a local `path` or a `url`, and where its SHA-256 comes from.
///
/// - `path`: relative to the matrix file's folder; its SHA-256 is `sha256` if given, else the
///   entry for it in the `SHA256SUMS` or `sha256sum.txt` beside it (which `kib customize`
///   verifies it against). Neither is an error: the build key needs the image's sum, and kib
///   does not read a multi-GB image on every plan.
/// - `url`: passed to `kib customize --disk-image URL` (which the URL work adds; until it is
///   merged, such builds fail at run time). Its SHA-256 is `sha256`, else the list at
///   `checksums` (a URL), else `SHA256SUMS` in the URL's folder, fetched through kib's fetcher
///   and cache at plan time.
#[derive(Debug, Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The image's SHA-256 (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// With `url`: the checksum list's URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksums: Option<String>,
}

/// One value or a list of values, in a selector.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order.
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Which builds an `exclude` entry or an override applies to: every key given must match (a
/// list matches any of its values); keys left out match everything.
#[derive(Debug, Deserialize, Serialize, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Manifest axis names (file stems: `k8s-1.30`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<OneOrMany>,
}

/// Variables (and formats) for the builds a selector matches.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub when: Selector,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub variables: IndexMap<String, String>,
    /// Replaces the matrix's `formats` for these builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formats: Option<Vec<Format>>,
}

/// Where builds go and what they are called.
#[derive(Debug, Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct MatrixOutput {
    /// The output root, relative to the current folder (`--output-dir` overrides it): each build
    /// writes `<dir>/<name>/`, its log `<dir>/logs/<name>.log`, and the run `<dir>/matrix.json`.
    /// Default `out/matrix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The build name pattern: `<manifest>`, `<base>`, `<arch>`, `<provider>` are replaced.
    /// Default `<manifest>-<base>-<arch>`, plus `-<provider>` when there are providers. Names
    /// must be unique and plain file names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
