//! Two builds at once from the same input, sharing the work directory base and the cache: both
//! succeed, neither disturbs the other, nothing is left.

mod common;

use std::process::Command;

use common::*;

#[test]
fn two_builds_at_once_from_the_same_input() {
    let tmp = tempfile::tempdir().unwrap();
    let input = base_image();
    let before = sha256(&input);
    let spawn = |n: u32| {
        Command::new(assert_cmd::cargo::cargo_bin("kib"))
            .current_dir(repo())
            .args(["-q", "customize", "--manifest", "testdata/bench/overhead.yaml", "--disk-image"])
            .arg(&input)
            .arg("--output-dir")
            .arg(tmp.path().join(format!("out{n}")))
            .arg("--work-dir")
            .arg(tmp.path().join("work"))
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(1));
        let b = s.spawn(|| spawn(2));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (n, r) in [(1, &a), (2, &b)] {
        assert!(r.status.success(), "build {n}: {}", String::from_utf8_lossy(&r.stderr));
        let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join(format!("out{n}/bom.json"))).unwrap()).unwrap();
        assert_eq!(bom["input"]["sha256"], before);
        assert!(tmp.path().join(format!("out{n}/bench-overhead.qcow2")).is_file());
    }
    assert_nothing_left(&tmp.path().join("work"));
    assert_eq!(sha256(&input), before);
}
