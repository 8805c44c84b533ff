//! Builds at once: two from the same input and one from another, sharing the work directory
//! base and the cache, all three downloading the same artifact (a fixture served on 127.0.0.1)
//! into that cache. All succeed, none disturbs another, the cache ends with one verified copy and
//! no temporary file, and nothing is left.

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testserver::MirrorServer;

fn manifest(dir: &Path, sum: &str) -> PathBuf {
    let m = dir.join("concurrent.yaml");
    std::fs::write(
        &m,
        format!(
            "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {{name: concurrent}}\nsteps:\n  \
             - name: one file\n    file: {{path: /etc/kib-concurrent, content: \"x\\n\"}}\n  \
             - name: a shared download\n    download: {{url: \"https://artifacts.example/blob\", sha256: \"{sum}\", path: /opt/kib-blob}}\n\
             output: {{formats: [qcow2]}}\n"
        ),
    )
    .unwrap();
    m
}

#[test]
fn three_builds_at_once_two_inputs_one_cache() {
    if common::skip_unless_root("three_builds_at_once_two_inputs_one_cache") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let www = t.join("www");
    std::fs::create_dir_all(&www).unwrap();
    // A test fixture: 8 MiB of a repeating pattern, so the downloads take a moment and overlap.
    let blob: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let sum = kib::hash::sha256_bytes(&blob);
    let server = MirrorServer::start(&www);
    let m = manifest(t, &sum);

    let base = base_image();
    let base_sum = sha256(&base);
    // The other input: a tiny image with os-release and the host's /bin/sh (for its architecture).
    let tree = t.join("tiny.raw.tree/bin");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy("/bin/dash", tree.join("sh")).unwrap();
    let tiny = tiny_image(t, "tiny.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")]);
    let tiny_sum = sha256(&tiny);

    let spawn = |n: u32, input: &Path| {
        Command::new(assert_cmd::cargo::cargo_bin("kib"))
            .current_dir(repo())
            .arg("-q")
            .args(["customize", "--no-cache", "--manifest"])
            .arg(&m)
            .arg("--disk-image")
            .arg(input)
            .arg("--output-dir")
            .arg(t.join(format!("out{n}")))
            .arg("--work-dir")
            .arg(t.join("work"))
            .arg("--cache-dir")
            .arg(t.join("cache"))
            .arg("--mirror")
            .arg(format!("https://artifacts.example={}", server.url()))
            .output()
            .unwrap()
    };
    let results = std::thread::scope(|s| {
        let jobs = [s.spawn(|| spawn(1, &base)), s.spawn(|| spawn(2, &base)), s.spawn(|| spawn(3, &tiny))];
        jobs.map(|j| j.join().unwrap())
    });
    for (i, r) in results.iter().enumerate() {
        let n = i + 1;
        assert!(r.status.success(), "build {n}: {}", String::from_utf8_lossy(&r.stderr));
        let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join(format!("out{n}/bom.json"))).unwrap()).unwrap();
        assert_eq!(bom["input"]["sha256"], if n == 3 { tiny_sum.as_str() } else { base_sum.as_str() });
        assert_eq!(bom["steps"][1]["downloads"][0]["sha256"], sum.as_str(), "build {n}");
        assert!(t.join(format!("out{n}/concurrent.qcow2")).is_file());
    }
    // One verified copy in the cache, no temporary file left by the racing downloads.
    let cached = t.join("cache/sha256").join(&sum);
    assert_eq!(sha256(&cached), sum);
    let stray: Vec<_> = std::fs::read_dir(t.join("cache/tmp")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(stray.is_empty(), "left in the cache: {stray:?}");
    assert_nothing_left(&t.join("work"));
    assert_eq!(sha256(&base), base_sum);
    assert_eq!(sha256(&tiny), tiny_sum);
}
