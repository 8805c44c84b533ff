//! Progress of a run (its phases, their steps, and long tasks such as the working copy, hashing,
//! downloads and conversions) reported through one narrow interface, so that the phases know
//! nothing of how it is shown.
//!
//! A phase calls [`Activity::phase`], [`Activity::step`] or [`Activity::task`], moves a task's
//! byte count with [`Activity::inc`] or [`Activity::set_position`], and ends it with
//! [`Activity::finish`] (or lets it drop: that reports it failed). Every call becomes an
//! [`Event`] handed to the one [`Sink`] the command installed with [`install`]: `src/ui` draws
//! bars on a terminal, prints plain lines into a pipe, or streams JSON lines. Without a sink
//! (unit tests, library use) events go nowhere.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What an activity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Phase 0, 1 or 2.
    Phase,
    /// A manifest step, or a named part of a phase (mounting, sysprep, the BOM, ...).
    Step,
    /// Long work counted in bytes: the working copy, hashing, a download, a conversion.
    Task,
}

/// How an activity ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    /// Not run (a step whose `when` does not match the image).
    Skipped,
}

/// One output file of a run, for the final result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputFile {
    /// Its path, as given on the command line (`out/node.qcow2`).
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// One thing that happened. `id` ties a start to its progress and end; `t` is seconds since the
/// sink was installed. Serialized as one JSON object with an `event` tag (the README's table).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start { id: u64, kind: Kind, label: String, #[serde(skip_serializing_if = "Option::is_none")] total_bytes: Option<u64> },
    Progress { id: u64, kind: Kind, label: String, bytes: u64, #[serde(skip_serializing_if = "Option::is_none")] total_bytes: Option<u64>, seconds: f64 },
    End { id: u64, kind: Kind, label: String, status: Status, seconds: f64, #[serde(skip_serializing_if = "Option::is_none")] bytes: Option<u64> },
    Warning { message: String },
    /// The run's last event: its outcome, its outputs with their sums, or the error.
    Result { status: Status, seconds: f64, outputs: Vec<OutputFile>, #[serde(skip_serializing_if = "Option::is_none")] error: Option<String> },
}

/// Where events go: implemented by `src/ui`.
pub trait Sink: Send + Sync {
    /// Called for every event, from any thread.
    fn event(&self, event: &Event);
}

static SINK: OnceLock<Box<dyn Sink>> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Installs the sink of this process. Errors (returns the sink back) when one is installed.
pub fn install(sink: Box<dyn Sink>) -> Result<(), Box<dyn Sink>> {
    SINK.set(sink)
}

/// Hands `event` to the sink, if any.
pub fn emit(event: Event) {
    if let Some(s) = SINK.get() {
        s.event(&event);
    }
}

/// Reports a warning (also logged by the caller through tracing, as before).
pub fn warn(message: impl Into<String>) {
    emit(Event::Warning { message: message.into() });
}

/// How often a task reports its bytes at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A phase, step or task that is running. Ends with [`Activity::finish`], [`Activity::skip`],
/// or, when dropped (an error on the way out), as failed.
#[derive(Debug)]
pub struct Activity {
    id: u64,
    kind: Kind,
    label: String,
    start: Instant,
    total: AtomicU64,
    position: AtomicU64,
    last_report: Mutex<Option<Instant>>,
    ended: AtomicBool,
}

impl Activity {
    fn start(kind: Kind, label: String, total_bytes: Option<u64>) -> Activity {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        emit(Event::Start { id, kind, label: label.clone(), total_bytes });
        Activity {
            id,
            kind,
            label,
            start: Instant::now(),
            total: AtomicU64::new(total_bytes.unwrap_or(0)),
            position: AtomicU64::new(0),
            last_report: Mutex::new(None),
            ended: AtomicBool::new(false),
        }
    }

    /// A phase starts: `label` such as `Phase 1: customization`.
    pub fn phase(label: impl Into<String>) -> Activity {
        Activity::start(Kind::Phase, label.into(), None)
    }

    /// A step starts: `label` such as `step 2/9 containerd (packages)`.
    pub fn step(label: impl Into<String>) -> Activity {
        Activity::start(Kind::Step, label.into(), None)
    }

    /// A task over `total_bytes` bytes (None: unknown, shown as a byte count and a rate).
    pub fn task(label: impl Into<String>, total_bytes: Option<u64>) -> Activity {
        Activity::start(Kind::Task, label.into(), total_bytes.filter(|t| *t > 0))
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Seconds since it started.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Bytes done so far.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// `n` more bytes are done.
    pub fn inc(&self, n: u64) {
        let p = self.position.fetch_add(n, Ordering::Relaxed) + n;
        self.report(p, false);
    }

    /// `bytes` are done in all.
    pub fn set_position(&self, bytes: u64) {
        self.position.store(bytes, Ordering::Relaxed);
        self.report(bytes, false);
    }

    fn report(&self, bytes: u64, force: bool) {
        let now = Instant::now();
        {
            let Ok(mut last) = self.last_report.lock() else { return };
            if !force && last.is_some_and(|l| now.duration_since(l) < PROGRESS_EVERY) {
                return;
            }
            *last = Some(now);
        }
        emit(Event::Progress { id: self.id, kind: self.kind, label: self.label.clone(), bytes, total_bytes: self.total(), seconds: self.seconds() });
    }

    fn end(&self, status: Status) -> f64 {
        let seconds = self.seconds();
        if !self.ended.swap(true, Ordering::Relaxed) {
            let bytes = (self.kind == Kind::Task).then(|| self.position());
            emit(Event::End { id: self.id, kind: self.kind, label: self.label.clone(), status, seconds, bytes });
        }
        seconds
    }

    /// It ended well; returns its duration in seconds.
    pub fn finish(self) -> f64 {
        self.end(Status::Ok)
    }

    /// It did not run.
    pub fn skip(self) {
        self.end(Status::Skipped);
    }

    /// Wraps `r` so that every byte read from it counts towards this task.
    pub fn reader<R: Read>(&self, r: R) -> ProgressReader<'_, R> {
        ProgressReader { inner: r, activity: self }
    }

    /// Counts a file's growth towards this task until the returned guard drops: a thread looks at
    /// `path`'s allocated bytes every 250 ms (for a tool such as qemu-img that writes it).
    pub fn watch_growth(&self, path: &Path) -> GrowthWatch<'_> {
        GrowthWatch { activity: self, path: path.to_path_buf(), stop: AtomicBool::new(false) }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.end(Status::Failed);
    }
}

/// A reader that counts what passes through it towards an [`Activity`].
pub struct ProgressReader<'a, R> {
    inner: R,
    activity: &'a Activity,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.activity.inc(n as u64);
        Ok(n)
    }
}

/// What [`Activity::watch_growth`] returns: run [`GrowthWatch::during`] with the work to watch.
pub struct GrowthWatch<'a> {
    activity: &'a Activity,
    path: PathBuf,
    stop: AtomicBool,
}

impl GrowthWatch<'_> {
    /// Runs `work` while a thread reports `path`'s allocated bytes (st_blocks × 512).
    pub fn during<T>(self, work: impl FnOnce() -> T) -> T {
        use std::os::unix::fs::MetadataExt;
        std::thread::scope(|s| {
            s.spawn(|| {
                while !self.stop.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::metadata(&self.path) {
                        self.activity.set_position(m.blocks() * 512);
                    }
                    std::thread::park_timeout(Duration::from_millis(250));
                }
            });
            let r = work();
            self.stop.store(true, Ordering::Relaxed);
            if let Ok(m) = std::fs::metadata(&self.path) {
                self.activity.position.store(m.blocks() * 512, Ordering::Relaxed);
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_counts_bytes_and_a_dropped_activity_has_failed() {
        let t = Activity::task("read", Some(10));
        let mut out = Vec::new();
        t.reader(&b"0123456789"[..]).read_to_end(&mut out).unwrap();
        assert_eq!(t.position(), 10);
        assert!(t.finish() >= 0.0);
        let e = serde_json::to_value(Event::End { id: 1, kind: Kind::Task, label: "x".into(), status: Status::Failed, seconds: 0.5, bytes: Some(3) }).unwrap();
        assert_eq!(e, serde_json::json!({"event": "end", "id": 1, "kind": "task", "label": "x", "status": "failed", "seconds": 0.5, "bytes": 3}));
    }

    #[test]
    fn growth_is_read_from_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let t = Activity::task("grow", None);
        t.watch_growth(&p).during(|| std::fs::write(&p, vec![1u8; 8192]).unwrap());
        assert!(t.position() >= 8192, "{}", t.position());
    }
}
