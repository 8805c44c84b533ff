//! Which package manager an image uses: from os-release `ID` and `ID_LIKE`, cross-checked with
//! the tools the image has (apt-get, dnf, yum, microdnf, tdnf, zypper), or as the manifest's
//! `packages: {manager: ...}` forces it.

use std::path::Path;

use anyhow::{bail, Result};

use super::ManagerKind;
use crate::guest::GuestRoot;

/// The tools kib looks for, with the manager each serves, in order of preference within a
/// manager (dnf before microdnf).
pub const TOOLS: &[(&str, ManagerKind)] = &[
    ("apt-get", ManagerKind::Apt),
    ("dnf", ManagerKind::Dnf),
    ("microdnf", ManagerKind::Dnf),
    ("yum", ManagerKind::Yum),
    ("tdnf", ManagerKind::Tdnf),
    ("zypper", ManagerKind::Zypper),
];

const BIN_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// The manager found, and the tool that will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub kind: ManagerKind,
    /// The tool's name: `apt-get`, `dnf`, `microdnf`, `yum`, `tdnf`, `zypper`.
    pub tool: &'static str,
}

/// The manager an os-release `ID`/`ID_LIKE` word belongs to, if kib knows it.
pub fn family_manager(os_id: &str) -> Option<ManagerKind> {
    Some(match os_id {
        "debian" | "ubuntu" => ManagerKind::Apt,
        "rhel" | "fedora" | "centos" | "rocky" | "almalinux" | "ol" | "amzn" => ManagerKind::Dnf,
        "photon" | "azurelinux" | "mariner" => ManagerKind::Tdnf,
        "suse" | "opensuse" | "sles" | "sle-micro" | "opensuse-leap" | "opensuse-tumbleweed" => ManagerKind::Zypper,
        _ => return None,
    })
}

/// The image's os-release `ID` followed by the words of `ID_LIKE`, read through `root`
/// (`/etc/os-release`, else `/usr/lib/os-release`). Empty when neither can be read.
pub fn os_ids(root: &GuestRoot) -> Vec<String> {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Ok(Some(text)) = root.read_string(Path::new(p)) {
            // os-release(5): KEY=value, the value optionally quoted.
            let get = |key: &str| {
                text.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(|v| v.trim().trim_matches(['"', '\'']).to_string()))
            };
            let mut ids: Vec<String> = get("ID").into_iter().collect();
            if let Some(like) = get("ID_LIKE") {
                ids.extend(like.split_whitespace().map(str::to_string));
            }
            return ids;
        }
    }
    Vec::new()
}

/// The os family of os-release IDs (`ID` then `ID_LIKE`'s words), the `${os_family}` fact:
/// `debian` (Debian, Ubuntu), `rhel` (RHEL, Rocky, Alma, CentOS, Oracle, Fedora), `amzn`
/// (Amazon Linux, whose ID_LIKE says rhel but whose package names differ), `suse`, `photon`
/// (Photon OS, Azure Linux, CBL-Mariner), or empty when kib does not know it.
pub fn os_family(os_ids: &[String]) -> &'static str {
    if os_ids.first().is_some_and(|id| id == "amzn") {
        return "amzn";
    }
    for id in os_ids {
        match family_manager(id) {
            Some(ManagerKind::Apt) => return "debian",
            Some(ManagerKind::Dnf | ManagerKind::Yum) => return "rhel",
            Some(ManagerKind::Tdnf) => return "photon",
            Some(ManagerKind::Zypper) => return "suse",
            None => {}
        }
    }
    ""
}

/// The package format of an os family: `deb`, `rpm`, or empty (the `${package_format}` fact).
pub fn package_format(family: &str) -> &'static str {
    match family {
        "debian" => "deb",
        "rhel" | "amzn" | "suse" | "photon" => "rpm",
        _ => "",
    }
}

/// The tools of [`TOOLS`] the image at `root` has, in [`TOOLS`]'s order.
pub fn tools_in(root: &GuestRoot) -> Vec<(&'static str, ManagerKind)> {
    TOOLS.iter().copied().filter(|(tool, _)| BIN_DIRS.iter().any(|d| root.exists(&Path::new(d).join(tool)))).collect()
}

/// Picks the manager from the image's `os_ids` (os-release `ID`, then the words of `ID_LIKE`)
/// and the `tools` it has ([`tools_in`]). `forced` (the manifest's `packages.manager`) wins when
/// the image has its tool. An RPM family whose dnf is missing falls back to yum (Amazon Linux 2,
/// RHEL 7); an unknown OS takes the first tool found.
///
/// Errors: no supported tool at all, or a forced manager whose tool the image lacks. Both name
/// the os-release IDs and the tools found.
pub fn detect(os_ids: &[String], tools: &[(&'static str, ManagerKind)], forced: Option<ManagerKind>) -> Result<Detected> {
    let found = || {
        let t: Vec<&str> = tools.iter().map(|(t, _)| *t).collect();
        format!(
            "os-release ID/ID_LIKE: {}; package tools found: {}",
            if os_ids.is_empty() { "none".to_string() } else { os_ids.join(" ") },
            if t.is_empty() { "none of apt-get, dnf, yum, microdnf, tdnf, zypper".to_string() } else { t.join(", ") }
        )
    };
    let first_of = |kind: ManagerKind| tools.iter().find(|(_, k)| *k == kind).map(|(tool, kind)| Detected { kind: *kind, tool });
    if let Some(kind) = forced {
        return first_of(kind).ok_or_else(|| anyhow::anyhow!("the manifest forces `packages: {{manager: {kind}}}`, but this image has no {kind} ({})", found()));
    }
    for id in os_ids {
        match family_manager(id) {
            Some(ManagerKind::Dnf) => {
                if let Some(d) = first_of(ManagerKind::Dnf).or_else(|| first_of(ManagerKind::Yum)) {
                    return Ok(d);
                }
            }
            Some(kind) => {
                if let Some(d) = first_of(kind) {
                    return Ok(d);
                }
            }
            None => {}
        }
    }
    match tools.first() {
        Some((tool, kind)) => Ok(Detected { kind: *kind, tool }),
        None => bail!("this image has no package manager kib supports ({})", found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn tools(names: &[&str]) -> Vec<(&'static str, ManagerKind)> {
        TOOLS.iter().copied().filter(|(t, _)| names.contains(t)).collect()
    }

    #[test]
    fn picks_the_family_tool_cross_checked_with_what_the_image_has() {
        let d = detect(&ids("ubuntu debian"), &tools(&["apt-get"]), None).unwrap();
        assert_eq!((d.kind, d.tool), (ManagerKind::Apt, "apt-get"));
        let d = detect(&ids("rocky rhel centos fedora"), &tools(&["dnf", "yum"]), None).unwrap();
        assert_eq!((d.kind, d.tool), (ManagerKind::Dnf, "dnf"));
        let d = detect(&ids("amzn centos rhel fedora"), &tools(&["yum"]), None).unwrap();
        assert_eq!((d.kind, d.tool), (ManagerKind::Yum, "yum"));
        let d = detect(&ids("rhel fedora"), &tools(&["microdnf"]), None).unwrap();
        assert_eq!((d.kind, d.tool), (ManagerKind::Dnf, "microdnf"));
        assert_eq!(detect(&ids("photon"), &tools(&["tdnf"]), None).unwrap().kind, ManagerKind::Tdnf);
        assert_eq!(detect(&ids("sles suse"), &tools(&["zypper", "rpm"]), None).unwrap().kind, ManagerKind::Zypper);
        // An EL-shaped fixture built on Debian has apt-get too: the os-release family decides.
        assert_eq!(detect(&ids("rocky rhel"), &tools(&["apt-get", "dnf"]), None).unwrap().kind, ManagerKind::Dnf);
        // An OS kib does not know: the first tool it has.
        assert_eq!(detect(&ids("gentoo"), &tools(&["zypper"]), None).unwrap().kind, ManagerKind::Zypper);
    }

    #[test]
    fn families() {
        assert_eq!(os_family(&ids("rocky rhel centos fedora")), "rhel");
        assert_eq!(os_family(&ids("amzn centos rhel fedora")), "amzn");
        assert_eq!(package_format("amzn"), "rpm");
        assert_eq!(os_family(&ids("sles suse")), "suse");
        assert_eq!(os_family(&ids("azurelinux")), "photon");
        assert_eq!(os_family(&ids("ubuntu debian")), "debian");
        assert_eq!(os_family(&ids("alpine")), "");
        assert_eq!((package_format("rhel"), package_format("debian"), package_format("")), ("rpm", "deb", ""));
    }

    #[test]
    fn forcing_and_failing_name_what_was_found() {
        assert_eq!(detect(&ids("rocky rhel"), &tools(&["dnf", "zypper"]), Some(ManagerKind::Zypper)).unwrap().kind, ManagerKind::Zypper);
        let e = detect(&ids("rocky rhel"), &tools(&["dnf"]), Some(ManagerKind::Zypper)).unwrap_err().to_string();
        assert_eq!(e, "the manifest forces `packages: {manager: zypper}`, but this image has no zypper (os-release ID/ID_LIKE: rocky rhel; package tools found: dnf)");
        let e = detect(&ids("alpine"), &[], None).unwrap_err().to_string();
        assert_eq!(e, "this image has no package manager kib supports (os-release ID/ID_LIKE: alpine; package tools found: none of apt-get, dnf, yum, microdnf, tdnf, zypper)");
    }

    #[test]
    fn finds_tools_in_the_image() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        std::fs::write(d.path().join("usr/bin/dnf"), "").unwrap();
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/yum"), "").unwrap();
        let root = GuestRoot::open(d.path()).unwrap();
        assert_eq!(tools_in(&root), tools(&["dnf", "yum"]));
    }
}
