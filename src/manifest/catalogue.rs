//! The catalogue of shipped manifests: `--release-channel 1-30` is `k8s-1.30.yaml`, looked up in
//! `./manifests`, beside kib's executable (a checkout's or an installation's `manifests/` and
//! `share/kib/manifests/`) and in `/usr/share/kib/manifests`.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Folders searched for shipped manifests, in order.
pub fn manifest_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("manifests")];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(3) {
            dirs.push(up.join("manifests"));
            dirs.push(up.join("share/kib/manifests"));
        }
    }
    dirs.push("/usr/share/kib/manifests".into());
    dirs
}

/// The manifest of a release channel such as `1-30` (`k8s-1.30.yaml`), the first found in
/// [`manifest_dirs`].
///
/// Errors: a malformed channel, or none shipped (the message lists the channels there are).
pub fn release_channel(channel: &str) -> Result<PathBuf> {
    let Some((major, minor)) = channel.split_once('-').filter(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()) else {
        bail!("release channel `{channel}`: expected MAJOR-MINOR, such as 1-30");
    };
    let file = format!("k8s-{major}.{minor}.yaml");
    let dirs = manifest_dirs();
    if let Some(found) = dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
        return Ok(found);
    }
    let mut known: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("k8s-")?.strip_suffix(".yaml").map(|v| v.replace('.', "-")))
        .filter(|v| v.split('-').all(|p| p.parse::<u32>().is_ok()))
        .collect();
    known.sort();
    known.dedup();
    bail!("no manifest for release channel {channel} ({file}); channels available: {}", if known.is_empty() { "none".into() } else { known.join(", ") })
}
