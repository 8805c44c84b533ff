use super::*;

#[path = "testserver.rs"]
mod testserver;
use testserver::{Behaviour, MirrorServer};
use std::path::Path;
use std::sync::Arc;

#[test]
fn mirror_map_uses_the_longest_prefix_at_a_boundary() {
    let m = MirrorMap::parse(&["https://dl.k8s.io=http://m/k8s".into(), "https://dl.k8s.io/release=http://m/rel/".into()]).unwrap();
    assert_eq!(m.resolve("https://dl.k8s.io/release/v1.30.0/bin/linux/amd64/kubelet"), "http://m/rel/v1.30.0/bin/linux/amd64/kubelet");
    assert_eq!(m.resolve("https://dl.k8s.io/other"), "http://m/k8s/other");
    assert_eq!(m.resolve("https://dl.k8s.io.evil.example/x"), "https://dl.k8s.io.evil.example/x");
    assert_eq!(m.resolve("https://github.com/x"), "https://github.com/x");
    let e = MirrorMap::parse(&["nonsense".into()]).unwrap_err();
    assert!(matches!(&e, FetchError::BadMirror(s) if s == "nonsense"), "{e}");
    assert_eq!(e.to_string(), "--mirror nonsense: expected FROM=TO, such as https://dl.k8s.io=http://mirror.local/k8s");
    assert!(matches!(MirrorMap::parse(&["=http://x".into()]), Err(FetchError::BadMirror(_))));
}

#[test]
fn redacts_credentials() {
    assert_eq!(redact("http://user:s3cret@proxy.local:3128/x@y"), "http://***@proxy.local:3128/x@y");
    assert_eq!(redact("https://dl.k8s.io/a"), "https://dl.k8s.io/a");
}

#[test]
fn downloads_through_the_mirror_verifies_and_caches() {
    let d = tempfile::tempdir().unwrap();
    let www = d.path().join("www");
    std::fs::create_dir_all(www.join("k8s/release")).unwrap();
    let body = b"#!/bin/sh\necho fixture kubelet\n";
    std::fs::write(www.join("k8s/release/kubelet"), body).unwrap();
    std::fs::write(www.join("k8s/release/kubelet.sha256"), crate::hash::sha256_bytes(body)).unwrap();
    let server = MirrorServer::start(&www);
    let mirrors = MirrorMap::parse(&[format!("https://dl.k8s.io={}/k8s", server.url())]).unwrap();
    let cache = d.path().join("cache");
    let f = Fetcher::new(mirrors.clone(), &cache, false);
    let sum = f.published_sum("https://dl.k8s.io/release/kubelet.sha256", "https://dl.k8s.io/release/kubelet").unwrap();
    assert_eq!(sum, crate::hash::sha256_bytes(body));
    let got = f.fetch("https://dl.k8s.io/release/kubelet", &sum).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    assert_eq!(got.source, format!("{}/k8s/release/kubelet", server.url()));
    // Second time: from the cache, no request.
    let n = server.requests.lock().unwrap().len();
    let again = f.fetch("https://dl.k8s.io/release/kubelet", &sum).unwrap();
    assert_eq!(again.source, "cache");
    assert_eq!(server.requests.lock().unwrap().len(), n);
    // Offline with the cache filled: works, including the checksum file.
    let off = Fetcher::new(mirrors, &cache, true);
    assert_eq!(off.published_sum("https://dl.k8s.io/release/kubelet.sha256", "https://dl.k8s.io/release/kubelet").unwrap(), sum);
    assert!(off.fetch("https://dl.k8s.io/release/kubelet", &sum).is_ok());
    assert!(std::fs::read_dir(cache.join("tmp")).unwrap().next().is_none(), "temporary files left in the cache");
}

#[test]
fn wrong_sum_shows_both_and_caches_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("crictl.tar.gz"), b"not what you expect").unwrap();
    let server = MirrorServer::start(d.path());
    let f = Fetcher::new(MirrorMap::default(), &d.path().join("cache"), false);
    let expected = "a".repeat(64);
    let e = f.fetch(&format!("{}/crictl.tar.gz", server.url()), &expected).unwrap_err().to_string();
    assert!(e.contains(&expected) && e.contains(&crate::hash::sha256_bytes(b"not what you expect")), "{e}");
    assert!(!f.cached_path(&expected).exists());
    let e = f.fetch(&format!("{}/missing", server.url()), &expected).unwrap_err().to_string();
    assert!(e.contains("404"), "{e}");
}

#[test]
fn offline_names_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let f = Fetcher::new(MirrorMap::default(), d.path(), true);
    let e = f.fetch("https://user:pw@dl.k8s.io/x", &"b".repeat(64)).unwrap_err().to_string();
    assert!(e.contains("offline: not in the cache: https://***@dl.k8s.io/x"), "{e}");
    assert!(!e.contains("pw"));
}

fn quick(f: &mut Fetcher) {
    f.retry = RetryPolicy { retries: 2, first_delay: std::time::Duration::from_millis(10), max_delay: std::time::Duration::from_millis(50) };
}

/// 3 MiB with a hole of zeros in the middle and data on both sides.
fn disk_bytes() -> Vec<u8> {
    let mut v = vec![0u8; 3 << 20];
    for (i, b) in v.iter_mut().enumerate().take(1 << 20) {
        *b = (i % 251) as u8;
    }
    v[(3 << 20) - 5..].copy_from_slice(b"tail!");
    v
}

fn cache_is_clean(cache: &Path) {
    let tmp = cache.join("tmp");
    if tmp.exists() {
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "temporary files left in the cache: {left:?}");
    }
}

#[test]
fn a_cut_connection_resumes_with_a_range_request() {
    let d = tempfile::tempdir().unwrap();
    let body = disk_bytes();
    std::fs::write(d.path().join("disk.raw"), &body).unwrap();
    let server = MirrorServer::start_with(d.path(), Behaviour { cut_after: Some(1_500_000), cut_times: 2, ..Default::default() });
    let mut f = Fetcher::new(MirrorMap::default(), &d.path().join("cache"), false);
    quick(&mut f);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    f.progress = Some(Arc::new(move |p: &Progress<'_>| s2.lock().unwrap().push((p.done, p.total, p.finished))));
    let got = f.fetch(&format!("{}/disk.raw", server.url()), &crate::hash::sha256_bytes(&body)).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), body);
    // Cut at 1.5 MB, resumed at 1.5 MB, cut again after 1.5 MB more, resumed at 3 MB.
    assert_eq!(*server.ranges.lock().unwrap(), ["/disk.raw bytes=1500000-", "/disk.raw bytes=3000000-"]);
    assert_eq!(seen.lock().unwrap().last(), Some(&(3 << 20, Some(3 << 20), true)));
    // The zeros in the middle were skipped, not written: the cached file is sparse.
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&got.path).unwrap().blocks() * 512 < 2 << 20);
    cache_is_clean(&d.path().join("cache"));
}

#[test]
fn a_server_that_cuts_and_cannot_resume_fails_naming_the_bytes() {
    let d = tempfile::tempdir().unwrap();
    let body = disk_bytes();
    std::fs::write(d.path().join("disk.raw"), &body).unwrap();
    let server = MirrorServer::start_with(d.path(), Behaviour { cut_after: Some(1_000_000), cut_times: u32::MAX, ranges: false, ..Default::default() });
    let mut f = Fetcher::new(MirrorMap::default(), &d.path().join("cache"), false);
    quick(&mut f);
    let sum = crate::hash::sha256_bytes(&body);
    let e = f.fetch(&format!("{}/disk.raw", server.url()), &sum).unwrap_err();
    let msg = e.to_string();
    // The first cut made progress and is retried at once; the server ignores the Range and
    // starts over, so the next ones make none and use up the 2 retries.
    assert!(matches!(e, FetchError::Cut { received: 1_000_000, total: Some(3145728), tries: 4, .. }), "{e:?}");
    assert!(msg.contains("the connection was cut after 1000000 of 3145728 bytes") && msg.contains("4 tries") && msg.contains("nothing was cached"), "{msg}");
    assert_eq!(server.requests.lock().unwrap().len(), 4);
    assert_eq!(server.ranges.lock().unwrap().len(), 3);
    assert!(!f.cached_path(&sum).exists());
    cache_is_clean(&d.path().join("cache"));
}

#[test]
fn retries_503_and_429_then_succeeds_but_not_404() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("k"), b"kubelet").unwrap();
    let server = MirrorServer::start_with(d.path(), Behaviour { fail_status: Some(503), fail_times: 2, ..Default::default() });
    let mut f = Fetcher::new(MirrorMap::default(), &d.path().join("cache"), false);
    quick(&mut f);
    f.fetch(&format!("{}/k", server.url()), &crate::hash::sha256_bytes(b"kubelet")).unwrap();
    assert_eq!(server.requests.lock().unwrap().len(), 3);
    // More failures than retries: the status is named, with the number of tries.
    *server.behaviour.lock().unwrap() = Behaviour { fail_status: Some(429), fail_times: 3, ..Default::default() };
    std::fs::write(d.path().join("k2"), b"other").unwrap();
    let e = f.fetch(&format!("{}/k2", server.url()), &crate::hash::sha256_bytes(b"other")).unwrap_err().to_string();
    assert!(e.contains("the server answered 429") && e.contains("gave up after 3 tries"), "{e}");
    // 404 is not retried.
    let n = server.requests.lock().unwrap().len();
    let e = f.fetch(&format!("{}/missing", server.url()), &"a".repeat(64)).unwrap_err().to_string();
    assert!(e.contains("the server answered 404 Not Found") && !e.contains("tries"), "{e}");
    assert_eq!(server.requests.lock().unwrap().len(), n + 1);
    cache_is_clean(&d.path().join("cache"));
}

mod images {
    use super::*;
    use crate::fetch::image::Check;

    /// A www tree with disk.raw and `list` holding `content`; returns the server and the body.
    fn serve(list: &str, content: impl Fn(&[u8]) -> String) -> (tempfile::TempDir, MirrorServer, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let www = d.path().join("www/images/12");
        std::fs::create_dir_all(&www).unwrap();
        let body = disk_bytes();
        std::fs::write(www.join("disk.raw"), &body).unwrap();
        std::fs::write(www.join(list), content(&body)).unwrap();
        let server = MirrorServer::start(&d.path().join("www"));
        (d, server, body)
    }

    fn sha512_hex(b: &[u8]) -> String {
        let mut h = crate::fetch::sums::Hasher::new(true);
        h.update(b);
        h.finish().sha512.unwrap()
    }

    #[test]
    fn verified_by_sha256sums_cached_then_served_with_the_server_stopped() {
        let (d, server, body) = serve("SHA256SUMS", |b| format!("{}  other.raw\n{} *disk.raw\n", "0".repeat(64), crate::hash::sha256_bytes(b)));
        let cache = d.path().join("cache");
        let url = format!("{}/images/12/disk.raw", server.url());
        let f = Fetcher::new(MirrorMap::default(), &cache, false);
        let got = f.fetch_image(&url, &Check::Lists).unwrap();
        assert_eq!(got.verified_against.as_deref(), Some(format!("{}/images/12/SHA256SUMS", server.url()).as_str()));
        assert_eq!(got.fetched.sha256, crate::hash::sha256_bytes(&body));
        assert_eq!(std::fs::read(&got.fetched.path).unwrap(), body);
        drop(server);
        let again = f.fetch_image(&url, &Check::Lists).unwrap();
        assert_eq!((again.fetched.source.as_str(), &again.fetched.path), ("cache", &got.fetched.path));
        let off = Fetcher::new(MirrorMap::default(), &cache, true);
        assert_eq!(off.fetch_image(&url, &Check::Lists).unwrap().fetched.path, got.fetched.path);
        cache_is_clean(&cache);
    }

    #[test]
    fn sha512sums_only_as_debian_publishes_and_bsd_checksum_as_rocky_does() {
        let (d, server, body) = serve("SHA512SUMS", |b| format!("{}  disk.raw\n", sha512_hex(b)));
        let cache = d.path().join("cache");
        let url = format!("{}/images/12/disk.raw", server.url());
        let f = Fetcher::new(MirrorMap::default(), &cache, false);
        let got = f.fetch_image(&url, &Check::Lists).unwrap();
        assert!(got.verified_against.unwrap().ends_with("/SHA512SUMS"));
        assert_eq!(got.checked.unwrap().algo, crate::fetch::sums::Algo::Sha512);
        // SHA256SUMS and sha256sum.txt were looked for first (404), then SHA512SUMS.
        let paths = server.requests.lock().unwrap().clone();
        assert_eq!(paths, ["/images/12/SHA256SUMS", "/images/12/sha256sum.txt", "/images/12/SHA512SUMS", "/images/12/disk.raw"]);
        // The second time, the cached record maps the SHA-512 to the cached file.
        drop(server);
        assert_eq!(f.fetch_image(&url, &Check::Lists).unwrap().fetched.source, "cache");

        let (d, server, body2) = serve("CHECKSUM", |b| format!("# disk.raw: {} bytes\nSHA256 (disk.raw) = {}\n", b.len(), crate::hash::sha256_bytes(b)));
        assert_eq!(body, body2);
        let f = Fetcher::new(MirrorMap::default(), &d.path().join("cache"), false);
        let got = f.fetch_image(&format!("{}/images/12/disk.raw", server.url()), &Check::Lists).unwrap();
        assert!(got.verified_against.unwrap().ends_with("/CHECKSUM"));
    }

    #[test]
    fn a_tampered_image_shows_both_sums_and_caches_nothing() {
        let (d, server, body) = serve("SHA256SUMS", |b| format!("{}  disk.raw\n", crate::hash::sha256_bytes(b)));
        let mut tampered = body.clone();
        tampered[100] ^= 1;
        std::fs::write(d.path().join("www/images/12/disk.raw"), &tampered).unwrap();
        let cache = d.path().join("cache");
        let f = Fetcher::new(MirrorMap::default(), &cache, false);
        let url = format!("{}/images/12/disk.raw", server.url());
        let e = f.fetch_image(&url, &Check::Lists).unwrap_err().to_string();
        let (good, bad) = (crate::hash::sha256_bytes(&body), crate::hash::sha256_bytes(&tampered));
        assert!(e.contains(&good) && e.contains(&bad) && e.contains("/images/12/SHA256SUMS lists") && e.contains("Nothing was cached"), "{e}");
        assert!(!f.cached_path(&bad).exists() && !f.cached_path(&good).exists());
        assert!(!cache.join("images").exists());
        cache_is_clean(&cache);
        // A pin that disagrees says who pinned it.
        let e = f.fetch_image(&url, &Check::Pinned { sha256: good.clone(), by: "--disk-image-sha256".into() }).unwrap_err().to_string();
        assert!(e.contains("but --disk-image-sha256 pins") && e.contains(&bad), "{e}");
    }

    #[test]
    fn a_list_that_does_not_name_the_image_and_no_list_at_all() {
        let (d, server, _) = serve("SHA256SUMS", |_| format!("{}  debian-12-genericcloud-arm64.raw\n", "1".repeat(64)));
        let cache = d.path().join("cache");
        let f = Fetcher::new(MirrorMap::default(), &cache, false);
        let e = f.fetch_image(&format!("{}/images/12/disk.raw", server.url()), &Check::Lists).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}/images/12/SHA256SUMS does not name `disk.raw`", server.url())), "{e}");
        assert!(!server.requests.lock().unwrap().iter().any(|p| p.ends_with("disk.raw")), "the image was downloaded");
        std::fs::remove_file(d.path().join("www/images/12/SHA256SUMS")).unwrap();
        std::fs::write(d.path().join("www/images/13.raw"), b"x").unwrap();
        let e = f.fetch_image(&format!("{}/images/13.raw", server.url()), &Check::Lists).unwrap_err().to_string();
        assert!(e.contains("no checksum list beside it: tried") && e.contains("/images/SHA256SUMS, ") && e.contains("--disk-image-sha256"), "{e}");
        // A 404 for the image itself.
        std::fs::write(d.path().join("www/images/SHA256SUMS"), format!("{}  gone.raw\n", "2".repeat(64))).unwrap();
        let e = f.fetch_image(&format!("{}/images/gone.raw", server.url()), &Check::Lists).unwrap_err().to_string();
        assert!(e.contains("gone.raw") && e.contains("the server answered 404 Not Found"), "{e}");
        cache_is_clean(&cache);
    }

    #[test]
    fn file_urls_and_offline_without_the_image() {
        let (d, _server, body) = serve("sha256sum.txt", |b| format!("{}  disk.raw\n", crate::hash::sha256_bytes(b)));
        let cache = d.path().join("cache");
        let url = format!("file://{}/www/images/12/disk.raw", d.path().display());
        let off = Fetcher::new(MirrorMap::default(), &cache, true);
        let e = off.fetch_image(&url, &Check::Lists).unwrap_err().to_string();
        assert!(e.starts_with("offline: not in the cache: file://") && e.contains("kib fetch --disk-image file://"), "{e}");
        let f = Fetcher::new(MirrorMap::default(), &cache, false);
        let got = f.fetch_image(&url, &Check::Lists).unwrap();
        assert!(got.verified_against.unwrap().ends_with("/www/images/12/sha256sum.txt"));
        assert_eq!(std::fs::read(&got.fetched.path).unwrap(), body);
        // Now the list is cached but the image is not known under another URL: offline says so.
        let e = off.fetch_image(&format!("file://{}/www/images/12/other.raw", d.path().display()), &Check::Lists).unwrap_err().to_string();
        assert!(e.contains("sha256sum.txt does not name `other.raw`"), "{e}");
        assert_eq!(off.fetch_image(&url, &Check::Lists).unwrap().fetched.source, "cache");
    }
}
