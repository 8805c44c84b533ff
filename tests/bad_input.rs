//! The bad-input table: every kind of bad input kib promises to handle, run through
//! `kib customize`. Each case must fail with a non-zero exit and an error that says what is wrong
//! (checked on the text), leave the input bit-identical (SHA-256), and leave nothing behind: no
//! loop device or mount mentioning the case's folder, no work directory, nothing in the output
//! folder, no partial download in the cache, no process still running in the image.
//!
//! Cases run one after another in one test (they share nothing but the base image); every case
//! runs even when an earlier one fails, and the failures are reported together.

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testserver::MirrorServer;

/// What a case prepares in its own temporary folder.
struct Setup {
    image: PathBuf,
    manifest: PathBuf,
    args: Vec<String>,
    /// Kept alive while kib runs (a mirror on 127.0.0.1).
    _server: Option<Box<dyn std::any::Any>>,
    /// Fragments the error must contain besides the case's own (values computed by the setup).
    expect: Vec<String>,
}

struct Case {
    name: &'static str,
    setup: fn(&Path) -> Setup,
    /// Fragments the error must contain. `{tmp}` stands for the case's folder.
    expect: &'static [&'static str],
}

/// The lines from kib's `error: ` line on.
fn the_error(stderr: &str) -> &str {
    stderr.find("\nerror: ").map_or(stderr, |i| &stderr[i + 1..])
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::write(&path, text).unwrap();
    path
}

/// A valid manifest with one harmless step; the image is what is wrong.
fn plain_manifest(tmp: &Path) -> PathBuf {
    write(
        tmp.join("plain.yaml"),
        "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: marker\n    file: {path: /etc/kib-marker, content: x}\noutput: {formats: [raw]}\n",
    )
}

fn with_image(image: PathBuf, tmp: &Path) -> Setup {
    Setup { image, manifest: plain_manifest(tmp), args: Vec::new(), _server: None, expect: Vec::new() }
}

/// A tiny GPT image whose ext4 root has an os-release, so that only the damage is wrong.
fn good_tiny(tmp: &Path) -> PathBuf {
    tiny_image(tmp, "disk.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")])
}

/// A tiny image that can run shell scripts: dash as /bin/sh, sleep, and the host's libc.
fn runnable_tiny(tmp: &Path) -> PathBuf {
    let tree = tmp.join("run.raw.tree");
    for (host, guest) in [
        ("/bin/dash", "bin/sh"),
        ("/usr/bin/sleep", "bin/sleep"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
    ] {
        let to = tree.join(guest);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(host, &to).unwrap();
    }
    for mountpoint in ["proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(tree.join(mountpoint)).unwrap();
    }
    tiny_image(tmp, "run.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")])
}

fn qcow2_of(raw: &Path) -> PathBuf {
    let q = raw.with_extension("qcow2");
    sh(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(raw).arg(&q));
    std::fs::remove_file(raw).unwrap();
    q
}

/// CRC-32 (IEEE), as GPT uses, to forge tables whose checksums are right.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Applies `edit` to the entry array of both GPT headers (primary, sector 1; backup, last
/// sector) of a 512-byte-sector disk, then recomputes every CRC: a table that is intact but says
/// what the test wants.
fn forge_gpt_entries(disk: &Path, edit: impl Fn(&mut [u8])) {
    let mut b = std::fs::read(disk).unwrap();
    let len = b.len();
    for header in [512, len - 512] {
        let array = le64(&b, header + 72) as usize * 512;
        let n = u32::from_le_bytes(b[header + 80..header + 84].try_into().unwrap()) as usize * 128;
        edit(&mut b[array..array + n]);
        let array_crc = crc32(&b[array..array + n]);
        b[header + 88..header + 92].copy_from_slice(&array_crc.to_le_bytes());
        b[header + 16..header + 20].fill(0);
        let crc = crc32(&b[header..header + 92]);
        b[header + 16..header + 20].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(disk, b).unwrap();
}

/// A one-shot HTTP server that announces `announced` bytes, sends `sent`, and hangs up.
fn short_server(announced: usize, sent: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/kubelet", listener.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(sent);
        }
    });
    (url, t)
}

fn download_manifest(tmp: &Path, url: &str, sha256: &str) -> PathBuf {
    write(
        tmp.join("dl.yaml"),
        &format!(
            "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: fetch kubelet\n    download: {{url: \"{url}\", sha256: \"{sha256}\", path: /usr/bin/kubelet}}\noutput: {{formats: [raw]}}\n"
        ),
    )
}

const CASES: &[Case] = &[
    Case {
        name: "truncated qcow2",
        setup: |tmp| {
            let q = qcow2_of(&good_tiny(tmp));
            let len = std::fs::metadata(&q).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&q).unwrap().set_len(len / 2).unwrap();
            with_image(q, tmp)
        },
        expect: &["disk.qcow2 is a damaged qcow2 image: qemu-img check found", "corruption(s)", "ERROR"],
    },
    Case {
        name: "corrupt qcow2 (L1 table entry past the end of the file)",
        setup: |tmp| {
            let q = qcow2_of(&good_tiny(tmp));
            let mut b = std::fs::read(&q).unwrap();
            let l1 = u64::from_be_bytes(b[40..48].try_into().unwrap()) as usize;
            b[l1..l1 + 8].copy_from_slice(&((1u64 << 63) | 0x7fff_0000).to_be_bytes());
            std::fs::write(&q, b).unwrap();
            with_image(q, tmp)
        },
        expect: &["disk.qcow2 is a damaged qcow2 image", "l1_index=0"],
    },
    Case {
        name: "corrupt qcow2 header (unknown version)",
        setup: |tmp| {
            let q = qcow2_of(&good_tiny(tmp));
            let mut b = std::fs::read(&q).unwrap();
            b[4..8].copy_from_slice(&9u32.to_be_bytes());
            std::fs::write(&q, b).unwrap();
            with_image(q, tmp)
        },
        expect: &["disk.qcow2 is not a disk image qemu-img can read", "Unsupported qcow2 version 9"],
    },
    Case {
        name: "GPT with bad CRCs (primary entries, backup header)",
        setup: |tmp| {
            let img = good_tiny(tmp);
            let mut b = std::fs::read(&img).unwrap();
            let len = b.len();
            b[1024 + 60] ^= 0xff; // a byte of the first entry's name, in the primary array
            b[len - 512 + 60] ^= 0xff; // a byte of the disk GUID, in the backup header
            std::fs::write(&img, b).unwrap();
            with_image(img, tmp)
        },
        expect: &[
            "the GPT partition table is corrupt (primary and backup)",
            "primary header: corrupted partition entry array CRC32 checksum",
            "backup header: corrupted CRC32 checksum",
        ],
    },
    Case {
        name: "GPT with overlapping partitions (CRCs right)",
        setup: |tmp| {
            let img = tmp.join("overlap.raw");
            std::fs::File::create(&img).unwrap().set_len(24 << 20).unwrap();
            let mut c = Command::new("sfdisk").arg("--quiet").arg(&img).stdin(std::process::Stdio::piped()).spawn().unwrap();
            c.stdin.take().unwrap().write_all(b"label: gpt\nstart=2048, size=20480, type=linux\nstart=24576, type=linux\n").unwrap();
            assert!(c.wait().unwrap().success());
            // The second partition now starts inside the first.
            forge_gpt_entries(&img, |e| e[128 + 32..128 + 40].copy_from_slice(&4096u64.to_le_bytes()));
            with_image(img, tmp)
        },
        expect: &["reading the partition table", "partitions 1 and 2 overlap"],
    },
    Case {
        name: "a text file, not a disk image",
        setup: |tmp| with_image(write(tmp.join("notes.txt"), &"just some text, not a disk\n".repeat(2000)), tmp),
        expect: &["no Linux root filesystem found", "no partition table, and no filesystem kib recognizes on the whole disk"],
    },
    Case {
        name: "random bytes, not a disk image",
        setup: |tmp| {
            // xorshift: 4 MiB of noise, no magic numbers anywhere but by chance.
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let bytes: Vec<u8> = (0..4 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let p = tmp.join("noise.img");
            std::fs::write(&p, bytes).unwrap();
            with_image(p, tmp)
        },
        expect: &["no Linux root filesystem found", "no partition table"],
    },
    Case {
        name: "an image with no OS (partitioned, empty ext4)",
        setup: |tmp| with_image(tiny_image(tmp, "empty.raw", &[]), tmp),
        expect: &["no Linux root filesystem found", "partition 1 (ext4) has no /etc/os-release"],
    },
    Case {
        name: "the image's filesystem fills up during a step",
        setup: |tmp| {
            let www = tmp.join("www");
            std::fs::create_dir_all(&www).unwrap();
            let big = vec![7u8; 40 << 20]; // for a 20 MiB filesystem
            std::fs::write(www.join("big.bin"), &big).unwrap();
            let server = MirrorServer::start(&www);
            let m = write(
                tmp.join("full.yaml"),
                &format!(
                    "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: too big\n    download: {{url: \"{}/big.bin\", sha256: \"{}\", path: /big.bin}}\n",
                    server.url(),
                    kib::hash::sha256_bytes(&big)
                ),
            );
            Setup { image: runnable_tiny(tmp), manifest: m, args: Vec::new(), _server: Some(Box::new(server)), expect: Vec::new() }
        },
        expect: &["step 1/1 `too big` (download", "no space left in the image", "disk.size"],
    },
    Case {
        name: "a manifest that includes itself",
        setup: |tmp| {
            let m = write(tmp.join("loop.yaml"), "apiVersion: kib/v1\nkind: Phase\ninclude: [loop.yaml]\n");
            let top = write(tmp.join("top.yaml"), "apiVersion: kib/v1\nkind: ImageManifest\ninclude: [loop.yaml]\n");
            let _ = m;
            Setup { image: good_tiny(tmp), manifest: top, args: Vec::new(), _server: None, expect: Vec::new() }
        },
        expect: &["manifest includes itself: {tmp}/top.yaml -> {tmp}/loop.yaml -> {tmp}/loop.yaml"],
    },
    Case {
        name: "an undefined template variable",
        setup: |tmp| {
            let m = write(
                tmp.join("vars.yaml"),
                "apiVersion: kib/v1\nkind: ImageManifest\nvariables: {k8s: \"1.30\"}\nsteps:\n  - name: version file\n    file:\n      path: /etc/k8s\n      content: \"${k8s} ${kubernetes_vesion}\"\n",
            );
            Setup { image: good_tiny(tmp), manifest: m, args: Vec::new(), _server: None, expect: Vec::new() }
        },
        expect: &["{tmp}/vars.yaml:8: step `version file`: undefined variable `${kubernetes_vesion}`"],
    },
    Case {
        name: "a manifest field with a typo",
        setup: |tmp| {
            let m = write(
                tmp.join("typo.yaml"),
                "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: tools\n    packages:\n      instal: [jq]\n",
            );
            Setup { image: good_tiny(tmp), manifest: m, args: Vec::new(), _server: None, expect: Vec::new() }
        },
        expect: &["{tmp}/typo.yaml:6:", "steps[0].packages", "unknown field `instal`"],
    },
    Case {
        name: "a download whose hash is wrong",
        setup: |tmp| {
            let www = tmp.join("www");
            std::fs::create_dir_all(&www).unwrap();
            std::fs::write(www.join("kubelet"), b"tampered").unwrap();
            let server = MirrorServer::start(&www);
            let (expected, actual) = (kib::hash::sha256_bytes(b"the real kubelet"), kib::hash::sha256_bytes(b"tampered"));
            let m = download_manifest(tmp, &format!("{}/kubelet", server.url()), &expected);
            Setup { image: runnable_tiny(tmp), manifest: m, args: Vec::new(), _server: Some(Box::new(server)), expect: vec![expected, actual] }
        },
        expect: &["step 1/1 `fetch kubelet` (download", "sha256 mismatch"],
    },
    Case {
        name: "a download cut short (size differs from Content-Length)",
        setup: |tmp| {
            let (url, t) = short_server(1_000_000, b"#!/bin/sh\n# only the first bytes of kubelet");
            let m = download_manifest(tmp, &url, &"0".repeat(64));
            Setup { image: runnable_tiny(tmp), manifest: m, args: Vec::new(), _server: Some(Box::new(t)), expect: Vec::new() }
        },
        expect: &["step 1/1 `fetch kubelet` (download", "downloading http://127.0.0.1:", "the connection was cut after 43 of 1000000 bytes"],
    },
    Case {
        name: "a step that hangs past its timeout",
        setup: |tmp| {
            let m = write(
                tmp.join("hang.yaml"),
                "apiVersion: kib/v1\nkind: ImageManifest\nsteps:\n  - name: hangs\n    timeout: 3s\n    run:\n      script: |\n        echo about to hang\n        sleep 600 &\n        sleep 600\n",
            );
            Setup { image: runnable_tiny(tmp), manifest: m, args: Vec::new(), _server: None, expect: Vec::new() }
        },
        expect: &["step 1/1 `hangs` (run", "did not finish within 3s and was stopped", "| about to hang"],
    },
    Case {
        name: "an output that would replace the input (the same path)",
        setup: |tmp| {
            // plain.yaml writes <name>.raw, name `plain`, into tmp/out: where the input is.
            std::fs::create_dir_all(tmp.join("out")).unwrap();
            let img = good_tiny(tmp);
            let inside = tmp.join("out/plain.raw");
            std::fs::rename(&img, &inside).unwrap();
            let mut s = with_image(inside, tmp);
            s.expect.push(format!("the output {}/out/plain.raw would replace the input image {}/out/plain.raw", tmp.display(), tmp.display()));
            s
        },
        expect: &["kib never modifies its input"],
    },
    Case {
        name: "an output that would replace the input (through a symlinked output folder)",
        setup: |tmp| {
            std::fs::create_dir_all(tmp.join("images")).unwrap();
            let img = good_tiny(tmp);
            std::fs::rename(&img, tmp.join("images/plain.raw")).unwrap();
            std::os::unix::fs::symlink(tmp.join("images"), tmp.join("out")).unwrap();
            with_image(tmp.join("images/plain.raw"), tmp)
        },
        expect: &["the output {tmp}/out/plain.raw would replace the input image {tmp}/images/plain.raw"],
    },
    Case {
        name: "an output that would replace the input (a hard link to it in the output folder)",
        setup: |tmp| {
            std::fs::create_dir_all(tmp.join("out")).unwrap();
            let img = good_tiny(tmp);
            std::fs::hard_link(&img, tmp.join("out/bom.json")).unwrap();
            with_image(img, tmp)
        },
        expect: &["the output {tmp}/out/bom.json would replace the input image {tmp}/disk.raw (the same file, through a hard link or a bind mount)"],
    },
];

/// Runs one case; returns what went wrong, if anything.
fn run_case(case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let setup = (case.setup)(t);
    let before = sha256(&setup.image);
    let args: Vec<&str> = setup.args.iter().map(String::as_str).collect();
    let start = std::time::Instant::now();
    let (ok, stderr) = customize_in(&setup.image, &setup.manifest, t, &args);
    let took = start.elapsed();
    let mut problems = Vec::new();
    if ok {
        problems.push("kib succeeded".to_string());
    }
    let err = the_error(&stderr);
    if !err.starts_with("error: ") {
        problems.push("no `error:` line".to_string());
    }
    for e in case.expect.iter().copied().chain(setup.expect.iter().map(String::as_str)) {
        let e = e.replace("{tmp}", &t.to_string_lossy());
        if !err.contains(&e) {
            problems.push(format!("error lacks {e:?}"));
        }
    }
    if sha256(&setup.image) != before {
        problems.push("the input image changed".to_string());
    }
    let left = leftovers(t);
    if !left.is_empty() {
        problems.push(format!("loop devices or mounts left: {left:?}"));
    }
    let procs = processes_rooted_in(t);
    if !procs.is_empty() {
        problems.push(format!("processes left running in the image: {procs:?}"));
    }
    for (dir, what) in [("work", "work directories"), ("out", "output files"), ("cache/tmp", "partial downloads")] {
        let d = t.join(dir);
        if d.exists() {
            // The input itself may lie there (the cases of outputs that would replace it).
            let input = std::fs::metadata(&setup.image).map(|m| (m.dev(), m.ino())).ok();
            let names: Vec<_> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| std::fs::metadata(e.path()).map(|m| (m.dev(), m.ino())).ok() != input)
                .map(|e| e.file_name())
                .collect();
            if !names.is_empty() {
                problems.push(format!("{what} left in {}: {names:?}", d.display()));
            }
        }
    }
    eprintln!("bad input `{}`: exit {}, {:.1}s; error:\n{}", case.name, if ok { "0" } else { "non-zero" }, took.as_secs_f64(), err.trim_end());
    if problems.is_empty() { Ok(()) } else { Err(format!("`{}`: {}\n--- stderr ---\n{stderr}", case.name, problems.join("; "))) }
}

#[test]
fn every_bad_input_fails_clearly_and_leaves_nothing_behind() {
    if common::skip_unless_root("every_bad_input_fails_clearly_and_leaves_nothing_behind") {
        return;
    }
    let failures: Vec<String> = CASES.iter().filter_map(|c| run_case(c).err()).collect();
    eprintln!(
        "bad inputs tried: {}; failed cleanly with the expected error and left nothing behind: {}",
        CASES.len(),
        CASES.len() - failures.len()
    );
    assert!(failures.is_empty(), "{} of {} bad inputs misbehaved:\n{}", failures.len(), CASES.len(), failures.join("\n\n"));
}
