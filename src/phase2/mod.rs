//! Phase 2: artifacts. Sysprep, the BOM, fstrim, unmount, conversion to each format, checksums.

pub mod bom;
pub mod convert;
pub mod license;
pub mod ova;
pub mod sbom;
pub mod sysprep;

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::exec;
use crate::phase0::Image;

/// Discards unused blocks of every mounted filesystem of the image, so that the working copy's
/// free space becomes holes and the outputs shrink. A filesystem that does not support it is
/// noted and skipped.
pub fn trim(image: &Image) -> Result<()> {
    for fs in &image.filesystems {
        let dir = image.root_dir.join(fs.mount_point.trim_start_matches('/'));
        match exec::capture(Command::new("fstrim").arg("-v").arg(&dir), "fstrim") {
            Ok(out) => tracing::info!("fstrim {}: {}", fs.mount_point, out.trim().rsplit(": ").next().unwrap_or("")),
            Err(e) => tracing::warn!("fstrim {} failed, continuing without it: {e}", fs.mount_point),
        }
    }
    Ok(())
}

/// `SHA256SUMS` text in sha256sum's format for `(file, sha256)` pairs.
pub fn sha256sums<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    entries.into_iter().map(|(f, s)| format!("{s}  {f}\n")).collect()
}

/// Creates the output folder if it is missing.
pub fn ensure_output_dir(dir: &Path) -> Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating output folder {}", dir.display()))
}
