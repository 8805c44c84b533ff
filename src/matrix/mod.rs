//! Image matrices (`kind: ImageMatrix`): many single-image builds declared in one file.
//!
//! kib stays a single-image builder: a matrix expands ([`Plan::load`]) into a list of builds,
//! each of which is one `kib customize` run with its own input image, manifest, `--set`
//! variables, formats, output folder and log. `kib matrix run` runs them on this host,
//! `kib matrix render` ([`render`]) writes a Kubernetes Indexed Job or an Argo Workflow whose
//! pods each run one of them (`kib matrix run --index I`).
//!
//! Every build has a **build key** ([`KeyInput::key`]): the SHA-256 of the input image's SHA-256,
//! the resolved manifest (the SHA-256 of every file read, includes included, the final
//! variables, and the `file.source` files its steps copy), the formats, the architecture,
//! provider and output name, and kib's version. A build whose output folder holds a stamp
//! ([`Stamp`]) with the same key and every output it lists is up to date and is not rebuilt.


pub mod render;
pub mod run;
pub mod schema;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::fetch::Fetcher;
use crate::format::Format;
use crate::manifest::{self, Action};
use crate::phase0::verify;
pub use schema::*;

/// The default output root (relative to the current folder).
pub const DEFAULT_OUTPUT_DIR: &str = "out/matrix";
/// The default build name pattern.
pub const DEFAULT_NAME: &str = "<manifest>-<base>-<arch>";
/// The stamp file each build's output folder gets.
pub const STAMP_FILE: &str = "matrix-build.json";

/// One manifest axis value.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestRef {
    /// Its axis name: the manifest file's stem.
    pub name: String,
    /// The file (absolute).
    pub path: PathBuf,
    /// The release channel it came from, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A build's input image, with the SHA-256 the build key uses.
#[derive(Debug, Clone, Serialize)]
pub struct InputImage {
    /// What `kib customize --disk-image` gets: an absolute path, or a URL.
    pub image: String,
    pub is_url: bool,
    pub sha256: String,
    /// Where the SHA-256 comes from: `sha256` (pinned in the matrix) or the checksum list.
    pub sha256_from: String,
}

/// What a build key is computed from; `plan --output json` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInput {
    pub kib_version: String,
    pub input_sha256: String,
    pub arch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub name: String,
    pub formats: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2_compression: Option<String>,
    /// The resolved manifest: every file read (top-level first, includes included) by SHA-256.
    pub manifest_files: Vec<String>,
    /// Its variables after the matrix's `--set` values (builtins such as `${arch}` not included:
    /// `arch` is above, the others come from the image, which `input_sha256` pins).
    pub variables: IndexMap<String, String>,
    /// `file.source` files the steps copy: the path as the step names it, and its SHA-256.
    pub sources: Vec<(String, String)>,
}

impl KeyInput {
    /// The build key: lowercase hex SHA-256 of this record as compact JSON (field order fixed by
    /// the struct).
    pub fn key(&self) -> String {
        crate::hash::sha256_bytes(&serde_json::to_vec(self).expect("a KeyInput serializes"))
    }
}

/// One build of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    /// Its position in the plan: `kib matrix run --index` and the Job's completion index.
    pub index: usize,
    pub name: String,
    pub manifest: ManifestRef,
    pub base: String,
    pub arch: Arch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub input: InputImage,
    pub formats: Vec<Format>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2_compression: Option<crate::format::Qcow2Compression>,
    /// The matrix's variables for it: `kib customize --set NAME=VALUE`.
    pub set: IndexMap<String, String>,
    pub key: String,
    pub key_input: KeyInput,
    /// The files the build writes into its output folder.
    pub outputs: Vec<String>,
    /// Every file the build reads besides the image: the manifest, its includes and the
    /// `file.source` files (absolute paths). `render` ships them in the ConfigMap.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

impl Build {
    /// The build's output folder under `root`.
    pub fn output_dir(&self, root: &Path) -> PathBuf {
        root.join(&self.name)
    }

    /// The build's log file under `root`.
    pub fn log_file(&self, root: &Path) -> PathBuf {
        root.join("logs").join(format!("{}.log", self.name))
    }

    /// The `--set` arguments, `NAME=VALUE` each.
    pub fn set_args(&self) -> Vec<String> {
        self.set.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Whether `root/<name>/` holds a stamp with this build's key and every output it lists,
    /// each of the size it recorded.
    pub fn up_to_date(&self, root: &Path) -> bool {
        Stamp::read(&self.output_dir(root)).is_some_and(|s| s.key == self.key && s.outputs_present(&self.output_dir(root)))
    }
}

/// The record `kib matrix run` writes into a build's output folder after it succeeded
/// ([`STAMP_FILE`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stamp {
    pub name: String,
    pub key: String,
    pub kib_version: String,
    /// Output file name to size in bytes.
    pub outputs: IndexMap<String, u64>,
}

impl Stamp {
    /// The stamp in `dir`, if there is a readable one.
    pub fn read(dir: &Path) -> Option<Stamp> {
        serde_json::from_slice(&std::fs::read(dir.join(STAMP_FILE)).ok()?).ok()
    }

    /// Whether every output listed is in `dir` with its recorded size.
    pub fn outputs_present(&self, dir: &Path) -> bool {
        !self.outputs.is_empty() && self.outputs.iter().all(|(f, size)| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() == *size))
    }

    /// A stamp for `build` from the files now in `dir`.
    ///
    /// Errors: an expected output is missing.
    pub fn of(build: &Build, dir: &Path) -> Result<Stamp> {
        let mut outputs = IndexMap::new();
        for f in &build.outputs {
            let m = std::fs::metadata(dir.join(f)).with_context(|| format!("build {}: output {} missing after the build", build.name, dir.join(f).display()))?;
            outputs.insert(f.clone(), m.len());
        }
        Ok(Stamp { name: build.name.clone(), key: build.key.clone(), kib_version: build.key_input.kib_version.clone(), outputs })
    }

    /// Writes the stamp into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let file = dir.join(STAMP_FILE);
        let tmp = dir.join(format!(".{STAMP_FILE}.tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))
    }
}

/// An expanded, checked matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The matrix's name.
    pub name: String,
    /// The matrix file (absolute).
    pub path: PathBuf,
    /// The parsed file, as written.
    #[serde(skip)]
    pub file: MatrixFile,
    /// The output root.
    pub output_dir: PathBuf,
    pub builds: Vec<Build>,
}

/// How to load a plan.
pub struct LoadOptions<'a> {
    /// Replaces the file's `output.dir`.
    pub output_dir: Option<PathBuf>,
    /// kib's version for the build keys (tests vary it).
    pub kib_version: String,
    /// For URL bases without `sha256`: fetches their checksum lists. Without one such bases are an
    /// error.
    pub fetcher: Option<&'a Fetcher>,
}

impl LoadOptions<'_> {
    /// This kib's build id ([`crate::hash::kib_build_id`]: its version and executable), the
    /// file's output folder, no fetcher.
    pub fn new() -> LoadOptions<'static> {
        LoadOptions { output_dir: None, kib_version: crate::hash::kib_build_id().to_string(), fetcher: None }
    }
}

/// The axis values of one combination.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Combo<'a> {
    manifest: &'a str,
    base: &'a str,
    arch: Arch,
    provider: Option<&'a str>,
}

impl Selector {
    /// Whether the combination matches every key given.
    fn matches(&self, c: &Combo<'_>) -> bool {
        let m = |sel: &Option<OneOrMany>, v: Option<&str>| sel.as_ref().is_none_or(|s| v.is_some_and(|v| s.values().contains(&v)));
        m(&self.manifest, Some(c.manifest)) && m(&self.base, Some(c.base)) && m(&self.arch, Some(c.arch.name())) && m(&self.provider, c.provider)
    }

    /// Every value named that is not a value of its axis, as `key: value` strings.
    fn unknown_values(&self, manifests: &[&str], bases: &[&str], arches: &[Arch], providers: &[&str]) -> Vec<String> {
        let arch_names: Vec<&str> = arches.iter().map(|a| a.name()).collect();
        let mut out = Vec::new();
        for (key, sel, known) in [("manifest", &self.manifest, manifests), ("base", &self.base, bases), ("arch", &self.arch, &arch_names[..]), ("provider", &self.provider, providers)] {
            for v in sel.iter().flat_map(OneOrMany::values) {
                if !known.contains(&v) {
                    out.push(format!("{key}: {v} (the {key}s are: {})", if known.is_empty() { "none".into() } else { known.join(", ") }));
                }
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self == &Selector::default()
    }
}

/// `pattern` with `<manifest>`, `<base>`, `<arch>` and `<provider>` replaced.
fn build_name(pattern: &str, c: &Combo<'_>) -> String {
    pattern.replace("<manifest>", c.manifest).replace("<base>", c.base).replace("<arch>", c.arch.name()).replace("<provider>", c.provider.unwrap_or(""))
}

/// Whether `name` matches the glob `pattern` (`*` any run of characters, `?` one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Plan {
    /// Loads the matrix at `path`, expands it and checks everything that can be checked before a
    /// build runs: the schema (unknown fields with file, line and field), every manifest (loaded
    /// with its includes and the matrix's variables, which it must declare), every base image's
    /// SHA-256 (a base without `sha256` or a checksum list naming it is refused), `exclude`
    /// values that are no axis value or entries that remove nothing, combinations whose base
    /// has no image for the architecture, and duplicate or unsafe build names.
    ///
    /// Errors: any of those, as one message naming the file and what is wrong.
    pub fn load(path: &Path, opts: &LoadOptions<'_>) -> Result<Plan> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the matrix {}", path.display()))?;
        let file: MatrixFile = manifest::parse_yaml(path, &text)?;
        Plan::from_file(path, file, opts)
    }

    /// As [`Plan::load`], from a parsed file (`path` names it in errors and anchors relative
    /// paths).
    pub fn from_file(path: &Path, file: MatrixFile, opts: &LoadOptions<'_>) -> Result<Plan> {
        let shown = path.display().to_string();
        let path = std::path::absolute(path).with_context(|| format!("resolving {shown}"))?;
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        if file.api_version != "kib/v1" {
            bail!("{shown}: apiVersion `{}` is not supported; use `kib/v1`", file.api_version);
        }
        let name = file.metadata.name.clone().unwrap_or_else(|| path.file_stem().map_or("matrix".into(), |s| s.to_string_lossy().into_owned()));
        if file.arches.is_empty() {
            bail!("{shown}: `arches` is empty: name at least one of amd64, arm64");
        }
        if file.bases.is_empty() {
            bail!("{shown}: `bases` is empty: name at least one base image");
        }

        // The manifest axis.
        let mut manifests: Vec<ManifestRef> = Vec::new();
        for m in &file.manifests {
            let p = dir.join(m);
            if !p.is_file() {
                bail!("{shown}: manifests: {m}: no such file ({})", p.display());
            }
            let stem = p.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
            manifests.push(ManifestRef { name: stem, path: p, channel: None });
        }
        for c in &file.release_channels {
            let p = manifest::catalogue::release_channel(c).with_context(|| format!("{shown}: release_channels"))?;
            let p = std::path::absolute(&p).unwrap_or(p);
            let stem = p.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
            manifests.push(ManifestRef { name: stem, path: p, channel: Some(c.clone()) });
        }
        if manifests.is_empty() {
            bail!("{shown}: name at least one manifest under `manifests` or `release_channels`");
        }
        for (i, m) in manifests.iter().enumerate() {
            if manifests[..i].iter().any(|o| o.name == m.name) {
                bail!("{shown}: the manifest axis has `{}` twice; each manifest is named by its file stem, which must be unique", m.name);
            }
        }

        let manifest_names: Vec<&str> = manifests.iter().map(|m| m.name.as_str()).collect();
        let base_names: Vec<&str> = file.bases.keys().map(String::as_str).collect();
        let provider_names: Vec<&str> = file.providers.iter().map(String::as_str).collect();
        for (i, a) in file.arches.iter().enumerate() {
            if file.arches[..i].contains(a) {
                bail!("{shown}: arches lists {a} twice");
            }
        }
        for (what, sels) in [("exclude", file.exclude.iter().collect::<Vec<_>>()), ("overrides[].when", file.overrides.iter().map(|o| &o.when).collect())] {
            for (i, sel) in sels.iter().enumerate() {
                let unknown = sel.unknown_values(&manifest_names, &base_names, &file.arches, &provider_names);
                if !unknown.is_empty() {
                    bail!("{shown}: {what} entry {}: matches nothing: {}", i + 1, unknown.join("; "));
                }
                if what == "exclude" && sel.is_empty() {
                    bail!("{shown}: exclude entry {} names no axis (manifest, base, arch, provider) and would exclude every build", i + 1);
                }
            }
        }

        // Every combination, in axis order: manifest, base, arch, provider.
        let providers: Vec<Option<&str>> = if provider_names.is_empty() { vec![None] } else { provider_names.iter().map(|p| Some(*p)).collect() };
        let mut combos = Vec::new();
        for m in &manifests {
            for b in &base_names {
                for a in &file.arches {
                    for p in &providers {
                        combos.push(Combo { manifest: &m.name, base: b, arch: *a, provider: *p });
                    }
                }
            }
        }
        combos.retain(|c| !file.exclude.iter().any(|s| s.matches(c)));
        if combos.is_empty() {
            bail!("{shown}: `exclude` removes every build");
        }

        let pattern = file.output.name.clone().unwrap_or_else(|| if provider_names.is_empty() { DEFAULT_NAME.into() } else { format!("{DEFAULT_NAME}-<provider>") });
        let output_dir = opts.output_dir.clone().unwrap_or_else(|| PathBuf::from(file.output.dir.as_deref().unwrap_or(DEFAULT_OUTPUT_DIR)));

        let mut inputs: IndexMap<(String, Arch), InputImage> = IndexMap::new();
        let mut builds: Vec<Build> = Vec::new();
        for c in &combos {
            let name = build_name(&pattern, c);
            if name.is_empty() || name.contains('/') || name.starts_with('.') || name == "logs" || name.contains(char::is_whitespace) {
                bail!("{shown}: output.name `{pattern}` gives the build name `{name}`, which is not a plain file name");
            }
            if let Some(other) = builds.iter().find(|b| b.name == name) {
                bail!("{shown}: output.name `{pattern}` gives two builds the name `{name}` ({} and {}); add the axis that tells them apart", other.index, builds.len());
            }
            let base = &file.bases[c.base];
            let Some(image) = base.get(&c.arch) else {
                bail!(
                    "{shown}: base {} has no {} image (it has: {}); add one under bases.{}.{}, or exclude {{base: {}, arch: {}}}",
                    c.base,
                    c.arch,
                    base.keys().map(|a| a.name()).collect::<Vec<_>>().join(", "),
                    c.base,
                    c.arch,
                    c.base,
                    c.arch
                );
            };
            let key = (c.base.to_string(), c.arch);
            if !inputs.contains_key(&key) {
                let input = resolve_input(&shown, &dir, c.base, c.arch, image, opts.fetcher)?;
                inputs.insert(key.clone(), input);
            }
            let input = inputs[&key].clone();

            let mut set = file.variables.clone();
            let mut formats = file.formats.clone();
            for o in &file.overrides {
                if o.when.matches(c) {
                    set.extend(o.variables.clone());
                    if let Some(f) = &o.formats {
                        formats = f.clone();
                    }
                }
            }
            let m = manifests.iter().find(|m| m.name == c.manifest).expect("combos come from manifests");
            let set_args: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let loaded = manifest::load(&m.path, &set_args).with_context(|| format!("{shown}: build {name}: manifest {}", m.path.display()))?;
            if formats.is_empty() {
                formats = loaded.output.formats.clone();
            }
            if formats.is_empty() {
                formats.push(Format::Qcow2);
            }
            let formats = Format::dedup(&formats);
            let compression = file.qcow2_compression;
            let sources = source_files(&loaded, c.arch)?;
            let key_input = KeyInput {
                kib_version: opts.kib_version.clone(),
                input_sha256: input.sha256.clone(),
                arch: c.arch.name().into(),
                provider: c.provider.map(str::to_string),
                name: name.clone(),
                formats: formats.iter().map(|f| f.name().to_string()).collect(),
                qcow2_compression: compression.map(|q| format!("{q:?}").to_lowercase()),
                manifest_files: loaded.files.iter().map(|f| f.sha256.clone()).collect(),
                variables: loaded.variables.0.clone(),
                sources: sources.iter().map(|(s, sum, _)| (s.clone(), sum.clone())).collect(),
            };
            let mut files: Vec<PathBuf> = loaded.files.iter().map(|f| std::path::absolute(&f.path).unwrap_or_else(|_| f.path.clone())).collect();
            files.extend(sources.into_iter().filter_map(|(_, _, p)| p));
            let mut outputs: Vec<String> = formats.iter().map(|f| f.file_name(&name)).collect();
            outputs.extend(["bom.json".to_string(), format!("{name}.spdx.json"), format!("{name}.cdx.json"), "SHA256SUMS".into()]);
            builds.push(Build {
                index: builds.len(),
                key: key_input.key(),
                name,
                manifest: m.clone(),
                base: c.base.to_string(),
                arch: c.arch,
                provider: c.provider.map(str::to_string),
                input,
                formats,
                qcow2_compression: compression,
                set,
                key_input,
                outputs,
                files,
            });
        }
        Ok(Plan { name, path, file, output_dir, builds })
    }

    /// The builds whose names match the glob `only` (all without one).
    pub fn selected(&self, only: Option<&str>) -> Vec<&Build> {
        self.builds.iter().filter(|b| only.is_none_or(|p| glob_match(p, &b.name))).collect()
    }

    /// Build `index`.
    ///
    /// Errors: out of range, naming how many builds there are.
    pub fn build(&self, index: usize) -> Result<&Build> {
        self.builds.get(index).ok_or_else(|| {
            anyhow!("--index {index} is out of range: {} has {} builds (indexes 0 to {})", self.path.display(), self.builds.len(), self.builds.len().saturating_sub(1))
        })
    }
}

/// The input image of `base`/`arch` and its SHA-256, from the matrix or a checksum list.
fn resolve_input(shown: &str, dir: &Path, base: &str, arch: Arch, image: &BaseImage, fetcher: Option<&Fetcher>) -> Result<InputImage> {
    let here = format!("{shown}: bases.{base}.{arch}");
    if let Some(s) = &image.sha256 {
        if !is_sha256(s) {
            bail!("{here}: sha256 `{s}` is not 64 hex digits");
        }
    }
    match (&image.path, &image.url) {
        (Some(p), None) => {
            if image.checksums.is_some() {
                bail!("{here}: `checksums` is for `url` bases; a local image's list is the SHA256SUMS or sha256sum.txt beside it, which kib customize verifies it against");
            }
            let path = dir.join(p);
            if !path.is_file() {
                bail!("{here}: image {} not found", path.display());
            }
            let listed = verify::expected_sum(&path).with_context(|| format!("{here}: reading the checksum list beside {}", path.display()))?;
            let (sha256, from) = match (&image.sha256, listed) {
                (Some(pin), Some(l)) if !pin.eq_ignore_ascii_case(&l.sha256) => {
                    bail!("{here}: sha256 {pin} differs from the {} entry {} for {}", l.list.display(), l.sha256, path.display())
                }
                (Some(pin), _) => (pin.to_ascii_lowercase(), "sha256".to_string()),
                (None, Some(l)) => (l.sha256, l.list.display().to_string()),
                (None, None) => bail!(
                    "{here}: {} has no checksum: no SHA256SUMS or sha256sum.txt beside it lists it, and the matrix gives no sha256 (the build key needs the image's SHA-256; kib does not read a whole image to plan)",
                    path.display()
                ),
            };
            Ok(InputImage { image: path.display().to_string(), is_url: false, sha256, sha256_from: from })
        }
        (None, Some(u)) => {
            if let Some(s) = &image.sha256 {
                return Ok(InputImage { image: u.clone(), is_url: true, sha256: s.to_ascii_lowercase(), sha256_from: "sha256".into() });
            }
            let list = image.checksums.clone().unwrap_or_else(|| format!("{}/SHA256SUMS", u.rsplit_once('/').map_or(u.as_str(), |(d, _)| d)));
            let Some(f) = fetcher else {
                bail!("{here}: {u} has no sha256, and its checksum list {list} cannot be fetched here");
            };
            let sum = f.published_sum(&list, u).with_context(|| format!("{here}: fetching the checksum list {list}"))?;
            Ok(InputImage { image: u.clone(), is_url: true, sha256: sum, sha256_from: list })
        }
        (Some(_), Some(_)) => bail!("{here}: give `path` or `url`, not both"),
        (None, None) => bail!("{here}: give the image's `path` or `url`"),
    }
}

/// The `file.source` files of a manifest's steps: the path as the step names it, its SHA-256 and
/// the file (empty and none when the path names an image fact, which the image's sum pins).
fn source_files(m: &manifest::Manifest, arch: Arch) -> Result<Vec<(String, String, Option<PathBuf>)>> {
    let mut vars = m.variables.clone();
    vars.0.insert("arch".into(), arch.name().into());
    let mut out = Vec::new();
    for step in &m.steps {
        let Action::File(f) = &step.action else { continue };
        let Some(src) = &f.source else { continue };
        let Ok(expanded) = vars.expand(src) else {
            // Names an image fact (os_id, ...): the input image's SHA-256 pins those.
            out.push((src.clone(), String::new(), None));
            continue;
        };
        let path = step.origin.parent().unwrap_or(Path::new(".")).join(&expanded);
        let sum = crate::hash::sha256_file(&path).with_context(|| format!("{}: step `{}`: reading file.source {}", step.origin.display(), step.name, path.display()))?;
        out.push((src.clone(), sum, Some(std::path::absolute(&path).unwrap_or(path))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
