//! The real manifests/k8s-1.30.yaml on the real Debian base image, against a local mirror on
//! 127.0.0.1 laid out like pkgs.k8s.io, dl.k8s.io, GitHub releases and an image-archive mirror.
//! Everything the mirror serves is a fixture built by testdata/mirror/make-fixtures.sh (a signed
//! apt repository of small fixture packages, fixture binaries and tarballs, fixture images).

mod common;
#[path = "common/sbom_schema.rs"]
mod sbom_schema;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testserver::MirrorServer;

/// Builds the fixture mirror for Kubernetes 1.30.0 under `dir`.
fn fixtures(dir: &Path) -> PathBuf {
    let www = dir.join("mirror");
    let ok = Command::new("bash").arg(repo().join("testdata/mirror/make-fixtures.sh")).arg(&www).arg("1.30.0").status().unwrap();
    assert!(ok.success(), "make-fixtures.sh failed");
    www
}

fn mirror_args(server: &MirrorServer) -> Vec<String> {
    let u = server.url();
    [
        format!("https://pkgs.k8s.io={u}/pkgs"),
        format!("https://dl.k8s.io={u}/dl"),
        format!("https://github.com={u}/github"),
        format!("https://images.kib.example/registry.k8s.io/amd64={u}/images"),
    ]
    .into_iter()
    .flat_map(|m| ["--mirror".to_string(), m])
    .collect()
}

const VERSION_SETS: &[&str] = &["--set", "kubernetes_version=1.30.0", "--set", "kubernetes_deb_version=1.30.0-1.1"];

fn build(source: &str, tmp: &Path, server: &MirrorServer) -> (PathBuf, serde_json::Value) {
    let mut args: Vec<String> = mirror_args(server);
    args.extend(VERSION_SETS.iter().map(|s| s.to_string()));
    args.extend(["--set".into(), format!("kubernetes_source={source}"), "--format".into(), "raw".into()]);
    if source == "http" {
        // The fixtures are not upstream's bytes: check them against the mirror's .sha256 files.
        args.extend(["--set", "checksums=upstream", "--set", "crictl_version=1.30.0"].map(String::from));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = std::time::Instant::now();
    let (ok, err) = customize_in(&base_image(), &repo().join("manifests/k8s-1.30.yaml"), tmp, &args);
    assert!(ok, "kib failed:\n{err}");
    // Compared with the EL fixture's build of the same manifest (tests/rpm.rs prints it).
    eprintln!("Debian 12 build of manifests/k8s-1.30.yaml (kubernetes_source={source}): {:.1}s", t.elapsed().as_secs_f64());
    assert_nothing_left(&tmp.join("work"));
    let inside = processes_rooted_in(tmp);
    assert!(inside.is_empty(), "processes from the image still run: {inside:?}");
    let out = tmp.join("out");
    let bom = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
    (out.join("k8s-1.30-node.raw"), bom)
}

fn loaded_images(bom: &serde_json::Value) -> Vec<String> {
    bom["steps"].as_array().unwrap().iter().flat_map(|s| s["images"].as_array().cloned().unwrap_or_default()).map(|i| i["name"].as_str().unwrap().to_string()).collect()
}

fn check(raw: &Path, tmp: &Path, source: &str) -> String {
    let mut cmd = kib();
    cmd.args(["check", "--manifest", "manifests/k8s-1.30.yaml", "--disk-image"]).arg(raw).arg("--work-dir").arg(tmp.join("work"));
    cmd.args(VERSION_SETS).args(["--set", &format!("kubernetes_source={source}")]);
    if source == "http" {
        cmd.args(["--set", "checksums=upstream", "--set", "crictl_version=1.30.0"]);
    }
    let out = cmd.output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    report
}

#[test]
fn k8s_1_30_from_pkgs_repository_through_the_mirror() {
    if common::skip_unless_root("k8s_1_30_from_pkgs_repository_through_the_mirror") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = MirrorServer::start(&fixtures(tmp.path()));
    let (raw, bom) = build("pkg", tmp.path(), &server);
    let reqs = server.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r.starts_with("/pkgs/core:/stable:/v1.30/deb/")), "apt did not use the mirror: {reqs:?}");

    let img = Mounted::partition(&raw, 1, &tmp.path().join("mnt"));
    let pkgs = kib::pkg::dpkg::parse_status(&img.read("/var/lib/dpkg/status")).unwrap();
    for name in ["kubelet", "kubeadm", "kubectl"] {
        let p = pkgs.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name} not installed"));
        assert_eq!(p.version, "1.30.0-1.1", "{name}");
        assert!(p.held, "{name} is not held");
    }
    assert!(pkgs.iter().any(|p| p.name == "kubernetes-cni") && pkgs.iter().any(|p| p.name == "cri-tools"));
    // The image keeps upstream's repository, signed-by its key; the mirror was for the build only.
    let list = img.read("/etc/apt/sources.list.d/kubernetes.list");
    assert!(list.contains("deb [signed-by=/etc/apt/keyrings/kubernetes.asc] https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /"), "{list}");
    assert!(img.read("/etc/apt/keyrings/kubernetes.asc").contains("BEGIN PGP PUBLIC KEY BLOCK"));
    assert!(!img.read("/etc/apt/sources.list").contains("127.0.0.1"));
    // kubelet enabled, not started (nothing runs in the image); containerd enabled.
    for unit in ["kubelet.service", "containerd.service"] {
        assert!(std::fs::symlink_metadata(img.path(&format!("/etc/systemd/system/multi-user.target.wants/{unit}"))).is_ok(), "{unit} not enabled");
    }
    assert_eq!(img.read("/etc/kubernetes-version").trim(), "v1.30.0");
    let release = img.read("/etc/kib-release");
    assert!(release.contains(env!("CARGO_PKG_VERSION")) && release.contains("k8s-1.30-node"), "{release}");
    assert!(img.read("/etc/default/kubelet").starts_with("KUBELET_EXTRA_ARGS="));
    // The images, in containerd's store under kubeadm's names.
    let images = loaded_images(&bom);
    for want in [
        "registry.k8s.io/kube-apiserver:v1.30.0",
        "registry.k8s.io/kube-controller-manager:v1.30.0",
        "registry.k8s.io/kube-scheduler:v1.30.0",
        "registry.k8s.io/kube-proxy:v1.30.0",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/etcd:3.5.15-0",
        "registry.k8s.io/coredns/coredns:v1.11.3",
    ] {
        assert!(images.iter().any(|i| i == want), "{want} not loaded: {images:?}");
    }
    let meta = std::fs::read(img.path("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db")).unwrap();
    assert!(meta.windows(38).any(|w| w == b"registry.k8s.io/kube-apiserver:v1.30.0"), "not in containerd's metadata store");
    // Sysprep parity: every package held, no host keys, empty machine-id.
    assert!(pkgs.iter().all(|p| p.held), "not every package is held");
    assert_eq!(std::fs::metadata(img.path("/etc/machine-id")).unwrap().len(), 0);
    drop(img);

    // The upstream validation list, offline.
    let report = check(&raw, tmp.path(), "pkg");
    assert!(report.contains("PASS package kubelet held") && report.contains("PASS image registry.k8s.io/pause:3.9 in containerd's store"), "{report}");
    assert!(report.contains("PASS service kubelet.service enabled") && report.contains("PASS no SSH host keys"), "{report}");

    // The booted node is checked by tests/build.rs: the same manifest and packages, built by
    // `kib build --provider qemu`, then `kib check --boot` under TCG. One TCG boot of this
    // manifest (about 3 minutes on 2 cores) is enough for CI's budget.
    assert_nothing_left(&tmp.path().join("work"));
}

#[test]
fn k8s_1_30_from_release_binaries_through_the_mirror() {
    if common::skip_unless_root("k8s_1_30_from_release_binaries_through_the_mirror") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = MirrorServer::start(&fixtures(tmp.path()));
    let (raw, bom) = build("http", tmp.path(), &server);
    let img = Mounted::partition(&raw, 1, &tmp.path().join("mnt"));
    for bin in ["kubelet", "kubeadm", "kubectl"] {
        assert!(img.read(&format!("/usr/bin/{bin}")).contains("kib test fixture"), "{bin}");
    }
    assert!(img.path("/usr/lib/systemd/system/kubelet.service").is_file() || img.path("/lib/systemd/system/kubelet.service").is_file());
    assert!(img.read("/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf").contains("KUBELET_KUBECONFIG_ARGS"));
    assert!(std::fs::symlink_metadata(img.path("/etc/systemd/system/multi-user.target.wants/kubelet.service")).is_ok());
    assert!(img.read("/usr/local/bin/crictl").contains("fixture"));
    assert!(img.path("/opt/cni/bin/bridge").is_file());
    let pkgs = kib::pkg::dpkg::parse_status(&img.read("/var/lib/dpkg/status")).unwrap();
    assert!(!pkgs.iter().any(|p| p.name == "kubelet"), "the http way installs no kubelet package");
    drop(img);
    let downloads: Vec<String> =
        bom["steps"].as_array().unwrap().iter().flat_map(|s| s["downloads"].as_array().cloned().unwrap_or_default()).map(|d| d["url"].as_str().unwrap().to_string()).collect();
    assert!(downloads.contains(&"https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubelet".to_string()), "{downloads:?}");
    assert_sboms(&tmp.path().join("out"), &bom);
    check(&raw, tmp.path(), "http");
}

#[test]
fn release_channel_picks_the_manifest() {
    let p = kib::manifest::catalogue::release_channel("1-31").unwrap();
    assert!(p.ends_with("manifests/k8s-1.31.yaml"), "{}", p.display());
    let e = kib::manifest::catalogue::release_channel("1-29").unwrap_err().to_string();
    assert!(e.contains("no manifest for release channel 1-29") && e.contains("1-30") && e.contains("1-37"), "{e}");
    if common::skip_unless_root("release_channel_picks_the_manifest (the kib customize part)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = kib()
        .args(["customize", "--no-cache", "--release-channel", "1-29", "--disk-image"])
        .arg(base_image())
        .arg("--work-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no manifest for release channel 1-29") && err.contains("1-30") && err.contains("1-37"), "{err}");
}

#[test]
fn offline_with_an_empty_cache_names_every_missing_artifact() {
    if common::skip_unless_root("offline_with_an_empty_cache_names_every_missing_artifact") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = vec!["--offline", "--set", "kubernetes_source=http", "--set", "checksums=upstream"];
    args.extend(VERSION_SETS);
    let (ok, err) = customize_in(&base_image(), &repo().join("manifests/k8s-1.30.yaml"), tmp.path(), &args);
    assert!(!ok);
    // Three binaries, crictl, the CNI plugins and seven image archives, each by its checksum file.
    assert!(err.contains("--offline: 12 artifact(s) are not in the cache"), "{err}");
    for want in [
        "https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubelet.sha256 (checksum file)",
        "crictl-v1.30.1-linux-amd64.tar.gz.sha256 (checksum file)",
        "cni-plugins-linux-amd64-v1.4.0.tgz.sha256 (checksum file)",
        "https://images.kib.example/registry.k8s.io/amd64/pause-3.9.tar.sha256 (checksum file)",
        "kube-apiserver.tar.sha256 (checksum file)",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert!(err.contains("kib fetch --manifest"), "{err}");
    assert_nothing_left(&tmp.path().join("work"));
}

/// The build's SBOMs are schema-valid and list every download (upstream URL, never the mirror,
/// with its sha256) and every pre-loaded image (with its digest) that bom.json records.
fn assert_sboms(out: &Path, bom: &serde_json::Value) {
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("k8s-1.30-node.spdx.json")).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&spdx, sbom_schema::SbomKind::Spdx23);
    let cdx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("k8s-1.30-node.cdx.json")).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&cdx, sbom_schema::SbomKind::CycloneDx15);
    let text = serde_json::to_string(&spdx).unwrap() + &serde_json::to_string(&cdx).unwrap();
    assert!(!text.contains("127.0.0.1"), "a mirror URL reached an SBOM");
    let steps = bom["steps"].as_array().unwrap();
    let spdx_pkgs = spdx["packages"].as_array().unwrap();
    let cdx_comps = cdx["components"].as_array().unwrap();
    let mut seen = 0;
    for d in steps.iter().flat_map(|s| s["downloads"].as_array().cloned().unwrap_or_default()) {
        let p = spdx_pkgs.iter().find(|p| p["downloadLocation"] == d["url"]).unwrap_or_else(|| panic!("{} not in the SPDX document", d["url"]));
        assert_eq!(p["checksums"][0]["checksumValue"], d["sha256"]);
        let c = cdx_comps.iter().find(|c| c["externalReferences"][0]["url"] == d["url"]).unwrap_or_else(|| panic!("{} not in the CycloneDX document", d["url"]));
        assert_eq!(c["hashes"][0]["content"], d["sha256"]);
        seen += 1;
    }
    assert!(seen > 0, "no downloads recorded");
    for i in steps.iter().flat_map(|s| s["images"].as_array().cloned().unwrap_or_default()) {
        let digest = i["digest"].as_str().unwrap();
        let c = cdx_comps
            .iter()
            .find(|c| c["type"] == "container" && c["purl"].as_str().is_some_and(|p| p.contains(digest)))
            .unwrap_or_else(|| panic!("{} not in the CycloneDX document", i["name"]));
        assert!(c["purl"].as_str().unwrap().starts_with("pkg:oci/"), "{c}");
        assert!(spdx_pkgs.iter().any(|p| p["checksums"][0]["checksumValue"].as_str() == digest.strip_prefix("sha256:")), "{digest} not in the SPDX document");
    }
}
