//! Base images by URL: `--disk-image https://…/noble-server-cloudimg-amd64.img` (or `http://`,
//! or `file://`). The image goes through the fetcher like any download (mirror map, proxy,
//! retries and resume, the content-addressed cache) and is verified before anything uses it:
//! - against a pin (`--disk-image-sha256`, or the SHA-256 a `--lock` BOM recorded for the URL);
//! - else against the first checksum list beside it, in the URL's own directory, that names it:
//!   [`LISTS`] are tried in order (the KEP's `SHA256SUMS` and `sha256sum.txt`, then Debian's
//!   `SHA512SUMS` and Rocky's BSD-format `CHECKSUM`), in GNU or BSD format, SHA-256 or SHA-512
//!   (see [`super::sums`]). Lists that do not exist (404) are skipped; lists that exist but do
//!   not name the image, with none naming it, are an error naming them and the file name looked
//!   for. No list at all is an error too: an image from the network is not used unverified
//!   unless `--no-verify` says so.
//!
//! A mismatch shows both digests and caches nothing. The verified image is cached by its SHA-256
//! (`<cache>/sha256/<hex>`, as every download), lists by URL (`<cache>/sums/`), and a record per
//! URL (`<cache>/images/<sha256 of url>.json`: its SHA-256 and, for SHA-512 lists, SHA-512) lets a
//! second build, or an `--offline` one, find it without downloading anything (lists already in
//! the cache are read before any is fetched). A list is cached
//! once per URL: an image published under a moving URL (`…/current/…`) is fetched again only
//! after its list is removed from the cache.

use std::path::PathBuf;

use super::sums::{self, Algo, Sum};
use super::{redact, FetchError, Fetched, Fetcher};

/// The checksum lists looked for beside an image URL, in this order.
pub const LISTS: &[&str] = &["SHA256SUMS", "sha256sum.txt", "SHA512SUMS", "CHECKSUM"];

/// Whether a `--disk-image` value is a URL kib downloads (`http://`, `https://`, `file://`)
/// rather than a local path.
pub fn is_url(spec: &str) -> bool {
    ["http://", "https://", "file://"].iter().any(|p| spec.len() > p.len() && spec[..p.len()].eq_ignore_ascii_case(p))
}

/// The URL's directory (without a trailing `/`) and its file name, query and fragment dropped.
pub fn split_url(url: &str) -> (&str, &str) {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit_once('/').unwrap_or(("", path))
}

/// How a downloaded image is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// It must have this SHA-256; `by` says who pinned it (`--disk-image-sha256`, `--lock FILE`).
    Pinned { sha256: String, by: String },
    /// Against a checksum list beside it ([`LISTS`]).
    Lists,
    /// Not at all (`--no-verify`): cached by URL like an unpinned download.
    Unverified,
}

/// A verified image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedImage {
    pub fetched: Fetched,
    /// What it was verified against: the list's URL (credentials removed) or the pin's source;
    /// `None` with [`Check::Unverified`].
    pub verified_against: Option<String>,
    /// The digest that was checked (a SHA-512 for SHA-512 lists).
    pub checked: Option<Sum>,
}

/// `<cache>/images/<sha256 of url>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    url: String,
    sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha512: Option<String>,
}

impl Fetcher {
    fn image_record_path(&self, url: &str) -> PathBuf {
        self.cache_dir.join("images").join(format!("{}.json", crate::hash::sha256_bytes(url.as_bytes())))
    }

    /// Returns the image at `url`, verified as `check` says, from the cache or downloaded into
    /// it. See the module documentation for the rules.
    ///
    /// Errors: the download fails (a 404 says so; a cut connection that could not be resumed
    /// names the bytes received); no list names the image ([`FetchError::NotListed`], naming the
    /// lists and the file name), or there is none ([`FetchError::NoList`]); the image does not
    /// match (both digests); offline and not cached.
    pub fn fetch_image(&self, url: &str, check: &Check) -> Result<FetchedImage, FetchError> {
        match check {
            Check::Pinned { sha256, by } => {
                let sum = Sum { algo: Algo::Sha256, hex: sha256.to_ascii_lowercase() };
                if sum.hex.len() != 64 || !sum.hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(FetchError::BadSum(sha256.clone(), by.clone()));
                }
                self.fetch_image_with_sum(url, sum, by)
            }
            Check::Unverified => {
                tracing::warn!("{}: --no-verify: the image is not checked against any checksum", redact(url));
                Ok(FetchedImage { fetched: self.fetch_unpinned(url)?, verified_against: None, checked: None })
            }
            Check::Lists => {
                let (dir, name) = split_url(url);
                let (mut without, mut tried) = (Vec::new(), Vec::new());
                // Lists already in the cache first, so that a second build (or an offline one)
                // asks the network nothing; then, online, the others.
                let urls: Vec<String> = LISTS.iter().map(|l| format!("{dir}/{l}")).collect();
                let cached: Vec<&String> = urls.iter().filter(|u| self.has_checksum_list(u)).collect();
                let order = cached.iter().copied().chain(urls.iter().filter(|u| !self.offline && !cached.contains(u)));
                for list_url in order {
                    let text = match self.checksum_list(list_url) {
                        Ok(t) => t,
                        Err(e) if super::download::is_not_found(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    match sums::find(&text, name) {
                        Some(sum) => return self.fetch_image_with_sum(url, sum, &redact(list_url)),
                        None => without.push(redact(list_url)),
                    }
                }
                tried.extend(urls.iter().map(|u| redact(u)));
                if !without.is_empty() {
                    Err(FetchError::NotListed { file: name.to_string(), lists: without })
                } else if self.offline {
                    Err(FetchError::Offline(vec![format!(
                        "{} (no checksum list beside it is cached: {}; fill the cache with `kib fetch --disk-image {}`)",
                        redact(url),
                        tried.join(", "),
                        redact(url)
                    )]))
                } else {
                    Err(FetchError::NoList { url: redact(url), tried })
                }
            }
        }
    }

    /// The image at `url`, which must have the digest `sum` (`against` names where it comes
    /// from, such as a checksum list's URL): from the cache when it holds it, else downloaded and
    /// checked. `kib build` calls it with the digest its OS catalogue's list gives.
    ///
    /// Errors: as [`Fetcher::fetch_image`].
    pub fn fetch_image_with_sum(&self, url: &str, sum: Sum, against: &str) -> Result<FetchedImage, FetchError> {
        let record_path = self.image_record_path(url);
        let record: Option<Record> = std::fs::read(&record_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let cached_sha256 = match sum.algo {
            Algo::Sha256 => Some(sum.hex.clone()),
            Algo::Sha512 => record.filter(|r| r.sha512.as_deref() == Some(&sum.hex)).map(|r| r.sha256),
        };
        let done = |fetched: Fetched| FetchedImage { fetched, verified_against: Some(against.to_string()), checked: Some(sum.clone()) };
        if let Some(sha256) = cached_sha256 {
            let path = self.cached_path(&sha256);
            if let Ok(meta) = std::fs::metadata(&path) {
                tracing::info!("{}: in the cache ({} {}), verified against {against}", redact(url), sum.algo.name(), sum.hex);
                return Ok(done(Fetched { url: redact(url), source: "cache".into(), sha256, size: meta.len(), path }));
            }
        }
        if self.offline {
            return Err(FetchError::Offline(vec![format!(
                "{} ({} {}; fill the cache with `kib fetch --disk-image {}`)",
                redact(url),
                sum.algo.name(),
                sum.hex,
                redact(url)
            )]));
        }
        let from = self.mirrors.resolve(url);
        tracing::info!("downloading {}", redact(&from));
        let (tmp, digests, size) = self.download_tmp(url, &from, sum.algo == Algo::Sha512)?;
        let actual = digests.get(sum.algo).unwrap_or_default().to_string();
        if actual != sum.hex {
            let _ = std::fs::remove_file(&tmp);
            return Err(FetchError::ImageMismatch { url: redact(url), from: redact(&from), list: against.to_string(), expected: sum, actual });
        }
        let path = self.cached_path(&digests.sha256);
        let stored = std::fs::rename(&tmp, &path).map_err(Self::cache_err(&path));
        if stored.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        stored?;
        let record = Record { url: redact(url), sha256: digests.sha256.clone(), sha512: digests.sha512.clone() };
        let dir = self.cache_dir.join("images");
        std::fs::create_dir_all(&dir).map_err(Self::cache_err(&dir))?;
        let tmp_record = record_path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp_record, serde_json::to_vec_pretty(&record).unwrap_or_default()).map_err(Self::cache_err(&tmp_record))?;
        std::fs::rename(&tmp_record, &record_path).map_err(Self::cache_err(&record_path))?;
        tracing::info!("{}: verified against {against} ({} {}), cached as {}", redact(url), sum.algo.name(), sum.hex, path.display());
        Ok(done(Fetched { url: redact(url), source: redact(&from), sha256: digests.sha256, size, path }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_their_directories() {
        assert!(is_url("https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"));
        assert!(is_url("HTTP://127.0.0.1:8080/x.raw") && is_url("file:///srv/images/x.raw"));
        assert!(!is_url("/var/cache/kib/base/x.raw") && !is_url("http://") && !is_url("ftp://x/y"));
        assert_eq!(split_url("http://h/a/b/disk.raw?token=1"), ("http://h/a/b", "disk.raw"));
        assert_eq!(split_url("file:///srv/disk.raw"), ("file:///srv", "disk.raw"));
    }
}
