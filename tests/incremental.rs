//! The build cache (issue 14), as root on the base image: a rebuild resumes from the deepest
//! snapshot whose key matches, re-runs exactly the steps from the first changed one, skips Phase 1
//! when nothing changed, and its BOM and image equal a clean build's; a SIGKILL while a snapshot is
//! written leaves nothing a later build trusts; `kib cache ls|prune`. One build cache in the
//! test's temp dir serves every build, so the apt step runs twice only (the first build and the
//! clean one the BOMs are compared with).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MANIFEST: &str = r#"apiVersion: kib/v1
kind: ImageManifest
metadata: {name: inc}
include: [phases/extra.yaml]
steps:
  - name: motd from a file
    file: {path: /etc/kib-motd, source: files/motd.txt}
  - name: last
    file: {path: /etc/kib-last, content: "LAST\n"}
output: {formats: [raw]}
"#;

fn phase_file(word: &str) -> String {
    format!(
        "apiVersion: kib/v1\nkind: Phase\nsteps:\n  - name: a package\n    packages: {{install: [jq]}}\n  - name: phase word\n    run: {{script: \"echo {word} > /etc/kib-phase\"}}\n"
    )
}

struct Build {
    bom: serde_json::Value,
    stderr: String,
    out: PathBuf,
}

impl Build {
    fn reused(&self) -> Vec<String> {
        self.bom["build_cache"]["reused_steps"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
    }

    fn stored_after(&self) -> Vec<u64> {
        self.bom["build_cache"]["stored"].as_array().map(|a| a.iter().map(|s| s["after_step"].as_u64().unwrap()).collect()).unwrap_or_default()
    }

    /// Reads `path` from the built raw image.
    fn read(&self, tmp: &Path, path: &str) -> String {
        let m = Mounted::partition(&self.out.join("inc.raw"), 1, &tmp.join("mnt"));
        m.read(path)
    }
}

fn kib_cmd(tmp: &Path, out: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("kib"));
    c.current_dir(repo())
        .args(["customize", "--disk-image"])
        .arg(base_image())
        .arg("--manifest")
        .arg(tmp.join("inc.yaml"))
        .arg("--output-dir")
        .arg(tmp.join(out))
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .arg("--cache-dir")
        .arg(tmp.join("cache"))
        // Every step snapshotted, so that a change re-runs exactly the steps from it on.
        .args(["--cache-min-seconds", "0"])
        .args(extra);
    c
}

fn build(tmp: &Path, out: &str, extra: &[&str]) -> Build {
    let t = Instant::now();
    let o = kib_cmd(tmp, out, extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "build {out} failed:\n{stderr}");
    eprintln!("build {out}: {:.1?}", t.elapsed());
    let bom = serde_json::from_slice(&std::fs::read(tmp.join(out).join("bom.json")).unwrap()).unwrap();
    Build { bom, stderr, out: tmp.join(out) }
}

/// A BOM without what differs between two builds of the same inputs: timings, reuse records,
/// the artifacts' sums (ext4 timestamps differ), and whether the input's sum was read or known.
fn comparable(bom: &serde_json::Value) -> serde_json::Value {
    let mut b = bom.clone();
    let o = b.as_object_mut().unwrap();
    for k in ["build_started", "phase_seconds", "build_cache", "artifacts"] {
        o.remove(k);
    }
    o["input"].as_object_mut().unwrap().remove("sha256_source");
    for s in o["steps"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("duration_seconds");
    }
    b
}

/// Every path of the image's root filesystem with its type, mode and size (not content).
fn tree(raw: &Path, at: &Path) -> Vec<String> {
    let m = Mounted::partition(raw, 1, at);
    let mut out = Vec::new();
    let mut stack = vec![m.dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            use std::os::unix::fs::MetadataExt;
            let rel = e.path().strip_prefix(&m.dir).unwrap().display().to_string();
            let size = if md.is_file() { md.len() } else { 0 };
            out.push(format!("{rel} {:o} {size}", md.mode()));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn cache_ls(tmp: &Path) -> serde_json::Value {
    let o = kib().args(["cache", "ls", "--output", "json", "--cache-dir"]).arg(tmp.join("cache")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn partials(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp.join("cache/build/tmp")).map(|d| d.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with(".partial")).collect()).unwrap_or_default()
}

/// Runs a build that SIGKILLs itself while writing its first snapshot; waits (bounded) for its
/// namespace to go.
fn killed_build(tmp: &Path, last: &str) {
    std::fs::write(tmp.join("inc.yaml"), MANIFEST.replace("LAST", last)).unwrap();
    let o = kib_cmd(tmp, "killed", &[]).env("KIB_TEST_KILL_AT", kib::buildcache::KILL_POINT).output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "not killed at the kill point: {:?}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !leftovers(&tmp.join("work")).is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", leftovers(&tmp.join("work")));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rebuilds_resume_from_the_deepest_unchanged_step() {
    if skip_unless_root("rebuilds_resume_from_the_deepest_unchanged_step") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::create_dir_all(t.join("phases")).unwrap();
    std::fs::create_dir_all(t.join("files")).unwrap();
    std::fs::write(t.join("phases/extra.yaml"), phase_file("one")).unwrap();
    std::fs::write(t.join("files/motd.txt"), "motd one\n").unwrap();
    std::fs::write(t.join("inc.yaml"), MANIFEST).unwrap();
    let names = ["a package", "phase word", "motd from a file", "last"];

    // 1. The first build runs every step and snapshots after each.
    let a = build(t, "a", &[]);
    assert!(a.reused().is_empty());
    assert_eq!(a.stored_after(), [1, 2, 3, 4]);
    assert!(a.bom["build_cache"].get("resumed_from").is_none());

    // 2. A file source's content changes: its step and the later ones run, the output has it.
    std::fs::write(t.join("files/motd.txt"), "motd two\n").unwrap();
    let b = build(t, "b", &[]);
    assert_eq!(b.reused(), names[..2]);
    assert!(b.stderr.contains("2 of 4 steps restored"), "{}", b.stderr);
    assert_eq!(b.stored_after(), [3, 4]);
    assert_eq!(b.read(t, "/etc/kib-motd"), "motd two\n");
    assert_eq!(b.read(t, "/etc/kib-phase"), "one\n");

    // 3. An included phase file changes: its step and everything after it run again.
    std::fs::write(t.join("phases/extra.yaml"), phase_file("two")).unwrap();
    let c = build(t, "c", &[]);
    assert_eq!(c.reused(), names[..1]);
    assert_eq!(c.stored_after(), [2, 3, 4]);
    assert_eq!(c.read(t, "/etc/kib-phase"), "two\n");
    assert_eq!(c.read(t, "/etc/kib-motd"), "motd two\n");

    // 4. No step changes, an output option does: Phase 1 is skipped, Phase 2 runs on the last
    // snapshot.
    let d = build(t, "d", &["--qcow2-compression", "zstd"]);
    assert_eq!(d.reused(), names);
    assert_eq!(d.bom["build_cache"]["phase1_skipped"], true);
    assert!(d.bom["build_cache"].get("outputs_reused_from").is_none());
    assert!(d.stored_after().is_empty());
    assert!(d.stderr.contains("4 of 4 steps restored"), "{}", d.stderr);
    assert_eq!(d.read(t, "/etc/kib-phase"), "two\n");
    // Nothing changes at all: d's outputs are published again, nothing is mounted.
    let d2 = build(t, "d2", &["--qcow2-compression", "zstd"]);
    assert!(d2.bom["build_cache"]["outputs_reused_from"].is_string(), "{}", d2.bom["build_cache"]);
    assert!(d2.stderr.contains("nothing changed"), "{}", d2.stderr);
    assert_eq!(sha256(&d2.out.join("inc.raw")), sha256(&d.out.join("inc.raw")));
    assert_eq!(d2.bom["artifacts"], d.bom["artifacts"]);
    assert_ne!(d2.bom["build_started"], d.bom["build_started"]);

    // 5. A clean build of the same manifest: the same BOM apart from timings and reuse records,
    // the same files in the image.
    let e = build(t, "e", &["--no-cache"]);
    assert!(e.bom.get("build_cache").is_none());
    assert_eq!(comparable(&d.bom), comparable(&e.bom));
    assert_eq!(comparable(&d2.bom), comparable(&e.bom));
    assert_eq!(d.bom["packages"], e.bom["packages"]);
    let (td, te) = (tree(&d.out.join("inc.raw"), &t.join("mnt-d")), tree(&e.out.join("inc.raw"), &t.join("mnt-e")));
    let differ: Vec<_> = td.iter().filter(|l| !te.contains(l)).chain(te.iter().filter(|l| !td.contains(l))).collect();
    assert!(differ.is_empty(), "the incremental and the clean image differ: {differ:#?}");

    // 6. SIGKILL while a snapshot is written: a partial file, no entry; the next build does not
    // use it (the last step runs again) and removes it, as `kib cleanup` does.
    killed_build(t, "v3");
    let p = partials(t);
    assert_eq!(p.len(), 1, "{p:?}");
    let key = p[0].file_name().unwrap().to_string_lossy().split('.').next().unwrap().to_string();
    let listed = cache_ls(t);
    assert!(!listed["entries"].as_array().unwrap().iter().any(|e| e["key"] == key.as_str()), "a partial snapshot is listed: {listed}");
    let g = build(t, "g", &[]);
    assert_eq!(g.reused(), names[..3]);
    assert_eq!(g.read(t, "/etc/kib-last"), "v3\n");
    assert!(partials(t).is_empty(), "the build's prune left {:?}", partials(t));
    killed_build(t, "v4");
    assert_eq!(partials(t).len(), 1);
    let o = kib().args(["cleanup", "--work-dir"]).arg(t.join("work")).arg("--cache-dir").arg(t.join("cache")).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("removed partial build-cache snapshot"), "{out}");
    assert!(partials(t).is_empty());
    assert_nothing_left(&t.join("work"));

    // 7. kib cache ls and prune.
    let listed = cache_ls(t);
    let all = listed["entries"].as_array().unwrap();
    assert!(all.iter().all(|e| e["valid"] == true && e["manifest"] == "inc" && e["size"].as_u64().unwrap() > 0), "{listed}");
    // Outputs of a, b, c, d (d2 reused d's, e had no cache) and g.
    assert_eq!(all.iter().filter(|e| e["kind"] == "outputs").count(), 5, "{listed}");
    let entries: Vec<_> = all.iter().filter(|e| e["kind"] == "snapshot").cloned().collect();
    // a: 4, b: 2, c: 3, g: 1.
    assert_eq!(entries.len(), 10, "{listed}");
    // The most recently used first: the snapshot after step 3 (the second killed build started
    // from it), then g's after its last step.
    assert_eq!((entries[0]["steps_done"].as_u64(), entries[1]["steps_done"].as_u64()), (Some(3), Some(4)), "{listed}");
    assert_eq!(entries[1]["end_of_phase1"], true);
    let text = kib().args(["cache", "ls", "--cache-dir"]).arg(t.join("cache")).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("KEY") && text.contains("4 last (end)") && text.contains("10 snapshot(s), 5 stored output set(s)"), "{text}");
    let keep = all[0]["size"].as_u64().unwrap() + all[1]["size"].as_u64().unwrap();
    let o = kib().args(["cache", "prune", "--output", "json", "--max-size"]).arg(format!("{}", keep.div_ceil(1 << 20) * (1 << 20))).arg("--cache-dir").arg(t.join("cache")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pruned: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let left: Vec<_> = cache_ls(t)["entries"].as_array().unwrap().iter().map(|e| e["key"].clone()).collect();
    assert_eq!(pruned["removed"].as_array().unwrap().len(), all.len() - left.len(), "{pruned}");
    assert_eq!(left, [all[0]["key"].clone(), all[1]["key"].clone()], "LRU keeps the two most recently used");
    let o = kib().args(["cache", "prune", "--all", "--cache-dir"]).arg(t.join("cache")).output().unwrap();
    assert!(o.status.success());
    assert!(cache_ls(t)["entries"].as_array().unwrap().is_empty());
    assert_nothing_left(&t.join("work"));
}
