//! SHA-256 of files, streamed.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Read size for hashing and copying: 4 MiB.
pub const CHUNK: usize = 4 << 20;

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

/// The lowercase hex SHA-256 of a byte string.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
