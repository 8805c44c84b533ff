//! A hostile image: `testdata/hostile/plant.sh` fills an image with symlinks that point at a
//! bait folder on the host, absolute ones and ones that climb out with `..`. A full customize
//! (chroot session, file, sysctl, kernel-modules and download steps, a tarball that plants its own
//! link and then writes through it, every sysprep operation, the BOM, the SBOMs) and a
//! `kib inspect` of the result must leave the bait folder exactly as it was, read nothing from
//! it, and put every write where the links resolve when the image is `/`.

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testserver::MirrorServer;

/// Everything under `dir`, not following links: path -> kind, mode and content (or link target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                todo.push(p.clone());
                format!("dir {:o}", m.mode())
            } else {
                format!("file {:o} {}", m.mode(), kib::hash::sha256_file(&p).unwrap())
            };
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), what);
        }
    }
    out
}

/// A tarball that first plants `link -> <host>/etc` (and a `..` variant), then writes a file
/// through each: the classic archive escape.
fn escaping_tarball(path: &Path, host: &Path) {
    let enc = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    let climb = format!("../../../../../../../../..{}", host.join("etc").display());
    for (name, target) in [("link", host.join("etc").display().to_string()), ("dotdot", climb)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, name, &target).unwrap();
    }
    for name in ["link/payload", "dotdot/payload2", "cni-fixture"] {
        let body = format!("kib test fixture: {name}\n");
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn hostile_symlinks_cannot_reach_the_host() {
    if common::skip_unless_root("hostile_symlinks_cannot_reach_the_host") {
        return;
    }
    // The links' inside counterparts live at the image path that equals the bait folder's host
    // path, so that path must be one that sysprep leaves alone: not under /tmp or /var/tmp (where
    // the checkout, and so CARGO_TARGET_TMPDIR, may be), nor /run (a tmpfs during the session).
    let tmp = tempfile::Builder::new().prefix("kib-hostile-test-").tempdir_in("/var/lib").unwrap();
    let host = tmp.path().join("host");
    let tree = tmp.path().join("hostile.raw.tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy("/bin/dash", tree.join("bin/sh")).unwrap(); // for the ELF architecture only
    let planted = Command::new("bash").arg(repo().join("testdata/hostile/plant.sh")).arg(&tree).arg(&host).status().unwrap();
    assert!(planted.success());
    let img = tiny_image(tmp.path(), "hostile.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Hostile\"\n")]);
    let before_img = sha256(&img);
    let before_host = snapshot(&host);
    assert!(before_host.len() >= 20, "{before_host:#?}");

    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("kubelet"), b"#!/bin/sh\n# kib test fixture standing in for kubelet\n").unwrap();
    escaping_tarball(&www.join("cni.tgz"), &host);
    let server = MirrorServer::start(&www);
    let h = host.display();
    let manifest = tmp.path().join("hostile.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {{name: hostile}}
steps:
  - name: file through an absolute folder link
    file: {{path: /etc/containerd/config.toml, content: "inside\n"}}
  - name: sysctl through a dotdot folder link
    sysctl: {{file: 99-k8s.conf, settings: {{net.ipv4.ip_forward: "1"}}}}
  - name: modules through an absolute folder link
    kernel-modules: {{file: k8s.conf, load: [overlay]}}
  - name: download through a folder link
    download: {{url: "https://hostile.example/kubelet", sha256: "{kubelet}", path: /usr/local/bin/kubelet}}
  - name: a tarball that plants links and writes through them
    download: {{url: "https://hostile.example/cni.tgz", sha256: "{cni}", extract: /opt/cni}}
output: {{formats: [raw]}}
"#,
            kubelet = sha256(&www.join("kubelet")),
            cni = sha256(&www.join("cni.tgz")),
        ),
    )
    .unwrap();

    let run = customize_cmd(&img, &manifest, tmp.path())
        .arg("--mirror")
        .arg(format!("https://hostile.example={}", server.url()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains("HOST-BAIT"), "{stderr}");

    // The host: not one byte, mode or link changed, nothing added or removed.
    assert_eq!(snapshot(&host), before_host, "the host's bait folder changed");
    assert_eq!(sha256(&img), before_img, "the input image changed");
    assert_nothing_left(&tmp.path().join("work"));

    // Nothing was read from the host either: the BOM and SBOMs know only the image's own files.
    let out = tmp.path().join("out");
    for f in ["bom.json", "hostile.spdx.json", "hostile.cdx.json"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(!text.contains("HOST-BAIT") && !text.contains("host-bait-package"), "{f} read the host: {text}");
    }
    let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
    let pkgs = bom["packages"].as_array().unwrap();
    assert_eq!(pkgs.len(), 1, "{pkgs:?}");
    assert_eq!(pkgs[0]["name"], "tinypkg");
    assert_eq!(pkgs[0]["license"]["declared"][0], "Inside-Licence");

    // Inside the result, every write landed where the links resolve with the image as `/`.
    let m = Mounted::partition(&out.join("hostile.raw"), 1, &tmp.path().join("mnt"));
    let inside = |p: &str| m.path(&format!("{h}/{p}"));
    assert_eq!(std::fs::read_to_string(inside("etc/config.toml")).unwrap(), "inside\n");
    assert!(std::fs::read_to_string(inside("etc/99-k8s.conf")).unwrap().contains("net.ipv4.ip_forward = 1"));
    assert!(std::fs::read_to_string(inside("etc/k8s.conf")).unwrap().contains("overlay"));
    assert!(std::fs::read_to_string(inside("bin/kubelet")).unwrap().contains("fixture standing in for kubelet"));
    assert!(std::fs::read_to_string(inside("etc/payload")).unwrap().contains("link/payload"));
    assert!(std::fs::read_to_string(inside("etc/payload2")).unwrap().contains("dotdot/payload2"));
    assert!(m.path("/opt/cni/cni-fixture").is_file());
    // The session put the image's own links back exactly.
    assert_eq!(std::fs::read_link(m.path("/usr/sbin/policy-rc.d")).unwrap(), host.join("policy"));
    assert!(std::fs::read_link(m.path("/etc/resolv.conf")).unwrap().to_string_lossy().ends_with("host/passwd"));
    // Sysprep cleaned the image, through links resolved inside it, and deleted links as links.
    assert!(!inside("ssh/ssh_host_ed25519_key").exists(), "ssh host key left inside");
    // /var/tmp is a link: sysprep empties real folders only, so as not to empty whatever
    // folder of the image a link names (`/var/tmp -> /etc`).
    assert!(std::fs::symlink_metadata(m.path("/var/tmp")).unwrap().file_type().is_symlink());
    assert!(inside("tmp/inside").exists());
    assert!(!inside("lists/inside_InRelease").exists(), "apt lists left inside");
    for gone in ["/root/.bash_history", "/root/.ssh/authorized_keys", "/tmp/escape", "/etc/udev/rules.d/70-persistent-net.rules"] {
        let e = std::fs::symlink_metadata(m.path(gone)).err();
        assert_eq!(e.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound), "{gone} left");
    }
    // Log rotation and truncation touch regular files only: links in /var/log stay links.
    for link in ["/var/log/syslog", "/var/log/auth.log.1", "/var/log/nested"] {
        assert!(std::fs::symlink_metadata(m.path(link)).unwrap().file_type().is_symlink(), "{link}");
    }
    assert!(std::fs::symlink_metadata(m.path("/etc/machine-id")).unwrap().file_type().is_symlink(), "truncation replaced a link");
    assert!(std::fs::symlink_metadata(m.path("/etc/hosts")).unwrap().is_file());
    assert!(m.read("/etc/hosts").contains("localhost"));
    assert_eq!(m.read("/etc/hostname"), "");
    drop(m);

    // An auditor's `kib inspect` of the hostile result reads nothing of the host either.
    let work = tmp.path().join("inspect-work");
    let inspect = kib().args(["inspect", "--output", "json", "--work-dir"]).arg(&work).arg(out.join("hostile.raw")).output().unwrap();
    let report = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    assert!(report.contains("tinypkg") && !report.contains("host-bait-package") && !report.contains("HOST-BAIT"), "{report}");
    assert_eq!(snapshot(&host), before_host, "inspect changed the host's bait folder");
    assert_nothing_left(&work);
}
