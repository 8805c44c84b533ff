//! `kib customize` end to end on the real Debian 12 base image, as root.

mod common;
#[path = "common/sbom_schema.rs"]
mod sbom_schema;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

#[test]
fn node_manifest_builds_a_kubernetes_node_image() {
    if common::skip_unless_root("node_manifest_builds_a_kubernetes_node_image") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let work = tmp.path().join("work");
    let run = kib()
        .args(["customize", "--no-cache", "--manifest", "manifests/k8s-node-debian.yaml", "--disk-image"])
        .arg(&base)
        .arg("--output-dir")
        .arg(&out)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "kib failed:\n{stderr}");
    assert_eq!(sha256(&base), before, "the input image changed");
    assert_nothing_left(&work);

    // The artifacts and their checksums.
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["SHA256SUMS", "bom.json", "k8s-node-debian.cdx.json", "k8s-node-debian.qcow2", "k8s-node-debian.raw", "k8s-node-debian.spdx.json"]);
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (sum, file) = line.split_once("  ").unwrap();
        assert_eq!(sha256(&out.join(file)), sum, "{file}");
    }
    assert_eq!(sums.lines().count(), 5);
    let raw = out.join("k8s-node-debian.raw");
    let qcow2 = out.join("k8s-node-debian.qcow2");
    let info: serde_json::Value =
        serde_json::from_slice(&Command::new("qemu-img").args(["info", "--output=json"]).arg(&qcow2).output().unwrap().stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], std::fs::metadata(&base).unwrap().len());
    let same = Command::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "raw"]).arg(&qcow2).arg(&raw).status().unwrap();
    assert!(same.success(), "qcow2 and raw outputs differ");

    // What landed in the image.
    let img = Mounted::partition(&raw, 1, &tmp.path().join("mnt-out"));
    let input = Mounted::partition(&base, 1, &tmp.path().join("mnt-in"));
    let status = img.read("/var/lib/dpkg/status");
    let installed = kib::pkg::dpkg::parse_status(&status).unwrap();
    for want in ["containerd", "runc", "containernetworking-plugins", "conntrack", "socat", "ebtables", "ethtool", "iptables"] {
        assert!(installed.iter().any(|p| p.name == want), "{want} is not installed");
    }
    let config = img.read("/etc/containerd/config.toml");
    assert!(config.contains("SystemdCgroup = true"), "{config}");
    assert!(config.contains("sandbox_image = \"registry.k8s.io/pause:3.9\""), "{config}");
    assert!(config.contains("config_path = \"/etc/containerd/certs.d\""), "{config}");
    let meta = std::fs::metadata(img.path("/etc/containerd/config.toml")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert!(img.read("/etc/crictl.yaml").contains("runtime-endpoint: unix:///var/run/containerd/containerd.sock"));
    let modules = img.read("/etc/modules-load.d/kubernetes.conf");
    assert!(modules.lines().any(|l| l == "overlay") && modules.lines().any(|l| l == "br_netfilter"), "{modules}");
    let sysctl = img.read("/etc/sysctl.d/99-kubernetes.conf");
    for want in [
        "net.bridge.bridge-nf-call-iptables = 1",
        "net.bridge.bridge-nf-call-ip6tables = 1",
        "net.ipv4.ip_forward = 1",
        "net.ipv6.conf.all.forwarding = 1",
        "net.ipv6.conf.all.disable_ipv6 = 0",
        "net.ipv4.tcp_congestion_control = bbr",
        "vm.overcommit_memory = 1",
        "kernel.panic = 10",
        "kernel.panic_on_oops = 1",
        "fs.inotify.max_user_instances = 8192",
        "fs.inotify.max_user_watches = 524288",
    ] {
        assert!(sysctl.lines().any(|l| l == want), "missing `{want}` in\n{sysctl}");
    }
    let wants = img.path("/etc/systemd/system/multi-user.target.wants/containerd.service");
    assert_eq!(std::fs::read_link(&wants).unwrap().to_string_lossy(), "/lib/systemd/system/containerd.service");
    assert_eq!(std::fs::read_link(img.path("/etc/systemd/system/apt-daily.timer")).unwrap().to_string_lossy(), "/dev/null");
    assert!(img.path("/usr/lib/cni/bridge").is_file(), "Debian's CNI plugins are not installed");
    assert_eq!(std::fs::read_link(img.path("/opt/cni/bin/bridge")).unwrap().to_string_lossy(), "/usr/lib/cni/bridge");
    assert!(!img.read("/etc/fstab").lines().any(|l| !l.trim_start().starts_with('#') && l.split_whitespace().nth(2) == Some("swap")));
    // Sysprep.
    assert_eq!(std::fs::metadata(img.path("/etc/machine-id")).unwrap().len(), 0, "machine-id is not empty");
    let host_keys: Vec<_> = std::fs::read_dir(img.path("/etc/ssh")).unwrap().filter_map(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        n.starts_with("ssh_host_").then_some(n)
    }).collect();
    assert!(host_keys.is_empty(), "SSH host keys left: {host_keys:?}");
    let lists: Vec<_> = std::fs::read_dir(img.path("/var/lib/apt/lists")).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "partial" && n != "lock").collect();
    assert!(lists.is_empty(), "apt lists left: {lists:?}");
    assert!(!img.path("/var/lib/cloud/instance").exists());
    // The chroot session left the image's own files as they were.
    assert!(!img.path("/usr/sbin/policy-rc.d").exists() || input.path("/usr/sbin/policy-rc.d").exists());
    let resolv_in = std::fs::symlink_metadata(input.path("/etc/resolv.conf")).ok().map(|m| m.file_type().is_symlink());
    let resolv_out = std::fs::symlink_metadata(img.path("/etc/resolv.conf")).ok().map(|m| m.file_type().is_symlink());
    assert_eq!(resolv_in, resolv_out);
    if resolv_in == Some(true) {
        assert_eq!(std::fs::read_link(input.path("/etc/resolv.conf")).unwrap(), std::fs::read_link(img.path("/etc/resolv.conf")).unwrap());
    } else if resolv_in == Some(false) {
        assert_eq!(input.read("/etc/resolv.conf"), img.read("/etc/resolv.conf"));
    }
    assert!(!img.path("/etc/.kib-saved-resolv.conf").exists());
    assert_eq!(std::fs::read_dir(img.path("/dev")).unwrap().count(), std::fs::read_dir(input.path("/dev")).unwrap().count());

    // The BOM.
    let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
    assert_eq!(bom["input"]["sha256"], before);
    assert_eq!(bom["kib_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(bom["manifest"]["sha256"], sha256(&repo().join("manifests/k8s-node-debian.yaml")));
    assert_eq!(bom["os_release"]["VERSION_CODENAME"], "bookworm");
    assert_eq!(bom["architecture"], "amd64");
    assert!(bom["kernels"][0].as_str().unwrap().ends_with("-cloud-amd64"));
    let bom_pkgs = bom["packages"].as_array().unwrap();
    assert_eq!(bom_pkgs.len(), installed.len());
    let containerd = bom_pkgs.iter().find(|p| p["name"] == "containerd").unwrap();
    assert_eq!(containerd["architecture"], "amd64");
    assert!(!containerd["version"].as_str().unwrap().is_empty());
    let steps = bom["steps"].as_array().unwrap();
    // 15 steps: 14 run, and phases/runtime/containerd-debian.yaml's step for RPM images is
    // recorded as skipped (its `when` does not hold on Debian).
    assert_eq!(steps.len(), 15);
    assert!(steps.iter().all(|s| s["duration_seconds"].as_f64().unwrap() >= 0.0));
    let not_ok: Vec<&str> = steps.iter().filter(|s| s["status"] != "ok").map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(not_ok, ["containerd from the distribution (RPM images)"], "{steps:#?}");
    assert!(steps.iter().any(|s| s["name"] == "containerd from the distribution (RPM images)" && s["status"] == "skipped"), "{steps:#?}");
    let config_rec = steps.iter().flat_map(|s| s["files"].as_array().unwrap()).find(|f| f["path"] == "/etc/containerd/config.toml").unwrap();
    assert_eq!(config_rec["sha256"], kib::hash::sha256_bytes(config.as_bytes()));
    assert_eq!(config_rec["mode"], "0644");
    for phase in ["phase0", "phase1", "phase2"] {
        assert!(bom["phase_seconds"][phase].as_f64().unwrap() > 0.0);
    }
    assert_eq!(bom["artifacts"].as_array().unwrap().len(), 2);
    let licensed = bom_pkgs.iter().filter(|p| p["license"]["spdx"].is_string()).count();
    assert!(licensed > 50, "only {licensed} packages have an SPDX licence in bom.json");

    // The SBOMs: schema-valid, every package with its purl, containerd's licence.
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("k8s-node-debian.spdx.json")).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&spdx, sbom_schema::SbomKind::Spdx23);
    let cdx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("k8s-node-debian.cdx.json")).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&cdx, sbom_schema::SbomKind::CycloneDx15);
    // And the standards' own reference tools accept them, beyond their JSON Schemas.
    sbom_schema::assert_reference_tool_accepts(&out.join("k8s-node-debian.spdx.json"), sbom_schema::SbomKind::Spdx23);
    sbom_schema::assert_reference_tool_accepts(&out.join("k8s-node-debian.cdx.json"), sbom_schema::SbomKind::CycloneDx15);
    let version = containerd["version"].as_str().unwrap();
    let purl = format!("pkg:deb/debian/containerd@{}?arch=amd64&distro=debian-12", version.replace('+', "%2B"));
    let spdx_pkgs = spdx["packages"].as_array().unwrap();
    let spdx_purls: Vec<&str> = spdx_pkgs.iter().filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str()).collect();
    assert_eq!(spdx_purls.len(), installed.len());
    assert!(spdx_purls.contains(&purl.as_str()), "{purl} not in the SPDX document");
    let spdx_containerd = spdx_pkgs.iter().find(|p| p["name"] == "containerd").unwrap();
    assert_eq!(spdx_containerd["licenseDeclared"], containerd["license"]["spdx"]);
    assert!(spdx_containerd["licenseDeclared"].as_str().unwrap().contains("Apache-2.0"), "{spdx_containerd}");
    let cdx_containerd = cdx["components"].as_array().unwrap().iter().find(|c| c["name"] == "containerd").unwrap();
    assert_eq!(cdx_containerd["purl"], purl.as_str());
    assert!(cdx_containerd["licenses"][0].is_object(), "{cdx_containerd}");
    assert_eq!(cdx["components"].as_array().unwrap().len(), installed.len() + 1, "packages and the OS");
    drop(img);
    drop(input);
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));

    // `kib check` agrees, offline and read-only, and leaves the image as it was.
    let raw_sum = sha256(&raw);
    let check = kib()
        .args(["check", "--manifest", "manifests/k8s-node-debian.yaml", "--disk-image"])
        .arg(&raw)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}\n{}", String::from_utf8_lossy(&check.stderr));
    assert!(report.contains("PASS service containerd.service enabled") && report.contains("PASS machine-id is empty"), "{report}");
    assert!(report.lines().last().unwrap().ends_with(" passed, 0 failed"), "{report}");
    assert_eq!(sha256(&raw), raw_sum, "kib check modified the image");
    assert_nothing_left(&work);
}

#[test]
fn check_reports_what_a_plain_base_image_lacks() {
    if common::skip_unless_root("check_reports_what_a_plain_base_image_lacks") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let check = kib()
        .args(["check", "--manifest", "manifests/k8s-node-debian.yaml", "--disk-image"])
        .arg(&base)
        .arg("--work-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!check.status.success());
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("FAIL package containerd installed  (not installed)"), "{report}");
    assert!(report.contains("FAIL service containerd.service enabled"), "{report}");
    assert!(report.contains("PASS machine-id is empty"), "{report}");
    assert!(String::from_utf8_lossy(&check.stderr).contains("checks failed"));
    assert_eq!(sha256(&base), before);
    assert_nothing_left(tmp.path());
}

#[test]
fn inspect_lists_what_a_plain_base_image_holds() {
    if common::skip_unless_root("inspect_lists_what_a_plain_base_image_holds") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let out = kib().args(["inspect", "--output", "json", "--work-dir"]).arg(tmp.path()).arg(&base).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["os_release"]["ID"], "debian");
    assert_eq!(r["architecture"], "amd64");
    assert_eq!(r["partition_table"]["kind"], "gpt");
    assert_eq!(r["partition_table"]["partitions"].as_array().unwrap().len(), 3);
    let names: Vec<&str> = r["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in ["cloud-init", "openssh-server", "grub-pc", "systemd"] {
        assert!(names.contains(&want), "{want} not listed");
    }
    assert!(r["kernels"][0].as_str().unwrap().ends_with("-cloud-amd64"));
    let text = kib().args(["inspect", "--work-dir"]).arg(tmp.path()).arg(&base).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("os:           Debian GNU/Linux 12 (bookworm)") && text.contains("  openssh-server "), "{text}");
    assert_eq!(sha256(&base), before);
    assert_nothing_left(tmp.path());

    // An auditor's SBOM of an image they did not build: schema-valid, every package with its purl.
    let sbom_dir = tempfile::tempdir().unwrap();
    let sbom_file = sbom_dir.path().join("base.spdx.json");
    let run = kib().args(["inspect", "--sbom", "spdx", "--sbom-output"]).arg(&sbom_file).arg("--work-dir").arg(tmp.path()).arg(&base).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom_file).unwrap()).unwrap();
    sbom_schema::assert_schema_valid(&spdx, sbom_schema::SbomKind::Spdx23);
    sbom_schema::assert_reference_tool_accepts(&sbom_file, sbom_schema::SbomKind::Spdx23);
    let pkgs = spdx["packages"].as_array().unwrap();
    let listed: Vec<&str> = pkgs.iter().filter(|p| p["externalRefs"][0]["referenceLocator"].as_str().is_some_and(|u| u.starts_with("pkg:deb/debian/"))).map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(listed, names, "the SPDX document lists other packages than the report");
    let ssh = pkgs.iter().find(|p| p["name"] == "openssh-server").unwrap();
    assert!(ssh["externalRefs"][0]["referenceLocator"].as_str().unwrap().contains("upstream=openssh"), "{ssh}");
    assert!(pkgs.iter().any(|p| p["licenseDeclared"] != "NOASSERTION" && p["name"] != "debian"), "no licence found in the base image");
    let cdx = kib().args(["inspect", "--sbom", "cyclonedx", "--work-dir"]).arg(tmp.path()).arg(&base).output().unwrap();
    assert!(cdx.status.success(), "{}", String::from_utf8_lossy(&cdx.stderr));
    let cdx: serde_json::Value = serde_json::from_slice(&cdx.stdout).unwrap();
    sbom_schema::assert_schema_valid(&cdx, sbom_schema::SbomKind::CycloneDx15);
    assert_eq!(cdx["components"].as_array().unwrap().len(), names.len() + 1);
    assert_eq!(sha256(&base), before);
    assert_nothing_left(tmp.path());
}
