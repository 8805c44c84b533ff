//! Disk growth (`disk.size`, `--disk-size`): the disk, its GPT, the root partition and its
//! filesystem grow; no file changes; a smaller size is refused with nothing left behind.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

const GIB: u64 = 1 << 30;

/// SHA-256 of every regular file below `dir`, by path relative to it.
fn file_sums(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.insert(e.path().strip_prefix(dir).unwrap().display().to_string(), sha256(&e.path()));
            }
        }
    }
    out
}

fn stdout(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn grown_debian_image_has_a_larger_root_and_the_same_files() {
    if common::skip_unless_root("grown_debian_image_has_a_larger_root_and_the_same_files") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("grow.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: grown}\ndisk: {size: 3GiB}\nsysprep: {enabled: false}\n\
         output: {formats: [raw]}\nsteps:\n  - name: root size as the image sees it\n    run:\n      \
         script: df -B1 --output=size / | tail -n 1 > /var/tmp/root-size\n",
    )
    .unwrap();
    // --disk-size overrides disk.size.
    let (ok, stderr) = customize_in(&base, &manifest, tmp.path(), &["--disk-size", "4G"]);
    assert!(ok, "{stderr}");
    assert_eq!(sha256(&base), before, "the input changed");
    assert_nothing_left(&tmp.path().join("work"));
    let raw = tmp.path().join("out/grown.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 4 * GIB);

    // The GPT is whole: backup header at the new end, partition 1 (root) extended in place.
    let verify = Command::new("sfdisk").arg("--verify").arg(&raw).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success() && !text.contains("not on the end") && !text.contains("mismatch"), "{text}");
    let old: serde_json::Value = serde_json::from_str(&stdout(Command::new("sfdisk").arg("--json").arg(&base))).unwrap();
    let new: serde_json::Value = serde_json::from_str(&stdout(Command::new("sfdisk").arg("--json").arg(&raw))).unwrap();
    let part = |t: &serde_json::Value, n: &str| t["partitiontable"]["partitions"].as_array().unwrap().iter().find(|p| p["node"].as_str().unwrap().ends_with(n)).unwrap().clone();
    for n in ["raw14", "raw15"] {
        for k in ["start", "size", "type", "uuid"] {
            assert_eq!(part(&old, n)[k], part(&new, n)[k], "partition {n} {k} changed");
        }
    }
    let (p_old, p_new) = (part(&old, "raw1"), part(&new, "raw1"));
    assert_eq!(p_old["start"], p_new["start"], "the root partition moved");
    assert_eq!(p_old["uuid"], p_new["uuid"]);
    let new_bytes = p_new["size"].as_u64().unwrap() * 512;
    assert_eq!(p_new["start"].as_u64().unwrap() * 512 + new_bytes, 4 * GIB - 33 * 512, "the root does not reach the end");

    // The filesystem fills the partition, as the image saw it during Phase 1 and as ext4 records it.
    let root = Mounted::partition(&raw, 1, &tmp.path().join("new"));
    let seen: u64 = root.read("/var/tmp/root-size").trim().parse().unwrap();
    assert!(seen > 3 * GIB + GIB / 2, "df in the image saw {seen} bytes");
    // statvfs of the mounted filesystem: its size as ext4 records it.
    let st = rustix::fs::statvfs(&root.dir).unwrap();
    let fs_bytes = st.f_blocks * st.f_frsize;
    assert!(fs_bytes > new_bytes - new_bytes / 20 && fs_bytes <= new_bytes, "filesystem {fs_bytes} bytes in a {new_bytes}-byte partition");

    // Every file of the base image's root is unchanged (sysprep is off; the step wrote one file).
    let base_root = Mounted::partition(&base, 1, &tmp.path().join("old"));
    let (a, mut b) = (file_sums(&base_root.dir), file_sums(&root.dir));
    b.remove("var/tmp/root-size");
    let changed: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).map(|(k, _)| k.clone()).take(10).collect();
    assert!(changed.is_empty() && a.len() == b.len(), "files differ after growing: {changed:?} ({} vs {} files)", a.len(), b.len());

    let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("out/bom.json")).unwrap()).unwrap();
    assert_eq!(bom["disk_growth"]["to_bytes"], 4 * GIB);
    assert_eq!(bom["disk_growth"]["partition"], 1);
    assert_eq!(bom["disk_growth"]["fstype"], "ext4");
}

#[test]
fn a_smaller_disk_size_is_refused_and_nothing_is_left() {
    if common::skip_unless_root("a_smaller_disk_size_is_refused_and_nothing_is_left") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let manifest = repo().join("testdata/bench/overhead.yaml");
    let (ok, stderr) = customize_in(&base, &manifest, tmp.path(), &["--disk-size", "1GiB"]);
    assert!(!ok);
    assert!(stderr.contains("disk size 1.0 GiB is smaller than the image's 2.0 GiB") && stderr.contains("never shrinks"), "{stderr}");
    let (ok, stderr) = customize_in(&base, &manifest, tmp.path(), &["--disk-size", "lots"]);
    assert!(!ok);
    assert!(stderr.contains("--disk-size: `lots` is not a size such as 20GiB"), "{stderr}");
    assert_eq!(sha256(&base), before);
    assert_nothing_left(&tmp.path().join("work"));
    assert_eq!(std::fs::read_dir(tmp.path().join("out")).map(|d| d.count()).unwrap_or(0), 0);
}

/// A whole-disk filesystem (no partition table) holding only an os-release, made by `mkfs`.
fn whole_disk(tmp: &Path, fstype: &str) -> std::path::PathBuf {
    let tree = tmp.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"fixture\"\n").unwrap();
    let disk = tmp.join(format!("{fstype}.raw"));
    std::fs::File::create(&disk).unwrap().set_len(320 << 20).unwrap();
    match fstype {
        "btrfs" => {
            stdout(Command::new("mkfs.btrfs").arg("-q").arg("--rootdir").arg(&tree).arg(&disk));
        }
        "xfs" => {
            let proto = tmp.join("proto");
            std::fs::write(&proto, format!("/dev/null\n0 0\nd--755 0 0\netc d--755 0 0\nos-release ---644 0 0 {}\n$\n$\n", tree.join("etc/os-release").display())).unwrap();
            stdout(Command::new("mkfs.xfs").arg("-q").arg("-p").arg(&proto).arg(&disk));
        }
        _ => unreachable!(),
    }
    disk
}

#[test]
fn whole_disk_xfs_and_btrfs_grow_while_mounted() {
    if common::skip_unless_root("whole_disk_xfs_and_btrfs_grow_while_mounted") {
        return;
    }
    for fstype in ["xfs", "btrfs"] {
        let tmp = tempfile::tempdir().unwrap();
        let disk = whole_disk(tmp.path(), fstype);
        let before = sha256(&disk);
        let manifest = tmp.path().join("m.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: g}\ndisk: {size: 1GiB}\nsysprep: {enabled: false}\n\
             output: {formats: [raw]}\nsteps:\n  - name: marker\n    file: {path: /etc/marker, content: grown}\n",
        )
        .unwrap();
        let (ok, stderr) = customize_in(&disk, &manifest, tmp.path(), &[]);
        assert!(ok, "{fstype}: {stderr}");
        assert_eq!(sha256(&disk), before);
        assert_nothing_left(&tmp.path().join("work"));
        let raw = tmp.path().join("out/g.raw");
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), GIB);
        let size: u64 = match fstype {
            "xfs" => {
                let out = stdout(Command::new("xfs_db").args(["-r", "-c", "sb 0", "-c", "p dblocks blocksize"]).arg(&raw));
                let v: Vec<u64> = out.lines().map(|l| l.split('=').nth(1).unwrap().trim().parse().unwrap()).collect();
                v[0] * v[1]
            }
            _ => {
                let out = stdout(Command::new("btrfs").args(["inspect-internal", "dump-super"]).arg(&raw));
                out.lines().find(|l| l.starts_with("total_bytes")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
            }
        };
        assert!(size > GIB - GIB / 50 && size <= GIB, "{fstype}: filesystem is {size} bytes on a 1 GiB disk");
        let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("out/bom.json")).unwrap()).unwrap();
        assert_eq!(bom["disk_growth"]["fstype"], fstype);
        assert_eq!(bom["disk_growth"]["partition"], 0);
    }
}
