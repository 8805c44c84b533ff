//! The `repository` step (apt): the signing key into /etc/apt/keyrings and a sources entry that
//! names it with `signed-by`.

use std::path::Path;

use anyhow::{Context, Result};

use super::{FileRecord, StepRecord};
use crate::fetch::Fetcher;
use crate::guest::GuestRoot;
use crate::hash::sha256_bytes;
use crate::manifest::RepositoryStep;

/// The sources.list line for a repository whose key is at `keyring`.
pub fn sources_line(r: &RepositoryStep, keyring: &str) -> String {
    let suite = r.suite.as_deref().unwrap_or("/");
    let mut line = format!("deb [signed-by={keyring}] {} {suite}", r.url);
    for c in &r.components {
        line.push(' ');
        line.push_str(c);
    }
    line
}

/// Writes the key and the sources entry into the image.
pub fn apply(root: &GuestRoot, fetcher: &Fetcher, r: &RepositoryStep, record: &mut StepRecord) -> Result<()> {
    let key = match (&r.key, &r.key_url) {
        (Some(k), _) => k.clone().into_bytes(),
        (None, Some(url)) => {
            let fetched = match (&r.key_sha256, &fetcher.pins) {
                (pinned, Some(pins)) => fetcher.fetch(url, &pins.sum_for(url, pinned.as_deref()).map_err(anyhow::Error::msg)?)?,
                (Some(sum), None) => fetcher.fetch(url, sum)?,
                (None, None) => {
                    let f = fetcher.fetch_unpinned(url)?;
                    tracing::warn!("repository `{}`: key {} is not pinned (add key_sha256: {})", r.name, crate::fetch::redact(url), f.sha256);
                    f
                }
            };
            let bytes = std::fs::read(&fetched.path).with_context(|| format!("reading {}", fetched.path.display()))?;
            record.downloads.push(fetched);
            bytes
        }
        (None, None) => unreachable!("checked when the manifest was loaded"),
    };
    if !String::from_utf8_lossy(&key).contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
        anyhow::bail!("repository `{}`: the key is not an ASCII-armored OpenPGP public key", r.name);
    }
    let keyring = format!("/etc/apt/keyrings/{}.asc", r.name);
    let list = format!("/etc/apt/sources.list.d/{}.list", r.name);
    let line = format!("# Written by kib.\n{}\n", sources_line(r, &keyring));
    for (path, content) in [(&keyring, &key[..]), (&list, line.as_bytes())] {
        root.write(Path::new(path), content, 0o644, 0, 0).with_context(|| format!("writing {path}"))?;
        record.files.push(FileRecord { path: path.clone(), sha256: sha256_bytes(content), size: content.len() as u64, mode: "0644".into(), owner: "0:0".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_suite_lines() {
        let mut r = RepositoryStep {
            name: "kubernetes".into(),
            url: "https://pkgs.k8s.io/core:/stable:/v1.30/deb/".into(),
            suite: None,
            components: vec![],
            key_url: None,
            key_sha256: None,
            key: Some(String::new()),
        };
        assert_eq!(sources_line(&r, "/etc/apt/keyrings/kubernetes.asc"), "deb [signed-by=/etc/apt/keyrings/kubernetes.asc] https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /");
        r.suite = Some("bookworm".into());
        r.components = vec!["main".into(), "contrib".into()];
        assert!(sources_line(&r, "/k").ends_with(" bookworm main contrib"));
    }
}
