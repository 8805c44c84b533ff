//! `--disk-image URL`: base images downloaded through the fetcher from a server on 127.0.0.1
//! (src/fetch/testserver.rs) that serves the cached Debian 12 base image beside its real
//! SHA256SUMS, laid out like a distribution's image directory. Covered: a URL build whose
//! download is cut once and resumes (HTTP Range), a second build from the cache with the server
//! stopped, `kib fetch --disk-image` then an `--offline` build, the BOM's record of the URL, and
//! the bad inputs (404, a connection cut for good, a list that does not name the image, a
//! tampered image, offline with nothing cached), each leaving nothing behind: no partial file in
//! the cache, no output, no work directory, loop device or mount.
//!
//! The manifest is testdata/bench/overhead.yaml (one file, one command), so the time goes to
//! the download and Phase 0/2, not to apt. The bad inputs use a tiny image fixture instead of
//! the 2 GiB base image.

mod common;

#[path = "../src/fetch/testserver.rs"]
mod testserver;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use testserver::{Behaviour, MirrorServer};

const NAME: &str = "debian-12-genericcloud-amd64.raw";

/// `www/debian/12/` holding the base image (a symlink to it) and the SHA256SUMS that
/// make-base-image.sh wrote beside it, as cloud.debian.org lays out an image directory.
fn image_dir(tmp: &Path) -> PathBuf {
    let www = tmp.join("www");
    let dir = www.join("debian/12");
    std::fs::create_dir_all(&dir).unwrap();
    let base = base_image();
    std::os::unix::fs::symlink(&base, dir.join(NAME)).unwrap();
    std::fs::copy(base.with_file_name("SHA256SUMS"), dir.join("SHA256SUMS")).unwrap();
    www
}

fn overhead() -> PathBuf {
    repo().join("testdata/bench/overhead.yaml")
}

/// `kib customize --disk-image URL` of the overhead manifest into `tmp/<out>`, caching in `cache`.
fn customize_url(url: &str, tmp: &Path, out: &str, cache: &Path, extra: &[&str]) -> (bool, String) {
    let o = Command::new(assert_cmd::cargo::cargo_bin("kib"))
        .current_dir(repo())
        .args(["customize", "--no-cache", "--disk-image", url, "--manifest"])
        .arg(overhead())
        .arg("--output-dir")
        .arg(tmp.join(out))
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn bom(out: &Path) -> kib::bom::Bom {
    kib::bom::Bom::read(&out.join("bom.json")).unwrap()
}

/// Files in the cache's `sha256/` and `tmp/` folders.
fn cached_files(cache: &Path) -> Vec<String> {
    ["sha256", "tmp", "images"]
        .iter()
        .filter_map(|d| std::fs::read_dir(cache.join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path().display().to_string())
        .collect()
}

fn base_sum() -> String {
    let text = std::fs::read_to_string(base_image().with_file_name("SHA256SUMS")).unwrap();
    text.split_whitespace().next().unwrap().to_string()
}

#[test]
fn a_url_build_resumes_a_cut_download_then_builds_from_the_cache_with_the_server_stopped() {
    if skip_unless_root("a_url_build_resumes_a_cut_download_then_builds_from_the_cache_with_the_server_stopped") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let www = image_dir(tmp.path());
    // The first response is cut after 300 MiB: the download must resume, not start over.
    let cut = 300 << 20;
    let server = MirrorServer::start_with(&www, Behaviour { cut_after: Some(cut), cut_times: 1, ..Default::default() });
    let url = format!("{}/debian/12/{NAME}", server.url());
    let cache = tmp.path().join("cache");
    let t = std::time::Instant::now();
    let (ok, err) = customize_url(&url, tmp.path(), "out1", &cache, &[]);
    eprintln!("first URL build (download included): {:.1?}", t.elapsed());
    assert!(ok, "{err}");
    assert!(err.contains(&format!("resuming at byte {cut}")), "{err}");
    // The transfer is a task of the progress display: piped, a line when it ends.
    assert!(err.lines().any(|l| l.trim_start().starts_with(&format!("download {url}: done in"))), "{err}");
    assert_eq!(*server.ranges.lock().unwrap(), [format!("/debian/12/{NAME} bytes={cut}-")]);
    let b = bom(&tmp.path().join("out1"));
    assert_eq!(b.input.url.as_deref(), Some(url.as_str()));
    assert_eq!(b.input.sha256, base_sum());
    assert_eq!(b.input.verified_against.as_deref(), Some(format!("{}/debian/12/SHA256SUMS", server.url()).as_str()));
    assert!(b.input.path.starts_with(&cache), "{:?}", b.input.path);
    assert!(tmp.path().join("out1/bench-overhead.qcow2").is_file());
    assert_nothing_left(&tmp.path().join("work"));
    assert!(std::fs::read_dir(cache.join("tmp")).unwrap().next().is_none(), "a temporary download left in the cache");

    // The server is gone: the second build reads the list and the image from the cache.
    drop(server);
    let t = std::time::Instant::now();
    let (ok, err) = customize_url(&url, tmp.path(), "out2", &cache, &[]);
    eprintln!("second URL build (from the cache): {:.1?}", t.elapsed());
    assert!(ok, "{err}");
    assert!(!err.contains("downloading"), "{err}");
    let b2 = bom(&tmp.path().join("out2"));
    assert_eq!((b2.input.url.as_deref(), b2.input.sha256.as_str()), (Some(url.as_str()), b.input.sha256.as_str()));
    // Same manifest, same input: the same files in the image.
    assert_eq!(b2.steps.iter().map(|s| &s.files).collect::<Vec<_>>(), b.steps.iter().map(|s| &s.files).collect::<Vec<_>>());
    assert_nothing_left(&tmp.path().join("work"));
}

#[test]
fn kib_fetch_fills_the_cache_and_an_offline_url_build_uses_it() {
    if skip_unless_root("kib_fetch_fills_the_cache_and_an_offline_url_build_uses_it") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let www = image_dir(tmp.path());
    let server = MirrorServer::start(&www);
    // The URL names the upstream host; the mirror map sends it to 127.0.0.1.
    let url = format!("https://cloud.debian.org/images/cloud/bookworm/latest/{NAME}");
    let mirror = format!("https://cloud.debian.org/images/cloud/bookworm/latest={}/debian/12", server.url());
    let cache = tmp.path().join("usb-cache");

    // Offline with an empty cache: the message says how to fill it; nothing is requested.
    let (ok, err) = customize_url(&url, tmp.path(), "out", &cache, &["--offline", "--mirror", &mirror]);
    assert!(!ok);
    assert!(err.contains("offline: not in the cache") && err.contains(&format!("kib fetch --disk-image {url}")), "{err}");
    assert!(server.requests.lock().unwrap().is_empty());

    let o = kib().args(["fetch", "--disk-image", &url, "--mirror", &mirror, "--cache-dir"]).arg(&cache).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.starts_with(&format!("{}  {url}  ({}/debian/12/{NAME}, ", base_sum(), server.url())), "{listed}");
    assert!(listed.contains("verified against https://cloud.debian.org/images/cloud/bookworm/latest/SHA256SUMS"), "{listed}");
    drop(server);

    let (ok, err) = customize_url(&url, tmp.path(), "out", &cache, &["--offline"]);
    assert!(ok, "{err}");
    let b = bom(&tmp.path().join("out"));
    assert_eq!(b.input.url.as_deref(), Some(url.as_str()));
    assert_eq!(b.input.sha256, base_sum());
    assert_nothing_left(&tmp.path().join("work"));
}

/// A tiny image (os-release and the host's /bin/sh), served with its SHA256SUMS from `www/img/`.
fn tiny_served(tmp: &Path) -> (PathBuf, String) {
    let tree = tmp.join("node.raw.tree/bin");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("sh"), std::fs::read("/bin/dash").unwrap()).unwrap();
    let img = tiny_image(tmp, "node.raw", &[("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")]);
    let dir = tmp.join("www/img");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::rename(&img, dir.join("node.raw")).unwrap();
    let sum = sha256(&dir.join("node.raw"));
    std::fs::write(dir.join("SHA256SUMS"), format!("{sum}  node.raw\n")).unwrap();
    (tmp.join("www"), sum)
}

/// A failed URL build left nothing: no file in the cache but checksum lists, no output folder
/// contents, no work directory, loop device or mount.
fn assert_failed_cleanly(tmp: &Path, cache: &Path) {
    let left = cached_files(cache);
    assert!(left.is_empty(), "left in the cache: {left:?}");
    let out = tmp.join("out");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "outputs written");
    assert_nothing_left(&tmp.join("work"));
}

#[test]
fn bad_urls_say_what_is_wrong_and_leave_nothing() {
    if skip_unless_root("bad_urls_say_what_is_wrong_and_leave_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (www, sum) = tiny_served(tmp.path());
    let server = MirrorServer::start(&www);
    let cache = tmp.path().join("cache");
    let base = server.url();

    // 404.
    let (ok, err) = customize_url(&format!("{base}/img/missing.raw"), tmp.path(), "out", &cache, &["--disk-image-sha256", &sum]);
    assert!(!ok);
    assert!(err.contains(&format!("fetching the base image {base}/img/missing.raw")) && err.contains("the server answered 404 Not Found"), "{err}");
    assert_failed_cleanly(tmp.path(), &cache);

    // A list that does not name the image: the list and the name looked for are named, and the
    // image is not downloaded.
    std::fs::copy(www.join("img/node.raw"), www.join("img/node-renamed.raw")).unwrap();
    let (ok, err) = customize_url(&format!("{base}/img/node-renamed.raw"), tmp.path(), "out", &cache, &[]);
    assert!(!ok);
    assert!(err.contains(&format!("{base}/img/SHA256SUMS does not name `node-renamed.raw`")) && err.contains("--disk-image-sha256"), "{err}");
    assert!(!server.requests.lock().unwrap().iter().any(|p| p.ends_with("node-renamed.raw")));
    assert_failed_cleanly(tmp.path(), &cache);

    // A tampered image: both sums, nothing cached.
    let mut bytes = std::fs::read(www.join("img/node.raw")).unwrap();
    bytes[(1 << 20) + 1024] ^= 0xff;
    std::fs::write(www.join("img/node.raw"), &bytes).unwrap();
    let tampered = kib::hash::sha256_bytes(&bytes);
    let (ok, err) = customize_url(&format!("{base}/img/node.raw"), tmp.path(), "out", &cache, &[]);
    assert!(!ok);
    assert!(err.contains(&format!("the download's sha256 is {tampered}, but {base}/img/SHA256SUMS lists {sum}")) && err.contains("Nothing was cached"), "{err}");
    assert_failed_cleanly(tmp.path(), &cache);

    // A connection cut for good, by a server that cannot resume: the byte count is named.
    // Back to the real image.
    drop(server);
    bytes[(1 << 20) + 1024] ^= 0xff;
    std::fs::write(www.join("img/node.raw"), &bytes).unwrap();
    let server = MirrorServer::start_with(&www, Behaviour { cut_after: Some(5 << 20), cut_times: u32::MAX, ranges: false, ..Default::default() });
    let url = format!("{}/img/node.raw", server.url());
    let (ok, err) = customize_url(&url, tmp.path(), "out", &cache, &["--fetch-retries", "1"]);
    assert!(!ok);
    // The first cut made progress and was retried at once (the server ignored the Range and
    // started over), the second made none and used up the one retry, the third gave up.
    assert!(err.contains(&format!("the connection was cut after {} of {} bytes", 5 << 20, 24 << 20)) && err.contains("3 tries"), "{err}");
    assert_failed_cleanly(tmp.path(), &cache);

    // The same server once it stops cutting: the build works, and records the URL.
    server.behaviour.lock().unwrap().cut_times = 0;
    let (ok, err) = customize_url(&url, tmp.path(), "out", &cache, &["--phases", "0"]);
    assert!(ok, "{err}");
    assert_eq!(bom(&tmp.path().join("out")).input.url.as_deref(), Some(url.as_str()));
    assert_nothing_left(&tmp.path().join("work"));
}
