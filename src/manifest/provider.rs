//! Provider profiles: `phases/providers/<name>.yaml`, chosen with `--provider NAME` or a
//! manifest's `provider: NAME`, and applied as the manifest's last include (see [`super::load_with`]).
//!
//! A profile is found in the first `phases/providers` folder of: the manifest's folder and each
//! folder above it (as includes are), `./phases/providers`, beside kib's executable (a checkout's
//! or an installation's `phases/providers` and `share/kib/phases/providers`), and
//! `/usr/share/kib/phases/providers`. A name matches a file stem, or an entry of a profile's
//! `provider.aliases`.

use std::path::{Path, PathBuf};

use super::schema::{ProviderField, ProviderProfile};
use super::ManifestError;

/// The folders searched for `providers/`, nearest first.
pub fn provider_dirs(manifest: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let start = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    for up in start.ancestors() {
        dirs.push(up.join("phases/providers"));
    }
    dirs.push(PathBuf::from("phases/providers"));
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(3) {
            dirs.push(up.join("phases/providers"));
            dirs.push(up.join("share/kib/phases/providers"));
        }
    }
    dirs.push("/usr/share/kib/phases/providers".into());
    dirs
}

/// The profiles in one folder: (file, its `provider:` section), sorted by file name. Files
/// without a `provider:` section (or that do not parse) are skipped.
pub fn profiles_in(dir: &Path) -> Vec<(PathBuf, ProviderProfile)> {
    let mut found: Vec<(PathBuf, ProviderProfile)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && p.is_file())
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            match super::parse(&p, &text).ok()?.provider? {
                ProviderField::Profile(profile) => Some((p, profile)),
                ProviderField::Name(_) => None,
            }
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The profile file for `name`, looked up from the manifest at `manifest`.
///
/// Errors: no `phases/providers` folder anywhere, or no profile of that name or alias there (the
/// message lists the profiles there are, with their aliases).
pub fn find(manifest: &Path, name: &str) -> Result<PathBuf, ManifestError> {
    let invalid = |message: String| ManifestError::Invalid { path: manifest.to_path_buf(), message };
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(invalid(format!("provider `{name}` must be a plain name such as qemu or vsphere")));
    }
    let dirs = provider_dirs(manifest);
    let Some(dir) = dirs.iter().find(|d| d.is_dir()) else {
        return Err(invalid(format!(
            "provider `{name}`: no phases/providers folder found; looked in: {}",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    };
    let direct = dir.join(format!("{name}.yaml"));
    if direct.is_file() {
        return Ok(direct);
    }
    let profiles = profiles_in(dir);
    if let Some((p, _)) = profiles.iter().find(|(_, pr)| pr.name == name || pr.aliases.iter().any(|a| a == name)) {
        return Ok(p.clone());
    }
    let known: Vec<String> = profiles
        .iter()
        .map(|(_, p)| if p.aliases.is_empty() { p.name.clone() } else { format!("{} ({})", p.name, p.aliases.join(", ")) })
        .collect();
    Err(invalid(format!(
        "unknown provider `{name}`; the profiles in {} are: {}",
        dir.display(),
        if known.is_empty() { "none".into() } else { known.join(", ") }
    )))
}
