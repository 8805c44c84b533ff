//! SHA-256 of files, streamed.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Read size for hashing and copying: 4 MiB.
pub const CHUNK: usize = 4 << 20;

/// This kib's identity in cache keys (the build cache's and the matrix's build keys):
/// `<version>+<first 16 hex digits of the SHA-256 of its own executable>`, so that builds of
/// different code never share a cache entry or a matrix stamp (a developer's rebuilt kib
/// included), while copies of the same binary (another host, the container image) do. Read once
/// per process (about 0.2 s for the 80 MB release binary); the version alone when
/// `/proc/self/exe` cannot be read.
pub fn kib_build_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| match sha256_file(Path::new("/proc/self/exe")) {
        Ok(sum) => format!("{}+{}", env!("CARGO_PKG_VERSION"), &sum[..16]),
        Err(e) => {
            tracing::debug!("reading /proc/self/exe for kib's build id: {e}");
            env!("CARGO_PKG_VERSION").to_string()
        }
    })
}

/// The lowercase hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    sha256_reader(&mut f)
}

/// The lowercase hex SHA-256 of everything `r` yields.
pub fn sha256_reader(r: &mut impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies everything `r` yields into `w`, hashing it on the way, in [`CHUNK`]-sized pieces (never
/// held whole in memory). After each piece `after_chunk` may stop the copy with an error (kib's
/// interruption check). Returns the bytes copied and their lowercase hex SHA-256.
///
/// Errors: reading or writing fails, or `after_chunk` says stop.
pub fn copy_hashed(r: &mut dyn Read, w: &mut dyn Write, after_chunk: &mut dyn FnMut() -> io::Result<()>) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        size += n as u64;
        after_chunk()?;
    }
    Ok((size, hex::encode(h.finalize())))
}

/// The lowercase hex SHA-256 of a byte string.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
