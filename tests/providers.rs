//! Provider profiles (phases/providers/*.yaml) applied with `--provider` to the overhead-sized
//! node (testdata/bench/overhead.yaml on the Debian base image). One Phase 0 run, then each
//! profile as a `--phases 1` run on the previous run's working copy, so that the whole matrix
//! costs one attach and one apt session per profile. After each run: `kib check --provider`
//! (the profile's files with their content, packages and enabled units), and the kernel
//! arguments in grub.cfg's `linux` lines and the grub drop-in. Finally Phase 2 with a provider
//! whose formats replace the manifest's.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn overhead() -> PathBuf {
    repo().join("testdata/bench/overhead.yaml")
}

fn profiles() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("phases/providers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn check_json(raw: &Path, tmp: &Path, provider: &str) -> Vec<serde_json::Value> {
    let out = kib()
        .args(["check", "--output", "json", "--provider", provider, "--manifest"])
        .arg(overhead())
        .arg("--disk-image")
        .arg(raw)
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{provider}: check output: {e}\n{text}\n{}", String::from_utf8_lossy(&out.stderr)));
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(out.status.success() && failed.is_empty(), "{provider}: failed checks: {failed:#?}\n{}", String::from_utf8_lossy(&out.stderr));
    checks
}

#[test]
fn every_provider_profile_on_the_overhead_node() {
    if skip_unless_root("every_provider_profile_on_the_overhead_node") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let names = profiles();
    assert_eq!(names.len(), 18, "{names:?}");
    let mut input = base_image();
    let mut first = true;
    // Every profile kib can apply on amd64 (17 of 18: powervs is ppc64le, refused below). Each
    // costs one apt session, cheap with the shared package cache warm after the first.
    // KIB_PROVIDERS=a,b picks some, for a quick run by hand.
    let only: Option<Vec<String>> = std::env::var("KIB_PROVIDERS").ok().filter(|v| !v.is_empty()).map(|v| v.split(',').map(str::to_string).collect());
    for name in names.iter().filter(|n| *n != "powervs" && only.as_ref().is_none_or(|o| o.contains(n))) {
        let t0 = std::time::Instant::now();
        let out = t.join(format!("out-{name}"));
        let phases = if first { "0,1" } else { "1" };
        let r = customize_cmd_to(&input, &overhead(), t, &out).args(["--provider", name, "--phases", phases]).output().unwrap();
        assert!(r.status.success(), "--provider {name}: {}", String::from_utf8_lossy(&r.stderr));
        assert_nothing_left(&t.join("work"));
        let raw = out.join("bench-overhead.raw");
        let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
        let files: Vec<&str> = bom["manifest"]["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert!(files.iter().any(|f| f.ends_with(&format!("phases/providers/{name}.yaml"))), "{name}: {files:?}");

        // Files (content), packages and units, as the profile says.
        let checks = check_json(&raw, t, name);
        let names_of: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
        if name != "raw" {
            // Every profile but raw (Tinkerbell writes its own) pins the datasource list.
            let ds = format!("file /etc/cloud/cloud.cfg.d/95_kib_{name}.cfg");
            assert!(names_of.contains(&ds.as_str()), "{name}: {names_of:?}");
        }
        assert!(names_of.contains(&"file /etc/systemd/system/cloud-final.service.d/boot-order.conf"), "{name}");
        let m = kib::manifest::load_with(&overhead(), &[], Some(name)).unwrap();
        let packages: Vec<&str> = names_of.iter().filter(|n| n.starts_with("package ")).copied().collect();
        assert!(packages.contains(&"package cloud-init installed"), "{name}: {packages:?}");
        for (profile, pkg) in [("qemu", "qemu-guest-agent"), ("ova", "open-vm-tools"), ("azure", "waagent"), ("nutanix", "open-iscsi"), ("gce", "google-guest-agent"), ("hcloud", "nfs-common")] {
            if name == profile {
                assert!(packages.contains(&format!("package {pkg} installed").as_str()), "{name}: {packages:?}");
            }
        }

        // Kernel arguments: in every linux line of grub.cfg and in the drop-in for update-grub.
        let args = m.variables.0["provider_kernel_args_amd64"].clone();
        let mnt = Mounted::partition(&raw, 1, &t.join("mnt"));
        let grub = mnt.read("/boot/grub/grub.cfg");
        let linux: Vec<&str> = grub.lines().map(str::trim_start).filter(|l| l.starts_with("linux ") || l.starts_with("linux\t")).collect();
        assert!(!linux.is_empty(), "{name}: no linux line in grub.cfg");
        if !args.is_empty() {
            for l in &linux {
                assert!(l.contains(&args), "{name}: `{args}` missing from grub.cfg line `{l}`");
            }
            let dropin = mnt.read("/etc/default/grub.d/60-kib-kernel-args.cfg");
            assert!(dropin.contains(&args) && dropin.contains(&format!("profile `{name}`")), "{name}: {dropin}");
        }
        drop(mnt);
        if input != base_image() {
            std::fs::remove_dir_all(input.parent().unwrap()).unwrap();
        }
        eprintln!("{name}: {:.1}s, {} checks", t0.elapsed().as_secs_f64(), checks.len());
        input = raw;
        first = false;
    }

    // powervs is for ppc64le, which kib does not open: refused after Phase 0, nothing left.
    let r = customize_cmd_to(&input, &overhead(), t, &t.join("out-powervs")).args(["--provider", "powervs", "--phases", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("provider `powervs`") && err.contains("ppc64el") && err.contains("amd64"), "{err}");
    assert_nothing_left(&t.join("work"));

    // Phase 2 with a provider: its formats (hcloud: raw) replace the manifest's qcow2.
    let out = t.join("out-final");
    let r = customize_cmd_to(&input, &overhead(), t, &out).args(["--provider", "hetzner", "--phases", "2"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("bench-overhead.raw").is_file() && !out.join("bench-overhead.qcow2").exists());
    // --format still wins over the profile.
    let out = t.join("out-format");
    let r = customize_cmd_to(&input, &overhead(), t, &out).args(["--provider", "ova", "--phases", "2", "--format", "vhd"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("bench-overhead.vhd").is_file() && !out.join("bench-overhead.ova").exists());
    assert_nothing_left(&t.join("work"));
}

#[test]
fn unknown_provider_is_refused_before_the_image_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let r = kib()
        .args(["validate", "--provider", "vmwear", "--manifest"])
        .arg(overhead())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("unknown provider `vmwear`") && err.contains("ova (vsphere, vmware)"), "{err}");
    let r = kib().args(["validate", "--provider", "vsphere", "--manifest"]).arg(overhead()).output().unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && text.contains("provider ova") && text.contains("formats ova"), "{text}");
    drop(tmp);
}

/// scripts/validate-phases.sh: every profile and knob phase loads with the 1.30 phases (no root).
#[test]
fn validate_phases_script() {
    let kib = assert_cmd::cargo::cargo_bin("kib");
    let r = std::process::Command::new("sh").arg(repo().join("scripts/validate-phases.sh")).arg(&kib).output().unwrap();
    assert!(r.status.success(), "{}\n{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
}
