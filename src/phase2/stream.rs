//! Conversions whose tools write a stream (zstd, gzip/pigz, GNU tar): kib reads their standard
//! output, writes the artifact and hashes it on the way, so no artifact is read back for
//! SHA256SUMS; and one read of the raw disk feeds every compressor that needs the whole disk
//! (raw.zst, raw.gz), hashing the raw itself in the same pass.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::exec::ExecError;

/// What a streamed conversion wrote: the file, its SHA-256 (lowercase hex) and size in bytes.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The gzip compressor: `pigz` (parallel deflate over every CPU; its output is standard gzip,
/// one member, that gzip, Python's gzip and tarfile read) when the host has it, else `gzip`.
pub fn gzip_program() -> &'static str {
    static PROGRAM: OnceLock<&'static str> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| is_executable(&d.join("pigz"))));
        if found {
            "pigz"
        } else {
            tracing::info!("pigz is not installed: gzip formats (gce, raw.gz) are compressed by gzip, on one CPU");
            "gzip"
        }
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Copies everything `r` yields into a new file `dest` (replaced if it exists), hashing it on
/// the way. Stops with [`ExecError::Interrupted`] (as an `io::Error`) when kib is interrupted.
///
/// Errors: reading, creating or writing fails.
pub fn write_hashed(mut r: impl Read, dest: &Path) -> io::Result<Hashed> {
    let mut f = std::fs::File::create(dest)?;
    let (size, sha256) = crate::hash::copy_hashed(&mut r, &mut f, &mut || match crate::exec::interrupted() {
        Some(signal) => Err(io::Error::other(ExecError::Interrupted { what: format!("writing {}", dest.display()), signal })),
        None => Ok(()),
    })?;
    f.flush()?;
    Ok(Hashed { path: dest.to_path_buf(), sha256, size })
}

/// A writer that hashes what passes through it into `inner` and counts it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), size: 0 }
    }

    /// The inner writer, the SHA-256 (lowercase hex) and the byte count of everything written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.size)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A running tool of a pipeline, with its standard error collected for the error message.
struct Running {
    child: Child,
    what: String,
    stderr: std::thread::JoinHandle<Vec<String>>,
}

impl Running {
    /// Starts `cmd` in its own process group (a terminal's Ctrl-C reaches kib only), dying with
    /// kib, with these standard input and output.
    fn spawn(cmd: &mut Command, what: &str, stdin: Stdio, stdout: Stdio) -> Result<Running, ExecError> {
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        crate::exec::die_with_parent(cmd);
        cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn { what: what.into(), source })?;
        let err = child.stderr.take();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut e) = err {
                let _ = e.read_to_string(&mut text);
            }
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines[lines.len().saturating_sub(crate::exec::TAIL_LINES)..].to_vec()
        });
        Ok(Running { child, what: what.into(), stderr })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for it. Errors: it failed (with its standard error's last lines).
    fn wait(mut self) -> Result<(), ExecError> {
        let status = self.child.wait().map_err(|source| ExecError::Spawn { what: self.what.clone(), source })?;
        let tail = self.stderr.join().unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        let (status, code) = match (status.code(), status.signal()) {
            (Some(c), _) => (format!("exit code {c}"), Some(c)),
            (None, Some(s)) => (format!("signal {s}"), None),
            _ => ("an unknown status".to_string(), None),
        };
        Err(ExecError::Failed { what: self.what, status, code, tail })
    }
}

/// Runs the pipeline `cmds` (each one's standard output into the next one's input, the first
/// reading nothing) and writes the last one's output to `dest`, hashed on the way. `what` names
/// it in errors.
///
/// Errors: a tool cannot start or fails (its standard error is shown), or writing fails; the
/// other tools are killed.
pub fn pipeline_to_file(cmds: &mut [Command], dest: &Path, what: &str) -> Result<Hashed> {
    let mut running: Vec<Running> = Vec::new();
    let mut next_in = Stdio::null();
    let mut last_out = None;
    let count = cmds.len();
    for (i, cmd) in cmds.iter_mut().enumerate() {
        let name = format!("{what} ({})", cmd.get_program().to_string_lossy());
        match Running::spawn(cmd, &name, std::mem::replace(&mut next_in, Stdio::null()), Stdio::piped()) {
            Ok(mut r) => {
                let out = r.child.stdout.take().expect("stdout is piped");
                running.push(r);
                // The next tool reads it; the last one's is kib's to read.
                if i + 1 < count {
                    next_in = Stdio::from(out);
                } else {
                    last_out = Some(out);
                }
            }
            Err(e) => {
                running.iter_mut().for_each(Running::kill);
                return Err(e.into());
            }
        }
    }
    drop(next_in);
    let Some(out) = last_out else { bail!("internal: an empty pipeline for {what}") };
    let wrote = write_hashed(out, dest).with_context(|| format!("writing {}", dest.display()));
    if wrote.is_err() {
        running.iter_mut().for_each(Running::kill);
    }
    let mut first_err = None;
    for r in running {
        if let Err(e) = r.wait() {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e.into());
    }
    wrote
}

/// Compresses the whole of `disk` into each `(command, dest)`, the command reading the disk on
/// its standard input and writing to its standard output, with one read of the disk for all of
/// them; with `hash_raw`, the disk's own SHA-256 is computed in the same pass. `progress` is told
/// of every chunk read (bytes). Returns what each wrote, in order, and the disk's SHA-256.
///
/// Errors: the disk cannot be read, a tool cannot start or fails, or a file cannot be written;
/// the other tools are then killed.
pub fn fan_out(disk: &Path, mut outs: Vec<(Command, PathBuf, String)>, hash_raw: bool, progress: &dyn Fn(u64)) -> Result<(Vec<Hashed>, Option<String>)> {
    let mut input = std::fs::File::open(disk).with_context(|| format!("reading {}", disk.display()))?;
    let mut running = Vec::new();
    let mut stdins: Vec<Option<ChildStdin>> = Vec::new();
    let mut stdouts = Vec::new();
    for (cmd, dest, what) in &mut outs {
        match Running::spawn(cmd, what, Stdio::piped(), Stdio::piped()) {
            Ok(mut r) => {
                stdins.push(r.child.stdin.take());
                stdouts.push((r.child.stdout.take().expect("stdout is piped"), dest.clone()));
                running.push(r);
            }
            Err(e) => {
                running.iter_mut().for_each(Running::kill);
                return Err(e.into());
            }
        }
    }
    std::thread::scope(|s| {
        let writers: Vec<_> = stdouts.into_iter().map(|(out, dest)| s.spawn(move || write_hashed(out, &dest).with_context(|| format!("writing {}", dest.display())))).collect();
        let mut h = hash_raw.then(Sha256::new);
        let mut buf = vec![0u8; crate::hash::CHUNK];
        let fed: Result<()> = (|| {
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {}", disk.display())),
                };
                if let Some(h) = h.as_mut() {
                    h.update(&buf[..n]);
                }
                progress(n as u64);
                for stdin in &mut stdins {
                    // A tool that stopped reading has failed; its own error is reported below.
                    if stdin.as_mut().is_some_and(|w| w.write_all(&buf[..n]).is_err()) {
                        *stdin = None;
                    }
                }
                if stdins.iter().all(Option::is_none) {
                    bail!("every compressor stopped reading {}", disk.display());
                }
                if let Some(signal) = crate::exec::interrupted() {
                    return Err(ExecError::Interrupted { what: format!("compressing {}", disk.display()), signal }.into());
                }
            }
        })();
        stdins.clear(); // end of input
        if fed.is_err() {
            running.iter_mut().for_each(Running::kill);
        }
        let mut written = Vec::new();
        let mut first_err = None;
        for (w, r) in writers.into_iter().zip(running) {
            let wrote = w.join().expect("writer thread panicked");
            let waited = r.wait();
            match (wrote, waited) {
                (_, Err(e)) => {
                    first_err.get_or_insert(anyhow::Error::from(e));
                }
                (Err(e), Ok(())) => {
                    first_err.get_or_insert(e);
                }
                (Ok(hashed), Ok(())) => written.push(hashed),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        fed?;
        Ok((written, h.map(|h| hex::encode(h.finalize()))))
    })
}
