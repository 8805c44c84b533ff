//! kib's shared package cache (src/pkg/mod.rs, `PackageCache`): apt's downloaded packages and
//! indexes live in `<cache dir>/packages/apt/<key>/` and are bound into the image while the steps
//! run. Three builds of one small manifest on the real Debian base image: without the cache
//! (nothing is written there), with a cold cache (filled), with the warm cache (no package and no
//! index is downloaded again: the mirror's request log, apt's own "Need to get 0 B", the cached
//! files' mtimes). The image's own apt caches are empty after sysprep, and the three BOMs are
//! equal apart from timings. The packages come from the Kubernetes fixture repository
//! (testdata/mirror, served on 127.0.0.1) and from Debian's archive (jq).

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testserver::MirrorServer;

const MANIFEST: &str = r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {name: pkgcache}
steps:
  - name: kubernetes fixture repository
    repository:
      name: kubernetes
      url: "https://pkgs.k8s.io/core:/stable:/v1.30/deb/"
      suite: /
      components: []
      key_url: "https://pkgs.k8s.io/core:/stable:/v1.30/deb/Release.key"
  - name: packages
    packages: {install: [jq, kubectl]}
output: {formats: [raw]}
"#;

/// Builds into `tmp/out-<tag>` with `tmp/cache`; returns the BOM and the log.
fn build(tmp: &Path, server: &MirrorServer, tag: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let out = tmp.join(format!("out-{tag}"));
    let log = tmp.join(format!("{tag}.log"));
    let o = customize_cmd_to(&base_image(), &tmp.join("m.yaml"), tmp, &out)
        .args(["--mirror", &format!("https://pkgs.k8s.io={}/pkgs", server.url())])
        .arg("--log-file")
        .arg(&log)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "build {tag} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    assert_nothing_left(&tmp.join("work"));
    let bom = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
    (bom, std::fs::read_to_string(&log).unwrap())
}

/// The BOM without what differs between two builds of the same thing: when and how long, the
/// image's bytes (file times differ), and whether the input's sum was read or came from kib's
/// input checksum cache.
fn comparable(mut bom: serde_json::Value) -> serde_json::Value {
    let o = bom.as_object_mut().unwrap();
    for k in ["build_started", "phase_seconds", "artifacts"] {
        o.remove(k);
    }
    o["input"].as_object_mut().unwrap().remove("sha256_source");
    for s in o["steps"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("duration_seconds");
        for d in s["downloads"].as_array_mut().into_iter().flatten() {
            d.as_object_mut().unwrap().remove("source"); // the URL, or `cache` (kib's download cache)
        }
    }
    bom
}

/// Every file under `dir` with its modification time.
fn files_with_mtimes(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && e.file_name() != ".lock" && e.file_name() != "lock" {
                out.push((e.path(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_warm_package_cache_downloads_nothing_and_leaves_no_trace() {
    if skip_unless_root("a_warm_package_cache_downloads_nothing_and_leaves_no_trace") {
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let tmp = tmp.path();
    let www = tmp.join("mirror");
    let ok = Command::new("bash").arg(repo().join("testdata/mirror/make-fixtures.sh")).arg(&www).arg("1.30.0").status().unwrap();
    assert!(ok.success(), "make-fixtures.sh failed");
    let server = MirrorServer::start(&www);
    std::fs::write(tmp.join("m.yaml"), MANIFEST).unwrap();
    let packages = tmp.join("cache/packages");

    // Without the cache: apt uses the image's own folders, and kib's cache gets no packages.
    let (bom_off, _) = build(tmp, &server, "off", &["--no-package-cache"]);
    assert!(!packages.exists(), "--no-package-cache wrote {}", packages.display());

    // Cold: apt downloads into the cache.
    let (bom_cold, _) = build(tmp, &server, "cold", &[]);
    let keys: Vec<PathBuf> = std::fs::read_dir(packages.join("apt")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(keys.len(), 1, "one cache key for one set of sources: {keys:?}");
    let archives = keys[0].join("cache/archives");
    let debs: Vec<String> = std::fs::read_dir(&archives).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".deb")).collect();
    for want in ["jq_", "kubectl_"] {
        assert!(debs.iter().any(|d| d.starts_with(want)), "no {want}*.deb in {}: {debs:?}", archives.display());
    }
    let lists: Vec<String> = std::fs::read_dir(keys[0].join("lists")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(lists.iter().any(|l| l.contains("127.0.0.1") && l.ends_with("_Packages")), "the fixture repository's index is not cached: {lists:?}");
    assert!(lists.iter().any(|l| l.contains("debian") && l.contains("Packages")), "Debian's indexes are not cached: {lists:?}");
    let before = files_with_mtimes(&keys[0]);

    // Warm: nothing new is downloaded.
    let seen = server.requests.lock().unwrap().len();
    let (bom_warm, log) = build(tmp, &server, "warm", &[]);
    let requests: Vec<String> = server.requests.lock().unwrap()[seen..].to_vec();
    let downloads: Vec<&String> = requests.iter().filter(|r| r.ends_with(".deb") || r.contains("Packages")).collect();
    assert!(downloads.is_empty(), "the warm build downloaded from the mirror again: {downloads:?} (all requests: {requests:?})");
    assert!(log.contains("Need to get 0 B/"), "apt downloaded packages in the warm build:\n{}", log.lines().filter(|l| l.contains("Get:") || l.contains("Need to get")).collect::<Vec<_>>().join("\n"));
    let changed: Vec<_> = files_with_mtimes(&keys[0]).into_iter().filter(|f| f.0.extension().is_some_and(|e| e == "deb") && !before.contains(f)).collect();
    assert!(changed.is_empty(), "cached packages were written again: {changed:?}");

    // The image's own apt caches are empty after sysprep, and the packages are installed.
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::partition(&tmp.join("out-warm/pkgcache.raw"), 1, &mnt);
    assert!(m.path("usr/bin/jq").exists() && m.path("usr/bin/kubectl").exists(), "the packages are not installed");
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let left: Vec<String> =
            std::fs::read_dir(m.path(dir)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n != "partial" && n != "lock").collect();
        assert!(left.is_empty(), "/{dir} in the image is not empty: {left:?}");
    }
    let bins: Vec<String> = std::fs::read_dir(m.path("var/cache/apt")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".bin")).collect();
    assert!(bins.is_empty(), "apt's binary caches are left in the image: {bins:?}");
    drop(m);

    // The cache changes nothing that the BOM records.
    let off = comparable(bom_off);
    assert_eq!(comparable(bom_cold), off, "the BOM of a build with a cold package cache differs from one without it");
    assert_eq!(comparable(bom_warm), off, "the BOM of a build with a warm package cache differs from one without it");
}
