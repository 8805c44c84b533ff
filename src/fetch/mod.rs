//! Every download goes through here: a mirror map, a content-addressed cache shared by all
//! builds, and SHA-256 verification. With `offline`, nothing is fetched: what the cache lacks is
//! an error that lists it.
//!
//! Cache layout (`<cache>` is `/var/cache/kib` by default):
//! - `<cache>/sha256/<hex>`: verified content, named by its SHA-256; written under a temporary
//!   name and renamed, so concurrent builds never see a partial file;
//! - `<cache>/sums/<sha256 of url>`: checksum files fetched from `sha256_url`s, so that offline
//!   builds can use them too.

pub mod download;
pub mod image;
pub mod sums;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use download::{Progress, ProgressHook, RetryPolicy};
use sums::Digests;

/// A URL prefix rewrite: `from` is replaced by `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub from: String,
    pub to: String,
}

/// Mirror map: `https://dl.k8s.io=http://mirror.local/k8s`. The longest matching prefix wins.
#[derive(Debug, Clone, Default)]
pub struct MirrorMap(pub Vec<Mirror>);

impl MirrorMap {
    /// Parses `FROM=TO` specifications.
    ///
    /// Errors: a specification without `=` or with an empty side.
    pub fn parse(specs: &[String]) -> Result<Self, FetchError> {
        let mut out = Vec::new();
        for s in specs {
            match s.split_once('=') {
                Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                    out.push(Mirror { from: from.trim_end_matches('/').to_string(), to: to.trim_end_matches('/').to_string() })
                }
                _ => return Err(FetchError::BadMirror(s.clone())),
            }
        }
        Ok(MirrorMap(out))
    }

    /// The URL to fetch for `url`: rewritten by the longest matching prefix, or unchanged. A
    /// prefix matches only at a path boundary (`https://dl.k8s.io` does not match
    /// `https://dl.k8s.io.evil`).
    pub fn resolve(&self, url: &str) -> String {
        self.0
            .iter()
            .filter(|m| url.strip_prefix(&m.from).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')))
            .max_by_key(|m| m.from.len())
            .map_or_else(|| url.to_string(), |m| format!("{}{}", m.to, &url[m.from.len()..]))
    }
}

/// A URL with any `user:password@` removed, for logs, errors and the BOM.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_string()
}

/// What went wrong with a download.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("--mirror {0}: expected FROM=TO, such as https://dl.k8s.io=http://mirror.local/k8s")]
    BadMirror(String),
    #[error("sha256 mismatch for {url} (fetched from {from}): expected {expected}, got {actual}")]
    Mismatch { url: String, from: String, expected: String, actual: String },
    #[error(
        "downloading {url} (from {from}): the connection was cut after {received} of {} bytes ({detail}), and {tries} {} could not \
         finish it; nothing was cached",
        total.map_or_else(|| "an unknown number of".to_string(), |t| t.to_string()),
        if *tries == 1 { "try" } else { "tries" }
    )]
    Cut { url: String, from: String, received: u64, total: Option<u64>, detail: String, tries: u32 },
    #[error("downloading {url} (from {from}): {message}")]
    Http { url: String, from: String, message: String },
    #[error("{url}: `{0}` is not a SHA-256 (64 hex digits)", url = .1)]
    BadSum(String, String),
    #[error("offline: not in the cache: {}", .0.join("; "))]
    Offline(Vec<String>),
    #[error(
        "{url}: the download's {algo} is {actual}, but {list} {verb} {expected}; the file on the server (fetched from {from}) is \
         corrupt or was tampered with, or the checksum belongs to another file. Nothing was cached",
        algo = .expected.algo.name(),
        expected = .expected.hex,
        verb = if .list.starts_with("--") { "pins" } else { "lists" }
    )]
    ImageMismatch { url: String, from: String, list: String, expected: sums::Sum, actual: String },
    #[error(
        "{} {} not name `{file}`: no line `<hex>  {file}` or `SHA256 ({file}) = <hex>` in {}. The image may have been renamed, or the \
         list is for another release; pin its checksum with --disk-image-sha256 instead",
        lists.join(" and "),
        if lists.len() == 1 { "does" } else { "do" },
        if lists.len() == 1 { "it" } else { "them" }
    )]
    NotListed { file: String, lists: Vec<String> },
    #[error(
        "{url}: no checksum list beside it: tried {} (none exists). Pin the image with --disk-image-sha256 HEX, or pass --no-verify to \
         use it unverified",
        tried.join(", ")
    )]
    NoList { url: String, tried: Vec<String> },
    #[error("cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
}

/// The downloads of a `--lock` build: the SHA-256 each URL must have, as the locked BOM
/// recorded them (see `crate::lock`).
#[derive(Debug, Clone, Default)]
pub struct DownloadPins {
    /// The bom.json they come from, for messages.
    pub source: PathBuf,
    /// URL (credentials removed, as the BOM records it) to lowercase hex SHA-256.
    pub sums: indexmap::IndexMap<String, String>,
}

impl DownloadPins {
    /// The SHA-256 `url` must have. `pinned` is the manifest's own pin, if any.
    ///
    /// Errors: the lock has no such URL (the manifest changed since the locked build), or the
    /// manifest pins another sum.
    pub fn sum_for(&self, url: &str, pinned: Option<&str>) -> Result<String, String> {
        let shown = redact(url);
        let Some(locked) = self.sums.get(&shown) else {
            return Err(format!(
                "--lock {}: {shown} is not in the lock; the locked build downloaded no such artifact (the manifest or its variables changed since)",
                self.source.display()
            ));
        };
        if let Some(p) = pinned.filter(|p| !p.eq_ignore_ascii_case(locked)) {
            return Err(format!("--lock {}: {shown}: the manifest pins sha256 {p}, the lock {locked}", self.source.display()));
        }
        Ok(locked.clone())
    }
}

/// A verified file in the cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fetched {
    /// The URL as the manifest names it (credentials removed).
    pub url: String,
    /// Where it was fetched from after the mirror map (credentials removed); `cache` when it
    /// came from the cache.
    pub source: String,
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The file in the cache; not recorded (empty when read back from a bom.json).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The fetcher: mirror map, cache, verification, offline mode.
pub struct Fetcher {
    pub mirrors: MirrorMap,
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// `--lock`: every download must have the SHA-256 the locked BOM recorded.
    pub pins: Option<Arc<DownloadPins>>,
    /// How failed transfers are retried and resumed.
    pub retry: RetryPolicy,
    /// Whether `packages` steps use kib's shared package cache under `cache_dir/packages`
    /// (see [`crate::pkg::PackageCache`]); `--no-package-cache` turns it off.
    pub package_cache: bool,
    /// Told of every transfer's progress; by default one log line every 5 s per transfer.
    pub progress: Option<ProgressHook>,
    agent: ureq::Agent,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Fetcher {
    /// A fetcher over the cache in `cache_dir`. One proxy serves every download: the first of
    /// `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` (or their lowercase forms) in the environment;
    /// hosts in `NO_PROXY` are reached directly (ureq's rules).
    pub fn new(mirrors: MirrorMap, cache_dir: &Path, offline: bool) -> Self {
        let config = ureq::Agent::config_builder()
            .proxy(ureq::Proxy::try_from_env())
            .timeout_connect(Some(std::time::Duration::from_secs(30)))
            // A transfer that stalls this long is cut, and resumed.
            .timeout_per_read(Some(std::time::Duration::from_secs(60)))
            // download.rs reads the status itself: 206, 416 and the retryable ones matter.
            .http_status_as_error(false)
            .build();
        Fetcher {
            mirrors,
            cache_dir: cache_dir.to_path_buf(),
            offline,
            pins: None,
            retry: RetryPolicy::default(),
            package_cache: true,
            progress: Some(download::log_lines(std::time::Duration::from_secs(5))),
            agent: config.into(),
        }
    }

    /// Where content with this SHA-256 lives in the cache.
    pub fn cached_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join("sha256").join(sha256.to_ascii_lowercase())
    }

    fn sums_path(&self, url: &str) -> PathBuf {
        self.cache_dir.join("sums").join(crate::hash::sha256_bytes(url.as_bytes()))
    }

    fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
        move |source| FetchError::Cache { path: path.to_path_buf(), source }
    }

    /// Returns the cached file with `sha256`, downloading `url` (through the mirror map) into the
    /// cache first when it is missing.
    ///
    /// Errors: offline and not cached; the server fails; the content's SHA-256 or size is wrong
    /// (both sums shown; nothing is cached).
    pub fn fetch(&self, url: &str, sha256: &str) -> Result<Fetched, FetchError> {
        if !is_sha256(sha256) {
            return Err(FetchError::BadSum(sha256.to_string(), redact(url)));
        }
        let sha256 = sha256.to_ascii_lowercase();
        let path = self.cached_path(&sha256);
        if let Ok(meta) = std::fs::metadata(&path) {
            return Ok(Fetched { url: redact(url), source: "cache".into(), sha256, size: meta.len(), path });
        }
        if self.offline {
            return Err(FetchError::Offline(vec![format!("{} (sha256 {sha256})", redact(url))]));
        }
        let from = self.mirrors.resolve(url);
        tracing::info!("downloading {}", redact(&from));
        let (tmp, actual, size) = self.download_to_cache_tmp(url, &from)?;
        if actual != sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(FetchError::Mismatch { url: redact(url), from: redact(&from), expected: sha256, actual });
        }
        std::fs::rename(&tmp, &path).map_err(Self::cache_err(&path))?;
        Ok(Fetched { url: redact(url), source: redact(&from), sha256, size, path })
    }

    /// Downloads into `<cache>/tmp/` and returns the temporary file, its SHA-256 and size.
    fn download_to_cache_tmp(&self, url: &str, from: &str) -> Result<(PathBuf, String, u64), FetchError> {
        let (tmp, digests, size) = self.download_tmp(url, from, false)?;
        Ok((tmp, digests.sha256, size))
    }

    /// Downloads `from` (resuming and retrying, see [`download`]) into a new file under
    /// `<cache>/tmp/`, which is removed again on any error. Returns it with its digests (SHA-512
    /// too when `sha512`) and size in bytes.
    fn download_tmp(&self, url: &str, from: &str, sha512: bool) -> Result<(PathBuf, Digests, u64), FetchError> {
        let tmp_dir = self.cache_dir.join("tmp");
        for d in [&tmp_dir, &self.cache_dir.join("sha256")] {
            std::fs::create_dir_all(d).map_err(Self::cache_err(d))?;
        }
        let file = tempfile::Builder::new().prefix("dl-").tempfile_in(&tmp_dir).map_err(Self::cache_err(&tmp_dir))?;
        let t = download::Transfer { agent: &self.agent, url, from, sha512, retry: self.retry, progress: self.progress.as_ref() };
        let (digests, size) = download::download(&t, file.as_file())?;
        let (_, path) = file.keep().map_err(|e| FetchError::Cache { path: tmp_dir.clone(), source: e.error })?;
        Ok((path, digests, size))
    }

    /// Fetches `url` without a known SHA-256 (an unpinned repository key): the content is cached
    /// by its SHA-256 like any other, and the URL remembered, so offline builds find it again.
    /// The caller records the SHA-256 it got.
    pub fn fetch_unpinned(&self, url: &str) -> Result<Fetched, FetchError> {
        let index = self.cache_dir.join("urls").join(crate::hash::sha256_bytes(url.as_bytes()));
        if let Ok(sum) = std::fs::read_to_string(&index) {
            if let Ok(f) = self.fetch(url, sum.trim()) {
                return Ok(f);
            }
        }
        if self.offline {
            return Err(FetchError::Offline(vec![format!("{} (unpinned)", redact(url))]));
        }
        let from = self.mirrors.resolve(url);
        tracing::info!("downloading {} (unpinned)", redact(&from));
        let (tmp, sha256, size) = self.download_to_cache_tmp(url, &from)?;
        let path = self.cached_path(&sha256);
        std::fs::rename(&tmp, &path).map_err(Self::cache_err(&path))?;
        let dir = self.cache_dir.join("urls");
        std::fs::create_dir_all(&dir).map_err(Self::cache_err(&dir))?;
        std::fs::write(&index, &sha256).map_err(Self::cache_err(&index))?;
        Ok(Fetched { url: redact(url), source: redact(&from), sha256, size, path })
    }

    /// Whether an unpinned download of `url` is in the cache.
    pub fn has_unpinned(&self, url: &str) -> bool {
        let index = self.cache_dir.join("urls").join(crate::hash::sha256_bytes(url.as_bytes()));
        std::fs::read_to_string(index).is_ok_and(|sum| self.cached_path(sum.trim()).exists())
    }

    /// The SHA-256 published at `sums_url` (a `sha256sum`-style file, GNU or BSD format, or a
    /// bare digest) for the file named like the last segment of `file_url` (see [`sums::find`]).
    /// Cached per URL for offline builds.
    pub fn published_sum(&self, sums_url: &str, file_url: &str) -> Result<String, FetchError> {
        let text = self.checksum_list(sums_url)?;
        let name = file_url.rsplit('/').next().unwrap_or(file_url);
        match sums::find(&text, name) {
            Some(s) if s.algo == sums::Algo::Sha256 => Ok(s.hex),
            _ => Err(FetchError::BadSum(text.trim().chars().take(80).collect(), redact(sums_url))),
        }
    }

    /// The text of the checksum list at `url`: from the cache (`<cache>/sums/`), else downloaded
    /// (through the mirror map) and cached. Offline, a list not in the cache is an
    /// [`FetchError::Offline`] error.
    pub fn checksum_list(&self, url: &str) -> Result<String, FetchError> {
        let cached = self.sums_path(url);
        match std::fs::read_to_string(&cached) {
            Ok(t) => Ok(t),
            Err(_) if self.offline => Err(FetchError::Offline(vec![format!("{} (checksum file)", redact(url))])),
            Err(_) => {
                let from = self.mirrors.resolve(url);
                let (tmp, _, _) = self.download_to_cache_tmp(url, &from)?;
                let text = std::fs::read_to_string(&tmp).map_err(Self::cache_err(&tmp));
                let text = match text {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                };
                let dir = self.cache_dir.join("sums");
                std::fs::create_dir_all(&dir).map_err(Self::cache_err(&dir))?;
                std::fs::rename(&tmp, &cached).map_err(Self::cache_err(&cached))?;
                Ok(text)
            }
        }
    }

    /// Whether the checksum list at `url` is in the cache.
    pub fn has_checksum_list(&self, url: &str) -> bool {
        self.sums_path(url).is_file()
    }
}

#[cfg(test)]
mod tests;
