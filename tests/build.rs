//! `kib build --os debian-12 --provider qemu --release-channel 1-30`, EKS Anywhere's entry point,
//! against local fixtures: the base comes from bases/catalogue.yaml's debian-12 entry (its URL on
//! cloud.debian.org and Debian's SHA512SUMS), rewritten by the mirror map to a server on
//! 127.0.0.1 that serves a FIXTURE: the Debian 12 base image kib's tests use (built by
//! scripts/make-base-image.sh, converted to qcow2), under the catalogue's file name, with a
//! SHA512SUMS listing it. Kubernetes comes from the mirror fixture of tests/kubernetes.rs. Then
//! `kib check --boot` boots the result under TCG, and fails on a copy whose containerd is masked.

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::path::Path;
use std::process::Command;

use common::*;
use testserver::MirrorServer;

const LATEST: &str = "https://cloud.debian.org/images/cloud/bookworm/latest";
const FILE: &str = "debian-12-genericcloud-amd64.qcow2";

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The mirror tree: the Kubernetes fixtures under `k8s/`, the base image under `debian/`.
fn fixtures(dir: &Path) -> std::path::PathBuf {
    let www = dir.join("www");
    let ok = Command::new("bash").arg(repo().join("testdata/mirror/make-fixtures.sh")).arg(www.join("k8s")).arg("1.30.0").status().unwrap();
    assert!(ok.success(), "make-fixtures.sh failed");
    let debian = www.join("debian");
    std::fs::create_dir_all(&debian).unwrap();
    sh(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(base_image()).arg(debian.join(FILE)));
    let sums = sh(Command::new("sha512sum").arg(FILE).current_dir(&debian));
    std::fs::write(debian.join("SHA512SUMS"), format!("{}  other-image.qcow2\n{sums}", "0".repeat(128))).unwrap();
    www
}

fn build_cmd(server: &MirrorServer, tmp: &Path, cache: &Path, out: &Path) -> Command {
    let u = server.url();
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("kib"));
    c.current_dir(repo()).args(["build", "--no-cache", "--os", "debian-12", "--provider", "qemu", "--release-channel", "1-30", "--output-dir"]);
    c.arg(out).arg("--work-dir").arg(tmp.join("work")).arg("--cache-dir").arg(cache);
    for m in [
        format!("{LATEST}={u}/debian"),
        format!("https://pkgs.k8s.io={u}/k8s/pkgs"),
        format!("https://dl.k8s.io={u}/k8s/dl"),
        format!("https://github.com={u}/k8s/github"),
        format!("https://images.kib.example/registry.k8s.io/amd64={u}/k8s/images"),
    ] {
        c.arg("--mirror").arg(m);
    }
    c.args(["--set", "kubernetes_version=1.30.0", "--set", "kubernetes_deb_version=1.30.0-1.1"]);
    c
}

/// `kib check --boot` of the 1.30 node `image` under TCG (KVM hangs on these machines), its
/// serial console in `console`.
fn check_boot(image: &Path, t: &Path, console: &Path) -> std::process::Output {
    kib()
        .args(["check", "--boot", "--accel", "tcg", "--boot-timeout", "600", "--output", "json", "--manifest", "manifests/k8s-1.30.yaml", "--provider", "qemu"])
        .args(["--set", "kubernetes_version=1.30.0", "--set", "kubernetes_deb_version=1.30.0-1.1", "--disk-image"])
        .arg(image)
        .arg("--work-dir")
        .arg(t.join("work"))
        .arg("--console-log")
        .arg(console)
        .output()
        .unwrap()
}

#[test]
fn build_debian_12_qemu_1_30_from_the_catalogue_through_the_mirror_then_boot() {
    if skip_unless_root("build_debian_12_qemu_1_30_from_the_catalogue_through_the_mirror_then_boot") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let server = MirrorServer::start(&fixtures(t));

    // A tampered checksum list: refused before anything is cached or built.
    let www_sums = t.join("www/debian/SHA512SUMS");
    let good = std::fs::read_to_string(&www_sums).unwrap();
    let tampered = good.lines().map(|l| if l.ends_with(FILE) { format!("{}  {FILE}", "ab".repeat(64)) } else { l.to_string() }).collect::<Vec<_>>().join("\n");
    std::fs::write(&www_sums, tampered).unwrap();
    let bad_cache = t.join("bad");
    let r = build_cmd(&server, t, &bad_cache, &t.join("out")).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("the download's sha512 is") && err.contains(&"ab".repeat(64)) && err.contains("Nothing was cached"), "{err}");
    assert!(std::fs::read_dir(bad_cache.join("sha256")).map_or(true, |d| d.count() <= 1), "the tampered image was cached");
    std::fs::write(&www_sums, &good).unwrap();
    assert_nothing_left(&t.join("work"));

    // --offline with an empty cache: refused before Phase 0, naming what the cache lacks; the
    // server is not asked for anything.
    let asked = server.requests.lock().unwrap().len();
    let r = build_cmd(&server, t, &t.join("cache"), &t.join("out")).arg("--offline").output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("offline: not in the cache") && err.contains("SHA512SUMS"), "{err}");
    assert_eq!(server.requests.lock().unwrap().len(), asked, "an --offline build asked the server");
    assert!(!t.join("out").exists(), "an --offline refusal wrote the output folder");
    assert_nothing_left(&t.join("work"));

    let t0 = std::time::Instant::now();
    let r = build_cmd(&server, t, &t.join("cache"), &t.join("out")).output().unwrap();
    assert!(r.status.success(), "kib build failed:\n{}", String::from_utf8_lossy(&r.stderr));
    eprintln!("kib build: {:.0}s", t0.elapsed().as_secs_f64());
    let reqs = server.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r == &format!("/debian/{FILE}")) && reqs.iter().any(|r| r == "/debian/SHA512SUMS"), "{reqs:?}");
    assert_nothing_left(&t.join("work"));

    // The same build --offline: the base image, its checksum list, the release binaries and the
    // image archives all come from the cache; only apt (inside the chroot, not kib's fetcher)
    // still reads the package repository mirror.
    let asked = server.requests.lock().unwrap().len();
    let t0 = std::time::Instant::now();
    let r = build_cmd(&server, t, &t.join("cache"), &t.join("out-offline")).arg("--offline").output().unwrap();
    assert!(r.status.success(), "kib build --offline failed:\n{}", String::from_utf8_lossy(&r.stderr));
    eprintln!("kib build --offline: {:.0}s", t0.elapsed().as_secs_f64());
    let offline_reqs: Vec<String> = server.requests.lock().unwrap()[asked..].to_vec();
    let fetched: Vec<&String> = offline_reqs.iter().filter(|r| !r.starts_with("/k8s/pkgs/")).collect();
    assert!(fetched.is_empty(), "kib build --offline fetched: {fetched:?}");
    assert!(t.join("out-offline/k8s-1.30-node.qcow2").is_file());
    assert_nothing_left(&t.join("work"));
    // The qemu profile's format (qcow2) and its files; the release channel's manifest.
    let out = t.join("out");
    let image = out.join("k8s-1.30-node.qcow2");
    assert!(image.is_file(), "{:?}", std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>());
    let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
    let files: Vec<&str> = bom["manifest"]["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(files.iter().any(|f| f.ends_with("manifests/k8s-1.30.yaml")) && files.iter().any(|f| f.ends_with("phases/providers/qemu.yaml")), "{files:?}");
    let check = kib()
        .args(["check", "--provider", "qemu", "--manifest", "manifests/k8s-1.30.yaml", "--set", "kubernetes_version=1.30.0", "--set", "kubernetes_deb_version=1.30.0-1.1", "--disk-image"])
        .arg(&image)
        .arg("--work-dir")
        .arg(t.join("work"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && report.contains("PASS file /etc/cloud/cloud.cfg.d/95_kib_qemu.cfg") && report.contains("PASS package qemu-guest-agent installed"), "{report}");

    // The booted node: `kib check --boot` under TCG (KVM hangs on these machines), from a
    // throwaway overlay; the image is not written.
    let before = sha256(&image);
    let t0 = std::time::Instant::now();
    let console = t.join("console.log");
    let out = check_boot(&image, t, &console);
    assert_booted_node(&out, &console, t0);
    assert_eq!(sha256(&image), before, "the booted image was written");
    assert_nothing_left(&t.join("work"));

    // A node whose containerd is masked on purpose (`kib shell --save`, the image's own
    // systemctl): the booted check fails, naming containerd, and exits non-zero.
    let masked = t.join("masked.raw");
    let r = kib()
        .args(["shell", "--no-verify", "--disk-image"])
        .arg(&image)
        .arg("--save")
        .arg(&masked)
        .arg("--work-dir")
        .arg(t.join("work"))
        .args(["--", "systemctl", "mask", "containerd.service"])
        .output()
        .unwrap();
    assert!(r.status.success(), "kib shell: {}", String::from_utf8_lossy(&r.stderr));
    let before = sha256(&masked);
    let t0 = std::time::Instant::now();
    let out = check_boot(&masked, t, &t.join("console-masked.log"));
    eprintln!("kib check --boot (TCG), containerd masked: {:.0}s", t0.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a masked containerd passed:\n{text}");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    let failed: Vec<&str> = checks.iter().filter(|c| c["ok"] == false).filter_map(|c| c["name"].as_str()).collect();
    assert!(failed.contains(&"boot: containerd active"), "{failed:?}");
    for passing in ["boot: report complete", "boot: swap off", "boot: machine-id fresh"] {
        assert!(!failed.contains(&passing), "{passing} failed too: {failed:?}");
    }
    assert_eq!(sha256(&masked), before, "the booted image was written");
    assert_nothing_left(&t.join("work"));
}
