//! Standard output for listings (`kib validate`, `check`, `fetch`, ...): a closed pipe (`| head`)
//! ends kib quietly instead of panicking.

use std::io::Write;

/// Prints one line to standard output. When the reader has gone away (EPIPE), exits with status
/// 0 at once; call it only where no guard (mount, loop device, work directory) is alive.
pub fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}
