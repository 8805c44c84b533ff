//! Every download goes through here: a mirror map, a content-addressed cache shared by all
//! builds, and SHA-256 verification. With `offline`, nothing is fetched: what the cache lacks is
//! an error that lists it.
//!
//! Cache layout (`<cache>` is `/var/cache/kib` by default):
//! - `<cache>/sha256/<hex>`: verified content, named by its SHA-256; written under a temporary
//!   name and renamed, so concurrent builds never see a partial file;
//! - `<cache>/sums/<sha256 of url>`: checksum files fetched from `sha256_url`s, so that offline
//!   builds can use them too.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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
    #[error("size mismatch for {url} (fetched from {from}): the server announced {announced} bytes but sent {received}")]
    Truncated { url: String, from: String, announced: u64, received: u64 },
    #[error("downloading {url} (from {from}): {message}")]
    Http { url: String, from: String, message: String },
    #[error("{url}: `{0}` is not a SHA-256 (64 hex digits)", url = .1)]
    BadSum(String, String),
    #[error("offline: not in the cache: {}", .0.join("; "))]
    Offline(Vec<String>),
    #[error("cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("{url} (fetched from {from}): {message}; nothing was cached")]
    Unverified { url: String, from: String, message: String },
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
    pub pins: Option<std::sync::Arc<DownloadPins>>,
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
            .http_status_as_error(true)
            .build();
        Fetcher { mirrors, cache_dir: cache_dir.to_path_buf(), offline, pins: None, agent: config.into() }
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
        let http = |message: String| FetchError::Http { url: redact(url), from: redact(from), message };
        let tmp_dir = self.cache_dir.join("tmp");
        for d in [&tmp_dir, &self.cache_dir.join("sha256")] {
            std::fs::create_dir_all(d).map_err(Self::cache_err(d))?;
        }
        let mut resp = self.agent.get(from).call().map_err(|e| http(e.to_string()))?;
        let announced = resp.body().content_length();
        let mut reader = resp.body_mut().as_reader();
        let mut file = tempfile::Builder::new().prefix("dl-").tempfile_in(&tmp_dir).map_err(Self::cache_err(&tmp_dir))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(n) => n,
                // The connection closed early: say how much of what was announced arrived,
                // rather than only the transport's "peer disconnected".
                Err(_) if announced.is_some_and(|a| size < a) => {
                    let announced = announced.unwrap_or_default();
                    return Err(FetchError::Truncated { url: redact(url), from: redact(from), announced, received: size });
                }
                Err(e) => return Err(http(e.to_string())),
            };
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(Self::cache_err(&tmp_dir))?;
            size += n as u64;
        }
        if let Some(announced) = announced {
            if announced != size {
                return Err(FetchError::Truncated { url: redact(url), from: redact(from), announced, received: size });
            }
        }
        let (_, path) = file.keep().map_err(|e| FetchError::Cache { path: tmp_dir.clone(), source: e.error })?;
        Ok((path, hex::encode(h.finalize()), size))
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

    /// Fetches `url` whose published digest is not a SHA-256 (Debian's SHA512SUMS, say):
    /// `verify` checks the downloaded file before it enters the cache, and a failure caches
    /// nothing. The content is then cached by its SHA-256 and the URL remembered, as
    /// [`Fetcher::fetch_unpinned`] does, so that a second run (or an `--offline` one) takes it
    /// from the cache; a cache hit is verified again.
    ///
    /// Errors: offline and not cached; the server fails; `verify` refuses the content (its
    /// message is kept).
    pub fn fetch_verified(&self, url: &str, verify: &dyn Fn(&Path) -> Result<(), String>) -> Result<Fetched, FetchError> {
        let index = self.cache_dir.join("urls").join(crate::hash::sha256_bytes(url.as_bytes()));
        if let Ok(sum) = std::fs::read_to_string(&index) {
            let path = self.cached_path(sum.trim());
            if let Ok(meta) = std::fs::metadata(&path) {
                if verify(&path).is_ok() {
                    return Ok(Fetched { url: redact(url), source: "cache".into(), sha256: sum.trim().to_string(), size: meta.len(), path });
                }
            }
        }
        if self.offline {
            return Err(FetchError::Offline(vec![redact(url)]));
        }
        let from = self.mirrors.resolve(url);
        tracing::info!("downloading {}", redact(&from));
        let (tmp, sha256, size) = self.download_to_cache_tmp(url, &from)?;
        if let Err(message) = verify(&tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(FetchError::Unverified { url: redact(url), from: redact(&from), message });
        }
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

    /// The SHA-256 published at `sums_url` (a `sha256sum`-style file or a bare digest) for the
    /// file named like the last segment of `file_url`. Cached per URL for offline builds.
    pub fn published_sum(&self, sums_url: &str, file_url: &str) -> Result<String, FetchError> {
        let cached = self.sums_path(sums_url);
        let text = match std::fs::read_to_string(&cached) {
            Ok(t) => t,
            Err(_) if self.offline => return Err(FetchError::Offline(vec![format!("{} (checksum file)", redact(sums_url))])),
            Err(_) => {
                let from = self.mirrors.resolve(sums_url);
                let (tmp, _, _) = self.download_to_cache_tmp(sums_url, &from)?;
                let text = std::fs::read_to_string(&tmp).map_err(Self::cache_err(&tmp))?;
                let dir = self.cache_dir.join("sums");
                std::fs::create_dir_all(&dir).map_err(Self::cache_err(&dir))?;
                std::fs::rename(&tmp, &cached).map_err(Self::cache_err(&cached))?;
                text
            }
        };
        let name = file_url.rsplit('/').next().unwrap_or(file_url);
        let sum = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let sum = w.next()?;
                let file = w.next().map(|f| f.trim_start_matches('*'));
                (is_sha256(sum) && file.is_none_or(|f| f.rsplit('/').next() == Some(name))).then(|| sum.to_ascii_lowercase())
            })
            .next();
        sum.ok_or_else(|| FetchError::BadSum(text.trim().chars().take(80).collect(), redact(sums_url)))
    }
}

#[cfg(test)]
mod tests;
