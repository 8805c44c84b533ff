//! The rpm database, read with the image's own `rpm -qa --qf ...`, and the holds of the RPM
//! package managers (dnf/yum versionlock and `exclude=`, zypper locks, tdnf locks), read from
//! their files through [`GuestRoot`].
//!
//! The image's own rpm is used because the formats differ (Berkeley DB on EL 8 and Amazon Linux
//! 2, sqlite on EL 9, ndb on SLES 15) and only the image's rpm is sure to read its own. It runs
//! as `unshare --pid --fork --kill-child --mount-proc --root=<root> rpm -qa --qf ...`: its own
//! PID namespace (nothing outlives it), kib's environment cleared, the image opened read-only or
//! read-write as it is mounted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{license::PackageLicense, Package, PackageKind};
use crate::guest::GuestRoot;

/// The query format: one tab-separated line per installed package.
pub const QUERY_FORMAT: &str = "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\t%{LICENSE}\\n";

/// The rpm binaries kib looks for in the image, in order.
pub const RPM_BINARIES: &[&str] = &["/usr/bin/rpm", "/bin/rpm"];

/// Every installed RPM of the image at `root`, sorted by name then architecture, with its
/// licence (the header's `License` tag) and whether it is held ([`holds`]). `gpg-pubkey`
/// entries (imported keys, not packages) are left out.
///
/// Errors: the image has no rpm binary; rpm fails (its output tail); unparsable output.
pub fn installed(root: &GuestRoot) -> Result<Vec<Package>> {
    let qf = QUERY_FORMAT.replace("\\t", "\t").replace("\\n", "\n");
    let mut cmd = image_rpm(root, &["-qa", "--qf", &qf])?;
    let text = crate::exec::capture(&mut cmd, "rpm -qa (the image's rpm database)").context("reading the image's rpm database with its own rpm")?;
    let mut packages = parse_query(&text)?;
    let h = holds(root)?;
    for p in &mut packages {
        p.held = h.holds(&p.name);
    }
    Ok(packages)
}

/// The image's own rpm run with `args`, in its own PID namespace with the image as its root and
/// kib's environment cleared (see the module docs). Nothing runs yet.
///
/// Errors: the image has no rpm binary.
fn image_rpm(root: &GuestRoot, args: &[&str]) -> Result<Command> {
    let Some(rpm) = RPM_BINARIES.iter().find(|b| root.exists(Path::new(b))) else {
        bail!("this image has an rpm database but no rpm program ({}) to read it with", RPM_BINARIES.join(", "));
    };
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(format!("--root={}", root.path().display()))
        .arg("--wd=/")
        .args(["--", rpm])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    Ok(cmd)
}

/// The names of the installed packages that provide `capability` (a package name or a virtual
/// provide such as `iptables`, which `iptables-nft` provides on EL 9), sorted and deduplicated:
/// what dnf installed for an install spec naming a capability. Empty when none does.
///
/// Errors: the image has no rpm binary; rpm fails for another reason than "no package
/// provides".
pub fn what_provides(root: &GuestRoot, capability: &str) -> Result<Vec<String>> {
    let mut cmd = image_rpm(root, &["-q", "--whatprovides", "--qf", "%{NAME}\n", "--", capability])?;
    crate::exec::die_with_parent(&mut cmd);
    let out = cmd.stdin(std::process::Stdio::null()).output().context("running the image's rpm -q --whatprovides")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // rpm exits 1 and says "no package provides X" on stdout when nothing does.
        if text.contains("no package provides") {
            return Ok(Vec::new());
        }
        bail!("rpm -q --whatprovides {capability} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Parses the output of `rpm -qa --qf` with [`QUERY_FORMAT`], sorted by name then architecture.
///
/// Errors: a line without the seven fields.
pub fn parse_query(text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 7 {
            bail!("rpm -qa output line {}: expected 7 tab-separated fields, found {}: {line:?}", i + 1, f.len());
        }
        if f[0] == "gpg-pubkey" {
            continue;
        }
        let none = |s: &str| (s != "(none)" && !s.is_empty()).then(|| s.to_string());
        let epoch: u32 = f[1].parse().with_context(|| format!("rpm -qa output line {}: epoch {:?} is not a number", i + 1, f[1]))?;
        // The source RPM's name: `iptables-1.8.10-4.el9_4.src.rpm` → `iptables`.
        // Kept only when it differs from the name, as for dpkg.
        let source = none(f[5]).map(|s| source_name(&s)).filter(|s| s != f[0]);
        out.push(Package {
            name: f[0].to_string(),
            kind: PackageKind::Rpm,
            epoch: Some(epoch),
            version: f[2].to_string(),
            release: none(f[3]),
            architecture: f[4].to_string(),
            source,
            held: false,
            license: none(f[6]).map(|l| PackageLicense { spdx: spdx::Expression::parse(&l).is_ok().then(|| l.clone()), declared: vec![l] }),
        });
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    Ok(out)
}

/// The package name of a source RPM file name (`iptables-1.8.10-4.el9_4.src.rpm` → `iptables`):
/// what is left after dropping `.src.rpm`, the release and the version.
pub fn source_name(srpm: &str) -> String {
    let s = srpm.strip_suffix(".src.rpm").or_else(|| srpm.strip_suffix(".nosrc.rpm")).unwrap_or(srpm);
    let mut parts = s.rsplitn(3, '-');
    let (_release, _version, name) = (parts.next(), parts.next(), parts.next());
    name.unwrap_or(s).to_string()
}

/// The name in a versionlock entry (`kubelet-0:1.30.0-150500.1.1.*`, `!kubelet-0:...`): the part
/// before the `-` that precedes the epoch; a plain name (or glob) as it is.
pub fn versionlock_name(entry: &str) -> String {
    let e = entry.trim().trim_start_matches('!');
    match e.find(':') {
        Some(colon) => e[..colon].rfind('-').map_or(e, |dash| &e[..dash]).to_string(),
        None => {
            // name-version-release.arch without epoch: drop the last two dash fields.
            let mut parts = e.rsplitn(3, '-');
            let (_a, _b, name) = (parts.next(), parts.next(), parts.next());
            name.unwrap_or(e).to_string()
        }
    }
}

/// The packages an RPM image holds: names and shell-style globs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holds {
    /// `(pattern, where it comes from)`, such as `("kubelet", "/etc/dnf/plugins/versionlock.list")`.
    pub patterns: Vec<(String, String)>,
}

impl Holds {
    /// Whether `name` is held by any pattern.
    pub fn holds(&self, name: &str) -> bool {
        self.patterns.iter().any(|(p, _)| glob_match(p, name))
    }

    /// Where `name`'s hold comes from, if it is held.
    pub fn source_of(&self, name: &str) -> Option<&str> {
        self.patterns.iter().find(|(p, _)| glob_match(p, name)).map(|(_, s)| s.as_str())
    }
}

/// The dnf/yum versionlock lists.
pub const VERSIONLOCK_LISTS: &[&str] = &["/etc/dnf/plugins/versionlock.list", "/etc/yum/pluginconf.d/versionlock.list"];
/// dnf's and yum's main configuration files (their `[main] exclude=`).
pub const MAIN_CONFS: &[&str] = &["/etc/dnf/dnf.conf", "/etc/yum.conf"];
/// The folder of dnf's, yum's and tdnf's repository files.
pub const YUM_REPOS: &str = "/etc/yum.repos.d";
/// Where RPM-family images keep the repositories' signing keys (`gpgkey=file:///etc/pki/rpm-gpg/...`).
pub const GPG_KEYS: &str = "/etc/pki/rpm-gpg";

/// The files in [`GPG_KEYS`], sorted: part of kib's package cache key for dnf, yum and zypper, so
/// that metadata checked against one set of keys is never reused by an image trusting another.
///
/// Errors: the folder cannot be listed.
pub fn gpg_key_files(root: &GuestRoot) -> Result<Vec<PathBuf>> {
    let mut names = root.read_dir(Path::new(GPG_KEYS))?;
    names.sort();
    Ok(names.into_iter().map(|n| Path::new(GPG_KEYS).join(n)).collect())
}

/// zypper's locks file.
pub const ZYPP_LOCKS: &str = "/etc/zypp/locks";
/// tdnf's locks folder (one name per line in each `*.conf`).
pub const TDNF_LOCKS: &str = "/etc/tdnf/locks.d";
/// tdnf's configuration (its `excludepkgs=`).
pub const TDNF_CONF: &str = "/etc/tdnf/tdnf.conf";

/// Every hold in the image, whichever RPM tool made it: dnf/yum versionlock entries (a leading
/// `!` is an exclude, which holds too), `exclude=`/`excludepkgs=` of `[main]` in dnf.conf or
/// yum.conf and of every enabled repository in /etc/yum.repos.d, zypper's locks, tdnf's locks
/// and `excludepkgs=`. Read through `root`; nothing runs.
///
/// Errors: an unreadable file.
pub fn holds(root: &GuestRoot) -> Result<Holds> {
    let mut h = Holds::default();
    for list in VERSIONLOCK_LISTS {
        if let Some(text) = root.read_string(Path::new(list))? {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                h.patterns.push((versionlock_name(line), list.to_string()));
            }
        }
    }
    for conf in MAIN_CONFS.iter().chain([&TDNF_CONF]) {
        if let Some(text) = root.read_string(Path::new(conf))? {
            for s in ini_sections(&text) {
                if s.name == "main" {
                    for p in s.excludes() {
                        h.patterns.push((p, format!("{conf} [main] exclude")));
                    }
                }
            }
        }
    }
    let mut repos = root.read_dir(Path::new(YUM_REPOS))?;
    repos.sort();
    for name in repos {
        if !name.to_string_lossy().ends_with(".repo") {
            continue;
        }
        let path = Path::new(YUM_REPOS).join(&name);
        let Some(text) = root.read_string(&path)? else { continue };
        for s in ini_sections(&text) {
            if s.get("enabled").is_none_or(|v| v != "0") {
                for p in s.excludes() {
                    h.patterns.push((p, format!("{} [{}] exclude", path.display(), s.name)));
                }
            }
        }
    }
    if let Some(text) = root.read_string(Path::new(ZYPP_LOCKS))? {
        for name in parse_zypp_locks(&text) {
            h.patterns.push((name, ZYPP_LOCKS.to_string()));
        }
    }
    let mut locks = root.read_dir(Path::new(TDNF_LOCKS))?;
    locks.sort();
    for name in locks {
        let path = Path::new(TDNF_LOCKS).join(&name);
        if !name.to_string_lossy().ends_with(".conf") {
            continue;
        }
        if let Some(text) = root.read_string(&path)? {
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                h.patterns.push((l.to_string(), path.display().to_string()));
            }
        }
    }
    Ok(h)
}

/// The package names of zypper's locks file: `solvable_name:` of blocks whose `type:` is
/// `package` (or absent).
pub fn parse_zypp_locks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut kind = "package";
        for line in block.lines() {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim() {
                    "solvable_name" => name = Some(v.trim().to_string()),
                    "type" => kind = if v.trim() == "package" { "package" } else { "other" },
                    _ => {}
                }
            }
        }
        if let (Some(n), "package") = (name, kind) {
            out.push(n);
        }
    }
    out
}

/// One `[section]` of an ini-style file (dnf.conf, a .repo file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniSection {
    pub name: String,
    /// `key=value` pairs in order, keys lower-cased, values trimmed (continuation lines joined
    /// with a space).
    pub entries: Vec<(String, String)>,
}

impl IniSection {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The patterns of `exclude=` and `excludepkgs=` (space- or comma-separated).
    pub fn excludes(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(k, _)| k == "exclude" || k == "excludepkgs")
            .flat_map(|(_, v)| v.split([' ', ',', '\t']).filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>())
            .collect()
    }
}

/// Parses ini-style text as dnf reads it: `[section]` headers, `key=value` lines, `#`/`;`
/// comments, indented continuation lines.
pub fn ini_sections(text: &str) -> Vec<IniSection> {
    let mut out: Vec<IniSection> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.starts_with('[') && t.ends_with(']') {
            out.push(IniSection { name: t[1..t.len() - 1].trim().to_string(), entries: Vec::new() });
            continue;
        }
        let Some(section) = out.last_mut() else { continue };
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = section.entries.last_mut() {
                v.push(' ');
                v.push_str(t);
            }
            continue;
        }
        if let Some((k, v)) = t.split_once('=') {
            section.entries.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

/// Shell-style glob match (`*`, `?`, `[...]` taken literally), as dnf matches `exclude=` names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), name.as_bytes())
}

/// The package name of an install spec for an RPM tool: `kubelet-1.30.0`,
/// `kubelet-0:1.30.0-150500.1.1.x86_64`, `kubelet=1.30.0` or `kubelet` → the name of the
/// installed or known package it names, `known` being the names to try (the longest that fits
/// wins). Without a match, the spec up to `=` or the first `-` followed by a digit.
pub fn spec_name<'a>(spec: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let base = spec.split(['=', '<', '>']).next().unwrap_or(spec).trim();
    if let Some(n) = known.into_iter().filter(|n| base == *n || base.strip_prefix(*n).is_some_and(|r| r.starts_with('-') && r[1..].starts_with(|c: char| c.is_ascii_digit()))).max_by_key(|n| n.len()) {
        return n.to_string();
    }
    let b = base.as_bytes();
    for i in 0..b.len().saturating_sub(1) {
        if b[i] == b'-' && b[i + 1].is_ascii_digit() {
            return base[..i].to_string();
        }
    }
    base.to_string()
}

/// Whether the installed package `p` satisfies the RPM install `spec` (`kubelet`,
/// `kubelet-1.30.0`, `kubelet-1.30.0-150500.1.1`, `kubelet-0:1.30.0-150500.1.1.x86_64`,
/// `kubelet=1.30.0`): its name, and the version parts given.
pub fn spec_matches(spec: &str, p: &Package) -> bool {
    let spec = spec.trim();
    if spec == p.name {
        return true;
    }
    let rest = match spec.strip_prefix(p.name.as_str()) {
        Some(r) if r.starts_with('-') || r.starts_with('=') => &r[1..],
        _ => return false,
    };
    let epoch = p.epoch.unwrap_or(0);
    let release = p.release.as_deref().unwrap_or("");
    let vr = format!("{}-{release}", p.version);
    let candidates = [
        p.version.clone(),
        vr.clone(),
        format!("{epoch}:{}", p.version),
        format!("{epoch}:{vr}"),
        format!("{vr}.{}", p.architecture),
        format!("{epoch}:{vr}.{}", p.architecture),
    ];
    candidates.iter().any(|c| c == rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QA: &str = "kubelet\t0\t1.30.0\t150500.1.1\tx86_64\tkubelet-1.30.0-150500.1.1.src.rpm\tApache-2.0\n\
                      ethtool\t2\t6.2\t1.el9\tx86_64\tethtool-6.2-1.el9.src.rpm\tGPLv2\n\
                      iptables-nft\t0\t1.8.10\t4.el9_4\tx86_64\tiptables-1.8.10-4.el9_4.src.rpm\tGPL-2.0-only AND Artistic-2.0\n\
                      gpg-pubkey\t0\t35079f17\t6b102e44\t(none)\t(none)\tpubkey\n";

    #[test]
    fn parses_the_query_and_skips_keys() {
        let p = parse_query(QA).unwrap();
        assert_eq!(p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["ethtool", "iptables-nft", "kubelet"]);
        assert_eq!(p[0].epoch, Some(2));
        assert_eq!(p[0].full_version(), "2:6.2-1.el9");
        assert_eq!(p[1].source.as_deref(), Some("iptables"));
        assert_eq!(p[1].license.as_ref().unwrap().spdx.as_deref(), Some("GPL-2.0-only AND Artistic-2.0"));
        // A legacy Fedora tag is kept as declared, with no SPDX expression.
        assert_eq!((p[0].license.as_ref().unwrap().spdx.as_deref(), p[0].license.as_ref().unwrap().declared.as_slice()), (None, &["GPLv2".to_string()][..]));
        assert_eq!(p[2].release.as_deref(), Some("150500.1.1"));
        assert_eq!(p[2].source, None);
        assert_eq!(p[2].kind, PackageKind::Rpm);
        let json = serde_json::to_value(&p[2]).unwrap();
        assert_eq!(json["kind"], "rpm");
        assert_eq!(json["epoch"], 0);
        assert!(parse_query("a\tb\n").unwrap_err().to_string().contains("expected 7"));
    }

    #[test]
    fn names_from_locks_specs_and_srpms() {
        assert_eq!(versionlock_name("kubelet-0:1.30.0-150500.1.1.*"), "kubelet");
        assert_eq!(versionlock_name("!kubernetes-cni-0:1.4.0-150500.1.1.*"), "kubernetes-cni");
        assert_eq!(versionlock_name("cri-tools-1.30.0-150500.1.1.x86_64"), "cri-tools");
        assert_eq!(source_name("dnf-plugins-core-4.3.0-13.el9.src.rpm"), "dnf-plugins-core");
        assert_eq!(spec_name("kubernetes-cni-1.4.0", ["kubernetes-cni", "kubelet"]), "kubernetes-cni");
        assert_eq!(spec_name("kubelet=1.30.0", []), "kubelet");
        assert_eq!(spec_name("python3-dnf-plugin-versionlock", []), "python3-dnf-plugin-versionlock");
        assert_eq!(spec_name("kubelet-0:1.30.0-150500.1.1.x86_64", []), "kubelet");
        let k = &parse_query(QA).unwrap()[2];
        for s in ["kubelet", "kubelet-1.30.0", "kubelet=1.30.0", "kubelet-1.30.0-150500.1.1", "kubelet-0:1.30.0-150500.1.1.x86_64"] {
            assert!(spec_matches(s, k), "{s}");
        }
        assert!(!spec_matches("kubelet-1.30.1", k) && !spec_matches("kubelet-cni", k));
    }

    #[test]
    fn holds_from_every_tool() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = d.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("/etc/dnf/plugins/versionlock.list", "# Added lock on Wed\nkubelet-0:1.30.0-150500.1.1.*\n");
        w("/etc/dnf/dnf.conf", "[main]\ngpgcheck=1\nexclude=kernel* cri-tools\n");
        w("/etc/yum.repos.d/kubernetes.repo", "[kubernetes]\nname=K\nbaseurl=x\nexclude=kubeadm kubectl\n");
        w("/etc/yum.repos.d/off.repo", "[off]\nenabled=0\nexclude=nano\n");
        w("/etc/zypp/locks", "type: package\nmatch_type: glob\ncase_sensitive: on\nsolvable_name: containerd\n\ntype: pattern\nsolvable_name: x11\n");
        w("/etc/tdnf/locks.d/kib.conf", "runc\n");
        let root = GuestRoot::open(d.path()).unwrap();
        let h = holds(&root).unwrap();
        for n in ["kubelet", "kernel-core", "cri-tools", "kubeadm", "kubectl", "containerd", "runc"] {
            assert!(h.holds(n), "{n}: {h:?}");
        }
        for n in ["nano", "x11", "jq"] {
            assert!(!h.holds(n), "{n}");
        }
        assert_eq!(h.source_of("kubeadm"), Some("/etc/yum.repos.d/kubernetes.repo [kubernetes] exclude"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("kube*", "kubelet") && glob_match("k?be", "kube") && glob_match("*", "x"));
        assert!(!glob_match("kube", "kubelet") && !glob_match("k?be", "kbe"));
    }
}
