//! `kib check`: an offline check of a built image, read-only, against what its manifest says
//! and against the node checks upstream's image-builder runs with goss in a booted VM: packages
//! (and holds), services enabled or masked, sysctl and module files, files and downloads with
//! their SHA-256, repositories, pre-loaded images, no SSH host keys, an empty machine-id.

use std::path::Path;

use crate::bolt::containerd;
use crate::bom::Bom;
use crate::context::BuildContext;
use crate::guest::GuestRoot;
use crate::manifest::{Action, Manifest};
use crate::phase0::facts::Facts;
use crate::phase1::step_vars;
use crate::pkg::{self, Package};

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// SELinux: when the image runs it, a dry run of setfiles with its own file_contexts must find
/// nothing to relabel (see [`crate::selinux::verify`]). Nothing to check without SELinux.
///
/// Errors: setfiles missing or failing.
pub fn selinux_labels(image: &crate::phase0::Image) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    match crate::selinux::detect(image.root()) {
        Ok(None) => {}
        Err(e) => check(&mut out, "SELinux policy has file contexts", false, format!("{e:#}")),
        Ok(Some(policy)) => {
            let t = std::time::Instant::now();
            let would = crate::selinux::verify(image.sys(), image.root(), &image.root_dir, &image.filesystems, &policy, image.work_dir())?;
            let mut detail = format!("policy {} ({}), dry run {:.1} s", policy.name, policy.mode, t.elapsed().as_secs_f64());
            if !would.is_empty() {
                detail = format!("{detail}; {} file(s) would be relabelled: {}", would.len(), would.iter().take(5).cloned().collect::<Vec<_>>().join("; "));
            }
            check(&mut out, "SELinux labels match file_contexts", would.is_empty(), detail);
        }
    }
    Ok(out)
}

fn check(out: &mut Vec<Check>, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
    out.push(Check { name: name.into(), ok, detail: detail.into() });
}

/// Runs every check on the mounted `root`, with the manifest's expectations when given;
/// `ctx` gives `${build_date}` and the like as the build saw them.
///
/// `bom` (the image's bom.json), when given, names the pre-loaded images to look for in
/// containerd's metadata store.
pub fn run(root: &GuestRoot, facts: &Facts, ctx: &BuildContext, manifest: Option<&Manifest>, bom: Option<&Bom>) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    let mid = root.read(Path::new("/etc/machine-id"))?;
    check(&mut out, "machine-id is empty", mid.as_ref().is_none_or(|m| m.is_empty()), format!("{} bytes", mid.map_or(0, |m| m.len())));
    let keys: Vec<String> =
        root.read_dir(Path::new("/etc/ssh"))?.into_iter().map(|n| n.to_string_lossy().into_owned()).filter(|n| n.starts_with("ssh_host_")).collect();
    check(&mut out, "no SSH host keys", keys.is_empty(), keys.join(" "));
    let packages = pkg::installed(root)?;
    let rpm_image = pkg::Database::find(root) == Some(pkg::Database::Rpm);
    let holds = if rpm_image { Some(pkg::rpm::holds(root)?) } else { None };
    let Some(m) = manifest else { return Ok(out) };
    let vars = step_vars(m, facts, ctx);
    let os_ids = facts.os_ids();
    for step in m.steps.iter().filter(|s| s.applies(&os_ids, &facts.arch, &vars)) {
        let Ok(action) = step.action.expand(&vars) else { continue };
        match action {
            Action::Packages(p) => {
                for spec in &p.install {
                    if rpm_image {
                        // `kubelet-1.30.0`, `kubelet=1.30.0`, `kubelet-0:1.30.0-150500.1.1.x86_64`.
                        let name = pkg::rpm::spec_name(spec, packages.iter().map(|p| p.name.as_str()));
                        let found = packages.iter().find(|pk| pk.name == name);
                        if found.is_none() && spec.trim() == name {
                            // A capability rather than a package name, as dnf allows:
                            // `iptables` is provided by `iptables-nft` on EL 9.
                            let by = pkg::rpm::what_provides(root, &name)?;
                            let detail = if by.is_empty() { "neither installed nor provided by an installed package".to_string() } else { format!("provided by {}", by.join(", ")) };
                            check(&mut out, format!("package {spec} installed"), !by.is_empty(), detail);
                            continue;
                        }
                        let ok = found.is_some_and(|pk| pkg::rpm::spec_matches(spec, pk));
                        check(&mut out, format!("package {spec} installed"), ok, found.map_or("not installed".into(), |pk: &Package| pk.full_version()));
                        continue;
                    }
                    let (name, version) = spec.split_once('=').map_or((spec.as_str(), None), |(n, v)| (n, Some(v)));
                    let found = packages.iter().find(|pk| pk.name == name);
                    let ok = found.is_some_and(|pk| version.is_none_or(|v| pk.version == v));
                    check(&mut out, format!("package {spec} installed"), ok, found.map_or("not installed".into(), |pk: &Package| pk.version.clone()));
                }
                for name in p.remove.iter().chain(&p.purge) {
                    check(&mut out, format!("package {name} not installed"), !packages.iter().any(|pk| &pk.name == name), "");
                }
                for name in &p.hold {
                    let held = packages.iter().any(|pk| &pk.name == name && pk.held);
                    let how = holds.as_ref().and_then(|h| h.source_of(name)).unwrap_or_default().to_string();
                    check(&mut out, format!("package {name} held"), held, how);
                }
            }
            Action::File(f) => {
                let content = root.read(Path::new(&f.path))?;
                let ok = match (&content, &f.content) {
                    (Some(c), Some(want)) => c == want.as_bytes(),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                check(&mut out, format!("file {}", f.path), ok, if content.is_none() { "missing" } else if ok { "" } else { "content differs" });
            }
            Action::Sysctl(s) => {
                let path = format!("/etc/sysctl.d/{}", s.file);
                let text = root.read_string(Path::new(&path))?.unwrap_or_default();
                for (k, v) in &s.settings {
                    check(&mut out, format!("sysctl {k} = {v}"), text.lines().any(|l| l == format!("{k} = {v}")), path.clone());
                }
            }
            Action::KernelModules(k) if !k.load.is_empty() => {
                let path = format!("/etc/modules-load.d/{}", k.file);
                let text = root.read_string(Path::new(&path))?.unwrap_or_default();
                for module in &k.load {
                    check(&mut out, format!("module {module} loaded at boot"), text.lines().any(|l| l.trim() == module), path.clone());
                }
            }
            Action::Systemd(s) => {
                for unit in &s.enable {
                    let wanted = enabled(root, unit)?;
                    check(&mut out, format!("service {unit} enabled"), wanted.is_some(), wanted.unwrap_or_default());
                }
                for unit in &s.mask {
                    let p = format!("/etc/systemd/system/{unit}");
                    let masked = root.read_link(Path::new(&p))?.is_some_and(|t| t == Path::new("/dev/null"));
                    check(&mut out, format!("service {unit} masked"), masked, "");
                }
            }
            Action::Download(d) => {
                if let Some(path) = &d.path {
                    let content = root.read(Path::new(path))?;
                    let pinned = d.sha256.as_ref().and_then(|s| s.for_arch(&facts.arch).ok());
                    let actual = content.as_deref().map(crate::hash::sha256_bytes);
                    let ok = actual.is_some() && pinned.as_ref().is_none_or(|p| Some(p) == actual.as_ref());
                    check(&mut out, format!("download {path}"), ok, actual.unwrap_or_else(|| "missing".into()));
                }
            }
            Action::Repository(r) if rpm_image => {
                let repo = ["/etc/yum.repos.d", "/etc/zypp/repos.d"].iter().map(|d| format!("{d}/{}.repo", r.name)).find(|p| root.exists(Path::new(p)));
                check(&mut out, format!("repository file {}.repo", r.name), repo.is_some(), repo.clone().unwrap_or_else(|| "in neither /etc/yum.repos.d nor /etc/zypp/repos.d".into()));
                if let Some(repo) = repo {
                    let text = root.read_string(Path::new(&repo))?.unwrap_or_default();
                    let gpg = pkg::rpm::ini_sections(&text).into_iter().any(|s| s.name == r.name && s.get("gpgcheck") == Some("1"));
                    check(&mut out, format!("repository {} checks signatures (gpgcheck=1)", r.name), gpg, repo);
                }
                let key = format!("/etc/pki/rpm-gpg/{}.asc", r.name);
                check(&mut out, format!("repository file {key}"), root.exists(Path::new(&key)), "");
            }
            Action::Repository(r) => {
                for p in [format!("/etc/apt/keyrings/{}.asc", r.name), format!("/etc/apt/sources.list.d/{}.list", r.name)] {
                    check(&mut out, format!("repository file {p}"), root.exists(Path::new(&p)), "");
                }
            }
            Action::Images(i) => {
                let ns = i.namespace.unwrap_or_else(|| "k8s.io".into());
                let names: Vec<String> = bom.into_iter().flat_map(|b| b.steps_named(&step.name)).flat_map(|s| &s.images).map(|img| img.name.clone()).collect();
                let db = match root.read_regular_capped(Path::new(containerd::META_DB), MAX_META_DB)? {
                    Some(bytes) => Some(crate::bolt::Db::from_bytes(bytes).map_err(|e| e.context(format!("reading {}", containerd::META_DB)))?),
                    None => None,
                };
                out.extend(containerd_checks(db.as_ref(), &ns, &names)?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// What a booted node must show (`kib check --boot`): the modules the manifest's
/// kernel-modules steps load, the sysctls its sysctl steps set (with `${...}` expanded as the
/// build did), the images bom.json says were pre-loaded, and a kubelet enabled but not running
/// when a systemd step enables `kubelet.service` (or when there is no manifest).
pub fn boot_expectations(manifest: Option<&Manifest>, facts: &Facts, ctx: &BuildContext, bom: Option<&Bom>) -> crate::boot::Expect {
    // Without a manifest, a node image: a kubelet is expected.
    let mut e = crate::boot::Expect { kubelet: manifest.is_none(), ..Default::default() };
    if let Some(m) = manifest {
        let vars = step_vars(m, facts, ctx);
        let os_ids = facts.os_ids();
        for step in m.steps.iter().filter(|s| s.applies(&os_ids, &facts.arch, &vars)) {
            match step.action.expand(&vars) {
                Ok(Action::KernelModules(k)) => e.modules.extend(k.load),
                Ok(Action::Sysctl(s)) => e.sysctls.extend(s.settings),
                Ok(Action::Systemd(s)) if s.enable.iter().any(|u| u == "kubelet" || u == "kubelet.service") => e.kubelet = true,
                _ => {}
            }
        }
    }
    if let Some(b) = bom {
        e.images = b.steps.iter().flat_map(|s| &s.images).map(|i| i.name.clone()).collect();
    }
    e.modules.dedup();
    e.images.dedup();
    e
}

/// containerd's metadata store is read up to this size (bytes): a node's is a few MiB.
const MAX_META_DB: u64 = 256 << 20;

/// The checks of an `images` step: the namespace `ns` exists in containerd's store `db`, and
/// holds each image of `names` (from the BOM) by its exact name.
///
/// Errors: a damaged store.
pub fn containerd_checks(db: Option<&crate::bolt::Db>, ns: &str, names: &[String]) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    let store = match db {
        Some(db) => containerd::images(db)?,
        None => Vec::new(),
    };
    let images = store.iter().find(|(n, _)| n == ns).map(|(_, images)| images);
    let detail = if db.is_none() { "no containerd metadata store".to_string() } else { format!("namespaces: {}", store.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")) };
    check(&mut out, format!("containerd namespace {ns} exists"), images.is_some(), if images.is_some() { String::new() } else { detail });
    for name in names {
        let found = images.is_some_and(|i| i.contains(name));
        check(&mut out, format!("image {name} in containerd's store"), found, if found { "" } else { "not in that namespace" });
    }
    Ok(out)
}

/// Where a unit is enabled: the first `/etc/systemd/system/*.wants/<unit>` link found.
fn enabled(root: &GuestRoot, unit: &str) -> anyhow::Result<Option<String>> {
    for dir in root.read_dir(Path::new("/etc/systemd/system"))? {
        let d = dir.to_string_lossy();
        if d.ends_with(".wants") || d.ends_with(".requires") {
            let p = format!("/etc/systemd/system/{d}/{unit}");
            if root.lstat(Path::new(&p))?.is_some() {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_checks_match_namespaces_and_names_exactly() {
        let db = crate::bolt::Db::open(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/containerd/meta.db")), 1 << 20).unwrap();
        let pause = vec!["registry.k8s.io/pause:3.9".to_string()];
        let verdicts = |ns: &str, names: &[String]| containerd_checks(Some(&db), ns, names).unwrap().into_iter().map(|c| (c.name, c.ok)).collect::<Vec<_>>();
        assert_eq!(verdicts("k8s.io", &pause), [("containerd namespace k8s.io exists".to_string(), true), ("image registry.k8s.io/pause:3.9 in containerd's store".to_string(), true)]);
        // The image is in another namespace: the check fails, as it must.
        assert!(!verdicts("default", &pause)[1].1);
        // Names that occur only inside image names or other namespaces are no namespaces: a byte
        // search of meta.db would have passed all three.
        for ns in ["k8s", "example.com", "registry.k8s.io"] {
            let c = containerd_checks(Some(&db), ns, &[]).unwrap();
            assert!(!c[0].ok, "{ns}");
            assert_eq!(c[0].detail, "namespaces: default, k8s.io");
        }
        let none = containerd_checks(None, "k8s.io", &pause).unwrap();
        assert!(none.iter().all(|c| !c.ok) && none[0].detail == "no containerd metadata store");
    }
}
