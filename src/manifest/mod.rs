//! The manifest: schema ([`schema`]), loading with includes and variables ([`load`]), and the
//! resolved form that the phases execute ([`Manifest`]).

pub mod catalogue;
pub mod provider;
pub mod schema;
pub mod vars;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

pub use schema::*;
pub use vars::Vars;

/// The default per-step time limit.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What went wrong while loading a manifest. Each variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, field: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: include `{include}` not found; looked for: {}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    IncludeNotFound { path: PathBuf, include: String, searched: Vec<PathBuf> },
    #[error("manifest includes itself: {}", chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "))]
    IncludeCycle { chain: Vec<PathBuf> },
    #[error("{path}:{line}: step `{step}`: undefined variable `${{{name}}}` (define it under `variables:` or pass --set {name}=...)")]
    UndefinedVariable { path: PathBuf, line: usize, step: String, name: String },
    #[error("--set {0}: expected NAME=VALUE")]
    BadOverride(String),
    #[error("--set {name}: the manifest has no variable `{name}`; it has: {known}")]
    UnknownOverride { name: String, known: String },
}

/// One manifest file that was read, for the BOM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// A step's action, exactly one per step.
#[derive(Debug, Clone)]
pub enum Action {
    Packages(Packages),
    File(FileStep),
    Run(RunStep),
    Systemd(SystemdStep),
    Sysctl(SysctlStep),
    KernelModules(KernelModulesStep),
    Download(DownloadStep),
    Repository(RepositoryStep),
    Images(ImagesStep),
}

impl Action {
    /// The action's key in the manifest.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Packages(_) => "packages",
            Action::File(_) => "file",
            Action::Run(_) => "run",
            Action::Systemd(_) => "systemd",
            Action::Sysctl(_) => "sysctl",
            Action::KernelModules(_) => "kernel-modules",
            Action::Download(_) => "download",
            Action::Repository(_) => "repository",
            Action::Images(_) => "images",
        }
    }

    /// A copy with `${name}` expanded in every string field except `run.script`, which gets the
    /// variables through its environment instead.
    pub fn expand(&self, vars: &Vars) -> Result<Action, vars::Undefined> {
        let e = |s: &String| vars.expand(s);
        let ev = |v: &Vec<String>| v.iter().map(|s| vars.expand(s)).collect::<Result<Vec<_>, _>>();
        let em = |m: &IndexMap<String, String>| {
            m.iter().map(|(k, v)| Ok((vars.expand(k)?, vars.expand(v)?))).collect::<Result<IndexMap<_, _>, _>>()
        };
        let eo = |o: &Option<String>| o.as_ref().map(|s| vars.expand(s)).transpose();
        let es = |o: &Option<Sha256Spec>| -> Result<Option<Sha256Spec>, vars::Undefined> {
            Ok(match o {
                None => None,
                Some(Sha256Spec::One(s)) => Some(Sha256Spec::One(vars.expand(s)?)),
                Some(Sha256Spec::PerArch(m)) => Some(Sha256Spec::PerArch(em(m)?)),
            })
        };
        Ok(match self {
            Action::Packages(p) => Action::Packages(Packages {
                update: p.update,
                install: ev(&p.install)?,
                remove: ev(&p.remove)?,
                purge: ev(&p.purge)?,
                hold: ev(&p.hold)?,
                recommends: p.recommends,
            }),
            Action::File(f) => Action::File(FileStep {
                path: e(&f.path)?,
                content: eo(&f.content)?,
                source: eo(&f.source)?,
                mode: eo(&f.mode)?,
                owner: eo(&f.owner)?,
            }),
            Action::Run(r) => Action::Run(RunStep { script: r.script.clone(), shell: eo(&r.shell)? }),
            Action::Systemd(s) => Action::Systemd(SystemdStep {
                enable: ev(&s.enable)?,
                disable: ev(&s.disable)?,
                mask: ev(&s.mask)?,
                unmask: ev(&s.unmask)?,
            }),
            Action::Sysctl(s) => Action::Sysctl(SysctlStep { file: e(&s.file)?, settings: em(&s.settings)? }),
            Action::KernelModules(k) => Action::KernelModules(KernelModulesStep {
                file: e(&k.file)?,
                load: ev(&k.load)?,
                options: em(&k.options)?,
            }),
            Action::Download(d) => Action::Download(DownloadStep {
                url: e(&d.url)?,
                sha256: es(&d.sha256)?,
                sha256_url: eo(&d.sha256_url)?,
                path: eo(&d.path)?,
                extract: eo(&d.extract)?,
                strip_components: d.strip_components,
                mode: eo(&d.mode)?,
            }),
            Action::Repository(r) => Action::Repository(RepositoryStep {
                name: e(&r.name)?,
                url: e(&r.url)?,
                suite: eo(&r.suite)?,
                components: ev(&r.components)?,
                key_url: eo(&r.key_url)?,
                key_sha256: eo(&r.key_sha256)?,
                key: eo(&r.key)?,
                exclude: ev(&r.exclude)?,
            }),
            Action::Images(i) => Action::Images(ImagesStep {
                namespace: eo(&i.namespace)?,
                archives: i
                    .archives
                    .iter()
                    .map(|a| Ok(ImageArchive { url: e(&a.url)?, sha256: es(&a.sha256)?, sha256_url: eo(&a.sha256_url)?, tag: eo(&a.tag)? }))
                    .collect::<Result<Vec<_>, _>>()?,
            }),
        })
    }
}

/// A step ready to run: its action, where it came from and its limits.
#[derive(Debug, Clone)]
pub struct ResolvedStep {
    pub name: String,
    /// The YAML file that defines the step; `file.source` paths are relative to its folder.
    pub origin: PathBuf,
    pub when: When,
    pub timeout: Duration,
    pub action: Action,
}

impl ResolvedStep {
    /// Whether the step applies to an image with this os-release `ID`/`ID_LIKE` and
    /// architecture, given the build's variables.
    pub fn applies(&self, os_ids: &[String], arch: &str, vars: &Vars) -> bool {
        (self.when.os.is_empty() || self.when.os.iter().any(|o| os_ids.contains(o)))
            && (self.when.arch.is_empty() || self.when.arch.iter().any(|a| a == arch))
            && self.when.variables.iter().all(|(k, v)| vars.0.get(k) == Some(v))
    }
}

/// A manifest with its includes resolved, in execution order.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The top-level file.
    pub path: PathBuf,
    pub sha256: String,
    /// Every file read, the top-level one first.
    pub files: Vec<SourceFile>,
    pub name: String,
    /// Variables after includes and `--set` (builtins not included).
    pub variables: Vars,
    pub steps: Vec<ResolvedStep>,
    pub output: Output,
    pub sysprep: Sysprep,
    /// `disk.size` in bytes, rounded up to a whole MiB.
    pub disk_size: Option<u64>,
    /// `packages:` (the package manager, when the manifest forces one).
    pub packages: PackageSettings,
    /// The provider profile applied (by `--provider`, the manifest's `provider:`, or an include
    /// that is a profile), and its file.
    pub provider: Option<(PathBuf, ProviderProfile)>,
}

/// Loads `path` and everything it includes, applies `overrides` (`--set`), and checks every
/// `${name}` reference.
///
/// Errors: unreadable files, YAML syntax or schema errors (with file, line, column and field),
/// includes that are missing or cyclic, steps with no or several actions, undefined variables.
pub fn load(path: &Path, overrides: &[String]) -> Result<Manifest, ManifestError> {
    load_with(path, overrides, None)
}

/// As [`load`], with a provider profile: `provider` (`--provider`) or else the manifest's
/// `provider:` names it, and its file ([`provider::find`]) is applied as the manifest's last
/// include: its steps run after the other includes' and before the manifest's own, its
/// variables override the other includes' and the manifest's own override its.
///
/// Errors: as [`load`], plus an unknown provider (the message lists the known ones) and two
/// different profiles in one build.
pub fn load_with(path: &Path, overrides: &[String], provider: Option<&str>) -> Result<Manifest, ManifestError> {
    let mut loader = Loader::new(Source::Files);
    loader.provider_override = provider.map(str::to_string);
    resolve(loader, path, overrides)
}

/// As [`load`], from text already in memory: `text` is the manifest and `origin` the path that
/// errors, the BOM and `file.source` lookups name (it need not exist). Nothing is read from
/// disk, so a manifest with a non-empty `include:` list is refused with
/// [`ManifestError::Invalid`]; everything else (schema, steps, variables, `--set` overrides) is
/// checked exactly as [`load`] checks it.
///
/// Errors: as [`load`], plus the refused `include:`.
pub fn parse_str(text: &str, origin: &Path, overrides: &[String]) -> Result<Manifest, ManifestError> {
    resolve(Loader::new(Source::Text { origin, text }), origin, overrides)
}

fn resolve(mut loader: Loader<'_>, path: &Path, overrides: &[String]) -> Result<Manifest, ManifestError> {
    let (top, vars) = loader.load_file(path)?;
    if top.kind != Kind::ImageManifest {
        return Err(invalid(path, "kind must be `ImageManifest` for the manifest you build (`Phase` files are included)"));
    }
    let mut variables = vars;
    for o in overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| ManifestError::BadOverride(o.clone()))?;
        if !variables.contains_key(k) {
            return Err(ManifestError::UnknownOverride {
                name: k.to_string(),
                known: variables.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        variables.insert(k.to_string(), v.to_string());
    }
    let variables = Vars(variables);
    for step in &loader.steps {
        if let Some(k) = step.when.variables.keys().find(|k| !variables.0.contains_key(*k) && !vars::BUILTIN.contains(&k.as_str())) {
            return Err(invalid(&step.origin, format!("step `{}`: `when.variables` names `{k}`, which no file declares (nor is it a builtin fact)", step.name)));
        }
    }
    // Check every reference now, with placeholders for the facts Phase 0 provides.
    let mut probe = variables.clone();
    for b in vars::BUILTIN {
        probe.0.entry((*b).to_string()).or_default();
    }
    for step in &loader.steps {
        if let Err(vars::Undefined(name)) = step.action.expand(&probe) {
            let line = loader
                .texts
                .get(&step.origin)
                .and_then(|t| t.lines().position(|l| l.contains(&format!("${{{name}")))).map_or(0, |i| i + 1);
            return Err(ManifestError::UndefinedVariable { path: step.origin.clone(), line, step: step.name.clone(), name });
        }
    }
    let mut profiles = loader.profiles.clone();
    profiles.dedup_by(|a, b| a.1 == b.1);
    if profiles.len() > 1 {
        return Err(invalid(
            path,
            format!(
                "two provider profiles in one build: {}; a build has one provider",
                profiles.iter().map(|(p, pr)| format!("`{}` ({})", pr.name, p.display())).collect::<Vec<_>>().join(" and ")
            ),
        ));
    }
    let name = top.metadata.name.clone().unwrap_or_else(|| {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
    });
    Ok(Manifest {
        path: path.to_path_buf(),
        sha256: loader.files[0].sha256.clone(),
        files: loader.files,
        name,
        variables,
        steps: loader.steps,
        disk_size: match top.disk.and_then(|d| d.size) {
            Some(s) => Some(parse_disk_size(&s).map_err(|e| invalid(path, format!("disk.size: {e}")))?),
            None => None,
        },
        output: top.output.unwrap_or_default(),
        sysprep: top.sysprep.unwrap_or_default(),
        packages: top.packages.unwrap_or_default(),
        provider: profiles.pop(),
    })
}

/// Parses a disk size such as `20GiB`, `20G` or `20480M` into bytes, rounded up to a whole MiB.
/// Unit letters are binary (K, M, G, T = 1024^n, with or without `i`/`B`), as qemu-img reads
/// them; a bare number is bytes.
///
/// Errors: not a size, or zero.
pub fn parse_disk_size(s: &str) -> Result<u64, String> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("`{s}` is not a size such as 20GiB ({e})"))?;
    if bytes == 0 {
        return Err(format!("`{s}` is zero"));
    }
    const MIB: u64 = 1 << 20;
    bytes.div_ceil(MIB).checked_mul(MIB).ok_or_else(|| format!("`{s}` is too large"))
}

fn invalid(path: &Path, message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid { path: path.to_path_buf(), message: message.into() }
}

/// Where the loader gets a file's text.
enum Source<'a> {
    /// From disk; includes are looked up with [`find_include`].
    Files,
    /// The one file `origin`, whose text is given; includes are refused.
    Text { origin: &'a Path, text: &'a str },
}

struct Loader<'a> {
    source: Source<'a>,
    stack: Vec<PathBuf>,
    seen: HashSet<PathBuf>,
    files: Vec<SourceFile>,
    /// Each file's text, by the path its steps' `origin` names, for error line numbers.
    texts: HashMap<PathBuf, String>,
    steps: Vec<ResolvedStep>,
    /// `--provider`: overrides the top-level manifest's `provider:`.
    provider_override: Option<String>,
    /// The provider profiles read, in load order.
    profiles: Vec<(PathBuf, ProviderProfile)>,
}

impl<'a> Loader<'a> {
    fn new(source: Source<'a>) -> Self {
        Loader {
            source,
            stack: Vec::new(),
            seen: HashSet::new(),
            files: Vec::new(),
            texts: HashMap::new(),
            steps: Vec::new(),
            provider_override: None,
            profiles: Vec::new(),
        }
    }

    /// The path by which cycles and repeated includes are recognized.
    fn canonical(&self, path: &Path) -> Result<PathBuf, ManifestError> {
        match self.source {
            Source::Files => path.canonicalize().map_err(|source| ManifestError::Io { path: path.to_path_buf(), source }),
            Source::Text { .. } => Ok(path.to_path_buf()),
        }
    }

    fn read(&self, path: &Path) -> Result<String, ManifestError> {
        match self.source {
            Source::Files => std::fs::read_to_string(path).map_err(|source| ManifestError::Io { path: path.to_path_buf(), source }),
            Source::Text { origin, text } if origin == path => Ok(text.to_string()),
            Source::Text { .. } => Err(invalid(path, "only the manifest given as text can be read")),
        }
    }

    fn find_include(&self, from: &Path, include: &str) -> Result<PathBuf, ManifestError> {
        match self.source {
            Source::Files => find_include(from, include),
            Source::Text { .. } => Err(invalid(
                from,
                format!("include `{include}`: includes are not resolved when a manifest is parsed from text; load it from a file"),
            )),
        }
    }

    /// Parses one file, then its includes (depth first), then appends its own steps. Returns the
    /// file and the variables it defines, includes' defaults first.
    fn load_file(&mut self, path: &Path) -> Result<(ManifestFile, IndexMap<String, String>), ManifestError> {
        let canonical = self.canonical(path)?;
        if self.stack.contains(&canonical) {
            let mut chain = self.stack.clone();
            chain.push(canonical);
            return Err(ManifestError::IncludeCycle { chain });
        }
        let text = self.read(path)?;
        self.files.push(SourceFile { path: path.to_path_buf(), sha256: hex::encode(Sha256::digest(text.as_bytes())) });
        let file = parse(path, &text)?;
        self.texts.insert(path.to_path_buf(), text);
        if file.api_version != "kib/v1" {
            return Err(invalid(path, format!("apiVersion `{}` is not supported; use `kib/v1`", file.api_version)));
        }
        if file.kind == Kind::Phase && (file.output.is_some() || file.sysprep.is_some() || file.disk.is_some() || file.packages.is_some()) {
            return Err(invalid(path, "a `Phase` file cannot have `output`, `sysprep`, `disk` or `packages`; those belong to the ImageManifest"));
        }
        let top_level = self.stack.is_empty();
        let mut includes = Vec::new();
        for include in &file.include {
            includes.push(self.find_include(path, include)?);
        }
        match (&file.provider, file.kind) {
            (Some(ProviderField::Name(_)), Kind::Phase) => {
                return Err(invalid(path, "in a `Phase` file, `provider` is a profile's section (name, aliases, formats, firmware, arches); a manifest names its provider with `provider: NAME`"));
            }
            (Some(ProviderField::Profile(_)), Kind::ImageManifest) => {
                return Err(invalid(path, "in an `ImageManifest`, `provider` is the name of a provider profile, such as `provider: qemu`"));
            }
            (Some(ProviderField::Profile(p)), Kind::Phase) => self.profiles.push((path.to_path_buf(), p.clone())),
            _ => {}
        }
        if top_level {
            let named = match &file.provider {
                Some(ProviderField::Name(n)) => Some(n.clone()),
                _ => None,
            };
            if let Some(name) = self.provider_override.clone().or(named) {
                if let Source::Text { .. } = self.source {
                    return Err(invalid(path, format!("provider `{name}`: profiles are not loaded when a manifest is parsed from text; load it from a file")));
                }
                includes.push(provider::find(path, &name)?);
            }
        }
        self.seen.insert(canonical.clone());
        self.stack.push(canonical);
        let mut variables = IndexMap::new();
        for found in includes {
            let canonical = self.canonical(&found)?;
            if self.seen.contains(&canonical) && !self.stack.contains(&canonical) {
                continue; // already included through another file: its steps run once
            }
            let (inc, inc_vars) = self.load_file(&found)?;
            if inc.kind != Kind::Phase {
                return Err(invalid(&found, "an included file must have `kind: Phase`"));
            }
            variables.extend(inc_vars);
        }
        for (k, v) in &file.variables {
            if !Vars::valid_name(k) {
                return Err(invalid(path, format!("variable name `{k}` must be letters, digits and _ (not starting with a digit)")));
            }
            variables.insert(k.clone(), v.clone());
        }
        for (i, step) in file.steps.iter().enumerate() {
            self.steps.push(resolve_step(path, i, step)?);
        }
        self.stack.pop();
        Ok((file, variables))
    }
}

/// Parses one file's YAML into the schema, turning serde's error into file:line:column + field.
fn parse(path: &Path, text: &str) -> Result<ManifestFile, ManifestError> {
    parse_yaml(path, text)
}

/// Parses YAML `text` (read from `path`) into any kib/v1 schema type `T` (a manifest, a phase, an
/// image matrix), turning serde's error into [`ManifestError::Parse`] with the file, line,
/// column and the path of the field (`steps[2].file.mode`): unknown fields, wrong types and
/// unknown enum values all name where they are.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ManifestError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
        let mut message = inner.to_string();
        // yaml_serde appends " at line L column C"; the prefix already says where.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // For enums it starts with the field's path too; the prefix already says it.
        if let Some(rest) = message.strip_prefix(&format!("{field}: ")) {
            message = rest.to_string();
        }
        ManifestError::Parse { path: path.to_path_buf(), line, column, field, message }
    })
}

/// Looks `include` up relative to the including file's folder, then each folder above it.
fn find_include(from: &Path, include: &str) -> Result<PathBuf, ManifestError> {
    let mut searched = Vec::new();
    let start = from.parent().unwrap_or(Path::new("."));
    let start = if start.as_os_str().is_empty() { Path::new(".") } else { start };
    let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    for dir in start.ancestors() {
        let candidate = dir.join(include);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    Err(ManifestError::IncludeNotFound { path: from.to_path_buf(), include: include.to_string(), searched })
}

fn resolve_step(path: &Path, index: usize, step: &Step) -> Result<ResolvedStep, ManifestError> {
    let here = || format!("step {} (`{}`)", index + 1, step.name);
    let mut actions = Vec::new();
    if let Some(a) = &step.packages {
        actions.push(Action::Packages(a.clone()));
    }
    if let Some(a) = &step.file {
        actions.push(Action::File(a.clone()));
    }
    if let Some(a) = &step.run {
        actions.push(Action::Run(a.clone()));
    }
    if let Some(a) = &step.systemd {
        actions.push(Action::Systemd(a.clone()));
    }
    if let Some(a) = &step.sysctl {
        actions.push(Action::Sysctl(a.clone()));
    }
    if let Some(a) = &step.kernel_modules {
        actions.push(Action::KernelModules(a.clone()));
    }
    if let Some(a) = &step.download {
        actions.push(Action::Download(a.clone()));
    }
    if let Some(a) = &step.repository {
        actions.push(Action::Repository(a.clone()));
    }
    if let Some(a) = &step.images {
        actions.push(Action::Images(a.clone()));
    }
    if actions.len() != 1 {
        let found: Vec<_> = actions.iter().map(Action::kind).collect();
        return Err(invalid(
            path,
            format!(
                "{}: a step needs exactly one of packages, file, run, systemd, sysctl, kernel-modules, download, repository, images; found {}",
                here(),
                if found.is_empty() { "none".to_string() } else { found.join(", ") }
            ),
        ));
    }
    let action = actions.remove(0);
    if let Action::File(f) = &action {
        if f.content.is_some() == f.source.is_some() {
            return Err(invalid(path, format!("{}: `file` needs exactly one of `content` and `source`", here())));
        }
        if !f.path.starts_with('/') {
            return Err(invalid(path, format!("{}: `file.path` must be absolute, got `{}`", here(), f.path)));
        }
        if let Some(m) = &f.mode {
            parse_mode(m).map_err(|e| invalid(path, format!("{}: {e}", here())))?;
        }
    }
    if let Action::Download(d) = &action {
        if d.sha256.is_some() == d.sha256_url.is_some() {
            return Err(invalid(path, format!("{}: `download` needs exactly one of `sha256` and `sha256_url`", here())));
        }
        if d.path.is_some() == d.extract.is_some() {
            return Err(invalid(path, format!("{}: `download` needs exactly one of `path` and `extract`", here())));
        }
        for p in d.path.iter().chain(&d.extract) {
            if !p.starts_with('/') {
                return Err(invalid(path, format!("{}: `download` destination `{p}` must be absolute", here())));
            }
        }
        if let Some(m) = &d.mode {
            parse_mode(m).map_err(|e| invalid(path, format!("{}: {e}", here())))?;
        }
    }
    if let Action::Repository(r) = &action {
        if r.key_url.is_some() == r.key.is_some() {
            return Err(invalid(path, format!("{}: `repository` needs exactly one of `key_url` and `key`", here())));
        }
        if r.name.is_empty() || r.name.contains('/') {
            return Err(invalid(path, format!("{}: `repository.name` must be a plain name", here())));
        }
    }
    if let Action::Images(i) = &action {
        for a in &i.archives {
            if a.sha256.is_some() == a.sha256_url.is_some() {
                return Err(invalid(path, format!("{}: image archive {} needs exactly one of `sha256` and `sha256_url`", here(), a.url)));
            }
        }
    }
    let timeout = match &step.timeout {
        None => DEFAULT_STEP_TIMEOUT,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| invalid(path, format!("{}: timeout `{t}`: {e} (examples: 90s, 10m, 1h)", here())))?,
    };
    Ok(ResolvedStep {
        name: step.name.clone(),
        origin: path.to_path_buf(),
        when: step.when.clone().unwrap_or_default(),
        timeout,
        action,
    })
}

/// Parses an octal mode string such as `"0644"` or `"755"`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode `{s}` is not an octal permission such as \"0644\""))
}

#[cfg(test)]
mod tests;
