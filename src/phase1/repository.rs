//! The `repository` step. apt: the signing key into /etc/apt/keyrings and a sources entry that
//! names it with `signed-by`. RPM (dnf, yum, tdnf, zypper): the key into /etc/pki/rpm-gpg,
//! imported with the image's `rpm --import`, and a `.repo` file with `gpgcheck=1` and the
//! step's `exclude=` list.

use std::path::Path;

use anyhow::{Context, Result};

use super::{FileRecord, StepRecord};
use crate::fetch::Fetcher;
use crate::guest::GuestRoot;
use crate::hash::sha256_bytes;
use crate::manifest::{ManagerKind, RepositoryStep};

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

/// The `.repo` file of an RPM repository whose key is at `key` (an image path), for `kind`.
pub fn repo_file(r: &RepositoryStep, key: &str, kind: ManagerKind) -> String {
    let mut s = format!("# Written by kib.\n[{0}]\nname={0}\nbaseurl={1}\nenabled=1\ngpgcheck=1\ngpgkey=file://{key}\n", r.name, r.url);
    if kind == ManagerKind::Zypper {
        s.push_str("type=rpm-md\nautorefresh=1\n");
    }
    if !r.exclude.is_empty() {
        s.push_str(&format!("exclude={}\n", r.exclude.join(" ")));
    }
    s
}

/// Where `kind` keeps its repository files.
pub fn repo_dir(kind: ManagerKind) -> &'static str {
    if kind == ManagerKind::Zypper {
        "/etc/zypp/repos.d"
    } else {
        "/etc/yum.repos.d"
    }
}

/// Writes the key and the repository definition into the image: apt's sources entry, or an
/// RPM `.repo` file and the key imported with `rpm --import` in `session`.
///
/// Errors: the key cannot be fetched or is not an ASCII-armored OpenPGP key; a file cannot be
/// written; `rpm --import` fails (its output tail).
pub fn apply(root: &GuestRoot, session: &super::session::Session, fetcher: &Fetcher, r: &RepositoryStep, kind: ManagerKind, record: &mut StepRecord) -> Result<()> {
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
    if kind != ManagerKind::Apt {
        let keyfile = format!("/etc/pki/rpm-gpg/{}.asc", r.name);
        let repo = format!("{}/{}.repo", repo_dir(kind), r.name);
        let text = repo_file(r, &keyfile, kind);
        root.mkdir_p(Path::new("/etc/pki/rpm-gpg"), 0o755).context("making /etc/pki/rpm-gpg")?;
        root.mkdir_p(Path::new(repo_dir(kind)), 0o755).with_context(|| format!("making {}", repo_dir(kind)))?;
        for (path, content) in [(&keyfile, &key[..]), (&repo, text.as_bytes())] {
            root.write(Path::new(path), content, 0o644, 0, 0).with_context(|| format!("writing {path}"))?;
            record.files.push(FileRecord { path: path.clone(), sha256: sha256_bytes(content), size: content.len() as u64, mode: "0644".into(), owner: "0:0".into() });
        }
        session.run(&["rpm", "--import", &keyfile], &[], &format!("rpm --import {keyfile}"), Some(std::time::Duration::from_secs(120)))?;
        return Ok(());
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
            exclude: vec![],
        };
        assert_eq!(sources_line(&r, "/etc/apt/keyrings/kubernetes.asc"), "deb [signed-by=/etc/apt/keyrings/kubernetes.asc] https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /");
        r.suite = Some("bookworm".into());
        r.components = vec!["main".into(), "contrib".into()];
        assert!(sources_line(&r, "/k").ends_with(" bookworm main contrib"));
    }

    #[test]
    fn rpm_repo_files() {
        let r = RepositoryStep {
            name: "kubernetes".into(),
            url: "https://pkgs.k8s.io/core:/stable:/v1.30/rpm/".into(),
            suite: None,
            components: vec![],
            key_url: None,
            key_sha256: None,
            key: Some(String::new()),
            exclude: vec!["kubelet".into(), "kubeadm".into()],
        };
        assert_eq!(
            repo_file(&r, "/etc/pki/rpm-gpg/kubernetes.asc", ManagerKind::Dnf),
            "# Written by kib.\n[kubernetes]\nname=kubernetes\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\nenabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/kubernetes.asc\nexclude=kubelet kubeadm\n"
        );
        assert!(repo_file(&r, "/k", ManagerKind::Zypper).contains("type=rpm-md\n"));
        assert_eq!((repo_dir(ManagerKind::Zypper), repo_dir(ManagerKind::Tdnf)), ("/etc/zypp/repos.d", "/etc/yum.repos.d"));
    }
}
