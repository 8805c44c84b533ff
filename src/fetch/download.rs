//! One transfer into a file: HTTP(S) through ureq, or `file://`. A dropped connection resumes
//! where it stopped (an HTTP `Range` request, guarded by `If-Range` when the server gave an
//! `ETag` or `Last-Modified`); 408, 429, 5xx answers and connection resets, time-outs and cuts
//! are retried with exponential backoff (a `Retry-After` the server sends is honoured, up to
//! a minute). A retry that made progress resumes at once and does not use up the budget, so a
//! flaky link that cuts a large image many times still finishes, while a server that never gets
//! further fails after `retries` retries. A server that ignores `Range` (answers 200) makes
//! the transfer start over. The model is coreos-installer's `src/download.rs` and
//! `src/source.rs`.
//!
//! Blocks of zeros are not written, only skipped, so a sparse raw image stays sparse in the
//! cache. Both digests are computed while the bytes arrive: nothing reads the file again.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sums::{Digests, Hasher};
use super::{redact, FetchError};

/// How far a transfer has come, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The URL as the manifest or command line names it, credentials removed.
    pub url: &'a str,
    /// Bytes received so far, in bytes (after a restart, counted from zero again).
    pub done: u64,
    /// The size the server announced, in bytes, when it did.
    pub total: Option<u64>,
    /// Whether the transfer has finished (successfully); the last call for a transfer has it.
    pub finished: bool,
}

/// A callback told of every transfer's progress, at most every [`PROGRESS_INTERVAL`] and once
/// when it finishes. It must be cheap and must not block.
pub type ProgressHook = Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

/// How often the progress hook is called during a transfer, at most.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// A progress hook writing one log line every `every` per transfer (and none for transfers that
/// finish sooner): what kib shows when nothing better is wired in, and in logs of
/// non-interactive runs.
pub fn log_lines(every: Duration) -> ProgressHook {
    let last = std::sync::Mutex::new((String::new(), Instant::now()));
    Arc::new(move |p: &Progress<'_>| {
        let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.0 != p.url {
            *last = (p.url.to_string(), Instant::now());
            return;
        }
        if p.finished || last.1.elapsed() < every {
            return;
        }
        last.1 = Instant::now();
        const MIB: f64 = (1u64 << 20) as f64;
        match p.total {
            Some(t) if t > 0 => tracing::info!(
                "downloading {}: {:.0} of {:.0} MiB ({:.0}%)",
                p.url,
                p.done as f64 / MIB,
                t as f64 / MIB,
                p.done as f64 * 100.0 / t as f64
            ),
            _ => tracing::info!("downloading {}: {:.0} MiB", p.url, p.done as f64 / MIB),
        }
    })
}

/// How failed transfers are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after failures that made no progress (0: none at all, not even a resume).
    pub retries: u32,
    /// The wait before the first retry; it doubles on each further one.
    pub first_delay: Duration,
    /// The longest wait between two tries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 retries, waiting 1, 2, 4 and 8 s.
    fn default() -> Self {
        RetryPolicy { retries: 4, first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(30) }
    }
}

/// Resumes that made progress, at most, whatever the policy: a bound on a server that sends a
/// few bytes and hangs up forever.
const MAX_RESUMES: u32 = 1000;

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// What one try ended with, when it did not finish the transfer.
struct Failure {
    error: FetchError,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// A transfer in progress: where it writes, what it has hashed.
struct State<'a> {
    file: &'a File,
    offset: u64,
    total: Option<u64>,
    hasher: Hasher,
    sha512: bool,
    /// `If-Range` value: a strong ETag or a Last-Modified date from the first 200 answer.
    validator: Option<String>,
}

impl State<'_> {
    fn restart(&mut self) -> std::io::Result<()> {
        self.offset = 0;
        self.hasher = Hasher::new(self.sha512);
        self.validator = None;
        self.file.set_len(0)
    }
}

/// What [`download`] needs besides the file.
pub struct Transfer<'a> {
    pub agent: &'a ureq::Agent,
    /// The URL as named (for messages and progress; redacted here).
    pub url: &'a str,
    /// The URL fetched, after the mirror map.
    pub from: &'a str,
    /// Also compute the SHA-512.
    pub sha512: bool,
    pub retry: RetryPolicy,
    pub progress: Option<&'a ProgressHook>,
}

/// Downloads `t.from` into `file` (which must be empty) and returns its digests and size.
///
/// Errors (all naming the URL and, where the mirror map changed it, where it was fetched from):
/// an answer other than 200/206 that is not worth retrying (404: `the server answered 404 Not
/// Found`), or one that is, after the retries; a connection cut that could not be resumed
/// (naming how many of how many bytes had arrived); the local file cannot be written.
pub fn download(t: &Transfer<'_>, file: &File) -> Result<(Digests, u64), FetchError> {
    if let Some(path) = t.from.strip_prefix("file://") {
        return copy_local(t, path, file);
    }
    let mut st = State { file, offset: 0, total: None, hasher: Hasher::new(t.sha512), sha512: t.sha512, validator: None };
    let (mut stalls, mut resumes, mut tries) = (0u32, 0u32, 0u32);
    let mut best = 0u64;
    // The last cut connection: when a retry then fails for good (the server went away), the
    // error still says how far the transfer had come.
    let mut last_cut: Option<(u64, Option<u64>, String)> = None;
    loop {
        tries += 1;
        let failure = match attempt(t, &mut st) {
            Ok(()) => break,
            Err(f) => f,
        };
        if !failure.retryable {
            return Err(match last_cut {
                Some((received, total, detail)) => {
                    let then = match &failure.error {
                        FetchError::Http { message, .. } => message.clone(),
                        e => e.to_string(),
                    };
                    FetchError::Cut { url: redact(t.url), from: redact(t.from), received, total, detail: format!("{detail}; then: {then}"), tries }
                }
                None => failure.error,
            });
        }
        if let FetchError::Cut { received, total, detail, .. } = &failure.error {
            last_cut = Some((*received, *total, detail.clone()));
        }
        let progressed = st.offset > best;
        if progressed {
            best = st.offset;
            stalls = 0;
            resumes += 1;
        } else {
            stalls += 1;
        }
        if t.retry.retries == 0 || stalls > t.retry.retries || resumes > MAX_RESUMES {
            return Err(give_up(failure.error, tries));
        }
        let delay = if progressed {
            Duration::ZERO
        } else {
            failure.retry_after.map(|d| d.min(MAX_RETRY_AFTER)).unwrap_or_else(|| backoff(&t.retry, stalls))
        };
        if progressed && st.offset > 0 {
            tracing::warn!("{}; resuming at byte {}", failure.error, st.offset);
        } else {
            tracing::warn!("{}; retrying in {delay:?} (retry {stalls} of {})", failure.error, t.retry.retries);
        }
        std::thread::sleep(delay);
    }
    st.file.set_len(st.offset).map_err(|e| local_err(t, e))?;
    if let Some(p) = t.progress {
        p(&Progress { url: &redact(t.url), done: st.offset, total: st.total, finished: true });
    }
    let State { hasher, offset, .. } = st;
    Ok((hasher.finish(), offset))
}

fn backoff(r: &RetryPolicy, stalls: u32) -> Duration {
    r.first_delay.saturating_mul(1u32 << stalls.saturating_sub(1).min(16)).min(r.max_delay)
}

/// The last failure's error, saying how many tries were made.
fn give_up(e: FetchError, tries: u32) -> FetchError {
    match e {
        FetchError::Cut { url, from, received, total, detail, .. } => FetchError::Cut { url, from, received, total, detail, tries },
        FetchError::Http { url, from, message } if tries > 1 => FetchError::Http { url, from, message: format!("{message} (gave up after {tries} tries)") },
        e => e,
    }
}

fn http_err(t: &Transfer<'_>, message: String) -> FetchError {
    FetchError::Http { url: redact(t.url), from: redact(t.from), message }
}

fn local_err(t: &Transfer<'_>, e: std::io::Error) -> FetchError {
    http_err(t, format!("writing the download to the cache: {e}"))
}

fn cut(t: &Transfer<'_>, st: &State<'_>, detail: String) -> Failure {
    let error = FetchError::Cut { url: redact(t.url), from: redact(t.from), received: st.offset, total: st.total, detail, tries: 1 };
    Failure { error, retryable: true, retry_after: None }
}

/// Whether a transport error is worth another try: resets, time-outs, a connection that broke
/// off. A refused connection or an unknown host is not: they do not heal in seconds.
fn transient(e: &ureq::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Io(io) => {
            matches!(io.kind(), K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe | K::TimedOut | K::Interrupted)
        }
        ureq::Error::Timeout(_) | ureq::Error::Protocol(_) | ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL if given).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

fn attempt(t: &Transfer<'_>, st: &mut State<'_>) -> Result<(), Failure> {
    let fatal = |error: FetchError| Failure { error, retryable: false, retry_after: None };
    let mut req = t.agent.get(t.from);
    if st.offset > 0 {
        req = req.header("Range", format!("bytes={}-", st.offset));
        if let Some(v) = &st.validator {
            req = req.header("If-Range", v.as_str());
        }
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(e) => {
            let retryable = transient(&e);
            return Err(Failure { error: http_err(t, e.to_string()), retryable, retry_after: None });
        }
    };
    let status = resp.status();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let length = resp.body().content_length();
    match status.as_u16() {
        200 => {
            if st.offset > 0 {
                tracing::warn!("{}: the server does not resume (it answered the Range request with 200): starting over", redact(t.from));
                st.restart().map_err(|e| fatal(local_err(t, e)))?;
            }
            st.total = length;
            st.validator = header("etag").filter(|e| !e.starts_with("W/")).or_else(|| header("last-modified"));
        }
        206 => {
            let cr = header("content-range").and_then(|v| content_range(&v));
            match cr {
                Some((start, total)) if start == st.offset => {
                    st.total = total.or_else(|| length.map(|l| st.offset + l)).or(st.total);
                }
                _ => {
                    // Not the part asked for: start over from the beginning.
                    st.restart().map_err(|e| fatal(local_err(t, e)))?;
                    return Err(Failure { error: http_err(t, format!("the server sent another range than asked for ({cr:?})")), retryable: true, retry_after: None });
                }
            }
        }
        416 if st.offset > 0 && st.total == Some(st.offset) => return Ok(()),
        416 => {
            st.restart().map_err(|e| fatal(local_err(t, e)))?;
            return Err(Failure { error: http_err(t, "the server refused to resume (416)".into()), retryable: true, retry_after: None });
        }
        code => {
            let message = format!("the server answered {} {}", code, status.canonical_reason().unwrap_or(""));
            let retryable = matches!(code, 408 | 429 | 500..=599);
            let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
            return Err(Failure { error: http_err(t, message.trim_end().to_string()), retryable, retry_after });
        }
    }
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut last_report = Instant::now();
    let shown = redact(t.url);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(cut(t, st, e.to_string())),
        };
        let chunk = &buf[..n];
        st.hasher.update(chunk);
        if chunk.iter().any(|&b| b != 0) {
            st.file.write_all_at(chunk, st.offset).map_err(|e| fatal(local_err(t, e)))?;
        }
        st.offset += n as u64;
        if let Some(p) = t.progress {
            if last_report.elapsed() >= PROGRESS_INTERVAL {
                last_report = Instant::now();
                p(&Progress { url: &shown, done: st.offset, total: st.total, finished: false });
            }
        }
    }
    match st.total {
        Some(total) if st.offset < total => Err(cut(t, st, "the server closed the connection".into())),
        Some(total) if st.offset > total => {
            Err(fatal(http_err(t, format!("the server announced {total} bytes but sent {}", st.offset))))
        }
        _ => Ok(()),
    }
}

/// `file://PATH`: a plain copy (no retries: a local read error does not heal).
fn copy_local(t: &Transfer<'_>, path: &str, file: &File) -> Result<(Digests, u64), FetchError> {
    let path = path.strip_prefix("localhost").unwrap_or(path);
    let mut src = File::open(path).map_err(|e| http_err(t, format!("{path}: {e}")))?;
    let total = src.metadata().ok().map(|m| m.len());
    let mut hasher = Hasher::new(t.sha512);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let shown = redact(t.url);
    let mut last_report = Instant::now();
    loop {
        let n = src.read(&mut buf).map_err(|e| http_err(t, format!("reading {path}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if buf[..n].iter().any(|&b| b != 0) {
            file.write_all_at(&buf[..n], offset).map_err(|e| local_err(t, e))?;
        }
        offset += n as u64;
        if let Some(p) = t.progress.filter(|_| last_report.elapsed() >= PROGRESS_INTERVAL) {
            last_report = Instant::now();
            p(&Progress { url: &shown, done: offset, total, finished: false });
        }
    }
    file.set_len(offset).map_err(|e| local_err(t, e))?;
    if let Some(p) = t.progress {
        p(&Progress { url: &shown, done: offset, total, finished: true });
    }
    Ok((hasher.finish(), offset))
}

/// Whether an error says the file is not there (HTTP 404 or 410, or a missing `file://` path):
/// a checksum list that does not exist, as opposed to a server that fails.
pub fn is_not_found(e: &FetchError) -> bool {
    match e {
        FetchError::Http { message, .. } => {
            message.starts_with("the server answered 404") || message.starts_with("the server answered 410") || message.ends_with("No such file or directory (os error 2)")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_backoff() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(content_range("items 1-2/3"), None);
        let r = RetryPolicy::default();
        let d: Vec<u64> = (1..=6).map(|s| backoff(&r, s).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30]);
    }
}
