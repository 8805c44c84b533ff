//! `kib customize --lock bom.json`: a rebuild installs exactly the versions the BOM records, a
//! lock naming an older version that the archive still has installs that one, and a version or
//! artifact that cannot be had stops the build with an error naming it.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const MANIFEST: &str = "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: locked}\nsysprep: {enabled: false}\n\
output: {formats: [raw]}\nsteps:\n  - name: jq\n    packages: {install: [jq]}\n  - name: what the archive offers\n    run:\n      \
script: apt-cache madison jq libjq1 > /var/tmp/madison\n";

fn bom(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap()
}

fn version(bom: &serde_json::Value, name: &str) -> String {
    bom["packages"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} not in the BOM"))["version"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Builds `manifest` into `tmp/<run>/out` with `extra` arguments.
fn build(base: &Path, manifest: &Path, tmp: &Path, run: &str, extra: &[&str]) -> (bool, String, PathBuf) {
    let dir = tmp.join(run);
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, stderr) = customize_in(base, manifest, &dir, extra);
    assert_nothing_left(&dir.join("work"));
    (ok, stderr, dir.join("out"))
}

#[test]
fn lock_pins_packages_and_names_what_cannot_be_had() {
    if common::skip_unless_root("lock_pins_packages_and_names_what_cannot_be_had") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("m.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();

    // The first build: whatever the archive's candidates are today.
    let (ok, stderr, out) = build(&base, &manifest, tmp.path(), "first", &[]);
    assert!(ok, "{stderr}");
    let first = bom(&out);
    let lock = out.join("bom.json");
    let jq = version(&first, "jq");

    // A rebuild from its BOM installs exactly the recorded versions of every package.
    let (ok, stderr, out2) = build(&base, &manifest, tmp.path(), "again", &["--lock", lock.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let again = bom(&out2);
    let pkgs = |b: &serde_json::Value| -> Vec<(String, String)> {
        b["packages"].as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap().into(), p["version"].as_str().unwrap().into())).collect()
    };
    assert_eq!(pkgs(&first), pkgs(&again), "the locked rebuild installed other versions");
    assert_eq!(again["locked_from"].as_str(), Some(lock.canonicalize().unwrap().to_str().unwrap()));

    // A lock that records an older jq that the archive still has (bookworm's, when
    // bookworm-security has a newer one) installs the older one: the lock, not apt's candidate,
    // decides.
    let raw = out.join("locked.raw");
    let madison = Mounted::partition(&raw, 1, &tmp.path().join("mnt")).read("/var/tmp/madison");
    let offered = |pkg: &str| -> Vec<String> {
        madison.lines().filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (f.len() == 3 && f[0] == pkg).then(|| f[1].to_string())
        }).collect()
    };
    let older = offered("jq").into_iter().find(|v| *v != jq && offered("libjq1").contains(v));
    match older {
        Some(older) => {
            let mut edited = first.clone();
            for p in edited["packages"].as_array_mut().unwrap() {
                if p["name"] == "jq" || p["name"] == "libjq1" {
                    p["version"] = older.clone().into();
                }
            }
            let older_lock = tmp.path().join("older.json");
            std::fs::write(&older_lock, serde_json::to_vec(&edited).unwrap()).unwrap();
            let (ok, stderr, out3) = build(&base, &manifest, tmp.path(), "older", &["--lock", older_lock.to_str().unwrap()]);
            assert!(ok, "{stderr}");
            assert_eq!(version(&bom(&out3), "jq"), older, "jq is not at the locked older version");
            assert_eq!(version(&bom(&out3), "libjq1"), older);
        }
        None => eprintln!("the archive offers only jq {jq} today ({madison}); the older-version case has nothing to pin to"),
    }

    // A version the archive does not have: apt's error names it, kib says it is the lock.
    let mut gone = first.clone();
    for p in gone["packages"].as_array_mut().unwrap() {
        if p["name"] == "jq" {
            p["version"] = "1.6-2.1+kib.gone".into();
        }
    }
    let gone_lock = tmp.path().join("gone.json");
    std::fs::write(&gone_lock, serde_json::to_vec(&gone).unwrap()).unwrap();
    let (ok, stderr, out4) = build(&base, &manifest, tmp.path(), "gone", &["--lock", gone_lock.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("Version '1.6-2.1+kib.gone' for 'jq' was not found"), "{stderr}");
    assert!(stderr.contains(&format!("--lock {}", gone_lock.display())), "{stderr}");
    assert_eq!(std::fs::read_dir(&out4).map(|d| d.count()).unwrap_or(0), 0, "a failed build left output");

    // An artifact the locked build did not download stops the build before any step runs.
    let with_download = tmp.path().join("dl.yaml");
    std::fs::write(
        &with_download,
        format!("{MANIFEST}  - name: a new download\n    download:\n      url: http://127.0.0.1:9/kubectl\n      sha256: {}\n      path: /usr/local/bin/kubectl\n", "0".repeat(64)),
    )
    .unwrap();
    let (ok, stderr, _) = build(&base, &with_download, tmp.path(), "download", &["--lock", lock.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("http://127.0.0.1:9/kubectl is not in the lock"), "{stderr}");

    // Not a BOM at all.
    let (ok, stderr, _) = build(&base, &manifest, tmp.path(), "notabom", &["--lock", manifest.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("is not JSON"), "{stderr}");
    assert_eq!(sha256(&base), before, "the input image changed");
}
