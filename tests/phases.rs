//! Each phase on its own: `--phases 0,1` leaves the customized working copy (no sysprep) with a
//! bom.json; `kib shell` changes an image by hand and saves it; `--phases 2` finishes either,
//! and its BOM carries the earlier run's steps and input when that run's bom.json lies beside
//! its input.

mod common;
#[path = "common/sbom_schema.rs"]
#[allow(dead_code)]
mod sbom_schema;

use std::path::Path;

use common::*;

const MANIFEST: &str = r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {name: phased}
steps:
  - name: a file
    file: {path: /etc/kib-phased, content: "phased\n"}
  - name: a mark that sysprep removes
    run: {script: "echo mark > /var/tmp/kib-mark"}
output: {formats: [raw]}
"#;

/// `kib customize` of `img` into `out`, with the work directory and cache in `tmp`.
fn customize(img: &Path, manifest: &Path, tmp: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let run = customize_cmd_to(img, manifest, tmp, out).args(extra).output().unwrap();
    (run.status.success(), String::from_utf8_lossy(&run.stderr).into_owned())
}

fn bom(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("bom.json")).unwrap()).unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn phases_run_on_their_own_and_continue() {
    if common::skip_unless_root("phases_run_on_their_own_and_continue") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let base = base_image();
    let base_sum = sha256(&base);
    let manifest = t.join("phased.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let work = t.join("work");

    // Phases 0 and 1: the customized working copy, not sysprepped, and what was done.
    let a = t.join("a");
    let (ok, err) = customize(&base, &manifest, t, &a, &["--phases", "0,1"]);
    assert!(ok, "{err}");
    assert_eq!(files(&a), ["SHA256SUMS", "bom.json", "phased.raw"]);
    let b0 = bom(&a);
    assert_eq!(b0["phases"], serde_json::json!([0, 1]));
    assert_eq!(b0["sysprep"], serde_json::json!([]));
    assert_eq!(b0["steps"].as_array().unwrap().len(), 2);
    assert_eq!(b0["input"]["sha256"], base_sum);
    let raw = a.join("phased.raw");
    let raw_sum = sha256(&raw);
    assert_eq!(b0["artifacts"][0]["sha256"], raw_sum);
    assert!(std::fs::read_to_string(a.join("SHA256SUMS")).unwrap().contains(&format!("{raw_sum}  phased.raw")));
    {
        let m = Mounted::partition(&raw, 1, &t.join("mnt-a"));
        assert_eq!(m.read("/etc/kib-phased"), "phased\n");
        assert_eq!(m.read("/var/tmp/kib-mark"), "mark\n", "sysprep ran without Phase 2");
    }
    assert_nothing_left(&work);

    // By hand: a shell command changes it; a failing one saves nothing; the input stays as it was.
    let hand = t.join("hand");
    std::fs::create_dir(&hand).unwrap();
    let shell = |save: &Path, script: &str| {
        kib().args(["shell", "--disk-image"]).arg(&raw).arg("--work-dir").arg(&work).arg("--save").arg(save).args(["--", "sh", "-c", script]).output().unwrap()
    };
    let failed = shell(&hand.join("no.raw"), "echo partial > /etc/hand-made; exit 3");
    assert_eq!(failed.status.code(), Some(3), "{}", String::from_utf8_lossy(&failed.stderr));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("exited with status 3"));
    let made = shell(&hand.join("hand.raw"), "test -f /etc/kib-phased && echo by-hand > /etc/hand-made");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert_eq!(files(&hand), ["hand.raw"]);
    assert_eq!(sha256(&raw), raw_sum, "kib shell modified its input");
    assert_nothing_left(&work);

    // Phase 2 alone on the first run's raw: sysprep, artifacts, SBOMs, and a BOM that carries the
    // earlier steps and names the build it continues.
    let b = t.join("b");
    let (ok, err) = customize(&raw, &manifest, t, &b, &["--phases", "2"]);
    assert!(ok, "{err}");
    assert_eq!(files(&b), ["SHA256SUMS", "bom.json", "phased.cdx.json", "phased.raw", "phased.spdx.json"]);
    let b2 = bom(&b);
    assert_eq!(b2["phases"], serde_json::json!([2]));
    assert!(b2["sysprep"].as_array().unwrap().iter().any(|s| s == "tmp"));
    assert_eq!(b2["input"]["sha256"], raw_sum);
    assert_eq!(b2["based_on"]["bom"], a.join("bom.json").to_str().unwrap());
    assert_eq!(b2["based_on"]["input"]["sha256"], base_sum);
    assert_eq!(b2["based_on"]["phases"], serde_json::json!([0, 1]));
    let names: Vec<&str> = b2["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a file", "a mark that sysprep removes"]);
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("phased.spdx.json")).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&spdx, sbom_schema::SbomKind::Spdx23);
    {
        let m = Mounted::partition(&b.join("phased.raw"), 1, &t.join("mnt-b"));
        assert_eq!(m.read("/etc/kib-phased"), "phased\n");
        assert!(!m.path("/var/tmp/kib-mark").exists(), "Phase 2 did not sysprep");
    }
    assert_eq!(sha256(&raw), raw_sum, "Phase 2 modified its input");
    assert_nothing_left(&work);

    // Phase 2 on the image changed by hand: no earlier BOM beside it, so none is claimed.
    let c = t.join("c");
    let (ok, err) = customize(&hand.join("hand.raw"), &manifest, t, &c, &["--phases", "2"]);
    assert!(ok, "{err}");
    let b3 = bom(&c);
    assert!(b3.get("based_on").is_none(), "{b3}");
    assert_eq!(b3["steps"], serde_json::json!([]));
    let m = Mounted::partition(&c.join("phased.raw"), 1, &t.join("mnt-c"));
    assert_eq!(m.read("/etc/hand-made"), "by-hand\n");
    drop(m);
    assert_nothing_left(&work);
    assert_eq!(sha256(&base), base_sum);
}

#[test]
fn phase_options_that_contradict_each_other_are_refused() {
    if common::skip_unless_root("phase_options_that_contradict_each_other_are_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let manifest = t.join("phased.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    for (args, expect) in [
        (&["--phases", "0,1", "--format", "qcow2"][..], "--format chooses Phase 2's outputs"),
        (&["--phases", "1,2", "--disk-size", "3GiB"][..], "--disk-size grows the disk in Phase 0, and --phases 1,2 leaves Phase 0 out"),
        (&["--phases", "0,2", "--lock", "bom.json"][..], "--lock pins what Phase 1 installs"),
        (&["--phases", "3"][..], "3 is not in 0..=2"),
    ] {
        let (ok, err) = customize(&base_image(), &manifest, t, &t.join("out"), args);
        assert!(!ok && err.contains(expect), "{args:?}: {err}");
    }
    assert_nothing_left(&t.join("work"));
}
