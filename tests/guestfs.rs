//! The guestfs backend (src/guestfs/): a normal user, without root and without loop devices,
//! builds the node manifest (plus an `images` step) through libguestfs's appliance (under TCG here), and the result
//! equals root's loop-backend build of the same manifest: the same packages, steps and sysprep
//! in the BOM, the same SBOM components, and the same tree, file by file (type, mode, owner,
//! size, content, symlink target, xattrs, link count), apart from what the package cache and
//! ldconfig's timestamps change. The input stays bit-identical, no loop device is used, and no
//! process or work directory is left. Then: `--backend auto` as that user goes to the guestfs
//! backend and, on a host without its tools, fails with the paragraph naming both backends; a
//! SIGKILLed guestfs build leaves no process (the appliance's qemu included), and `kib cleanup`
//! as the user removes its work directory; an appliance stopped by `--appliance-timeout` says so
//! and leaves nothing; `--disk-size` grows a disk through the appliance. `kib shell --backend guestfs --save` on the arm64 fixture runs the image's
//! own programs under qemu-user and writes the shell's changes back.
//!
//! Needs scripts/guestfs-setup.sh (libguestfs-tools, uidmap, the fixed appliance); scripts/test.sh
//! runs it. One guestfs build of the node manifest is this suite's budget (about 2.5 min here).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const USER: &str = "kibguestfs";

/// The tests run as the same user and each checks that the user has no process left, so they
/// take turns for what they run as that user (test threads run side by side).
static AS_USER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn my_turn() -> std::sync::MutexGuard<'static, ()> {
    AS_USER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Making the user and its folders (useradd, guestfs-setup.sh) once at a time.
static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes the test user (with a subordinate id range, through scripts/guestfs-setup.sh) and a
/// folder it owns. Returns its uid.
fn test_user(dir: &Path) -> u32 {
    let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    if Command::new("id").arg(USER).output().unwrap().status.code() != Some(0) {
        let s = Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", USER]).status().unwrap();
        assert!(s.success(), "useradd {USER}");
    }
    let setup = Command::new("bash").arg(repo().join("scripts/guestfs-setup.sh")).arg(USER).output().unwrap();
    assert!(setup.status.success(), "guestfs-setup.sh: {}", String::from_utf8_lossy(&setup.stderr));
    let uid: u32 = String::from_utf8(Command::new("id").args(["-u", USER]).output().unwrap().stdout).unwrap().trim().parse().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(uid), None).unwrap();
    uid
}

/// A temporary folder in /var/tmp that the test user can enter, its `home` folder owned by the
/// user, and the user's uid.
fn user_tmp(prefix: &str) -> (tempfile::TempDir, PathBuf, u32) {
    // In the temp dir (/tmp), where tests/arm64.rs expects other tests' mounts.
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home");
    let uid = test_user(&home);
    (tmp, home, uid)
}

/// `kib ARGS` as the test user, with its own HOME (so its cache is `HOME/.cache/kib`) and the
/// `env` assignments `envs`.
fn as_user(home: &Path, envs: &[&str], args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", USER, "--", "env"]).arg(format!("HOME={}", home.display())).args(envs).arg(assert_cmd::cargo::cargo_bin("kib")).args(args).current_dir("/");
    c
}

/// Processes of `uid` (the user's builds must leave none).
fn processes_of(uid: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.uid() == uid))
        .map(|e| std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default().replace('\0', " "))
        .filter(|c| !c.is_empty())
        .collect()
}

fn wait_no_processes(uid: u32, limit: Duration) -> Vec<String> {
    let t = Instant::now();
    loop {
        let p = processes_of(uid);
        if p.is_empty() || t.elapsed() > limit {
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One entry of a tree's fingerprint: mode, uid, gid, size, content or link target, xattrs,
/// link count.
type Entry = (u32, u32, u32, u64, String, Vec<(String, Vec<u8>)>, u64);

fn fingerprint(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                sha256(&p)
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().to_string_lossy().into_owned()
            } else {
                String::new()
            };
            let mut xattrs: Vec<(String, Vec<u8>)> = xattr_list(&p);
            xattrs.sort();
            let (size, nlink) = if m.is_dir() { (0, 0) } else { (m.size(), m.nlink()) };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), (m.mode(), m.uid(), m.gid(), size, content, xattrs, nlink));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The extended attributes of `p` (not following a symlink).
fn xattr_list(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names) else { return Vec::new() };
    names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let name = std::ffi::CString::new(name).unwrap();
            let mut v = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(p, name.as_c_str(), &mut v).unwrap_or(0);
            v.truncate(len);
            (name.to_string_lossy().into_owned(), v)
        })
        .collect()
}

/// The output qcow2's root partition, as a raw file mounted read-only.
fn mounted_output(qcow2: &Path, tmp: &Path, tag: &str) -> Mounted {
    let raw = tmp.join(format!("{tag}.raw"));
    let s = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(qcow2).arg(&raw).status().unwrap();
    assert!(s.success());
    Mounted::partition(&raw, 1, &tmp.join(format!("{tag}.mnt")))
}

fn bom(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("bom.json")).unwrap()).unwrap()
}

fn names(bom: &serde_json::Value, key: &str, field: &str) -> Vec<String> {
    bom[key].as_array().unwrap().iter().map(|v| if field.is_empty() { v.as_str().unwrap().to_string() } else { v[field].to_string() }).collect()
}

#[test]
fn a_normal_user_builds_the_node_image_through_libguestfs() {
    if skip_unless_root("a_normal_user_builds_the_node_image_through_libguestfs") {
        return;
    }
    let (tmp, home, uid) = user_tmp("kib-guestfs-");
    let t = tmp.path();
    // The input, where the user can read it, with its checksum list.
    let base = base_image();
    let input = home.join("debian-12.raw");
    assert!(Command::new("cp").arg("--sparse=always").arg(&base).arg(&input).status().unwrap().success());
    std::fs::copy(base.with_file_name("SHA256SUMS"), home.join("SHA256SUMS")).unwrap();
    let sums = std::fs::read_to_string(home.join("SHA256SUMS")).unwrap().replace(base.file_name().unwrap().to_str().unwrap(), "debian-12.raw");
    std::fs::write(home.join("SHA256SUMS"), sums).unwrap();
    assert!(Command::new("chown").arg("-R").arg(format!("{USER}:")).arg(&home).status().unwrap().success());
    let input_sum = sha256(&input);
    let manifest = node_manifest_with_an_image(&home);

    // Root's loop-backend build, for comparison.
    let loop_out = t.join("loop-out");
    let o = customize_cmd_to(&input, &manifest, t, &loop_out).args(["--format", "qcow2"]).output().unwrap();
    assert!(o.status.success(), "loop build: {}", String::from_utf8_lossy(&o.stderr));
    assert_nothing_left(&t.join("work"));

    // The user's guestfs-backend build.
    let _turn = my_turn();
    let out = home.join("out");
    let work = home.join("work");
    let log = home.join("kib.log");
    let t0 = Instant::now();
    let o = as_user(
        &home,
        &[],
        &["customize", "--backend", "guestfs", "--disk-image"].map(std::ffi::OsStr::new).into_iter().chain([input.as_os_str()]).chain(
            ["--manifest", manifest.to_str().unwrap(), "--format", "qcow2", "--output-dir", out.to_str().unwrap(), "--work-dir", work.to_str().unwrap(), "--log-file", log.to_str().unwrap()]
                .map(std::ffi::OsStr::new),
        ).collect::<Vec<_>>(),
    )
    .output()
    .unwrap();
    let took = t0.elapsed();
    assert!(o.status.success(), "guestfs build as {USER}: {}\n{}", String::from_utf8_lossy(&o.stderr), std::fs::read_to_string(&log).unwrap_or_default());
    eprintln!("guestfs build as {USER}: {took:.1?}");
    assert_eq!(sha256(&input), input_sum, "the input changed");
    let left = wait_no_processes(uid, Duration::from_secs(10));
    assert!(left.is_empty(), "processes left: {left:#?}");
    assert_nothing_left(&work);
    assert!(leftovers(&home).is_empty(), "loop devices or mounts: {:?}", leftovers(&home));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("backend guestfs (--backend guestfs)"), "{logged}");
    assert!(!logged.contains("/dev/loop"), "a loop device was mentioned");
    for f in ["k8s-node-debian.qcow2", "bom.json", "k8s-node-debian.spdx.json", "k8s-node-debian.cdx.json", "SHA256SUMS"] {
        let m = std::fs::metadata(out.join(f)).unwrap();
        assert_eq!(m.uid(), uid, "{f} belongs to the user");
    }

    // The package cache, in the user's cache folder: apt's downloads, every file and folder the
    // user's own (apt downloads as root in the namespace, not as _apt's subordinate uid).
    let pkg_cache = home.join(".cache/kib/packages");
    let mut debs = 0;
    for e in walkdir(&pkg_cache) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        assert_eq!(m.uid(), uid, "{} in the package cache is not the user's", e.display());
        debs += usize::from(e.extension().is_some_and(|x| x == "deb"));
    }
    assert!(debs > 10, "{debs} .deb files in {}", pkg_cache.display());

    // The BOMs: the same packages, steps, sysprep and input; the backend and its differences.
    let (a, b) = (bom(&loop_out), bom(&out));
    assert_eq!(a["backend"]["name"], "loop");
    assert_eq!(b["backend"]["name"], "guestfs");
    assert_eq!(b["backend"]["reason"], "--backend guestfs");
    assert!(b["backend"]["differences"].as_array().unwrap().len() >= 3, "{}", b["backend"]);
    assert_eq!(a["packages"], b["packages"]);
    assert_eq!(names(&a, "steps", "name"), names(&b, "steps", "name"));
    // The images step: containerd, started in the chroot inside the user namespace, imported the
    // archive as it does with loop devices.
    let loaded = |bom: &serde_json::Value| bom["steps"].as_array().unwrap().iter().find(|s| s["kind"] == "images").map(|s| s["images"].clone()).unwrap();
    assert_eq!(loaded(&a), loaded(&b));
    assert_eq!(loaded(&b)[0]["name"], "kib.example/fixture/true:1", "{}", loaded(&b));
    assert_eq!(a["sysprep"], b["sysprep"]);
    assert_eq!(a["input"]["sha256"], b["input"]["sha256"]);
    assert_eq!(a["os_release"], b["os_release"]);
    let cdx = |d: &Path| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("k8s-node-debian.cdx.json")).unwrap()).unwrap();
        v["components"].as_array().unwrap().iter().map(|c| c["purl"].to_string()).collect()
    };
    assert_eq!(cdx(&loop_out), cdx(&out), "SBOM components");

    // The trees, file by file.
    let (ma, mb) = (mounted_output(&loop_out.join("k8s-node-debian.qcow2"), t, "loop"), mounted_output(&out.join("k8s-node-debian.qcow2"), t, "guestfs"));
    let (fa, fb) = (fingerprint(&ma.dir), fingerprint(&mb.dir));
    // ldconfig's cache holds timestamps; apt's lock and partial folders are made by apt on each run
    // (the partial folders owned by _apt with loop devices, by root where apt runs unsandboxed).
    let expected = ["var/cache/ldconfig/aux-cache", "var/lib/apt/lists/lock", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"];
    // containerd's bolt databases hold the import's timestamps (its content store is otherwise
    // the same: the images step collects the import's leftovers before containerd stops).
    let timestamped = |k: &str| k.starts_with("var/lib/containerd/") && k.ends_with(".db");
    let differ: Vec<String> = fa
        .keys()
        .chain(fb.keys())
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| k.display().to_string())
        .filter(|k| !expected.contains(&k.as_str()) && !timestamped(k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(fa.len() > 15000, "the loop build's tree has {} entries", fa.len());
    assert!(differ.is_empty(), "{} paths differ between the loop and guestfs builds, such as {:#?}", differ.len(), &differ[..differ.len().min(20)]);
    // The node's own files, with owners that only subordinate ids carry through.
    assert!(mb.path("usr/bin/containerd").is_file());
    assert_eq!(std::fs::read_to_string(mb.path("etc/machine-id")).unwrap(), "");
    assert_eq!(std::fs::metadata(mb.path("etc/shadow")).unwrap().gid(), 42, "/etc/shadow keeps group shadow");
}

#[test]
fn auto_without_guestfs_tools_names_both_backends_and_sigkill_leaves_nothing() {
    if skip_unless_root("auto_without_guestfs_tools_names_both_backends_and_sigkill_leaves_nothing") {
        return;
    }
    let _turn = my_turn();
    let (tmp, home, uid) = user_tmp("kib-guestfs-kill-");
    let t = tmp.path();
    // What libguestfs's inspection needs to call it a Linux root (a Debian one).
    let img = tiny_image(t, "tiny.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=12\n"), ("/etc/debian_version", "12.0\n"), ("/etc/fstab", "# none\n"), ("/bin/.keep", "")]);
    let manifest = t.join("m.yaml");
    std::fs::write(&manifest, "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: tiny}\nsteps:\n  - name: a file\n    file: {path: /etc/kib-test, content: \"x\\n\"}\n").unwrap();
    assert!(Command::new("chown").arg("-R").arg(format!("{USER}:")).arg(&home).arg(&img).arg(&manifest).status().unwrap().success());
    let args = |backend: &str| -> Vec<std::ffi::OsString> {
        ["customize", "--backend", backend, "--no-verify", "--disk-image", img.to_str().unwrap(), "--manifest", manifest.to_str().unwrap(), "--format", "raw", "--output-dir", home.join("out").to_str().unwrap(), "--work-dir", home.join("work").to_str().unwrap()]
            .map(std::ffi::OsString::from)
            .to_vec()
    };

    // auto, as a normal user, on a PATH without libguestfs: the guestfs backend was chosen, and
    // the error says what each backend needs.
    let a = args("auto");
    let o = as_user(&home, &["PATH=/nonexistent"], &refs(&a)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for want in ["Loop devices need root", "not root", "guestfish (Debian: libguestfs-tools)", "Without root"] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!home.join("out").exists(), "no output folder on refusal");

    // An appliance that cannot finish in --appliance-timeout (here 2 s, less than it needs to
    // start under TCG): stopped, with the limit named; nothing left running or behind.
    let before = sha256(&img);
    let mut a = args("guestfs");
    a.extend(["--appliance-timeout", "2"].map(std::ffi::OsString::from));
    let t0 = Instant::now();
    let o = as_user(&home, &[], &refs(&a)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "the limit did not stop it: {:?}", t0.elapsed());
    assert!(err.contains("--appliance-timeout (2 s") && err.contains("nothing of it is left running"), "{err}");
    let left = wait_no_processes(uid, Duration::from_secs(15));
    assert!(left.is_empty(), "processes left after the timeout: {left:#?}");
    assert_nothing_left(&home.join("work"));
    assert!(!home.join("out").exists(), "an output folder after the timeout");
    assert_eq!(sha256(&img), before);

    // disk.size through the appliance: the partition grows in the table (sfdisk on the file),
    // the ext4 root in the write-back session; the step's file is there, the BOM says so.
    let mut a = args("guestfs");
    a.extend(["--disk-size", "64MiB"].map(std::ffi::OsString::from));
    let o = as_user(&home, &[], &refs(&a)).output().unwrap();
    assert!(o.status.success(), "growing through guestfs: {}", String::from_utf8_lossy(&o.stderr));
    let raw = home.join("out/tiny.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 64 << 20);
    let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(home.join("out/bom.json")).unwrap()).unwrap();
    assert_eq!((bom["disk_growth"]["to_bytes"].as_u64(), bom["disk_growth"]["fstype"].as_str()), (Some(64 << 20), Some("ext4")), "{}", bom["disk_growth"]);
    let m = Mounted::partition(&raw, 1, &t.join("grown"));
    assert_eq!(m.read("/etc/kib-test"), "x\n");
    let st = rustix::fs::statvfs(m.path("/")).unwrap();
    assert!(st.f_blocks * st.f_frsize > 50 << 20, "the filesystem did not grow: {} bytes", st.f_blocks * st.f_frsize);
    drop(m);
    std::fs::remove_dir_all(home.join("out")).unwrap();
    assert_nothing_left(&home.join("work"));
    assert_eq!(sha256(&img), before);

    // SIGKILL while the appliance reads the tree out: the namespace goes, and with it guestfish
    // and qemu; `kib cleanup` as the user removes the work directory.
    let g = args("guestfs");
    let mut child = as_user(&home, &[], &refs(&g)).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !processes_of(uid).iter().any(|p| p.contains("qemu-system")) {
        assert!(t0.elapsed() < Duration::from_secs(120), "the appliance never started");
        assert!(child.try_wait().unwrap().is_none(), "kib ended before the appliance started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // runuser's child is `env` exec'd into kib: the outer kib.
    let outer = processes_of_pid_named(uid, "customize").expect("the outer kib");
    assert!(Command::new("kill").args(["-KILL", &outer.to_string()]).status().unwrap().success());
    let _ = child.wait();
    let left = wait_no_processes(uid, Duration::from_secs(15));
    assert!(left.is_empty(), "processes left after SIGKILL: {left:#?}");
    assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
    let o = as_user(&home, &[], &["cleanup", "--work-dir", home.join("work").to_str().unwrap()].map(std::ffi::OsStr::new)).output().unwrap();
    assert!(o.status.success(), "kib cleanup as {USER}: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("removed work directory"), "{}", String::from_utf8_lossy(&o.stdout));
    assert_nothing_left(&home.join("work"));
}

/// `kib shell --backend guestfs` as the user, on the arm64 fixture (a foreign architecture: its
/// programs run under qemu-user through the host's binfmt_misc handler, inside the user
/// namespace): the command's output and exit status come back, and `--save` writes what it
/// changed back through the appliance into a raw disk that root then mounts. The input is
/// bit-identical, and nothing is left.
#[test]
fn a_normal_user_runs_a_shell_in_a_foreign_image_and_saves_it() {
    if skip_unless_root("a_normal_user_runs_a_shell_in_a_foreign_image_and_saves_it") {
        return;
    }
    let img = std::env::var_os("KIB_BASE_IMAGE_ARM64")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kib/fixtures/arm64/kib-fixture-debian-12-minbase-arm64.raw"));
    assert!(img.exists(), "arm64 test fixture {} missing: run testdata/arm64/make-image.sh (scripts/test.sh does)", img.display());
    let before = sha256(&img);
    let _turn = my_turn();
    // tests/arm64.rs, run beside this binary, disables the host's aarch64 handler for a while.
    let _binfmt = binfmt_lock(false);
    let (tmp, home, uid) = user_tmp("kib-guestfs-shell-");
    let saved = home.join("saved.raw");
    let t0 = Instant::now();
    let args: Vec<std::ffi::OsString> = [
        "shell", "--backend", "guestfs", "--no-verify", "--disk-image", img.to_str().unwrap(), "--save", saved.to_str().unwrap(), "--work-dir", home.join("work").to_str().unwrap(),
        "--", "/bin/sh", "-c", "uname -m; id -u; echo made-by-kib-shell > /root/kib-shell; rm /etc/motd; exit 0",
    ]
    .map(std::ffi::OsString::from)
    .to_vec();
    let o = as_user(&home, &[], &refs(&args)).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "kib shell --backend guestfs: {out}\n{err}");
    eprintln!("kib shell --backend guestfs --save on the arm64 fixture: {:.0?}", t0.elapsed());
    // The image's own uname (qemu-user reports the emulated machine), as uid 0 inside.
    assert!(out.lines().any(|l| l == "aarch64") && out.lines().any(|l| l == "0"), "{out}\n{err}");
    assert!(err.contains("backend guestfs"), "{err}");
    assert_eq!(std::fs::metadata(&saved).unwrap().uid(), uid, "the saved disk belongs to the user");
    let m = Mounted::partition(&saved, 1, &tmp.path().join("saved"));
    assert_eq!(m.read("/root/kib-shell"), "made-by-kib-shell\n");
    let root_dir = std::fs::metadata(m.path("/root")).unwrap();
    assert_eq!((root_dir.uid(), root_dir.gid()), (0, 0), "/root keeps its owner");
    assert_eq!(std::fs::metadata(m.path("/root/kib-shell")).unwrap().uid(), 0, "a file the shell made is root's in the image");
    assert!(!m.path("/etc/motd").exists(), "the removal was not written back");
    drop(m);
    assert_eq!(sha256(&img), before, "the input changed");
    let left = wait_no_processes(uid, Duration::from_secs(15));
    assert!(left.is_empty(), "processes left: {left:#?}");
    assert_nothing_left(&home.join("work"));
    assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
}

/// The LVM + SELinux fixture (root and /var on logical volumes of rootvg, SELinux permissive)
/// customized by the user through the appliance, which activates the volume group in its own
/// kernel (the host's LVM never sees it), with `--disk-size`: the PV and the last LV grow in
/// place as with loop devices, the steps' files land on the right LVs with the labels
/// file_contexts gives their paths, and the BOM records the growth, the volume group, its LVs
/// and the filesystems as root reads them from the output with lvm. The input is bit-identical,
/// and nothing is left.
#[test]
fn a_normal_user_customizes_an_lvm_selinux_image_through_libguestfs() {
    if skip_unless_root("a_normal_user_customizes_an_lvm_selinux_image_through_libguestfs") {
        return;
    }
    let input = lvm_fixture("debian-12-lvm-selinux-amd64.raw");
    let before = sha256(&input);
    let (tmp, home, uid) = user_tmp("kib-guestfs-lvm-");
    let t = tmp.path();
    let manifest = home.join("lvm.yaml");
    let phase = |p: &str| repo().join("phases/node").join(p).display().to_string();
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {{name: lvm-guestfs}}\ninclude: [{}, {}]\nsteps:\n  - name: a file on the root LV\n    file: {{path: /etc/kib-lvm, content: \"root\\n\"}}\n  - name: a file on the /var LV\n    file: {{path: /var/lib/kib-lvm, content: \"var\\n\"}}\n",
            phase("kernel.yaml"),
            phase("no-auto-updates.yaml")
        ),
    )
    .unwrap();
    assert!(Command::new("chown").arg("-R").arg(format!("{USER}:")).arg(&home).status().unwrap().success());
    let out = home.join("out");
    let args: Vec<std::ffi::OsString> = [
        "customize", "--backend", "guestfs", "--disk-image", input.to_str().unwrap(), "--manifest", manifest.to_str().unwrap(), "--format", "raw", "--output-dir", out.to_str().unwrap(), "--work-dir", home.join("work").to_str().unwrap(),
        "--disk-size", "3584MiB",
    ]
    .map(std::ffi::OsString::from)
    .to_vec();
    let _turn = my_turn();
    let t0 = Instant::now();
    let o = as_user(&home, &[], &refs(&args)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the LVM image through guestfs as {USER}: {err}");
    eprintln!("LVM + SELinux fixture through guestfs as {USER}: {:.0?}", t0.elapsed());
    assert!(err.contains("LVM: volume group rootvg"), "{err}");
    assert_eq!(sha256(&input), before, "the input changed");
    let left = wait_no_processes(uid, Duration::from_secs(15));
    assert!(left.is_empty(), "processes left: {left:#?}");
    assert_nothing_left(&home.join("work"));
    assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));

    // The output's VG is the input's, grown as with loop devices: the PV fills the grown
    // partition and the last LV (varlv) takes the new 128 extents in one segment, its xfs grown;
    // the BOM says where each LV is now, as lvm reads it.
    let raw = out.join("lvm-guestfs.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 3584 << 20);
    let (vg_in, _, _) = read_vg(&input, 3, &t.join("lvm-in"));
    let (vg_out, pv_start, _) = read_vg(&raw, 3, &t.join("lvm-out"));
    assert_eq!((&vg_out.name, &vg_out.uuid), (&vg_in.name, &vg_in.uuid));
    assert!(vg_out.seqno > vg_in.seqno, "growth writes metadata: seqno {} -> {}", vg_in.seqno, vg_out.seqno);
    let (var_in, var_grown) = (vg_in.lv("varlv").unwrap(), vg_out.lv("varlv").unwrap());
    assert_eq!((var_grown.first_pe, var_grown.extent_count), (var_in.first_pe, var_in.extent_count + 128));
    assert_eq!(var_grown.first_pe + var_grown.extent_count, vg_out.pvs[0].pe_count, "varlv fills the grown PV");
    assert_eq!(vg_out.lv("rootlv").unwrap().extent_count, vg_in.lv("rootlv").unwrap().extent_count);
    let bom = kib::bom::Bom::read(&out.join("bom.json")).unwrap();
    let g = bom.disk_growth.as_ref().expect("disk_growth in the BOM");
    assert_eq!((g.partition, g.lv.as_deref(), g.fstype.as_str(), g.to_bytes), (3, Some("rootvg/varlv"), "xfs", 3584 << 20));
    assert_eq!(bom.volume_groups.len(), 1, "{:?}", bom.volume_groups);
    let vg = &bom.volume_groups[0];
    assert_eq!((vg.name.as_str(), vg.uuid.as_str(), vg.seqno), (vg_in.name.as_str(), vg_in.uuid.as_str(), vg_out.seqno));
    let (var, root) = (vg_out.lv("varlv").unwrap(), vg_out.lv("rootlv").unwrap());
    for (lv, mp) in [(root, "/"), (var, "/var")] {
        let rec = vg.lvs.iter().find(|l| l.name == lv.lv).unwrap();
        assert_eq!((rec.fstype.as_str(), rec.mount_point.as_deref(), rec.offset, rec.size, rec.partition), ("xfs", Some(mp), pv_start + lv.offset_bytes_in_pv, lv.size_bytes, 3), "{rec:?}");
        let want = format!("rootvg/{}", lv.lv);
        assert!(bom.filesystems.iter().any(|f| f.lv.as_deref() == Some(want.as_str()) && f.mount_point == mp && f.partition == 3 && f.fstype == "xfs" && !f.uuid.is_empty()), "{:?}", bom.filesystems);
    }
    let se = bom.selinux.as_ref().expect("selinux in the BOM");
    assert!(se.relabelled && se.policy == "default", "{se:?}");
    assert_eq!(bom.backend.as_ref().map(|b| b.name), Some(kib::backend::Backend::Guestfs));

    // Each file on its LV, root's, labelled as file_contexts says.
    let var_mnt = mount_lv(&raw, pv_start + var.offset_bytes_in_pv, var.size_bytes, "xfs", &t.join("mnt-var"));
    let root_mnt = mount_lv(&raw, pv_start + root.offset_bytes_in_pv, root.size_bytes, "xfs", &t.join("mnt-root"));
    assert_eq!(root_mnt.read("/etc/kib-lvm"), "root\n");
    assert_eq!(var_mnt.read("/lib/kib-lvm"), "var\n");
    let st = rustix::fs::statvfs(&var_mnt.dir).unwrap();
    assert!(st.f_blocks * st.f_frsize > var_in.size_bytes, "the xfs on varlv did not grow: {} bytes", st.f_blocks * st.f_frsize);
    assert!(!root_mnt.path("/var/lib/kib-lvm").exists(), "the /var file landed on the root LV");
    let fc = root_mnt.path("/etc/selinux/default/contexts/files/file_contexts");
    for (mnt, prefix, path) in [
        (&root_mnt, "", "/etc/kib-lvm"),
        (&root_mnt, "", "/etc/sysctl.d/99-kubernetes.conf"),
        (&root_mnt, "", "/etc/modules-load.d/kubernetes.conf"),
        (&var_mnt, "/var", "/lib/kib-lvm"),
    ] {
        let image_path = format!("{prefix}{path}");
        let m = std::fs::metadata(mnt.path(path)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{image_path} is root's");
        let have = selinux_label(&mnt.path(path));
        assert!(!have.is_empty(), "{image_path} has no SELinux label");
        assert_eq!(have, selinux_wanted(&fc, &image_path), "{image_path}");
    }
}

/// `kib matrix run` as the user: `--backend auto` resolves to guestfs for a normal user, each
/// build runs through the appliance into folders the user owns, the matrix's record says built,
/// a second run finds the build up to date, and a forced one gets the outputs from the build
/// cache (which keeps outputs, not snapshots, under guestfs), without starting an appliance.
#[test]
fn a_normal_user_runs_a_matrix_through_libguestfs() {
    if skip_unless_root("a_normal_user_runs_a_matrix_through_libguestfs") {
        return;
    }
    let (tmp, home, uid) = user_tmp("kib-guestfs-matrix-");
    let img = tiny_image(tmp.path(), "tiny.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=12\n"), ("/etc/debian_version", "12.0\n"), ("/etc/fstab", "# none\n"), ("/bin/.keep", "")]);
    let sum = sha256(&img);
    std::fs::write(home.join("m.yaml"), "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: tiny}\nsteps:\n  - name: a file\n    file: {path: /etc/kib-matrix, content: \"x\\n\"}\noutput: {formats: [raw]}\n").unwrap();
    std::fs::write(home.join("matrix.yaml"), format!("apiVersion: kib/v1\nkind: ImageMatrix\nbases:\n  tiny:\n    amd64: {{path: {}, sha256: {sum}}}\nmanifests: [m.yaml]\narches: [amd64]\n", img.display())).unwrap();
    assert!(Command::new("chown").arg("-R").arg(format!("{USER}:")).arg(&home).arg(&img).status().unwrap().success());
    let out = home.join("out");
    // No --work-dir: a normal user's default is in their cache folder.
    let args: Vec<std::ffi::OsString> = ["matrix", "run", home.join("matrix.yaml").to_str().unwrap(), "--output-dir", out.to_str().unwrap()]
        .map(std::ffi::OsString::from)
        .to_vec();
    let _turn = my_turn();
    let o = as_user(&home, &[], &refs(&args)).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "kib matrix run as {USER}: {stdout}\n{stderr}");
    assert!(stderr.contains("backend guestfs (--backend auto: not root) for every build"), "{stderr}");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("matrix.json")).unwrap()).unwrap();
    let builds = rec["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0]["status"], "built", "{rec:#}");
    let name = builds[0]["name"].as_str().unwrap();
    let dir = out.join(name);
    let raw = dir.join(format!("{name}.raw"));
    let first = bom(&dir);
    assert_eq!(first["backend"]["name"], "guestfs", "{}", first["backend"]);
    assert_eq!(std::fs::metadata(&raw).unwrap().uid(), uid, "the output belongs to the user");
    // The user's cache, not root's.
    assert!(home.join(".cache/kib").is_dir(), "no cache in the user's home");
    let m = Mounted::partition(&raw, 1, &tmp.path().join("mnt"));
    assert_eq!(m.read("/etc/kib-matrix"), "x\n");
    drop(m);
    // Again: up to date, in well under an appliance's start.
    let t0 = Instant::now();
    let o = as_user(&home, &[], &refs(&args)).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("1 up to date"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // --force runs the build again; its build cache (outputs only under guestfs) publishes the
    // stored outputs without starting an appliance.
    let mut forced = args.clone();
    forced.push("--force".into());
    let t0 = Instant::now();
    let o = as_user(&home, &[], &refs(&forced)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = bom(&dir);
    assert!(again["build_cache"]["outputs_reused_from"].is_string(), "{}", again["build_cache"]);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let m = Mounted::partition(&raw, 1, &tmp.path().join("mnt"));
    assert_eq!(m.read("/etc/kib-matrix"), "x\n");
    drop(m);
    let left = wait_no_processes(uid, Duration::from_secs(15));
    assert!(left.is_empty(), "processes left: {left:#?}");
    let work = home.join(".cache/kib/work");
    assert!(work.is_dir(), "no default work directory base {}", work.display());
    assert_nothing_left(&work);
}

/// manifests/k8s-node-debian.yaml plus an `images` step that pre-loads a one-layer fixture image
/// (umoci and skopeo, a docker-archive of /bin/true, from a file:// URL), written into `home` with
/// its includes made absolute so that the user can read it. Returns its path.
fn node_manifest_with_an_image(home: &Path) -> PathBuf {
    let archive = home.join("true.tar");
    let script = r#"set -eu
w=$1; out=$2
umoci init --layout "$w/oci"
umoci new --image "$w/oci:fixture"
umoci unpack --image "$w/oci:fixture" "$w/bundle" >/dev/null
mkdir -p "$w/bundle/rootfs/usr/local/bin"
cp /bin/true "$w/bundle/rootfs/usr/local/bin/true"
umoci repack --image "$w/oci:fixture" "$w/bundle"
umoci config --image "$w/oci:fixture" --os linux --architecture amd64 --config.entrypoint /usr/local/bin/true \
    --config.label "org.opencontainers.image.description=kib TEST FIXTURE"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$w/policy.json"
skopeo --policy "$w/policy.json" copy -q "oci:$w/oci:fixture" "docker-archive:$out:kib.example/fixture/true:1"
"#;
    let w = tempfile::tempdir().unwrap();
    let st = Command::new("bash").args(["-c", script, "make-image"]).arg(w.path()).arg(&archive).status().unwrap();
    assert!(st.success(), "building the image fixture with umoci and skopeo failed");
    let text = std::fs::read_to_string(repo().join("manifests/k8s-node-debian.yaml")).unwrap();
    let mut m: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
    for inc in m["include"].as_sequence_mut().unwrap() {
        *inc = yaml_serde::Value::String(repo().join(inc.as_str().unwrap()).display().to_string());
    }
    let step: yaml_serde::Value = yaml_serde::from_str(&format!(
        "name: a fixture image\nimages:\n  namespace: k8s.io\n  archives:\n    - url: file://{}\n      sha256: {}\n",
        archive.display(),
        sha256(&archive)
    ))
    .unwrap();
    m["steps"].as_sequence_mut().unwrap().push(step);
    let path = home.join("k8s-node-debian.yaml");
    std::fs::write(&path, yaml_serde::to_string(&m).unwrap()).unwrap();
    path
}

/// Every path below `dir`, not following symlinks.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

fn refs(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

/// The pid of the oldest process of `uid` whose command line contains `needle`.
fn processes_of_pid_named(uid: u32, needle: &str) -> Option<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| std::fs::metadata(format!("/proc/{p}")).is_ok_and(|m| m.uid() == uid))
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(&assert_cmd::cargo::cargo_bin("kib").to_string_lossy().to_string()) && c.contains(needle)))
        .collect();
    pids.sort();
    pids.first().copied()
}
