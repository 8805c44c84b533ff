//! RPM-family images: the real manifests/k8s-1.30.yaml on kib's EL-shaped TEST FIXTURE image
//! (testdata/el/make-el-image.sh: a Debian userland with Debian's rpm, dnf and zypper, dressed as
//! Rocky 9.4 or SLES 15.6), against a local mirror on 127.0.0.1 serving the signed fixture RPM
//! repositories of testdata/mirror/make-rpm-fixtures.sh (stand-ins for Rocky's and SUSE's
//! repositories and pkgs.k8s.io's rpm layout) and a fixture containerd release tarball
//! (testdata/el/make-containerd-tarball.sh, repacked from Debian sid's containerd). Nothing served
//! is a real Rocky, SUSE, Kubernetes or containerd release.

mod common;
#[path = "common/sbom_schema.rs"]
mod sbom_schema;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testserver::MirrorServer;

/// The cached fixture image of `variant` (`el` or `suse`), built by make-el-image.sh if needed.
fn fixture_image(variant: &str) -> PathBuf {
    let out = Command::new("bash").arg(repo().join("testdata/el/make-el-image.sh")).args(["--variant", variant]).output().unwrap();
    assert!(out.status.success(), "make-el-image.sh --variant {variant} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim())
}

/// The fixture mirror for Kubernetes 1.30.0 (deb and rpm sides) plus the fixture containerd
/// tarball, under `dir`. Returns the folder and the (containerd, runc) versions.
fn fixtures(dir: &Path) -> (PathBuf, String, String) {
    let www = dir.join("mirror");
    let ok = Command::new("bash").arg(repo().join("testdata/mirror/make-fixtures.sh")).arg(&www).arg("1.30.0").status().unwrap();
    assert!(ok.success(), "make-fixtures.sh failed");
    let out = Command::new("bash").arg(repo().join("testdata/el/make-containerd-tarball.sh")).arg(&www).output().unwrap();
    assert!(out.status.success(), "make-containerd-tarball.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let v = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
    let (c, r) = v.split_once(' ').unwrap();
    (www, c.to_string(), r.to_string())
}

fn mirror_args(server: &MirrorServer, pkgs: &str) -> Vec<String> {
    let u = server.url();
    [
        format!("https://pkgs.k8s.io={u}/{pkgs}"),
        format!("https://dl.k8s.io={u}/dl"),
        format!("https://github.com={u}/github"),
        format!("https://images.kib.example/registry.k8s.io/amd64={u}/images"),
        format!("https://dl.rockylinux.org={u}/rocky"),
        format!("https://updates.suse.com={u}/suse"),
    ]
    .into_iter()
    .flat_map(|m| ["--mirror".to_string(), m])
    .collect()
}

/// The `--set`s of a k8s-1.30 build on the fixtures: version 1.30.0 (the fixture repository's),
/// containerd and runc from the fixture tarball, checked against the mirror's .sha256 files.
fn sets(containerd: &str, runc: &str) -> Vec<String> {
    [
        "kubernetes_version=1.30.0".to_string(),
        "kubernetes_deb_version=1.30.0-1.1".into(),
        "kubernetes_source=pkg".into(),
        "containerd_source=upstream".into(),
        format!("containerd_version={containerd}"),
        format!("runc_version={runc}"),
        "checksums=upstream".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

/// The installed RPMs of a mounted image, read with the HOST's rpm (`--root`), independently of
/// kib's reader: name → `epoch:version-release.arch`.
fn rpm_qa(root: &Path, dbpath: &str) -> BTreeMap<String, String> {
    let out = Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["--dbpath", dbpath, "-qa", "--qf", "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\\n"])
        .output()
        .unwrap();
    assert!(out.status.success(), "rpm -qa: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_once(' ')).map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn the_error(stderr: &str) -> &str {
    stderr.lines().position(|l| l.starts_with("error: ")).map_or(stderr, |i| {
        let off: usize = stderr.lines().take(i).map(|l| l.len() + 1).sum();
        &stderr[off..]
    })
}

/// Nothing of a run in `tmp` is left: no loop device, mount, process or output.
fn assert_clean(tmp: &Path, out: &Path) {
    assert_nothing_left(&tmp.join("work"));
    let inside = processes_rooted_in(tmp);
    assert!(inside.is_empty(), "processes from the image still run: {inside:?}");
    if out.exists() {
        let files: Vec<_> = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(files.is_empty(), "output folder not empty: {files:?}");
    }
}

/// The `.rpm` files kib's shared package cache holds for `manager` (`<tmp>/cache/packages/<manager>/`).
fn cached_rpms(tmp: &Path, manager: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rpm") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&tmp.join("cache/packages").join(manager), &mut out);
    out
}

struct Built {
    raw: PathBuf,
    bom: serde_json::Value,
    out: PathBuf,
    seconds: f64,
}

fn build(img: &Path, tmp: &Path, out: &str, args: &[String]) -> Built {
    let outdir = tmp.join(out);
    let t = std::time::Instant::now();
    let o = customize_cmd_to(img, &repo().join("manifests/k8s-1.30.yaml"), tmp, &outdir).args(args).args(["--format", "raw"]).output().unwrap();
    let seconds = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "kib failed:\n{stderr}");
    assert_nothing_left(&tmp.join("work"));
    let inside = processes_rooted_in(tmp);
    assert!(inside.is_empty(), "processes from the image still run: {inside:?}");
    let bom = serde_json::from_slice(&std::fs::read(outdir.join("bom.json")).unwrap()).unwrap();
    eprintln!("build {out}: {seconds:.1}s");
    Built { raw: outdir.join("k8s-1.30-node.raw"), bom, out: outdir, seconds }
}

fn check(raw: &Path, tmp: &Path, extra: &[String]) -> String {
    let mut cmd = kib();
    cmd.args(["check", "--manifest", "manifests/k8s-1.30.yaml", "--disk-image"]).arg(raw).arg("--work-dir").arg(tmp.join("work")).args(extra);
    let out = cmd.output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    report
}

fn bom_package<'a>(bom: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    bom["packages"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} not in bom.json"))
}

/// The SBOMs are schema-valid, and every RPM of the BOM is in both with its rpm purl.
fn assert_rpm_sboms(out: &Path, bom: &serde_json::Value, distro: &str, os_id: &str) {
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("k8s-1.30-node.spdx.json")).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&spdx, sbom_schema::SbomKind::Spdx23);
    let cdx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("k8s-1.30-node.cdx.json")).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&cdx, sbom_schema::SbomKind::CycloneDx15);
    let kubelet = bom_package(bom, "kubelet");
    let purl = format!("pkg:rpm/{os_id}/kubelet@1.30.0-150500.1.1?arch={}&distro={distro}&epoch=0", kubelet["architecture"].as_str().unwrap());
    let cdx_purls: Vec<&str> = cdx["components"].as_array().unwrap().iter().filter_map(|c| c["purl"].as_str()).collect();
    assert!(cdx_purls.iter().any(|p| p.starts_with(&purl[..purl.find('?').unwrap()]) && p.contains("epoch=0") && p.contains(&format!("distro={distro}"))), "no {purl} in {cdx_purls:?}");
    let spdx_purls: Vec<String> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["externalRefs"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["referenceType"] == "purl")
        .filter_map(|r| r["referenceLocator"].as_str().map(str::to_string))
        .collect();
    let rpms = bom["packages"].as_array().unwrap().iter().filter(|p| p["kind"] == "rpm").count();
    assert!(rpms > 20, "only {rpms} rpm entries in bom.json");
    assert_eq!(spdx_purls.iter().filter(|p| p.starts_with("pkg:rpm/")).count(), rpms, "SPDX rpm purls");
    assert_eq!(cdx_purls.iter().filter(|p| p.starts_with("pkg:rpm/")).count(), rpms, "CycloneDX rpm purls");
    assert!(!spdx_purls.iter().map(String::as_str).chain(cdx_purls.iter().copied()).any(|p| p.starts_with("pkg:deb/")), "a Debian package (the fixture's dpkg status) reached an SBOM");
}

#[test]
fn el_fixture_node_through_k8s_1_30_then_lock() {
    if common::skip_unless_root("el_fixture_node_through_k8s_1_30_then_lock") {
        return;
    }
    let img = fixture_image("el");
    let before = sha256(&img);
    let tmp = tempfile::tempdir().unwrap();
    let (www, containerd, runc) = fixtures(tmp.path());
    let server = MirrorServer::start(&www);
    let mut args = mirror_args(&server, "pkgs");
    args.extend(sets(&containerd, &runc));
    let b = build(&img, tmp.path(), "out", &args);
    let reqs = server.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r.starts_with("/pkgs/core:/stable:/v1.30/rpm/")), "dnf did not use the mirror: {reqs:?}");
    assert!(reqs.iter().any(|r| r.starts_with("/rocky/pub/rocky/9/BaseOS/")), "dnf did not use the Rocky mirror: {reqs:?}");

    let m = Mounted::partition(&b.raw, 1, &tmp.path().join("mnt"));
    let rpms = rpm_qa(&m.path("/"), "/var/lib/rpm");
    for name in ["kubelet", "kubeadm", "kubectl"] {
        assert_eq!(rpms.get(name).map(String::as_str), Some("0:1.30.0-150500.1.1.x86_64"), "{name}: {rpms:?}");
    }
    for name in ["kubernetes-cni", "cri-tools", "conntrack-tools", "socat", "ethtool", "iptables-nft", "jq", "chrony", "audit", "container-selinux", "libseccomp"] {
        assert!(rpms.contains_key(name), "{name} not installed: {rpms:?}");
    }
    // Without weak dependencies: python3-pip's Recommends (python3-setuptools) is not there.
    assert!(!rpms.contains_key("python3-setuptools"), "a weak dependency was installed");
    // Held: versionlock (the fixture has the plugin), and pkgs.k8s.io's exclude= stays.
    let locks = m.read("/etc/dnf/plugins/versionlock.list");
    for name in ["kubelet", "kubeadm", "kubectl", "kubernetes-cni", "cri-tools"] {
        assert!(locks.lines().any(|l| l.starts_with(&format!("{name}-0:"))), "{name} not versionlocked:\n{locks}");
    }
    let k8s_repo = m.read("/etc/yum.repos.d/kubernetes.repo");
    assert!(k8s_repo.contains("baseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\n") && k8s_repo.contains("gpgcheck=1\n"), "{k8s_repo}");
    assert!(k8s_repo.contains("gpgkey=file:///etc/pki/rpm-gpg/kubernetes.asc\n") && k8s_repo.contains("exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"), "{k8s_repo}");
    assert!(m.read("/etc/pki/rpm-gpg/kubernetes.asc").contains("BEGIN PGP PUBLIC KEY BLOCK"));
    // The key is in the rpmdb (rpm --import): two gpg-pubkey entries now, the distribution's
    // and pkgs.k8s.io's fixture key.
    let keys = Command::new("rpm").arg("--root").arg(m.path("/")).args(["--dbpath", "/var/lib/rpm", "-q", "gpg-pubkey"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&keys.stdout).lines().count(), 2, "{}", String::from_utf8_lossy(&keys.stdout));
    // The mirror was for the build only.
    let rocky = m.read("/etc/yum.repos.d/rocky.repo");
    assert!(rocky.contains("https://dl.rockylinux.org/") && !rocky.contains("127.0.0.1"), "{rocky}");
    assert!(!k8s_repo.contains("127.0.0.1"));
    // containerd from the (fixture) release tarball; containerd and kubelet enabled.
    assert!(std::fs::metadata(m.path("/usr/local/bin/containerd")).is_ok());
    for unit in ["kubelet.service", "containerd.service"] {
        assert!(std::fs::symlink_metadata(m.path(&format!("/etc/systemd/system/multi-user.target.wants/{unit}"))).is_ok(), "{unit} not enabled");
    }
    assert!(m.read("/etc/sysconfig/kubelet").starts_with("KUBELET_EXTRA_ARGS="));
    assert_eq!(m.read("/etc/kubernetes-version").trim(), "v1.30.0");
    // Sysprep: dnf's caches emptied, machine-id empty.
    assert!(std::fs::read_dir(m.path("/var/cache/dnf")).map_or(true, |mut d| d.next().is_none()), "dnf cache left");
    assert_eq!(std::fs::metadata(m.path("/etc/machine-id")).unwrap().len(), 0);
    drop(m);

    // The BOM lists the rpmdb, not the Debian userland's dpkg status.
    let k = bom_package(&b.bom, "kubelet");
    assert_eq!((k["kind"].as_str(), k["epoch"].as_u64(), k["version"].as_str(), k["release"].as_str()), (Some("rpm"), Some(0), Some("1.30.0"), Some("150500.1.1")));
    assert_eq!((k["architecture"].as_str(), k["source"].as_str(), k["held"].as_bool()), (Some("x86_64"), None, Some(true)));
    assert_eq!(bom_package(&b.bom, "kubelet")["license"]["spdx"], "Apache-2.0");
    let ipt = bom_package(&b.bom, "iptables-nft");
    assert_eq!((ipt["source"].as_str(), ipt["license"]["spdx"].as_str()), (Some("iptables"), Some("GPL-2.0-only AND Artistic-2.0")));
    assert!(b.bom["packages"].as_array().unwrap().iter().all(|p| p["kind"] == "rpm"), "a non-rpm package in bom.json");
    assert!(!b.bom["packages"].as_array().unwrap().iter().any(|p| p["name"] == "apt" || p["name"] == "gpg-pubkey"));
    assert_rpm_sboms(&b.out, &b.bom, "rocky-9.4", "rocky");

    // kib check: held packages, services, files, repository, images.
    let report = check(&b.raw, tmp.path(), &sets(&containerd, &runc));
    for want in ["PASS package kubelet held", "PASS package kubelet-1.30.0 installed", "PASS service kubelet.service enabled", "PASS service containerd.service enabled", "PASS repository kubernetes checks signatures (gpgcheck=1)", "PASS image registry.k8s.io/pause:3.9 in containerd's store"] {
        assert!(report.contains(want), "missing `{want}` in:\n{report}");
    }
    assert!(!report.contains("FAIL"), "{report}");
    // kib inspect reads the rpmdb too.
    let o = kib().args(["inspect", "--output", "json", "--work-dir"]).arg(tmp.path().join("work")).arg(&b.raw).output().unwrap();
    let inspect = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && inspect.contains("150500.1.1") && !inspect.contains("\"adduser\""), "{inspect}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha256(&img), before, "the fixture image changed");

    // kib's package cache kept what dnf downloaded (keepcache), outside the image.
    let cached = cached_rpms(tmp.path(), "dnf");
    assert!(cached.iter().any(|p| p.file_name().unwrap().to_string_lossy().starts_with("kubelet-1.30.0")), "kubelet not in the package cache: {cached:?}");

    // --lock: a rebuild from this BOM installs exactly the same RPMs, and, with the package
    // cache warm, downloads none of them again (dnf still asks for each repomd.xml).
    server.requests.lock().unwrap().clear();
    let lock = tmp.path().join("lock.json");
    std::fs::copy(b.out.join("bom.json"), &lock).unwrap();
    let mut lock_args = args.clone();
    lock_args.extend(["--lock".to_string(), lock.display().to_string()]);
    let again = build(&img, tmp.path(), "again", &lock_args);
    let reqs = server.requests.lock().unwrap().clone();
    let rpms_fetched: Vec<&String> = reqs.iter().filter(|r| r.ends_with(".rpm")).collect();
    assert!(rpms_fetched.is_empty(), "the warm package cache downloaded packages again: {rpms_fetched:?}");
    assert!(reqs.iter().any(|r| r.ends_with("repodata/repomd.xml")), "dnf did not check the repositories: {reqs:?}");
    let m = Mounted::partition(&again.raw, 1, &tmp.path().join("mnt2"));
    assert_eq!(rpm_qa(&m.path("/"), "/var/lib/rpm"), rpms, "the --lock rebuild differs");
    drop(m);
    std::fs::remove_dir_all(&b.out).unwrap();
    std::fs::remove_dir_all(&again.out).unwrap();

    // A locked version the repository no longer has: named, nothing left behind.
    let mut old: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    for p in old["packages"].as_array_mut().unwrap() {
        if p["name"] == "jq" {
            p["release"] = "99.el9".into();
        }
    }
    let gone = tmp.path().join("gone.json");
    std::fs::write(&gone, serde_json::to_vec(&old).unwrap()).unwrap();
    let mut gone_args = args.clone();
    gone_args.extend(["--lock".to_string(), gone.display().to_string(), "--format".into(), "raw".into()]);
    let outdir = tmp.path().join("gone-out");
    let o = customize_cmd_to(&img, &repo().join("manifests/k8s-1.30.yaml"), tmp.path(), &outdir).args(&gone_args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let err = the_error(&err);
    assert!(err.contains(&format!("--lock {}", gone.display())) && err.contains("jq-0:1.6-99.el9.x86_64"), "{err}");
    assert_clean(tmp.path(), &outdir);
    eprintln!("EL fixture build of manifests/k8s-1.30.yaml: {:.1}s (then --lock: {:.1}s)", b.seconds, again.seconds);
}

#[test]
fn sles_fixture_node_through_zypper() {
    if common::skip_unless_root("sles_fixture_node_through_zypper") {
        return;
    }
    let img = fixture_image("suse");
    let before = sha256(&img);
    let tmp = tempfile::tempdir().unwrap();
    let (www, containerd, runc) = fixtures(tmp.path());
    let server = MirrorServer::start(&www);
    let mut args = mirror_args(&server, "pkgs");
    args.extend(sets(&containerd, &runc));
    args.extend(["--set".to_string(), "preload_images=false".into()]);
    let b = build(&img, tmp.path(), "out", &args);
    let m = Mounted::partition(&b.raw, 1, &tmp.path().join("mnt"));
    let rpms = rpm_qa(&m.path("/"), "/usr/lib/sysimage/rpm");
    for name in ["kubelet", "kubeadm", "kubectl"] {
        assert_eq!(rpms.get(name).map(String::as_str), Some("0:1.30.0-150500.1.1.x86_64"), "{name}: {rpms:?}");
    }
    for name in ["conntrack-tools", "socat", "libseccomp2", "jq", "chrony", "audit", "kubernetes-cni", "cri-tools"] {
        assert!(rpms.contains_key(name), "{name} not installed");
    }
    assert!(!rpms.contains_key("python3-setuptools"), "a recommended package was installed");
    let locks = m.read("/etc/zypp/locks");
    for name in ["kubelet", "kubeadm", "kubectl"] {
        assert!(locks.contains(&format!("solvable_name: {name}\n")), "{name} not locked:\n{locks}");
    }
    let k8s_repo = m.read("/etc/zypp/repos.d/kubernetes.repo");
    assert!(k8s_repo.contains("gpgcheck=1\n") && k8s_repo.contains("baseurl=https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\n"), "{k8s_repo}");
    // kib's package cache: zypper kept the packages (keeppackages=1 while the build ran, not in
    // the output), outside the image, whose own cache is empty.
    assert!(!k8s_repo.contains("keeppackages=1"), "{k8s_repo}");
    let cached = cached_rpms(tmp.path(), "zypper");
    assert!(cached.iter().any(|p| p.file_name().unwrap().to_string_lossy().starts_with("kubelet-1.30.0")), "kubelet not in the package cache: {cached:?}");
    let image_cache: Vec<_> = std::fs::read_dir(m.path("/var/cache/zypp/packages")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(image_cache.is_empty(), "zypper's cache in the image: {image_cache:?}");
    for unit in ["kubelet.service", "containerd.service"] {
        assert!(std::fs::symlink_metadata(m.path(&format!("/etc/systemd/system/multi-user.target.wants/{unit}"))).is_ok(), "{unit} not enabled");
    }
    drop(m);
    let k = bom_package(&b.bom, "kubelet");
    assert_eq!((k["kind"].as_str(), k["held"].as_bool()), (Some("rpm"), Some(true)));
    assert_rpm_sboms(&b.out, &b.bom, "sles-15.6", "sles");
    let report = check(&b.raw, tmp.path(), &args[args.iter().position(|a| a == "--set").unwrap()..]);
    assert!(report.contains("PASS package kubelet held") && !report.contains("FAIL"), "{report}");
    assert_eq!(sha256(&img), before);
    eprintln!("SUSE fixture build of manifests/k8s-1.30.yaml: {:.1}s", b.seconds);
}

/// One bad input on the EL fixture: `manifest` (YAML text) fails with an error containing every
/// one of `wants`; the image is bit-identical and nothing is left.
fn fails_cleanly(img: &Path, tmp: &Path, name: &str, manifest: &str, extra: &[String], wants: &[&str]) {
    let before = sha256(img);
    let file = tmp.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let out = tmp.join(format!("{name}-out"));
    let o = customize_cmd_to(img, &file, tmp, &out).args(extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{name}: kib succeeded");
    let err = the_error(&stderr);
    for w in wants {
        assert!(err.contains(w), "{name}: missing `{w}` in:\n{err}");
    }
    assert_eq!(sha256(img), before, "{name}: the input changed");
    assert_clean(tmp, &out);
}

#[test]
fn rpm_bad_inputs_name_the_problem_and_leave_nothing() {
    if common::skip_unless_root("rpm_bad_inputs_name_the_problem_and_leave_nothing") {
        return;
    }
    let img = fixture_image("el");
    let tmp = tempfile::tempdir().unwrap();
    let (www, _, _) = fixtures(tmp.path());
    let server = MirrorServer::start(&www);
    let head = "apiVersion: kib/v1\nkind: ImageManifest\n";

    // A package that does not exist: named, with the tail of dnf's output.
    fails_cleanly(
        &img,
        tmp.path(),
        "missing",
        &format!("{head}steps:\n  - name: tools\n    packages: {{install: [jq, no-such-package]}}\n"),
        &mirror_args(&server, "pkgs"),
        &["step 1/1 `tools` (packages", "dnf install jq no-such-package", "No match for argument: no-such-package", "Unable to find a match"],
    );

    // A repository whose packages are signed by another key than the one it publishes.
    let k8s = format!(
        "{head}steps:\n  - name: k8s repo\n    repository:\n      name: kubernetes\n      url: https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\n      \
         key_url: https://pkgs.k8s.io/core:/stable:/v1.30/rpm/repodata/repomd.xml.key\n  - name: kubelet\n    packages: {{install: [kubelet-1.30.0]}}\n"
    );
    fails_cleanly(&img, tmp.path(), "badsig", &k8s, &mirror_args(&server, "badsig"), &["step 2/2 `kubelet`", "dnf install kubelet-1.30.0", "GPG"]);

    // A manifest forcing zypper on this dnf image: stops before the first step.
    fails_cleanly(
        &img,
        tmp.path(),
        "forced",
        &format!("{head}packages: {{manager: zypper}}\nsteps:\n  - name: tools\n    packages: {{install: [jq]}}\n"),
        &[],
        &["the manifest forces `packages: {manager: zypper}`, but this image has no zypper", "os-release ID/ID_LIKE: rocky rhel centos fedora", "package tools found: dnf, yum"],
    );

    // An image whose package manager kib does not support: a tiny image saying it is Alpine,
    // with only apk.
    let alpine = tiny_image(tmp.path(), "alpine.raw", &[("/etc/os-release", "ID=alpine\nVERSION_ID=3.20\n"), ("/sbin/apk", "")]);
    fails_cleanly(
        &alpine,
        tmp.path(),
        "unsupported",
        &format!("{head}steps:\n  - name: tools\n    packages: {{install: [jq]}}\n"),
        &[],
        &["this image has no package manager kib supports (os-release ID/ID_LIKE: alpine; package tools found: none of apt-get, dnf, yum, microdnf, tdnf, zypper)"],
    );
}
