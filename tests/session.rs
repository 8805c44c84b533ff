//! The chroot session and file steps on a tiny image (no shell, no package manager): the image's
//! own resolv.conf symlink comes back exactly, and symlinks planted in the image to point at the
//! host cannot make kib write there.

mod common;

use std::os::unix::fs::symlink;

use common::*;

#[test]
fn resolv_conf_symlink_is_restored_and_hostile_links_stay_inside() {
    if common::skip_unless_root("resolv_conf_symlink_is_restored_and_hostile_links_stay_inside") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A host folder and file the image's symlinks point at.
    let host = tmp.path().join("host");
    std::fs::create_dir_all(host.join("etc")).unwrap();
    std::fs::write(host.join("passwd"), "host file\n").unwrap();
    // The image tree: os-release, a resolv.conf symlink as systemd-resolved makes it, and
    // hostile links.
    let tree = tmp.path().join("tiny.raw.tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=tinyos\nPRETTY_NAME=\"Tiny\"\n").unwrap();
    std::fs::write(tree.join("etc/fstab"), "# empty\n").unwrap();
    symlink("../run/systemd/resolve/stub-resolv.conf", tree.join("etc/resolv.conf")).unwrap();
    symlink(host.join("etc"), tree.join("etc/containerd")).unwrap(); // absolute, out of the image
    symlink("../../../../../../../../..".to_string() + host.to_str().unwrap(), tree.join("etc/sysctl.d")).unwrap();
    symlink(host.join("passwd"), tree.join("etc/hostile-file")).unwrap();
    // The link targets exist inside the image too, at the same path: that is where writes land.
    std::fs::create_dir_all(tree.join(host.strip_prefix("/").unwrap()).join("etc")).unwrap();
    let img = tiny_image(tmp.path(), "tiny.raw", &[]);
    let before = sha256(&img);

    let manifest = tmp.path().join("m.yaml");
    let h = host.display();
    std::fs::write(
        &manifest,
        "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: tiny}\nsteps:\n  \
         - name: through an absolute link\n    file: {path: /etc/containerd/config.toml, content: \"inside\\n\"}\n  \
         - name: over a link to a host file\n    file: {path: /etc/hostile-file, content: \"replaced the link\\n\"}\n  \
         - name: through a dotdot link\n    sysctl: {file: 99-x.conf, settings: {a.b: \"1\"}}\n\
         output: {formats: [raw]}\nsysprep: {skip: [tmp]}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let work = tmp.path().join("work");
    let run = kib()
        .args(["customize", "--no-cache", "--disk-image"])
        .arg(&img)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--output-dir")
        .arg(&out)
        .arg("--work-dir")
        .arg(&work)
        .arg("--cache-dir")
        .arg(tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(sha256(&img), before);
    assert_nothing_left(&work);
    // The host is untouched.
    assert_eq!(std::fs::read_dir(host.join("etc")).unwrap().count(), 0);
    assert_eq!(std::fs::read_to_string(host.join("passwd")).unwrap(), "host file\n");
    assert!(!host.join("99-x.conf").exists());

    let m = Mounted::partition(&out.join("tiny.raw"), 1, &tmp.path().join("mnt"));
    assert_eq!(std::fs::read_link(m.path("/etc/resolv.conf")).unwrap().to_string_lossy(), "../run/systemd/resolve/stub-resolv.conf");
    assert!(!m.path("/etc/.kib-saved-resolv.conf").exists());
    // The writes landed inside the image, where the links resolve when the image is the root.
    let inside = m.path(&format!("{h}/etc/config.toml"));
    assert_eq!(std::fs::read_to_string(inside).unwrap(), "inside\n");
    assert!(std::fs::symlink_metadata(m.path("/etc/hostile-file")).unwrap().is_file());
    assert_eq!(m.read("/etc/hostile-file"), "replaced the link\n");
    assert!(m.path(&format!("{h}/99-x.conf")).is_file());
    // /dev in the image is as it was (kib's /dev was a tmpfs).
    assert!(!m.path("/dev/null").exists());
    drop(m);
}
