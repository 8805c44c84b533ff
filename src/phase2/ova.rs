//! OVA for vSphere: a POSIX ustar archive holding, in this order, the OVF 1.0 descriptor
//! (`<name>.ovf`), the manifest (`<name>.mf`, one `SHA256(file)= hex` line per file) and the
//! streamOptimized VMDK (`<name>-disk1.vmdk`), as DSP0243 (OVF 1.0) §5.3 wants: descriptor
//! first, manifest next, then the disks.
//!
//! The descriptor follows the upstream image-builder's (kubernetes-sigs/image-builder
//! `images/capi/hack/image-build-ova.py`): one VM with 2 vCPUs, 2 GiB of memory, a SCSI
//! controller with the disk, a VMXNET3 NIC, and a ProductSection whose properties carry the
//! build's versions (`KUBERNETES_SEMVER`, `CONTAINERD_VERSION`, `CNI_VERSION`, `DISTRO_NAME`,
//! ...), which vSphere shows and Cluster API reads. It is written with quick-xml, so values are
//! escaped.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use indexmap::IndexMap;
use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

/// What the OVF descriptor says about the VM besides its disk.
#[derive(Debug, Clone, Default)]
pub struct OvfInfo {
    /// The VM and image name.
    pub name: String,
    /// The image's os-release (`ID`, `VERSION_ID`, `PRETTY_NAME`).
    pub os_release: IndexMap<String, String>,
    /// Debian architecture name: `amd64`, `arm64`.
    pub arch: String,
    /// `bios` or `efi`: the firmware vSphere boots the VM with.
    pub firmware: &'static str,
    /// ProductSection properties, key to value, in this order (see [`properties`]).
    pub properties: Vec<(String, String)>,
}

/// The GPT type GUID of a BIOS boot partition (GRUB's core image for BIOS on a GPT disk).
pub const BIOS_BOOT_PARTITION: &str = "21686148-6449-6E6F-744E-656564454649";

/// The firmware an image boots with: `bios` when its disk has a BIOS boot partition or an MBR
/// table, else `efi`.
pub fn firmware(table: &crate::phase0::partition::Table) -> &'static str {
    let bios = table.partitions.iter().any(|p| p.type_id == BIOS_BOOT_PARTITION) || table.kind == crate::phase0::partition::TableKind::Mbr;
    if bios { "bios" } else { "efi" }
}

impl OvfInfo {
    /// What the descriptor says about `image`: its OS, firmware, and the versions of what was
    /// installed (from `packages`, else the manifest's variables). `name` is filled in later.
    pub fn for_image(image: &crate::phase0::Image, manifest: &crate::manifest::Manifest, packages: &[crate::pkg::Package], build_date: &str) -> OvfInfo {
        let installed: IndexMap<String, String> = packages.iter().map(|p| (p.name.clone(), p.full_version())).collect();
        OvfInfo {
            name: String::new(),
            os_release: image.facts.os_release.clone(),
            arch: image.facts.arch.clone(),
            firmware: firmware(&image.table),
            properties: properties(&installed, &manifest.variables.0, &image.facts.os_release, &image.facts.arch, build_date),
        }
    }
}

/// The disk as the descriptor describes it.
#[derive(Debug, Clone, Copy)]
pub struct DiskInfo {
    /// Virtual size, in bytes.
    pub capacity: u64,
    /// Bytes of the disk holding data (allocated blocks of the sparse raw disk).
    pub populated: u64,
    /// Size of the VMDK file in the archive, in bytes.
    pub file_size: u64,
}

/// The ProductSection properties of an image: the Kubernetes, containerd and CNI versions and
/// the distribution, as upstream names them. `packages` maps installed package names to their
/// versions; `variables` are the manifest's. A version comes from the installed package when
/// there is one, else from the manifest variable that installed it (binaries from tarballs);
/// unknown ones are left out.
pub fn properties(
    packages: &IndexMap<String, String>,
    variables: &IndexMap<String, String>,
    os_release: &IndexMap<String, String>,
    arch: &str,
    build_started: &str,
) -> Vec<(String, String)> {
    let pkg = |names: &[&str]| names.iter().find_map(|n| packages.get(*n)).map(|v| upstream_version(v));
    let var = |name: &str| variables.get(name).filter(|v| !v.is_empty()).cloned();
    let mut p = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            p.push((k.to_string(), v));
        }
    };
    put("KUBERNETES_SEMVER", var("kubernetes_version").or_else(|| pkg(&["kubelet"])).map(|v| if v.starts_with('v') { v } else { format!("v{v}") }));
    put("KUBERNETES_SOURCE_TYPE", var("kubernetes_source"));
    put("CONTAINERD_VERSION", pkg(&["containerd.io", "containerd"]).or_else(|| var("containerd_version")));
    put("CNI_VERSION", pkg(&["kubernetes-cni", "containernetworking-plugins"]).or_else(|| var("cni_version")));
    put("DISTRO_NAME", os_release.get("ID").cloned());
    put("DISTRO_VERSION", os_release.get("VERSION_ID").cloned());
    put("DISTRO_ARCH", Some(arch.to_string()));
    put("BUILD_DATE", Some(build_started.to_string()));
    put(
        "BUILD_TIMESTAMP",
        humantime::parse_rfc3339(build_started).ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs().to_string()),
    );
    put("KIB_VERSION", Some(env!("CARGO_PKG_VERSION").to_string()));
    p
}

/// A Debian version without its epoch and revision: `1:1.6.20~ds1-1+b1` → `1.6.20~ds1`.
fn upstream_version(v: &str) -> String {
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    v.rsplit_once('-').map_or(v, |(up, _)| up).to_string()
}

/// The CIM operating-system id and vSphere guest id for the image (DSP0243's
/// CIM_OperatingSystem.OsType, VMware's guest OS identifiers).
fn os_ids(os_release: &IndexMap<String, String>, arch: &str) -> (u32, String) {
    let id = os_release.get("ID").map(String::as_str).unwrap_or("");
    let major = os_release.get("VERSION_ID").and_then(|v| v.split('.').next()).and_then(|v| v.parse::<u32>().ok());
    match (id, arch) {
        ("debian", "amd64") => (96, major.filter(|m| (10..=12).contains(m)).map_or("otherLinux64Guest".into(), |m| format!("debian{m}_64Guest"))),
        ("ubuntu", "amd64") => (94, "ubuntu64Guest".into()),
        (_, "arm64") => (101, "arm-other6xLinux64Guest".into()),
        _ => (101, "otherLinux64Guest".into()),
    }
}

/// The OVF 1.0 descriptor of a VM named `info.name` whose one disk is the streamOptimized VMDK
/// `disk_href`.
pub fn descriptor(info: &OvfInfo, disk_href: &str, disk: DiskInfo) -> Result<String> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let (os_id, os_type) = os_ids(&info.os_release, &info.arch);
    let pretty = info.os_release.get("PRETTY_NAME").cloned().unwrap_or_else(|| "Linux".into());
    let kube = info.properties.iter().find(|(k, _)| k == "KUBERNETES_SEMVER").map(|(_, v)| v.clone());
    let product = match &kube {
        Some(k) => format!("{pretty} and Kubernetes {k}"),
        None => pretty.clone(),
    };
    let text = |s: &str| BytesText::new(s).into_owned();
    w.create_element("Envelope")
        .with_attributes([
            ("xmlns", "http://schemas.dmtf.org/ovf/envelope/1"),
            ("xmlns:ovf", "http://schemas.dmtf.org/ovf/envelope/1"),
            ("xmlns:rasd", "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"),
            ("xmlns:vssd", "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"),
            ("xmlns:vmw", "http://www.vmware.com/schema/ovf"),
            ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
        ])
        .write_inner_content(|w| {
            w.create_element("References").write_inner_content(|w| {
                w.create_element("File")
                    .with_attributes([("ovf:id", "file1"), ("ovf:href", disk_href), ("ovf:size", &disk.file_size.to_string())])
                    .write_empty()?;
                Ok(())
            })?;
            w.create_element("DiskSection").write_inner_content(|w| {
                w.create_element("Info").write_text_content(text("Virtual disk information"))?;
                w.create_element("Disk")
                    .with_attributes([
                        ("ovf:capacity", disk.capacity.to_string().as_str()),
                        ("ovf:capacityAllocationUnits", "byte"),
                        ("ovf:diskId", "vmdisk1"),
                        ("ovf:fileRef", "file1"),
                        ("ovf:format", "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"),
                        ("ovf:populatedSize", disk.populated.to_string().as_str()),
                    ])
                    .write_empty()?;
                Ok(())
            })?;
            w.create_element("NetworkSection").write_inner_content(|w| {
                w.create_element("Info").write_text_content(text("The list of logical networks"))?;
                w.create_element("Network").with_attribute(("ovf:name", "nic0")).write_inner_content(|w| {
                    w.create_element("Description").write_text_content(text("The VM's network"))?;
                    Ok(())
                })?;
                Ok(())
            })?;
            w.create_element("VirtualSystem").with_attribute(("ovf:id", info.name.as_str())).write_inner_content(|w| {
                w.create_element("Info").write_text_content(text("A Kubernetes node image built by kib"))?;
                w.create_element("Name").write_text_content(text(&info.name))?;
                w.create_element("AnnotationSection").write_inner_content(|w| {
                    w.create_element("Info").write_text_content(text("A human-readable annotation"))?;
                    w.create_element("Annotation").write_text_content(text(&format!("{product}, built by kib {}", env!("CARGO_PKG_VERSION"))))?;
                    Ok(())
                })?;
                w.create_element("OperatingSystemSection")
                    .with_attributes([("ovf:id", os_id.to_string().as_str()), ("vmw:osType", os_type.as_str())])
                    .write_inner_content(|w| {
                        w.create_element("Info").write_text_content(text("The operating system installed"))?;
                        w.create_element("Description").write_text_content(text(&pretty))?;
                        Ok(())
                    })?;
                hardware(w, &info.name, info.firmware)?;
                w.create_element("ProductSection").write_inner_content(|w| {
                    w.create_element("Info").write_text_content(text("Information about the installed software"))?;
                    w.create_element("Product").write_text_content(text(&product))?;
                    w.create_element("Vendor").write_text_content(text("kib"))?;
                    if let Some(k) = &kube {
                        w.create_element("Version").write_text_content(text(&format!("kube-{k}")))?;
                        w.create_element("FullVersion").write_text_content(text(&format!("kube-{k}")))?;
                    }
                    for (k, v) in &info.properties {
                        w.create_element("Property")
                            .with_attributes([("ovf:key", k.as_str()), ("ovf:type", "string"), ("ovf:userConfigurable", "false"), ("ovf:value", v.as_str())])
                            .write_empty()?;
                    }
                    Ok(())
                })?;
                Ok(())
            })?;
            Ok(())
        })?;
    let mut xml = String::from_utf8(w.into_inner()).context("OVF descriptor is not UTF-8")?;
    xml.push('\n');
    Ok(xml)
}

/// The VirtualHardwareSection: 2 vCPUs, 2 GiB, LSI Logic SCSI with the disk, a VMXNET3 NIC.
fn hardware(w: &mut Writer<Vec<u8>>, name: &str, firmware: &str) -> std::io::Result<()> {
    let text = |s: &str| BytesText::new(s).into_owned();
    let item = |w: &mut Writer<Vec<u8>>, fields: &[(&str, &str)], configs: &[(&str, &str)]| -> std::io::Result<()> {
        w.create_element("Item").write_inner_content(|w| {
            for (k, v) in fields {
                w.create_element(format!("rasd:{k}")).write_text_content(BytesText::new(v))?;
            }
            for (k, v) in configs {
                w.create_element("vmw:Config").with_attributes([("ovf:required", "false"), ("vmw:key", k), ("vmw:value", v)]).write_empty()?;
            }
            Ok(())
        })?;
        Ok(())
    };
    w.create_element("VirtualHardwareSection").write_inner_content(|w| {
        w.create_element("Info").write_text_content(text("Virtual hardware requirements"))?;
        w.create_element("System").write_inner_content(|w| {
            w.create_element("vssd:ElementName").write_text_content(text("Virtual Hardware Family"))?;
            w.create_element("vssd:InstanceID").write_text_content(text("0"))?;
            w.create_element("vssd:VirtualSystemIdentifier").write_text_content(text(name))?;
            w.create_element("vssd:VirtualSystemType").write_text_content(text("vmx-13"))?;
            Ok(())
        })?;
        // Child elements of an Item in the alphabetical order CIM_ResourceAllocationSettingData's
        // schema wants.
        item(w, &[("AllocationUnits", "hertz * 10^6"), ("Description", "Number of Virtual CPUs"), ("ElementName", "2 virtual CPU(s)"), ("InstanceID", "1"), ("ResourceType", "3"), ("VirtualQuantity", "2")], &[])?;
        item(w, &[("AllocationUnits", "byte * 2^20"), ("Description", "Memory Size"), ("ElementName", "2048MB of memory"), ("InstanceID", "2"), ("ResourceType", "4"), ("VirtualQuantity", "2048")], &[])?;
        item(w, &[("Address", "0"), ("Description", "SCSI Controller"), ("ElementName", "SCSI Controller 0"), ("InstanceID", "3"), ("ResourceSubType", "lsilogic"), ("ResourceType", "6")], &[])?;
        item(w, &[("AddressOnParent", "0"), ("ElementName", "Hard Disk 1"), ("HostResource", "ovf:/disk/vmdisk1"), ("InstanceID", "4"), ("Parent", "3"), ("ResourceType", "17")], &[])?;
        item(
            w,
            &[("AddressOnParent", "7"), ("AutomaticAllocation", "true"), ("Connection", "nic0"), ("ElementName", "Network adapter 1"), ("InstanceID", "5"), ("ResourceSubType", "VmxNet3"), ("ResourceType", "10")],
            &[("connectable.allowGuestControl", "true")],
        )?;
        for (k, v) in [("firmware", firmware), ("tools.syncTimeWithHost", "false"), ("powerOpInfo.powerOffType", "soft"), ("powerOpInfo.resetType", "soft")] {
            w.create_element("vmw:Config").with_attributes([("ovf:required", "false"), ("vmw:key", k), ("vmw:value", v)]).write_empty()?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The `.mf` manifest: `SHA256(<file>)= <hex>` per `(file, sha256)`.
pub fn manifest<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    entries.into_iter().map(|(f, s)| format!("SHA256({f})= {s}\n")).collect()
}

/// Writes the OVA `dest` for the VM `info` from the streamOptimized VMDK `vmdk`: the descriptor,
/// the manifest and the disk (as `<name>-disk1.vmdk`), in ustar format. `capacity` and
/// `populated` are the disk's virtual and allocated sizes, in bytes.
///
/// Returns the SHA-256 of the VMDK and what was written (the OVA's SHA-256 and size, hashed as it
/// was written).
///
/// Errors: reading the VMDK or writing `dest` (a full output filesystem).
pub fn write(dest: &Path, info: &OvfInfo, vmdk: &Path, capacity: u64, populated: u64) -> Result<(String, super::stream::Hashed)> {
    let disk_name = format!("{}-disk1.vmdk", info.name);
    let file_size = std::fs::metadata(vmdk).with_context(|| format!("reading {}", vmdk.display()))?.len();
    let vmdk_sum = crate::hash::sha256_file(vmdk).with_context(|| format!("hashing {}", vmdk.display()))?;
    let ovf = descriptor(info, &disk_name, DiskInfo { capacity, populated, file_size })?;
    let ovf_name = format!("{}.ovf", info.name);
    let ovf_sum = crate::hash::sha256_bytes(ovf.as_bytes());
    let mf = manifest([(ovf_name.as_str(), ovf_sum.as_str()), (disk_name.as_str(), vmdk_sum.as_str())]);
    let out = std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut tar = tar::Builder::new(super::stream::HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, out)));
    let mtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header = |size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let mf_name = format!("{}.mf", info.name);
    tar.append_data(&mut header(ovf.len() as u64), &ovf_name, ovf.as_bytes())?;
    tar.append_data(&mut header(mf.len() as u64), &mf_name, mf.as_bytes())?;
    let disk = std::fs::File::open(vmdk).with_context(|| format!("opening {}", vmdk.display()))?;
    tar.append_data(&mut header(file_size), &disk_name, disk).with_context(|| format!("writing {} into {}", disk_name, dest.display()))?;
    let w = tar.into_inner().with_context(|| format!("writing {}", dest.display()))?;
    let (mut w, sha256, size) = w.finish();
    w.flush().with_context(|| format!("writing {}", dest.display()))?;
    Ok((vmdk_sum, super::stream::Hashed { path: dest.to_path_buf(), sha256, size }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> OvfInfo {
        let os: IndexMap<String, String> =
            [("ID", "debian"), ("VERSION_ID", "12"), ("PRETTY_NAME", "Debian GNU/Linux 12 (bookworm)")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let packages: IndexMap<String, String> =
            [("containerd", "1.6.20~ds1-1+b1"), ("containernetworking-plugins", "1.1.1+ds1-3+b3"), ("kubelet", "1.30.14-1.1")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let vars: IndexMap<String, String> = [("kubernetes_source", "pkg"), ("cni_version", "9.9.9")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        OvfInfo {
            name: "node <&> test".into(),
            properties: properties(&packages, &vars, &os, "amd64", "2026-11-22T01:02:03Z"),
            os_release: os,
            arch: "amd64".into(),
            firmware: "bios",
        }
    }

    #[test]
    fn properties_carry_versions_from_packages_then_variables() {
        let p: IndexMap<String, String> = info().properties.into_iter().collect();
        assert_eq!(p["KUBERNETES_SEMVER"], "v1.30.14");
        assert_eq!(p["KUBERNETES_SOURCE_TYPE"], "pkg");
        assert_eq!(p["CONTAINERD_VERSION"], "1.6.20~ds1");
        assert_eq!(p["CNI_VERSION"], "1.1.1+ds1", "the installed package wins over the variable");
        assert_eq!(p["DISTRO_NAME"], "debian");
        assert_eq!(p["DISTRO_VERSION"], "12");
        assert_eq!(p["DISTRO_ARCH"], "amd64");
        assert_eq!(p["BUILD_TIMESTAMP"], "1795309323");
        assert_eq!(upstream_version("1:2.3-4"), "2.3");
    }

    /// Both firmware variants validate against DMTF's OVF envelope schema (DSP8023 1.1.1,
    /// testdata/schemas/ovf), with xmllint from Debian's libxml2-utils and no network.
    #[test]
    fn descriptor_validates_against_dsp8023() {
        use std::io::Write;
        let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/schemas/ovf/dsp8023_1.1.1.xsd");
        for firmware in ["bios", "efi"] {
            let xml = descriptor(&OvfInfo { firmware, ..info() }, "node-disk1.vmdk", DiskInfo { capacity: 2 << 30, populated: 600 << 20, file_size: 300 << 20 }).unwrap();
            assert!(xml.contains(&format!(r#"vmw:key="firmware" vmw:value="{firmware}""#)));
            let mut child = std::process::Command::new("xmllint")
                .args(["--noout", "--nonet", "--schema", schema, "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("xmllint (Debian libxml2-utils; scripts/deps.sh installs it)");
            child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{firmware}: {}\n{xml}", String::from_utf8_lossy(&out.stderr));
        }
        // A descriptor that breaks the schema is caught: the check is not vacuous.
        let bad = descriptor(&info(), "d.vmdk", DiskInfo { capacity: 1, populated: 1, file_size: 1 }).unwrap().replace("<DiskSection>", "<DiskSection><Bogus/>");
        let mut child = std::process::Command::new("xmllint")
            .args(["--noout", "--nonet", "--schema", schema, "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bad.as_bytes()).unwrap();
        assert!(!child.wait_with_output().unwrap().status.success());
    }

    #[test]
    fn descriptor_is_well_formed_and_escaped() {
        let xml = descriptor(&info(), "node-disk1.vmdk", DiskInfo { capacity: 2 << 30, populated: 600 << 20, file_size: 300 << 20 }).unwrap();
        // Parse it back: every element closed, every value escaped.
        let mut r = quick_xml::Reader::from_str(&xml);
        let (mut props, mut depth, mut names) = (IndexMap::new(), 0i32, Vec::new());
        loop {
            match r.read_event().unwrap() {
                Event::Start(e) => {
                    depth += 1;
                    names.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                Event::End(_) => depth -= 1,
                Event::Empty(e) if e.name().as_ref() == b"Property" => {
                    let get = |k: &str| e.try_get_attribute(k).unwrap().unwrap().normalized_value(quick_xml::XmlVersion::default()).unwrap().into_owned();
                    props.insert(get("ovf:key"), get("ovf:value"));
                }
                Event::Empty(e) if e.name().as_ref() == b"Disk" => {
                    let get = |k: &str| e.try_get_attribute(k).unwrap().unwrap().normalized_value(quick_xml::XmlVersion::default()).unwrap().into_owned();
                    assert_eq!(get("ovf:capacity"), (2u64 << 30).to_string());
                    assert!(get("ovf:format").ends_with("#streamOptimized"));
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(depth, 0);
        assert_eq!(names[0], "Envelope");
        assert!(xml.contains("<Name>node &lt;&amp;&gt; test</Name>"), "{xml}");
        assert!(xml.contains(r#"vmw:osType="debian12_64Guest""#));
        assert_eq!(props["KUBERNETES_SEMVER"], "v1.30.14");
        assert_eq!(props["CONTAINERD_VERSION"], "1.6.20~ds1");
    }

    #[test]
    fn ova_is_ustar_descriptor_first_and_its_manifest_matches() {
        let d = tempfile::tempdir().unwrap();
        let vmdk = d.path().join("x.vmdk");
        std::fs::write(&vmdk, vec![7u8; 3000]).unwrap();
        let mut i = info();
        i.name = "node".into();
        let ova = d.path().join("node.ova");
        let (vmdk_sum, hashed) = write(&ova, &i, &vmdk, 1 << 20, 4096).unwrap();
        assert_eq!(vmdk_sum, crate::hash::sha256_file(&vmdk).unwrap());
        assert_eq!((hashed.sha256, hashed.size), (crate::hash::sha256_file(&ova).unwrap(), std::fs::metadata(&ova).unwrap().len()), "hashed as written");
        let mut a = tar::Archive::new(std::fs::File::open(&ova).unwrap());
        let mut files = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            assert!(e.header().as_ustar().is_some(), "not ustar");
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.push((e.path().unwrap().display().to_string(), data));
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["node.ovf", "node.mf", "node-disk1.vmdk"]);
        let mf = String::from_utf8(files[1].1.clone()).unwrap();
        for (name, data) in [&files[0], &files[2]] {
            assert!(mf.contains(&format!("SHA256({name})= {}\n", crate::hash::sha256_bytes(data))), "{mf}");
        }
        assert_eq!(mf.lines().count(), 2);
        assert!(String::from_utf8_lossy(&files[0].1).contains(r#"ovf:href="node-disk1.vmdk" ovf:size="3000""#));
    }
}
