//! Bad input and failing steps: a clear error, a non-zero exit, the input bit-identical, and
//! nothing left behind (no loop device, mount, work directory or partial output).

mod common;

use std::path::Path;

use common::*;


fn assert_clean(tmp: &Path) {
    assert_nothing_left(&tmp.join("work"));
    let out = tmp.join("out");
    if out.exists() {
        let files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(files.is_empty(), "output folder not empty: {files:?}");
    }
}

fn the_error(stderr: &str) -> &str {
    stderr.lines().position(|l| l.starts_with("error: ")).map_or(stderr, |i| {
        let off: usize = stderr.lines().take(i).map(|l| l.len() + 1).sum();
        &stderr[off..]
    })
}

#[test]
fn failing_run_step_names_the_step_and_leaves_nothing() {
    if common::skip_unless_root("failing_run_step_names_the_step_and_leaves_nothing") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("fail.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: a file\n    file: {path: /etc/kib-test, content: x}\n  \
         - name: explode\n    run:\n      script: |\n        for i in $(seq 1 50); do echo \"progress $i\"; done\n        echo 'the real reason' >&2\n        exit 7\n",
    )
    .unwrap();
    let (ok, stderr) = customize_in(&base, &manifest, tmp.path(), &[]);
    assert!(!ok);
    let err = the_error(&stderr);
    assert!(err.contains("step 2/2 `explode` (run, from "), "{err}");
    assert!(err.contains("exit code 7"), "{err}");
    assert!(err.contains("| the real reason") && err.contains("| progress 50") && !err.contains("| progress 10\n"), "{err}");
    assert_eq!(sha256(&base), before);
    assert_clean(tmp.path());
}

#[test]
fn checksum_mismatch_shows_both_sums() {
    if common::skip_unless_root("checksum_mismatch_shows_both_sums") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tiny_image(tmp.path(), "disk.raw", &[("/etc/os-release", "ID=debian\n")]);
    let actual = sha256(&img);
    let wrong = "0".repeat(64);
    std::fs::write(tmp.path().join("SHA256SUMS"), format!("{wrong}  disk.raw\n")).unwrap();
    let manifest = repo().join("manifests/k8s-node-debian.yaml");
    let (ok, stderr) = customize_in(&img, &manifest, tmp.path(), &[]);
    assert!(!ok);
    let err = the_error(&stderr);
    assert!(err.contains("checksum mismatch") && err.contains(&wrong) && err.contains(&actual), "{err}");
    assert_eq!(sha256(&img), actual);
    assert_clean(tmp.path());
}

#[test]
fn image_without_linux_root_is_refused() {
    if common::skip_unless_root("image_without_linux_root_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tiny_image(tmp.path(), "empty.raw", &[("/hello.txt", "no OS here\n")]);
    let before = sha256(&img);
    let manifest = repo().join("manifests/k8s-node-debian.yaml");
    let (ok, stderr) = customize_in(&img, &manifest, tmp.path(), &[]);
    assert!(!ok);
    let err = the_error(&stderr);
    assert!(err.contains("no Linux root filesystem found") && err.contains("partition 1 (ext4) has no /etc/os-release"), "{err}");
    assert_eq!(sha256(&img), before);
    assert_clean(tmp.path());

    // A file that is not a disk image at all.
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "just some text, not a disk\n".repeat(100)).unwrap();
    let (ok, stderr) = customize_in(&text, &manifest, tmp.path(), &[]);
    assert!(!ok);
    let err = the_error(&stderr);
    assert!(err.contains("no Linux root filesystem found") && err.contains("no partition table"), "{err}");
    assert_clean(tmp.path());
}

#[test]
fn missing_image_and_bad_manifest_fail_before_any_work() {
    if common::skip_unless_root("missing_image_and_bad_manifest_fail_before_any_work") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let manifest = repo().join("manifests/k8s-node-debian.yaml");
    let (ok, stderr) = customize_in(&tmp.path().join("nope.raw"), &manifest, tmp.path(), &[]);
    assert!(!ok);
    assert!(the_error(&stderr).contains("nope.raw not found"), "{stderr}");

    let bad = tmp.path().join("typo.yaml");
    std::fs::write(&bad, "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: tools\n    packages:\n      instal: [jq]\n").unwrap();
    let (ok, stderr) = customize_in(&base_image(), &bad, tmp.path(), &[]);
    assert!(!ok);
    let err = the_error(&stderr);
    assert!(err.contains("typo.yaml:6:") && err.contains("steps[0].packages") && err.contains("unknown field `instal`"), "{err}");

    std::fs::write(&bad, "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: tools\n    packages:\n      install: jq\n").unwrap();
    let (ok, stderr) = customize_in(&base_image(), &bad, tmp.path(), &[]);
    assert!(!ok);
    let err = the_error(&stderr);
    assert!(err.contains("typo.yaml:6:") && err.contains("steps[0].packages.install") && err.contains("invalid type"), "{err}");
    assert_clean(tmp.path());
}
