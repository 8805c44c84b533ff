//! The working copy: a sparse raw file that every later step writes to. The input image is only
//! ever opened for reading.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use crate::exec;
use crate::progress::Activity;

/// What `qemu-img info` says about the input.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputFormat {
    /// qemu's format name: `raw`, `qcow2`, `vmdk`, `vhdx`, `vpc`, ...
    pub format: String,
    /// The disk's size as the guest sees it, in bytes.
    pub virtual_size: u64,
}

/// Asks `qemu-img info` for the input's format and virtual size.
///
/// Errors: qemu-img cannot read the file (a truncated or corrupt image), or the image refers to
/// another file (a backing file or an external data file): such a reference could make kib read
/// any file on the host into the image, so it is refused.
pub fn inspect(input: &Path) -> Result<InputFormat> {
    let json = exec::capture(Command::new("qemu-img").args(["info", "--output=json"]).arg(input), "qemu-img info")
        .with_context(|| format!("{} is not a disk image qemu-img can read", input.display()))?;
    let v: serde_json::Value = serde_json::from_str(&json).context("parsing qemu-img info output")?;
    if let Some(b) = v.get("backing-filename").and_then(|b| b.as_str()) {
        bail!("{} has a backing file ({b}); kib only takes self-contained images (flatten it with qemu-img convert)", input.display());
    }
    if let Some(d) = v.pointer("/format-specific/data/data-file").and_then(|d| d.as_str()) {
        bail!("{} uses an external data file ({d}); kib only takes self-contained images", input.display());
    }
    let format = InputFormat {
        format: v["format"].as_str().unwrap_or("raw").to_string(),
        virtual_size: v["virtual-size"].as_u64().context("qemu-img info gave no virtual-size")?,
    };
    if format.format != "raw" {
        check_integrity(input, &format.format)?;
    }
    Ok(format)
}

/// How many `ERROR` lines of `qemu-img check` an error message quotes.
const CHECK_LINES: usize = 3;

/// Runs `qemu-img check` on a non-raw input (metadata only; fast even for large images).
/// `qemu-img convert` reads clusters that lie past a truncated file's end, or behind a damaged
/// L1/L2 table, as zeros without complaint, so without this check a damaged image would turn into
/// a working copy with holes and fail later with a confusing mount or "no partition table" error.
/// Leaked clusters (wasted space, no harm to data) are only logged.
///
/// Errors: qemu-img reports corruptions (exit code 2) or cannot complete the check (exit code 1).
fn check_integrity(input: &Path, format: &str) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "-f", format])
        .arg(input)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running qemu-img check")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ERROR")).take(CHECK_LINES).collect();
    let quoted = || if errors.is_empty() { stderr.trim().to_string() } else { errors.join("; ") };
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    match out.status.code() {
        Some(0) | Some(63) => Ok(()), // 63: the format has no consistency check
        Some(3) => {
            tracing::warn!("{}: {} leaked cluster(s) (wasted space, no harm to data)", input.display(), report["leaks"].as_u64().unwrap_or(0));
            Ok(())
        }
        Some(2) => bail!(
            "{} is a damaged {format} image: qemu-img check found {} corruption(s) (a truncated file or a broken cluster table): {}",
            input.display(),
            report["corruptions"].as_u64().unwrap_or(0),
            quoted()
        ),
        code => bail!(
            "{} is a damaged {format} image: qemu-img check could not complete ({}): {}",
            input.display(),
            code.map_or_else(|| "killed by a signal".to_string(), |c| format!("exit code {c}")),
            quoted()
        ),
    }
}

/// Writes the sparse raw working copy of `input` to `dest` and returns the input's SHA-256.
///
/// A raw input is copied extent by extent (`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`, so holes
/// stay holes and the kernel moves the data; through a buffer where the input and `dest` are on
/// different filesystem types) while another thread hashes it. Other formats are
/// converted by `qemu-img convert` while another thread hashes the input. `known_sha256`, when
/// given (see [`super::verify::InputCache`]), skips the hashing.
pub fn make(input: &Path, format: &InputFormat, dest: &Path, known_sha256: Option<&str>) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?;
    let shown = input.file_name().map_or_else(|| input.display().to_string(), |n| n.to_string_lossy().into_owned());
    let hashing = known_sha256.is_none().then(|| Activity::task(format!("hashing {shown}"), Some(meta.len())));
    // The data to copy: the input's allocated bytes (for qcow2 and others, about its data).
    let copying = Activity::task(format!("working copy of {shown} ({})", format.format), Some(meta.blocks() * 512));
    let sum = std::thread::scope(|s| {
        let hasher = hashing.as_ref().map(|task| {
            s.spawn(move || -> std::io::Result<String> {
                let sum = crate::hash::sha256_reader(&mut task.reader(std::fs::File::open(input)?))?;
                Ok(sum)
            })
        });
        let copied = if format.format == "raw" {
            sparse_copy(input, dest, &copying).with_context(|| format!("copying {} to {}", input.display(), dest.display()))
        } else {
            copying
                .watch_growth(dest)
                .during(|| {
                    exec::run(
                        Command::new("qemu-img").args(["convert", "-f", &format.format, "-O", "raw"]).arg(input).arg(dest),
                        "qemu-img convert (input to raw working copy)",
                        None,
                    )
                })
                .map(|_| ())
                .map_err(Into::into)
        };
        let sum = match hasher {
            Some(h) => h.join().expect("hash thread panicked").with_context(|| format!("reading {}", input.display()))?,
            None => known_sha256.unwrap_or_default().to_string(),
        };
        copied?;
        anyhow::Ok(sum)
    })?;
    if let Some(h) = hashing {
        h.finish();
    }
    copying.finish();
    Ok(sum)
}

/// How [`clone_or_copy`] copied a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMethod {
    /// The filesystem shares the blocks (`FICLONE`: btrfs, xfs with reflink, bcachefs): no
    /// data is copied.
    Reflink,
    /// [`sparse_copy`]: the data extents only, moved by the kernel where it can.
    SparseCopy,
}

impl CopyMethod {
    /// `reflink` or `sparse-copy`.
    pub fn name(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::SparseCopy => "sparse-copy",
        }
    }
}

/// Copies the raw disk `input` to the new file `dest` (which must not exist): a reflink where
/// the filesystem has them (both files on one btrfs or reflink-enabled xfs), else
/// [`sparse_copy`]. Used for the build cache's snapshots and for restoring one as a working copy.
///
/// Errors: `dest` exists or cannot be created, or reading or writing fails; a partial `dest` is
/// left for the caller to remove.
pub fn clone_or_copy(input: &Path, dest: &Path, progress: &Activity) -> std::io::Result<CopyMethod> {
    {
        let src = File::open(input)?;
        let dst = std::fs::OpenOptions::new().write(true).create_new(true).open(dest)?;
        match rustix::fs::ioctl_ficlone(&dst, &src) {
            Ok(()) => {
                progress.set_position(src.metadata()?.len());
                return Ok(CopyMethod::Reflink);
            }
            // No reflinks here (ext4, tmpfs, two filesystems): copy the data.
            Err(_) => std::fs::remove_file(dest)?,
        }
    }
    sparse_copy(input, dest, progress)?;
    Ok(CopyMethod::SparseCopy)
}

/// Copies the data extents of `input` to a new file `dest` of the same size; holes stay holes.
pub fn sparse_copy(input: &Path, dest: &Path, progress: &Activity) -> std::io::Result<()> {
    use rustix::fs::{copy_file_range, seek, SeekFrom as RSeek};
    let src = File::open(input)?;
    let dst = File::create(dest)?;
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut pos = 0u64;
    let mut kernel_copy = true;
    let mut buf = Vec::new();
    while pos < len {
        let data = match seek(&src, RSeek::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = seek(&src, RSeek::Hole(data))?.min(len);
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            // 64 MiB at a time: large enough for copy_file_range, small enough for progress.
            let chunk = usize::try_from(hole - off_in).unwrap_or(usize::MAX).min(64 << 20);
            let n = if kernel_copy {
                match copy_file_range(&src, Some(&mut off_in), &dst, Some(&mut off_out), chunk) {
                    Ok(n) => n,
                    // copy_file_range works within one filesystem type only (Linux 5.19+): across
                    // two, such as the input on the host's ext4 bind-mounted into a container whose
                    // /var/tmp is overlayfs, it answers EXDEV. Copy through a buffer instead.
                    Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
                        kernel_copy = false;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                copy_through_buffer(&src, &dst, &mut buf, &mut off_in, &mut off_out, chunk)?
            };
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "input shrank while being copied"));
            }
            progress.inc(n as u64);
        }
        pos = hole;
    }
    Ok(())
}

/// Copies up to `len` bytes from `src` at `off_in` to `dst` at `off_out` through `buf` (1 MiB),
/// advancing both offsets; returns how many bytes it copied (0 at the input's end).
fn copy_through_buffer(src: &File, dst: &File, buf: &mut Vec<u8>, off_in: &mut u64, off_out: &mut u64, len: usize) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    buf.resize(1 << 20, 0);
    let want = len.min(buf.len());
    let n = src.read_at(&mut buf[..want], *off_in)?;
    dst.write_all_at(&buf[..n], *off_out)?;
    *off_in += n as u64;
    *off_out += n as u64;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn raw_copy_is_identical_sparse_and_hashed() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.raw");
        let mut data = vec![0u8; 9 << 20];
        data[100] = 1;
        data[5 << 20] = 7;
        *data.last_mut().unwrap() = 9;
        // A sparse input: three small written regions, holes between.
        let f = File::create(&input).unwrap();
        f.set_len(data.len() as u64).unwrap();
        use std::os::unix::fs::FileExt;
        for off in [100usize, 5 << 20, (9 << 20) - 1] {
            f.write_at(&data[off..off + 1], off as u64).unwrap();
        }
        drop(f);
        let out = d.path().join("out.raw");
        let fmt = inspect(&input).unwrap();
        assert_eq!(fmt.format, "raw");
        assert_eq!(fmt.virtual_size, 9 << 20);
        let sum = make(&input, &fmt, &out, None).unwrap();
        assert_eq!(sum, crate::hash::sha256_bytes(&data));
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(std::fs::metadata(&out).unwrap().blocks() * 512 < 1 << 20, "the copy is not sparse");
    }

    /// Across two filesystem types (the input on tmpfs, the copy on the target folder's), where
    /// copy_file_range answers EXDEV, the copy goes through a buffer and stays sparse.
    #[test]
    fn raw_copy_across_filesystems() {
        let shm = Path::new("/dev/shm");
        let d = tempfile::tempdir().unwrap();
        let (Ok(a), Ok(b)) = (rustix::fs::statfs(shm), rustix::fs::statfs(d.path())) else { return };
        if a.f_type == b.f_type {
            eprintln!("skipped: /dev/shm and {} are the same filesystem type", d.path().display());
            return;
        }
        let src = tempfile::NamedTempFile::new_in(shm).unwrap();
        let mut data = vec![0u8; 6 << 20];
        data[10] = 3;
        data[(3 << 20) + 5] = 4;
        src.as_file().set_len(data.len() as u64).unwrap();
        use std::os::unix::fs::FileExt;
        for off in [10usize, (3 << 20) + 5] {
            src.as_file().write_at(&data[off..off + 1], off as u64).unwrap();
        }
        let out = d.path().join("out.raw");
        let fmt = InputFormat { format: "raw".into(), virtual_size: data.len() as u64 };
        assert_eq!(make(src.path(), &fmt, &out, None).unwrap(), crate::hash::sha256_bytes(&data));
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(std::fs::metadata(&out).unwrap().blocks() * 512 < 1 << 20, "the copy is not sparse");
    }

    #[test]
    fn qcow2_input_is_converted_and_backing_files_refused() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("a.raw");
        let mut data = vec![0u8; 2 << 20];
        data[4096] = 42;
        std::fs::write(&raw, &data).unwrap();
        let q = d.path().join("a.qcow2");
        assert!(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&q).status().unwrap().success());
        let fmt = inspect(&q).unwrap();
        assert_eq!(fmt.format, "qcow2");
        let out = d.path().join("out.raw");
        let sum = make(&q, &fmt, &out, None).unwrap();
        assert_eq!(sum, crate::hash::sha256_file(&q).unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // An overlay whose backing file is a host file.
        let evil = d.path().join("evil.qcow2");
        assert!(Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname"])
            .arg(&evil)
            .output()
            .unwrap()
            .status
            .success());
        let e = inspect(&evil).unwrap_err().to_string();
        assert!(e.contains("has a backing file (/etc/hostname)"), "{e}");
    }

    /// A qcow2 of a small partitioned disk with data in several clusters.
    fn small_qcow2(d: &Path) -> std::path::PathBuf {
        let raw = d.join("d.raw");
        std::fs::write(&raw, vec![0x5au8; 4 << 20]).unwrap();
        let q = d.join("d.qcow2");
        assert!(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&q).status().unwrap().success());
        q
    }

    #[test]
    fn damaged_qcow2_is_refused_before_conversion() {
        let d = tempfile::tempdir().unwrap();
        let q = small_qcow2(d.path());
        assert_eq!(inspect(&q).unwrap().format, "qcow2");
        // Truncated inside its data clusters: `qemu-img info` still reads the header.
        let bytes = std::fs::read(&q).unwrap();
        std::fs::write(&q, &bytes[..bytes.len() / 2]).unwrap();
        let e = format!("{:#}", inspect(&q).unwrap_err());
        assert!(e.contains("is a damaged qcow2 image: qemu-img check found") && e.contains("corruption"), "{e}");
        // The L1 table's first entry pointing past the end of the file.
        let mut bytes = std::fs::read(small_qcow2(d.path())).unwrap();
        let l1 = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
        bytes[l1..l1 + 8].copy_from_slice(&((1u64 << 63) | 0x7fff_0000).to_be_bytes());
        std::fs::write(&q, &bytes).unwrap();
        let e = format!("{:#}", inspect(&q).unwrap_err());
        assert!(e.contains("is a damaged qcow2 image") && e.contains("ERROR"), "{e}");
    }

    #[test]
    fn truncated_qcow2_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("t.qcow2");
        assert!(Command::new("qemu-img").args(["create", "-f", "qcow2"]).arg(&q).arg("64M").output().unwrap().status.success());
        let bytes = std::fs::read(&q).unwrap();
        std::fs::write(&q, &bytes[..100]).unwrap();
        let e = format!("{:#}", inspect(&q).unwrap_err());
        assert!(e.contains("is not a disk image qemu-img can read"), "{e}");
    }
}
