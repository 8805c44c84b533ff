//! The working copy: a sparse raw file that every later step writes to. The input image is only
//! ever opened for reading.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::exec;
use crate::hash::CHUNK;

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
    Ok(InputFormat {
        format: v["format"].as_str().unwrap_or("raw").to_string(),
        virtual_size: v["virtual-size"].as_u64().context("qemu-img info gave no virtual-size")?,
    })
}

/// Writes the sparse raw working copy of `input` to `dest` and returns the input's SHA-256.
/// A raw input is copied and hashed in one pass (all-zero blocks become holes); other formats
/// are converted by `qemu-img convert` while another thread hashes the input.
pub fn make(input: &Path, format: &InputFormat, dest: &Path) -> Result<String> {
    if format.format == "raw" {
        return copy_raw(input, dest);
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(|| crate::hash::sha256_file(input));
        let converted = exec::run(
            Command::new("qemu-img").args(["convert", "-f", &format.format, "-O", "raw"]).arg(input).arg(dest),
            "qemu-img convert (input to raw working copy)",
            None,
        );
        let sum = hasher.join().expect("hash thread panicked").with_context(|| format!("reading {}", input.display()))?;
        converted?;
        Ok(sum)
    })
}

/// Granularity of hole detection: 64 KiB.
const HOLE: usize = 64 << 10;

fn copy_raw(input: &Path, dest: &Path) -> Result<String> {
    let mut src = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut dst = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf).with_context(|| format!("reading {}", input.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        for block in buf[..n].chunks(HOLE) {
            if block.iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                dst.write_all(block).with_context(|| format!("writing {}", dest.display()))?;
            }
        }
        total += n as u64;
    }
    dst.set_len(total).with_context(|| format!("sizing {}", dest.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
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
        std::fs::write(&input, &data).unwrap();
        let out = d.path().join("out.raw");
        let fmt = inspect(&input).unwrap();
        assert_eq!(fmt.format, "raw");
        assert_eq!(fmt.virtual_size, 9 << 20);
        let sum = make(&input, &fmt, &out).unwrap();
        assert_eq!(sum, crate::hash::sha256_bytes(&data));
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
        let sum = make(&q, &fmt, &out).unwrap();
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
