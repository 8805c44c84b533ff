//! The dpkg database: `/var/lib/dpkg/status` (deb822 paragraphs, read with deb822-fast) on the
//! host side, through [`GuestRoot`], so reading it needs no chroot and runs nothing from the image.

use std::path::Path;

use anyhow::{Context, Result};

use super::{license, Package, PackageKind};
use crate::guest::GuestRoot;

/// dpkg's status file, as an image path.
pub const STATUS: &str = "/var/lib/dpkg/status";

/// The installed packages of the image's dpkg database, each with the licence its copyright file
/// declares (one small read per package). Empty when the image has no dpkg.
pub fn installed(root: &GuestRoot) -> Result<Vec<Package>> {
    let Some(text) = root.read_string(Path::new(STATUS)).context("reading /var/lib/dpkg/status")? else {
        return Ok(Vec::new());
    };
    let mut packages = parse_status(&text)?;
    for p in &mut packages {
        p.license = license::read(root, &p.name);
    }
    Ok(packages)
}

/// Parses a dpkg status file, keeping packages whose status is `installed`, sorted by name then
/// architecture.
///
/// Errors: text that is not deb822.
pub fn parse_status(text: &str) -> Result<Vec<Package>> {
    let paragraphs = deb822_fast::borrowed::parse_borrowed(text).map_err(|e| anyhow::anyhow!("parsing dpkg status: {e:?}"))?;
    let mut out = Vec::new();
    for p in paragraphs {
        let status = p.get_single("Status").unwrap_or("");
        let words: Vec<&str> = status.split_whitespace().collect();
        if words.last() != Some(&"installed") {
            continue;
        }
        let name = p.get_single("Package").unwrap_or("").to_string();
        let source = p.get_single("Source").map(|s| s.split_whitespace().next().unwrap_or(s).to_string()).filter(|s| *s != name);
        out.push(Package {
            name,
            kind: PackageKind::Deb,
            epoch: None,
            version: p.get_single("Version").unwrap_or("").to_string(),
            release: None,
            architecture: p.get_single("Architecture").unwrap_or("").to_string(),
            source,
            held: words.first() == Some(&"hold"),
            license: None,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_installed_and_held_packages() {
        let text = "Package: runc\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.1.5+ds1-1+deb12u1\nDescription: x\n multi\n\n\
                    Package: containerd\nStatus: hold ok installed\nArchitecture: amd64\nSource: containerd (1.6.20~ds1-1)\nVersion: 1.6.20~ds1-1+b1\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
                    Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9\n";
        let p = parse_status(text).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, "containerd");
        assert!(p[0].held);
        assert_eq!(p[0].source, None);
        assert_eq!(p[1].source.as_deref(), Some("glibc"));
        assert_eq!(p[2].name, "runc");
        assert_eq!(p[2].version, "1.1.5+ds1-1+deb12u1");
        assert!(!p[2].held);
        // A deb serializes as bom.json always wrote it: no kind, epoch or release.
        let json = serde_json::to_value(&p[1]).unwrap();
        assert_eq!(json, serde_json::json!({"name": "libc6", "version": "2.36-9", "architecture": "amd64", "source": "glibc", "held": false}));
    }
}
