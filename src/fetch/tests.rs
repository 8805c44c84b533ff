use super::*;

#[path = "testserver.rs"]
mod testserver;
use testserver::MirrorServer;

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
