//! Every output format from one real customization of the node manifest, each checked by the
//! tool that reads it: `qemu-img info`/`compare` for disk formats, tar and the OVF descriptor
//! for ova and gce, the decompressors for raw.zst and raw.gz.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

fn qemu_info(p: &Path, format: &str) -> serde_json::Value {
    let o = Command::new("qemu-img").args(["info", "-f", format, "--output=json"]).arg(p).output().unwrap();
    assert!(o.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `qemu-img compare` of `p` (in `format`) with the raw image: the same guest-visible disk.
fn same_disk(p: &Path, format: &str, raw: &Path) {
    let o = Command::new("qemu-img").args(["compare", "-f", format, "-F", "raw"]).arg(p).arg(raw).output().unwrap();
    assert!(o.status.success(), "{} differs from the raw image: {}", p.display(), String::from_utf8_lossy(&o.stdout));
}

#[test]
fn every_format_from_the_node_image() {
    if common::skip_unless_root("every_format_from_the_node_image") {
        return;
    }
    let base = base_image();
    let before = sha256(&base);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let manifest = repo().join("manifests/k8s-node-debian.yaml");
    let (ok, stderr) = customize_in(&base, &manifest, tmp.path(), &["--format", "qcow2,ova,vhd,gce,raw.zst,vmdk,vhdx,raw.gz,raw", "--qcow2-compression", "zstd"]);
    assert!(ok, "{stderr}");
    assert_eq!(sha256(&base), before);
    assert_nothing_left(&tmp.path().join("work"));

    let n = "k8s-node-debian";
    let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut want: Vec<String> = ["qcow2", "ova", "vhd", "tar.gz", "raw.zst", "vmdk", "vhdx", "raw.gz", "raw"].iter().map(|e| format!("{n}.{e}")).collect();
    want.extend(["SHA256SUMS".to_string(), "bom.json".to_string()]);
    want.sort();
    for w in &want {
        assert!(names.contains(w), "{w} missing from {names:?}");
    }
    // SHA256SUMS lists every file but itself, and each sum is right.
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (sum, file) = line.split_once("  ").unwrap();
        assert_eq!(sha256(&out.join(file)), sum, "{file}");
    }
    for w in want.iter().filter(|w| *w != "SHA256SUMS") {
        assert!(sums.lines().any(|l| l.ends_with(&format!("  {w}"))), "{w} is not in SHA256SUMS");
    }

    let raw = out.join(format!("{n}.raw"));
    let size = std::fs::metadata(&raw).unwrap().len();
    assert_eq!(size, std::fs::metadata(&base).unwrap().len());
    // qcow2 (zstd), vmdk (streamOptimized), vhdx, vhd (fixed, whole MiB).
    let q = qemu_info(&out.join(format!("{n}.qcow2")), "qcow2");
    assert_eq!(q["format-specific"]["data"]["compression-type"], "zstd");
    assert_eq!(q["virtual-size"], size);
    same_disk(&out.join(format!("{n}.qcow2")), "qcow2", &raw);
    let v = qemu_info(&out.join(format!("{n}.vmdk")), "vmdk");
    assert_eq!(v["format-specific"]["data"]["create-type"], "streamOptimized");
    same_disk(&out.join(format!("{n}.vmdk")), "vmdk", &raw);
    let x = qemu_info(&out.join(format!("{n}.vhdx")), "vhdx");
    assert_eq!(x["virtual-size"], size);
    same_disk(&out.join(format!("{n}.vhdx")), "vhdx", &raw);
    let vhd = out.join(format!("{n}.vhd"));
    let h = qemu_info(&vhd, "vpc");
    assert_eq!(h["virtual-size"].as_u64().unwrap() % (1 << 20), 0, "the vhd's size is not a whole MiB");
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), h["virtual-size"].as_u64().unwrap() + 512, "not a fixed vhd");
    same_disk(&vhd, "vpc", &raw);

    // raw.zst and raw.gz decompress to the raw image.
    let raw_sum = sha256(&raw);
    for (ext, tool) in [("raw.zst", "zstd"), ("raw.gz", "gzip")] {
        let dec = tmp.path().join(format!("dec-{tool}"));
        let ok = Command::new("sh").args(["-c", &format!("{tool} -d -c -- \"$1\" > \"$2\""), "sh"]).arg(out.join(format!("{n}.{ext}"))).arg(&dec).status().unwrap();
        assert!(ok.success());
        assert_eq!(sha256(&dec), raw_sum, "{ext}");
        std::fs::remove_file(&dec).unwrap();
    }

    // gce: a GNU tar.gz holding exactly disk.raw, the raw image.
    let gce = out.join(format!("{n}.tar.gz"));
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&gce).unwrap()));
    let mut entries = a.entries().unwrap();
    let mut e = entries.next().unwrap().unwrap();
    assert_eq!(e.path().unwrap().to_str(), Some("disk.raw"));
    assert!(e.header().as_gnu().is_some(), "the gce archive is not GNU tar");
    assert_eq!(kib::hash::sha256_reader(&mut e).unwrap(), raw_sum, "gce's disk.raw is not the raw image");
    drop(e);
    assert!(entries.next().is_none(), "gce archive holds more than disk.raw");

    // ova: ustar, descriptor first, .mf matching, the disk a streamOptimized vmdk of the image.
    let ova = out.join(format!("{n}.ova"));
    let mut a = tar::Archive::new(std::fs::File::open(&ova).unwrap());
    let mut files: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut order = Vec::new();
    let mut ovf = String::new();
    let mut mf = String::new();
    let disk = tmp.path().join("ova-disk.vmdk");
    for (i, e) in a.entries().unwrap().enumerate() {
        let mut e = e.unwrap();
        assert!(e.header().as_ustar().is_some(), "ova entries must be ustar");
        let name = e.path().unwrap().display().to_string();
        order.push(name.clone());
        if name.ends_with(".vmdk") {
            e.unpack(&disk).unwrap();
            files.insert(name, (i, sha256(&disk)));
        } else {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            files.insert(name.clone(), (i, kib::hash::sha256_bytes(s.as_bytes())));
            if name.ends_with(".ovf") { ovf = s } else { mf = s }
        }
    }
    assert_eq!(order, [format!("{n}.ovf"), format!("{n}.mf"), format!("{n}-disk1.vmdk")]);
    for (name, (_, sum)) in files.iter().filter(|(k, _)| !k.ends_with(".mf")) {
        assert!(mf.contains(&format!("SHA256({name})= {sum}\n")), "{name} does not match the .mf:\n{mf}");
    }
    assert_eq!(mf.lines().count(), 2);
    let d = qemu_info(&disk, "vmdk");
    assert_eq!(d["format-specific"]["data"]["create-type"], "streamOptimized");
    same_disk(&disk, "vmdk", &raw);
    // The descriptor: OVF 1.0 envelope, the disk's sizes, the distribution and versions.
    let props = ovf_properties(&ovf);
    assert!(ovf.contains(r#"xmlns="http://schemas.dmtf.org/ovf/envelope/1""#));
    assert!(ovf.contains(&format!(r#"ovf:href="{n}-disk1.vmdk" ovf:size="{}""#, std::fs::metadata(&disk).unwrap().len())), "{ovf}");
    assert!(ovf.contains(&format!(r#"ovf:capacity="{size}""#)));
    // DMTF's OVF envelope schema (DSP8023), and what vCenter's importer reads: the disk section
    // matches the vmdk in the archive (capacity = its virtual size, file size = its bytes), a
    // VirtualHardwareSection, and the firmware the disk boots with (the base image has a BIOS
    // boot partition).
    validate_ovf(&ovf).unwrap_or_else(|e| panic!("the OVF descriptor does not validate against DSP8023:\n{e}\n{ovf}"));
    assert_eq!(d["virtual-size"].as_u64().unwrap(), size, "the vmdk's virtual size is the disk's");
    let attr = |name: &str| -> u64 {
        let i = ovf.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("{name} missing")) + name.len() + 2;
        ovf[i..ovf[i..].find('"').unwrap() + i].parse().unwrap()
    };
    assert_eq!(attr("ovf:capacity"), d["virtual-size"].as_u64().unwrap());
    assert_eq!(attr("ovf:size"), std::fs::metadata(&disk).unwrap().len());
    assert!(attr("ovf:populatedSize") <= attr("ovf:capacity"));
    assert!(ovf.contains("<VirtualHardwareSection>") && ovf.contains("<vssd:VirtualSystemType>"), "{ovf}");
    assert!(ovf.contains(r#"vmw:key="firmware" vmw:value="bios""#), "{ovf}");
    let bom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bom.json")).unwrap()).unwrap();
    let version = |pkg: &str| bom["packages"].as_array().unwrap().iter().find(|p| p["name"] == pkg).unwrap()["version"].as_str().unwrap().to_string();
    assert!(version("containerd").starts_with(&props["CONTAINERD_VERSION"]), "{props:?}");
    assert!(version("containernetworking-plugins").starts_with(&props["CNI_VERSION"]), "{props:?}");
    assert_eq!(props["DISTRO_NAME"], "debian");
    assert_eq!(props["DISTRO_VERSION"], "12");
    assert_eq!(props["DISTRO_ARCH"], "amd64");
    // Every artifact is in the BOM too.
    let arts: Vec<&str> = bom["artifacts"].as_array().unwrap().iter().map(|a| a["file"].as_str().unwrap()).collect();
    assert_eq!(arts.len(), 9, "{arts:?}");
}

/// ProductSection properties of an OVF descriptor, key to value.
fn ovf_properties(ovf: &str) -> BTreeMap<String, String> {
    let mut r = quick_xml::Reader::from_str(ovf);
    let mut out = BTreeMap::new();
    loop {
        match r.read_event().unwrap() {
            quick_xml::events::Event::Empty(e) if e.name().as_ref() == b"Property" => {
                let get = |k: &str| e.try_get_attribute(k).unwrap().unwrap().normalized_value(quick_xml::XmlVersion::default()).unwrap().into_owned();
                out.insert(get("ovf:key"), get("ovf:value"));
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    out
}

