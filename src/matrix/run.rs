//! Running a plan's builds on this host: each build is a `kib customize` child process (the same
//! kib executable) with its own log file and output folder, `jobs` at a time, sharing one cache.
//! A failing build does not stop the others. Results go into `<output>/matrix.json`.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Build, Plan, Stamp, STAMP_FILE};
use crate::exec;

/// What happened to one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Built now, successfully.
    Built,
    /// Its outputs already existed with the same build key.
    UpToDate,
    /// `kib customize` failed (see its log), or its outputs were incomplete.
    Failed,
    /// Stopped by SIGINT/SIGTERM.
    Interrupted,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Built => "built",
            Status::UpToDate => "up to date",
            Status::Failed => "FAILED",
            Status::Interrupted => "interrupted",
        }
    }

    /// Whether the build's outputs are there and current.
    pub fn ok(self) -> bool {
        matches!(self, Status::Built | Status::UpToDate)
    }
}

/// One build's result, as matrix.json records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildResult {
    pub index: usize,
    pub name: String,
    pub key: String,
    pub status: Status,
    /// Wall time in seconds (0 when up to date).
    pub seconds: f64,
    /// The largest resident set of the build's process tree (kib and the tools it ran, summed),
    /// in bytes, sampled every 0.5 s; 0 when not built now.
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Output files (paths under the output root).
    pub outputs: Vec<PathBuf>,
    pub log: PathBuf,
    /// For a failure: why, and the last lines of its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// `<output>/matrix.json`: the last result of every build of the matrix that was run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MatrixRecord {
    pub matrix: PathBuf,
    pub name: String,
    pub kib_version: String,
    /// The last run: when it started (RFC 3339), its wall time and parallelism.
    pub started: String,
    pub wall_seconds: f64,
    pub jobs: u32,
    /// By build name, in plan order; builds not run this time keep their earlier result.
    pub builds: Vec<BuildResult>,
}

impl MatrixRecord {
    /// The file under an output root.
    pub fn path(root: &Path) -> PathBuf {
        root.join("matrix.json")
    }

    /// The record under `root`, if there is a readable one.
    pub fn read(root: &Path) -> Option<MatrixRecord> {
        serde_json::from_slice(&std::fs::read(Self::path(root)).ok()?).ok()
    }

    /// Writes it atomically.
    pub fn write(&self, root: &Path) -> Result<()> {
        let file = Self::path(root);
        let tmp = root.join(format!(".matrix.json.tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The kib executable the children run.
    pub kib: PathBuf,
    pub jobs: u32,
    pub force: bool,
    pub cache_dir: PathBuf,
    /// Each child's `--config` (`None`: their default, /etc/kib/config.yaml).
    pub config: Option<PathBuf>,
    pub work_dir: PathBuf,
    /// Each child's `--convert-jobs`.
    pub convert_jobs: usize,
    /// Lines of a failed build's log to keep.
    pub tail_lines: usize,
    /// Each child's `--backend`.
    pub backend: crate::backend::BackendArg,
    /// Each child's `--appliance-timeout` (seconds).
    pub appliance_timeout: u64,
}

/// The `kib customize` command line of `build`.
pub fn customize_command(build: &Build, root: &Path, opts: &RunOptions) -> Command {
    let mut c = Command::new(&opts.kib);
    c.arg("customize").arg("--disk-image").arg(&build.input.image);
    if build.input.is_url {
        // The URL work's pin; verified against the image once it is downloaded.
        c.arg("--disk-image-sha256").arg(&build.input.sha256);
    }
    c.arg("--manifest").arg(&build.manifest.path);
    c.arg("--output-dir").arg(build.output_dir(root));
    c.arg("--name").arg(&build.name);
    c.arg("--format").arg(build.formats.iter().map(|f| f.name()).collect::<Vec<_>>().join(","));
    if let Some(q) = build.qcow2_compression {
        c.arg("--qcow2-compression").arg(format!("{q:?}").to_lowercase());
    }
    if let Some(p) = &build.provider {
        c.arg("--provider").arg(p);
    }
    for s in build.set_args() {
        c.arg("--set").arg(s);
    }
    c.arg("--work-dir").arg(&opts.work_dir);
    c.arg("--cache-dir").arg(&opts.cache_dir);
    if let Some(f) = &opts.config {
        c.arg("--config").arg(f);
    }
    c.arg("--convert-jobs").arg(opts.convert_jobs.to_string());
    use clap::ValueEnum;
    if let Some(b) = opts.backend.to_possible_value() {
        c.arg("--backend").arg(b.get_name());
    }
    if opts.backend != crate::backend::BackendArg::Loop {
        c.arg("--appliance-timeout").arg(opts.appliance_timeout.to_string());
    }
    c
}

/// Runs `builds` (from `plan`) under `root`, `opts.jobs` at a time; up-to-date ones are skipped
/// unless `opts.force`. Returns one result per build, in the order given. Records every result
/// in `root/matrix.json` when `record` is true.
///
/// Errors: only when the output root or a log file cannot be made; a failing build is a result.
pub fn run(plan: &Plan, builds: &[&Build], root: &Path, opts: &RunOptions, record: bool) -> Result<Vec<BuildResult>> {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let t0 = Instant::now();
    std::fs::create_dir_all(root.join("logs")).with_context(|| format!("creating {}", root.join("logs").display()))?;
    let mut results: Vec<Option<BuildResult>> = vec![None; builds.len()];
    let mut queue = VecDeque::new();
    for (i, b) in builds.iter().enumerate() {
        if !opts.force && b.up_to_date(root) {
            tracing::info!("{}: up to date (key {})", b.name, &b.key[..12]);
            results[i] = Some(result(b, root, Status::UpToDate, 0.0, 0, None, Vec::new()));
        } else {
            queue.push_back(i);
        }
    }
    let queue = Mutex::new(queue);
    let done = Mutex::new(&mut results);
    let workers = (opts.jobs as usize).min(builds.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if exec::interrupted().is_some() {
                        break;
                    }
                    let Some(i) = queue.lock().expect("queue lock").pop_front() else { break };
                    let r = run_one(builds[i], root, opts);
                    done.lock().expect("results lock")[i] = Some(r);
                }
            });
        }
    });
    let results: Vec<BuildResult> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| result(builds[i], root, Status::Interrupted, 0.0, 0, Some("not started: kib was interrupted".into()), Vec::new())))
        .collect();
    if record {
        let mut rec = MatrixRecord::read(root).filter(|r| r.matrix == plan.path).unwrap_or_default();
        let mut by_name: HashMap<String, BuildResult> = rec.builds.drain(..).map(|b| (b.name.clone(), b)).collect();
        for r in &results {
            by_name.insert(r.name.clone(), r.clone());
        }
        rec.builds = plan.builds.iter().filter_map(|b| by_name.remove(&b.name)).collect();
        rec.matrix = plan.path.clone();
        rec.name = plan.name.clone();
        rec.kib_version = env!("CARGO_PKG_VERSION").into();
        rec.started = started_at;
        rec.wall_seconds = round(t0.elapsed().as_secs_f64());
        rec.jobs = opts.jobs;
        rec.write(root)?;
    }
    Ok(results)
}

fn round(s: f64) -> f64 {
    (s * 10.0).round() / 10.0
}

#[allow(clippy::too_many_arguments)]
fn result(b: &Build, root: &Path, status: Status, seconds: f64, rss: u64, error: Option<String>, log_tail: Vec<String>) -> BuildResult {
    BuildResult {
        index: b.index,
        name: b.name.clone(),
        key: b.key.clone(),
        status,
        seconds: round(seconds),
        peak_rss_bytes: rss,
        outputs: if status.ok() { b.formats.iter().map(|f| b.output_dir(root).join(f.file_name(&b.name))).collect() } else { Vec::new() },
        log: b.log_file(root),
        error,
        log_tail,
    }
}

/// Runs one build to its end, forwarding SIGINT/SIGTERM to it.
fn run_one(b: &Build, root: &Path, opts: &RunOptions) -> BuildResult {
    let t = Instant::now();
    let log = b.log_file(root);
    let dir = b.output_dir(root);
    let fail = |e: anyhow::Error| result(b, root, Status::Failed, t.elapsed().as_secs_f64(), 0, Some(format!("{e:#}")), Vec::new());
    // A rebuild that fails must not leave the old stamp claiming the old outputs are current.
    match std::fs::remove_file(dir.join(STAMP_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return fail(anyhow::Error::new(e).context(format!("removing the old stamp in {}", dir.display()))),
    }
    let file = match File::create(&log) {
        Ok(f) => f,
        Err(e) => return fail(anyhow::Error::new(e).context(format!("creating the log {}", log.display()))),
    };
    let mut cmd = customize_command(b, root, opts);
    let err = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(e.into()),
    };
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    exec::signal_with_parent(&mut cmd, rustix::process::Signal::TERM);
    tracing::info!("{}: building ({} on {}, log {})", b.name, b.manifest.name, b.input.image, log.display());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(anyhow::Error::new(e).context(format!("starting {}", opts.kib.display()))),
    };
    let pid = child.id();
    let mut peak = 0u64;
    let mut forwarded = false;
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if let (Some(sig), false) = (exec::interrupted(), forwarded) {
            forwarded = true;
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::from_named_raw(sig).unwrap_or(rustix::process::Signal::TERM));
            }
        }
        if last_sample.elapsed() >= Duration::from_millis(500) {
            peak = peak.max(tree_rss(pid));
            last_sample = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let seconds = t.elapsed().as_secs_f64();
    let tail = || tail_of(&log, opts.tail_lines);
    match status {
        Err(e) => fail(anyhow::Error::new(e).context("waiting for kib customize")),
        Ok(s) if s.success() => match Stamp::of(b, &dir).and_then(|st| st.write(&dir)) {
            Ok(()) => {
                tracing::info!("{}: built in {seconds:.1}s", b.name);
                result(b, root, Status::Built, seconds, peak, None, Vec::new())
            }
            Err(e) => result(b, root, Status::Failed, seconds, peak, Some(format!("{e:#}")), tail()),
        },
        Ok(s) => {
            let status = if forwarded { Status::Interrupted } else { Status::Failed };
            tracing::warn!("{}: kib customize {s} after {seconds:.1}s; log {}", b.name, log.display());
            result(b, root, status, seconds, peak, Some(format!("kib customize {s}")), tail())
        }
    }
}

/// The last `n` lines of a log file.
fn tail_of(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

/// The summed resident set, in bytes, of `pid` and all its descendants, from /proc.
pub fn tree_rss(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses; the last `)` ends it.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()) else { continue };
        children.entry(ppid).or_default().push(p);
    }
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
            total += kib.unwrap_or(0) * 1024;
        }
        stack.extend(children.get(&p).into_iter().flatten());
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_process_tree() {
        let mut child = Command::new("sh").args(["-c", "sleep 2 & sleep 2 & wait"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let one = tree_rss(std::process::id());
        let tree = tree_rss(child.id());
        let _ = child.kill();
        let _ = child.wait();
        // Our own process alone is megabytes; the shell and two sleeps add some.
        assert!(one > tree && tree > 0, "{one} {tree}");
    }
}
