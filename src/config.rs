//! kib's host configuration file (default `/etc/kib/config.yaml`, optional): settings an image
//! factory sets once rather than on every command line.
//!
//! ```yaml
//! mirrors:                       # FROM: TO, as --mirror FROM=TO
//!   https://dl.k8s.io: http://mirror.local/k8s
//!   https://pkgs.k8s.io: http://mirror.local/pkgs
//! cache_dir: /var/cache/kib
//! offline: false
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indexmap::IndexMap;

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/kib/config.yaml";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mirror map entries; command-line `--mirror`s come after them (and win on equal prefixes).
    #[serde(default)]
    pub mirrors: IndexMap<String, String>,
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub offline: bool,
}

impl Config {
    /// Reads `path`; a missing file at the default location is an empty configuration.
    ///
    /// Errors: unreadable file, YAML or unknown fields (with line and column).
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (path, required) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("reading kib configuration {}", path.display())),
        };
        yaml_serde::from_str(&text).with_context(|| format!("kib configuration {}", path.display()))
    }

    /// The fetcher this configuration describes, with `extra_mirrors` (`--mirror FROM=TO`) after
    /// the file's, `cache_dir` over the file's (default `/var/cache/kib`), and offline when
    /// either says so.
    ///
    /// Errors: a mirror specification without `=` or with an empty side.
    pub fn fetcher(&self, extra_mirrors: &[String], cache_dir: Option<&Path>, offline: bool) -> Result<crate::fetch::Fetcher> {
        let mirrors = crate::fetch::MirrorMap::parse(&self.mirror_specs(extra_mirrors))?;
        let cache_dir = cache_dir.map(Path::to_path_buf).or_else(|| self.cache_dir.clone()).unwrap_or_else(default_cache_dir);
        Ok(crate::fetch::Fetcher::new(mirrors, &cache_dir, offline || self.offline))
    }

    /// Mirror specifications (`FROM=TO`), the file's first, then `extra`.
    pub fn mirror_specs(&self, extra: &[String]) -> Vec<String> {
        self.mirrors.iter().map(|(f, t)| format!("{f}={t}")).chain(extra.iter().cloned()).collect()
    }
}

/// Where work directories are made when `--work-dir` is not given: `/var/tmp/kib` for root (the
/// real root), `work` in the user's cache folder ([`default_cache_dir`]) for a normal user, also
/// inside the guestfs backend's user namespace. Not a folder of its own in the world-writable
/// /var/tmp: another user could make it first and swap what kib makes inside.
pub fn default_work_dir() -> std::path::PathBuf {
    if rustix::process::geteuid().is_root() && !in_user_namespace() {
        return "/var/tmp/kib".into();
    }
    default_cache_dir().join("work")
}

/// Whether this process runs in a user namespace whose uid 0 is not the host's (the guestfs
/// backend's, for a normal user): `/proc/self/uid_map` does not map 0 to 0.
pub fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| !m.split_whitespace().take(2).eq(["0", "0"]))
}

/// The cache folder when neither `--cache-dir` nor the configuration names one: `/var/cache/kib`
/// for root (the real root: uid 0 outside any user namespace), else `$XDG_CACHE_HOME/kib` or
/// `~/.cache/kib` (a normal user, also inside the guestfs backend's user namespace, where kib is
/// uid 0 but /var/cache/kib is not its own).
pub fn default_cache_dir() -> std::path::PathBuf {
    if rustix::process::geteuid().is_root() && !in_user_namespace() {
        return "/var/cache/kib".into();
    }
    match (std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()), std::env::var_os("HOME").filter(|v| !v.is_empty())) {
        (Some(x), _) => std::path::PathBuf::from(x).join("kib"),
        (None, Some(h)) => std::path::PathBuf::from(h).join(".cache/kib"),
        (None, None) => "/var/tmp/kib-cache".into(),
    }
}
