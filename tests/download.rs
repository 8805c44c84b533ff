//! `download` steps against a local mirror on 127.0.0.1 laid out like dl.k8s.io: the mirror
//! map, SHA-256 verification (literal and `.sha256` files), the cache, `--offline` and
//! `kib fetch`. The served binaries are fixtures (small shell scripts), named as such.

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::path::{Path, PathBuf};

use common::*;
use testserver::MirrorServer;

const KUBELET_FIXTURE: &[u8] = b"#!/bin/sh\n# kib test fixture standing in for kubelet\necho 'Kubernetes v1.30.0 (fixture)'\n";

/// A dl.k8s.io-like tree: release/v1.30.0/bin/linux/amd64/kubelet(.sha256), and a crictl
/// tarball fixture under cri-tools/.
fn mirror_tree(dir: &Path) -> (PathBuf, String) {
    let www = dir.join("www");
    let bin = www.join("k8s/release/v1.30.0/bin/linux/amd64");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("kubelet"), KUBELET_FIXTURE).unwrap();
    std::fs::write(bin.join("kubelet.sha256"), kib::hash::sha256_bytes(KUBELET_FIXTURE)).unwrap();
    let tgz = www.join("gh/cri-tools/releases/download/v1.30.0/crictl-v1.30.0-linux-amd64.tar.gz");
    std::fs::create_dir_all(tgz.parent().unwrap()).unwrap();
    let enc = flate2::write::GzEncoder::new(std::fs::File::create(&tgz).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    let mut h = tar::Header::new_gnu();
    let crictl = b"#!/bin/sh\n# kib test fixture standing in for crictl\n";
    h.set_size(crictl.len() as u64);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "crictl", &crictl[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let sum = sha256(&tgz);
    (www, sum)
}

fn manifest(dir: &Path, crictl_sum: &str) -> PathBuf {
    let m = dir.join("downloads.yaml");
    std::fs::write(
        &m,
        format!(
            r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {{name: dl}}
variables: {{kubernetes_version: "1.30.0"}}
steps:
  - name: kubelet binary
    download:
      url: https://dl.k8s.io/release/v${{kubernetes_version}}/bin/linux/${{arch}}/kubelet
      sha256_url: https://dl.k8s.io/release/v${{kubernetes_version}}/bin/linux/${{arch}}/kubelet.sha256
      path: /usr/bin/kubelet
  - name: crictl
    download:
      url: https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.30.0/crictl-v1.30.0-linux-${{arch}}.tar.gz
      sha256: "{crictl_sum}"
      extract: /usr/local/bin
output: {{formats: [raw]}}
sysprep: {{skip: [tmp]}}
"#
        ),
    )
    .unwrap();
    m
}

/// A tiny image with os-release and the host's own /bin/sh (so kib detects amd64).
fn image(dir: &Path) -> PathBuf {
    let sh = std::fs::read("/bin/dash").unwrap();
    let tree = dir.join("img.raw.tree/bin");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("sh"), sh).unwrap();
    tiny_image(dir, "img.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")])
}


#[test]
fn downloads_go_through_the_mirror_into_the_image() {
    if common::skip_unless_root("downloads_go_through_the_mirror_into_the_image") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (www, crictl_sum) = mirror_tree(tmp.path());
    let server = MirrorServer::start(&www);
    let m = manifest(tmp.path(), &crictl_sum);
    let img = image(tmp.path());
    let mirrors = [
        "--mirror".to_string(),
        format!("https://dl.k8s.io={}/k8s", server.url()),
        "--mirror".to_string(),
        format!("https://github.com/kubernetes-sigs={}/gh", server.url()),
    ];
    let mirrors: Vec<&str> = mirrors.iter().map(String::as_str).collect();

    // Offline with an empty cache: every missing artifact is named, nothing is fetched.
    let (ok, err) = customize_in(&img, &m, tmp.path(), &[&["--offline"], &mirrors[..]].concat());
    assert!(!ok);
    assert!(err.contains("--offline: 2 artifact(s) are not in the cache"), "{err}");
    assert!(err.contains("kubelet.sha256 (checksum file)") && err.contains("crictl-v1.30.0-linux-amd64.tar.gz"), "{err}");
    assert!(server.requests.lock().unwrap().is_empty(), "offline mode made requests");
    assert_nothing_left(&tmp.path().join("work"));

    // Online through the mirror, with proxy credentials in the environment (NO_PROXY exempts the
    // mirror on 127.0.0.1): they reach neither the logs, even at debug level, nor the BOM.
    let run = customize_cmd(&img, &m, tmp.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("HTTPS_PROXY", "http://kibuser:s3cr3t-proxy-pw@127.0.0.1:9")
        .env("https_proxy", "http://kibuser:s3cr3t-proxy-pw@127.0.0.1:9")
        .env("KIB_LOG", "debug")
        .args(&mirrors)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(!err.contains("s3cr3t"), "a proxy credential reached the log");
    let reqs = server.requests.lock().unwrap().clone();
    assert!(reqs.contains(&"/k8s/release/v1.30.0/bin/linux/amd64/kubelet".to_string()), "{reqs:?}");
    assert!(reqs.contains(&"/gh/cri-tools/releases/download/v1.30.0/crictl-v1.30.0-linux-amd64.tar.gz".to_string()), "{reqs:?}");
    let out = tmp.path().join("out");
    let bom_text = std::fs::read_to_string(out.join("bom.json")).unwrap();
    assert!(!bom_text.contains("s3cr3t"), "a proxy credential reached the BOM");
    let bom: serde_json::Value = serde_json::from_str(&bom_text).unwrap();
    let dl = &bom["steps"][0]["downloads"][0];
    assert_eq!(dl["url"], "https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubelet");
    assert_eq!(dl["sha256"], kib::hash::sha256_bytes(KUBELET_FIXTURE));
    assert!(dl["source"].as_str().unwrap().starts_with(&server.url()));
    let mnt = Mounted::partition(&out.join("dl.raw"), 1, &tmp.path().join("mnt"));
    assert_eq!(std::fs::read(mnt.path("/usr/bin/kubelet")).unwrap(), KUBELET_FIXTURE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(mnt.path("/usr/bin/kubelet")).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(mnt.read("/usr/local/bin/crictl").contains("fixture standing in for crictl"));
    drop(mnt);

    // Now the cache has everything: offline works and asks the mirror nothing.
    let before = server.requests.lock().unwrap().len();
    std::fs::remove_dir_all(&out).unwrap();
    let (ok, err) = customize_in(&img, &m, tmp.path(), &["--offline"]);
    assert!(ok, "{err}");
    assert_eq!(server.requests.lock().unwrap().len(), before);
    assert_nothing_left(&tmp.path().join("work"));
}

#[test]
fn a_wrong_hash_on_the_mirror_stops_the_build_with_both_sums() {
    if common::skip_unless_root("a_wrong_hash_on_the_mirror_stops_the_build_with_both_sums") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (www, crictl_sum) = mirror_tree(tmp.path());
    // The mirror serves a tampered kubelet whose .sha256 still has the real sum.
    std::fs::write(www.join("k8s/release/v1.30.0/bin/linux/amd64/kubelet"), b"tampered").unwrap();
    let server = MirrorServer::start(&www);
    let m = manifest(tmp.path(), &crictl_sum);
    let img = image(tmp.path());
    let before = sha256(&img);
    let (ok, err) = customize_in(&img, &m, tmp.path(), &["--mirror", &format!("https://dl.k8s.io={}/k8s", server.url())]);
    assert!(!ok);
    assert!(err.contains("step 1/2 `kubelet binary`"), "{err}");
    assert!(err.contains("sha256 mismatch") && err.contains(&kib::hash::sha256_bytes(KUBELET_FIXTURE)) && err.contains(&kib::hash::sha256_bytes(b"tampered")), "{err}");
    assert_eq!(sha256(&img), before);
    assert_nothing_left(&tmp.path().join("work"));
    assert!(!tmp.path().join("out").exists() || std::fs::read_dir(tmp.path().join("out")).unwrap().next().is_none());
}

#[test]
fn kib_fetch_fills_the_cache_for_offline_builds() {
    if common::skip_unless_root("kib_fetch_fills_the_cache_for_offline_builds") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (www, crictl_sum) = mirror_tree(tmp.path());
    let server = MirrorServer::start(&www);
    let m = manifest(tmp.path(), &crictl_sum);
    let cache = tmp.path().join("usb-cache");
    let out = kib()
        .args(["fetch", "--arch", "amd64", "--manifest"])
        .arg(&m)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--mirror", &format!("https://dl.k8s.io={}/k8s", server.url())])
        .args(["--mirror", &format!("https://github.com/kubernetes-sigs={}/gh", server.url())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&crictl_sum) && listed.contains(&kib::hash::sha256_bytes(KUBELET_FIXTURE)), "{listed}");
    assert!(cache.join("sha256").join(&crictl_sum).is_file());
    drop(server);
    // The server is gone: an offline build from that cache still works.
    let img = image(tmp.path());
    let run = kib()
        .args(["customize", "--no-cache", "--offline", "--disk-image"])
        .arg(&img)
        .arg("--manifest")
        .arg(&m)
        .arg("--output-dir")
        .arg(tmp.path().join("out"))
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn a_full_image_says_so() {
    if common::skip_unless_root("a_full_image_says_so") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    // 40 MiB of fixture data for a 20 MiB filesystem.
    let big = vec![7u8; 40 << 20];
    std::fs::write(www.join("big.bin"), &big).unwrap();
    let server = MirrorServer::start(&www);
    let m = tmp.path().join("full.yaml");
    std::fs::write(
        &m,
        format!(
            "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: too big\n    download: {{url: \"{}/big.bin\", sha256: \"{}\", path: /big.bin}}\n",
            server.url(),
            kib::hash::sha256_bytes(&big)
        ),
    )
    .unwrap();
    let img = image(tmp.path());
    let before = sha256(&img);
    let (ok, err) = customize_in(&img, &m, tmp.path(), &[]);
    assert!(!ok);
    assert!(err.contains("step 1/1 `too big`") && err.contains("no space left in the image"), "{err}");
    assert_eq!(sha256(&img), before);
    assert_nothing_left(&tmp.path().join("work"));
}
