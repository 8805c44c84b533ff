//! What kib learns about the OS in a mounted image: os-release, architecture, kernels.

use std::path::Path;

use indexmap::IndexMap;

use crate::guest::GuestRoot;

/// Facts about the image's OS, read through [`GuestRoot`] (never following a link out of it).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Facts {
    /// os-release key/value pairs, in file order.
    pub os_release: IndexMap<String, String>,
    /// Debian-style architecture: `amd64`, `arm64`, `armhf`, `i386`, `riscv64`, `ppc64el`,
    /// `s390x`; from the ELF header of the image's /bin/sh (or, when the image has no ELF
    /// shell, from its dpkg database). Empty when neither tells.
    pub arch: String,
    /// The architecture the image's dpkg database records for the `dpkg` package (or
    /// `base-files`), i.e. the image's native Debian architecture. `None` without dpkg.
    pub dpkg_arch: Option<String>,
    /// Kernel versions: the names of the folders in /lib/modules (falling back to
    /// /usr/lib/modules), sorted.
    pub kernels: Vec<String>,
}

impl Facts {
    /// os-release `ID` followed by the words of `ID_LIKE`.
    pub fn os_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.os_release.get("ID").into_iter().cloned().collect();
        if let Some(like) = self.os_release.get("ID_LIKE") {
            ids.extend(like.split_whitespace().map(str::to_string));
        }
        ids
    }

    /// Cross-checks the two sources of the architecture: the ELF header of the image's shell
    /// and its dpkg database. `Err` with both values when they disagree (a broken or mixed
    /// image, whose packages kib would install for the wrong architecture).
    pub fn check_arch(&self) -> Result<(), String> {
        match &self.dpkg_arch {
            Some(d) if !self.arch.is_empty() && *d != self.arch => Err(format!(
                "the image's binaries are {} (ELF header of its /bin/sh) but its dpkg database says {d} (Architecture of the installed dpkg/base-files package)",
                self.arch
            )),
            _ => Ok(()),
        }
    }

    /// Whether the image is Debian or derived from it.
    pub fn debian_family(&self) -> bool {
        self.os_ids().iter().any(|i| i == "debian")
    }
}

/// Reads os-release (`/etc/os-release`, then `/usr/lib/os-release`). `None` when the tree has
/// neither: it is not an OS root.
pub fn os_release(root: &GuestRoot) -> std::io::Result<Option<IndexMap<String, String>>> {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = root.read_string(Path::new(p))? {
            return Ok(Some(parse_os_release(&text)));
        }
    }
    Ok(None)
}

/// Parses os-release(5) text: `KEY=value`, values optionally in single or double quotes.
pub fn parse_os_release(text: &str) -> IndexMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_string(), v.replace("\\\"", "\"").replace("\\\\", "\\"))
        })
        .collect()
}

/// The Debian architecture name of an ELF header (first 20 bytes at least).
pub fn elf_arch(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let class64 = header[4] == 2;
    let little = header[5] == 1;
    let machine = if little { u16::from_le_bytes([header[18], header[19]]) } else { u16::from_be_bytes([header[18], header[19]]) };
    Some(match (machine, class64, little) {
        (0x3E, true, _) => "amd64",
        (0xB7, true, _) => "arm64",
        (0x28, false, _) => "armhf",
        (0x03, false, _) => "i386",
        (0xF3, true, _) => "riscv64",
        (0x15, true, true) => "ppc64el",
        (0x16, true, false) => "s390x",
        _ => return None,
    })
}

/// The Debian architecture name of the host kib runs on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "x86" => "i386",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        other => other,
    }
}

/// Collects the facts of a mounted root whose os-release was already read.
pub fn collect(root: &GuestRoot, os_release: IndexMap<String, String>) -> std::io::Result<Facts> {
    let mut arch = String::new();
    for sh in ["/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash"] {
        if let Ok(mut f) = root.open_read(Path::new(sh)) {
            let mut head = [0u8; 64];
            let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
            if let Some(a) = elf_arch(&head[..n]) {
                arch = a.to_string();
                break;
            }
        }
    }
    let dpkg_arch = dpkg_arch(root)?;
    if arch.is_empty() {
        if let Some(d) = &dpkg_arch {
            arch = d.clone();
        }
    }
    let mut kernels: Vec<String> = root.read_dir(Path::new("/lib/modules"))?.into_iter().map(|n| n.to_string_lossy().into_owned()).collect();
    if kernels.is_empty() {
        kernels = root.read_dir(Path::new("/usr/lib/modules"))?.into_iter().map(|n| n.to_string_lossy().into_owned()).collect();
    }
    Ok(Facts { os_release, arch, dpkg_arch, kernels })
}

/// The Architecture of the installed `dpkg` package (else `base-files`) in the image's
/// /var/lib/dpkg/status, read through [`GuestRoot`]. `Ok(None)` when the image has no dpkg
/// database or neither package; an unparsable database is an error.
pub fn dpkg_arch(root: &GuestRoot) -> std::io::Result<Option<String>> {
    let Some(text) = root.read_string(Path::new("/var/lib/dpkg/status"))? else {
        return Ok(None);
    };
    Ok(dpkg_arch_of(&text))
}

/// [`dpkg_arch`] on the text of a dpkg status file.
pub fn dpkg_arch_of(status: &str) -> Option<String> {
    let paragraphs = deb822_fast::borrowed::parse_borrowed(status).ok()?;
    let mut found: [Option<String>; 2] = [None, None];
    for p in paragraphs {
        let slot = match p.get_single("Package") {
            Some("dpkg") => 0,
            Some("base-files") => 1,
            _ => continue,
        };
        if p.get_single("Status").is_some_and(|s| s.ends_with(" installed")) {
            found[slot] = p.get_single("Architecture").map(str::to_string);
        }
    }
    let [dpkg, base_files] = found;
    dpkg.or(base_files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_release() {
        let m = parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Debian'\nVERSION_ID=\"12\"\n# c\nID=debian\n");
        assert_eq!(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(m["NAME"], "Debian");
        assert_eq!(m["ID"], "debian");
    }

    #[test]
    fn reads_elf_machine() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18] = 0x3E;
        assert_eq!(elf_arch(&h), Some("amd64"));
        h[18] = 0xB7;
        assert_eq!(elf_arch(&h), Some("arm64"));
        assert_eq!(elf_arch(b"#!/bin/sh\n....................."), None);
        // The host's own shell, as a cross-check.
        let host = std::fs::read("/bin/sh").unwrap();
        assert_eq!(elf_arch(&host), Some(if cfg!(target_arch = "x86_64") { "amd64" } else { "arm64" }));
    }

    #[test]
    fn dpkg_architecture_and_cross_check() {
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\n\n\
                      Package: base-files\nStatus: install ok installed\nArchitecture: arm64\n\n\
                      Package: dpkg\nStatus: install ok installed\nArchitecture: arm64\n";
        assert_eq!(dpkg_arch_of(status).as_deref(), Some("arm64"));
        assert_eq!(dpkg_arch_of("Package: base-files\nStatus: install ok installed\nArchitecture: riscv64\n").as_deref(), Some("riscv64"));
        assert_eq!(dpkg_arch_of("Package: dpkg\nStatus: deinstall ok config-files\nArchitecture: i386\n"), None);
        let mut f = Facts { arch: "arm64".into(), dpkg_arch: Some("arm64".into()), ..Default::default() };
        assert!(f.check_arch().is_ok());
        f.dpkg_arch = Some("amd64".into());
        let e = f.check_arch().unwrap_err();
        assert!(e.contains("arm64") && e.contains("amd64"), "{e}");
        f.dpkg_arch = None;
        assert!(f.check_arch().is_ok());
    }
}
