//! LVM and SELinux end to end, as root, on the FIXTURES of testdata/lvm/make-lvm-image.sh
//! (Debian 12 images built to stand in for enterprise golden images: root and /var on LVM
//! logical volumes of VG `rootvg`, SELinux permissive with Debian's policy, and tiny
//! metadata-only disks with layouts kib must refuse). The tests map the output's LVs
//! themselves, read-only, with the lvm tools on a loop device of their own.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const LVM_SELINUX: &str = "debian-12-lvm-selinux-amd64.raw";

const TRIVIAL: &str = "apiVersion: kib/v1\nkind: ImageManifest\nmetadata: {name: t}\nsteps:\n  - name: f\n    file: {path: /etc/kib-t, content: \"x\\n\"}\noutput: {formats: [raw]}\n";

/// A host VG named like the image's (testdata/lvm/host-vg.sh, a fixture on its own loop
/// device, metadata only); removed on drop.
struct HostVg {
    dir: PathBuf,
}

impl HostVg {
    fn create(dir: &Path, vg: &str) -> HostVg {
        let out = Command::new("bash").arg(repo().join("testdata/lvm/host-vg.sh")).arg("create").arg(dir).arg(vg).output().unwrap();
        assert!(out.status.success(), "host-vg.sh create: {}", String::from_utf8_lossy(&out.stderr));
        HostVg { dir: dir.to_path_buf() }
    }

    /// Whether its PV's bytes, VG UUID and seqno are what `create` recorded.
    fn untouched(&self) -> (bool, String) {
        let out = Command::new("bash").arg(repo().join("testdata/lvm/host-vg.sh")).arg("check").arg(&self.dir).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for HostVg {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo().join("testdata/lvm/host-vg.sh")).arg("remove").arg(&self.dir).status();
    }
}

#[test]
fn lvm_selinux_fixture_through_the_node_manifest_beside_a_host_vg_of_the_same_name() {
    if skip_unless_root("lvm_selinux_fixture_through_the_node_manifest_beside_a_host_vg_of_the_same_name") {
        return;
    }
    let input = lvm_fixture(LVM_SELINUX);
    let before = sha256(&input);
    let tmp = tempfile::tempdir().unwrap();
    let (vg_in, _, pvs_in) = read_vg(&input, 3, &tmp.path().join("lvm-in"));
    let host = HostVg::create(&tmp.path().join("host-vg"), &vg_in.name);

    let out = customize_cmd(&input, &repo().join("manifests/k8s-node-debian.yaml"), tmp.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kib failed:\n{stderr}");
    let (ok, why) = host.untouched();
    assert!(ok, "the host's VG {} changed: {why}", vg_in.name);
    assert_nothing_left(&tmp.path().join("work"));
    assert_eq!(sha256(&input), before, "the input image changed");
    // The relabel's cost is in the log.
    let relabel = stderr.lines().find(|l| l.contains("SELinux: labelled")).unwrap_or_else(|| panic!("no relabel line in:\n{stderr}"));
    assert!(relabel.contains("policy default (permissive) in ") && relabel.trim_end().ends_with(" s"), "{relabel}");
    eprintln!("{relabel}");

    // The output's VG is the input's: name, UUIDs, metadata sequence number.
    let raw = tmp.path().join("out/k8s-node-debian.raw");
    let (vg_out, pv_start, pvs_out) = read_vg(&raw, 3, &tmp.path().join("lvm-out"));
    assert_eq!((&vg_out.name, &vg_out.uuid, vg_out.seqno), (&vg_in.name, &vg_in.uuid, vg_in.seqno));
    assert_eq!(pvs_out.iter().map(|p| &p.pv_uuid).collect::<Vec<_>>(), pvs_in.iter().map(|p| &p.pv_uuid).collect::<Vec<_>>());
    // The same LVs at the same extents (the PV's loop device name is the test's own and differs).
    let places = |vg: &kib::phase0::lvm::VolumeGroup| vg.lvs.iter().map(|m| (m.lv.clone(), m.lv_uuid.clone(), m.pv_uuid.clone(), m.first_pe, m.extent_count, m.offset_bytes_in_pv)).collect::<Vec<_>>();
    assert_eq!(places(&vg_out), places(&vg_in));

    // dpkg's status is on the /var LV, and the steps' files on the root LV.
    let var = vg_out.lv("varlv").unwrap();
    let root = vg_out.lv("rootlv").unwrap();
    let var_mnt = mount_lv(&raw, pv_start + var.offset_bytes_in_pv, var.size_bytes, "xfs", &tmp.path().join("mnt-var"));
    let root_mnt = mount_lv(&raw, pv_start + root.offset_bytes_in_pv, root.size_bytes, "xfs", &tmp.path().join("mnt-root"));
    let status = var_mnt.read("/lib/dpkg/status");
    let installed = kib::pkg::dpkg::parse_status(&status).unwrap();
    for want in ["containerd", "runc", "conntrack", "selinux-policy-default"] {
        assert!(installed.iter().any(|p| p.name == want), "{want} is not in the /var LV's dpkg status");
    }
    assert!(!root_mnt.path("/var/lib/dpkg/status").exists(), "dpkg's status landed on the root LV, under the /var mount point");
    assert!(root_mnt.read("/etc/containerd/config.toml").contains("SystemdCgroup = true"));

    // Every file the steps and sysprep wrote carries the label file_contexts gives its path.
    let fc = root_mnt.path("/etc/selinux/default/contexts/files/file_contexts");
    let mut checked = 0;
    for (mnt, prefix, path) in [
        (&root_mnt, "", "/etc/containerd/config.toml"),
        (&root_mnt, "", "/etc/crictl.yaml"),
        (&root_mnt, "", "/etc/default/kubelet"),
        (&root_mnt, "", "/etc/sysctl.d/99-kubernetes.conf"),
        (&root_mnt, "", "/etc/modules-load.d/kubernetes.conf"),
        (&root_mnt, "", "/usr/bin/containerd"),
        (&root_mnt, "", "/etc/hosts"),
        (&root_mnt, "", "/var"),
        (&var_mnt, "/var", "/lib/dpkg/status"),
        (&var_mnt, "/var", "/lib/dpkg/info/containerd.list"),
    ] {
        let image_path = format!("{prefix}{path}");
        let have = selinux_label(&mnt.path(path));
        assert!(!have.is_empty(), "{image_path} has no SELinux label");
        assert_eq!(have, selinux_wanted(&fc, &image_path), "{image_path}");
        checked += 1;
    }
    assert_eq!(checked, 10);
    drop(var_mnt);
    drop(root_mnt);

    // The BOM records the VG and the labelling.
    let bom = kib::bom::Bom::read(&tmp.path().join("out/bom.json")).unwrap();
    assert_eq!(bom.volume_groups.len(), 1);
    let vg = &bom.volume_groups[0];
    assert_eq!((vg.name.as_str(), vg.uuid.as_str(), vg.seqno), (vg_in.name.as_str(), vg_in.uuid.as_str(), vg_in.seqno));
    let var_rec = vg.lvs.iter().find(|l| l.name == "varlv").unwrap();
    assert_eq!((var_rec.fstype.as_str(), var_rec.mount_point.as_deref(), var_rec.offset), ("xfs", Some("/var"), pv_start + var.offset_bytes_in_pv));
    assert!(bom.filesystems.iter().any(|f| f.lv.as_deref() == Some("rootvg/varlv") && f.mount_point == "/var"));
    let se = bom.selinux.as_ref().expect("selinux in the BOM");
    assert!(se.relabelled && se.policy == "default" && se.mode == "permissive" && se.seconds > 0.0, "{se:?}");

    // kib check's dry run finds nothing to relabel; kib inspect shows the VG and its LVs.
    let check = kib().args(["check", "--disk-image"]).arg(&raw).arg("--work-dir").arg(tmp.path().join("work")).output().unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && text.contains("PASS SELinux labels match file_contexts"), "{text}\n{}", String::from_utf8_lossy(&check.stderr));
    let inspect = kib().arg("inspect").arg(&raw).arg("--work-dir").arg(tmp.path().join("work")).output().unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    assert!(text.contains(&format!("volume group rootvg (uuid {}, seqno {}", vg_in.uuid, vg_in.seqno)), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("varlv") && l.ends_with("xfs on /var")), "{text}");
    assert!(text.contains("selinux:      default (permissive)"), "{text}");
    assert_nothing_left(&tmp.path().join("work"));
    let (ok, why) = host.untouched();
    assert!(ok, "{why}");

    // The node boots under TCG (KVM hangs on these machines) from a throwaway overlay: the
    // guest's initramfs activates rootvg, / and /var come up from their LVs, SELinux is
    // permissive with kib's labels, containerd runs. The manifest installs no kubelet, so
    // there are no kubelet checks.
    let t0 = std::time::Instant::now();
    let console = tmp.path().join("console.log");
    let out = kib()
        .args(["check", "--boot", "--accel", "tcg", "--boot-timeout", "600", "--output", "json", "--manifest", "manifests/k8s-node-debian.yaml", "--disk-image"])
        .arg(&raw)
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--console-log")
        .arg(&console)
        .output()
        .unwrap();
    assert_boot_checks(
        &out,
        &console,
        t0,
        &[
            "boot: report complete",
            "boot: containerd active",
            "boot: containerd enabled",
            "boot: swap off",
            "boot: no failed units",
            "boot: machine-id fresh",
            "boot: module br_netfilter loaded",
            "boot: sysctl net.ipv4.ip_forward = 1",
        ],
    );
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kubelet: Vec<&serde_json::Value> = checks.iter().filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("boot: kubelet"))).collect();
    assert!(kubelet.is_empty(), "boot checks of a kubelet on an image without one: {kubelet:#?}");
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(log.contains("rootvg"), "the console log does not mention rootvg (was / on the LV?)");
    assert_nothing_left(&tmp.path().join("work"));
    let (ok, why) = host.untouched();
    assert!(ok, "{why}");
}

#[test]
fn lvm_layouts_kib_cannot_map_are_refused_by_name_and_the_input_stays_identical() {
    if skip_unless_root("lvm_layouts_kib_cannot_map_are_refused_by_name_and_the_input_stays_identical") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("t.yaml"), TRIVIAL).unwrap();
    for (name, want) in [
        ("missing-pv", "volume group rootvg is missing 1 of its 2 physical volumes"),
        ("striped", "rootvg/varlv is striped over 2 physical volumes"),
        ("thin", "rootvg/varlv is a thin volume in pool pool"),
        ("snapshot", "rootvg/varsnap is a snapshot of rootlv"),
        ("noncontig", "rootvg/varlv is linear but made of 2 non-contiguous segments"),
    ] {
        let input = lvm_fixture(&format!("tiny-lvm-{name}.raw"));
        let before = sha256(&input);
        let (ok, stderr) = customize_in(&input, &tmp.path().join("t.yaml"), tmp.path(), &[]);
        assert!(!ok, "{name}: kib succeeded");
        assert!(stderr.contains(want) && stderr.contains("Nothing was activated or changed"), "{name}: {stderr}");
        assert!(stderr.contains("reading the image's LVM volume groups"), "{name}: {stderr}");
        assert_eq!(sha256(&input), before, "{name}: the input changed");
        assert_nothing_left(&tmp.path().join("work"));
        assert!(!tmp.path().join("out").exists() || std::fs::read_dir(tmp.path().join("out")).unwrap().next().is_none(), "{name}: outputs written");
    }
}

#[test]
fn an_selinux_image_without_file_contexts_is_refused_before_any_step() {
    if skip_unless_root("an_selinux_image_without_file_contexts_is_refused_before_any_step") {
        return;
    }
    // The bad input, derived from the LVM+SELinux fixture: its policy's file_contexts removed
    // (what make-lvm-image.sh's selinux-no-file-contexts variant does to the plain one).
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("no-fc.raw");
    let ok = Command::new("cp").arg("--sparse=always").arg(lvm_fixture(LVM_SELINUX)).arg(&input).status().unwrap();
    assert!(ok.success());
    let (vg, pv_start, _) = read_vg(&input, 3, &tmp.path().join("lvm"));
    let root = vg.lv("rootlv").unwrap();
    let dir = tmp.path().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "xfs", "-o", &format!("loop,offset={},sizelimit={}", pv_start + root.offset_bytes_in_pv, root.size_bytes)])
        .arg(&input)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mount.success());
    let fcdir = dir.join("etc/selinux/default/contexts/files");
    std::fs::remove_file(fcdir.join("file_contexts")).unwrap();
    let _ = std::fs::remove_file(fcdir.join("file_contexts.bin"));
    assert!(Command::new("umount").arg(&dir).status().unwrap().success());

    std::fs::write(tmp.path().join("t.yaml"), TRIVIAL).unwrap();
    let before = sha256(&input);
    let (ok, stderr) = customize_in(&input, &tmp.path().join("t.yaml"), tmp.path(), &[]);
    assert!(!ok);
    assert!(
        stderr.contains("says SELINUX=permissive and SELINUXTYPE=default, but that policy has no file contexts: /etc/selinux/default/contexts/files/file_contexts is missing"),
        "{stderr}"
    );
    assert!(!stderr.contains("step 1/1"), "a step ran before the refusal: {stderr}");
    assert_eq!(sha256(&input), before, "the input changed");
    assert_nothing_left(&tmp.path().join("work"));
}

#[test]
fn disk_size_grows_the_pv_the_last_lv_and_its_filesystem_metadata_only() {
    if skip_unless_root("disk_size_grows_the_pv_the_last_lv_and_its_filesystem_metadata_only") {
        return;
    }
    let input = lvm_fixture(LVM_SELINUX);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("t.yaml"), TRIVIAL).unwrap();
    let (vg_in, _, pvs_in) = read_vg(&input, 3, &tmp.path().join("lvm-in"));
    let (ok, stderr) = customize_in(&input, &tmp.path().join("t.yaml"), tmp.path(), &["--phases", "0,1", "--disk-size", "3584MiB"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("and rootvg/varlv (xfs) from 1016.0 MiB to 1.5 GiB"), "{stderr}");
    assert_nothing_left(&tmp.path().join("work"));
    let raw = tmp.path().join("out/t.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 3584 << 20);
    let (vg, pv_start, pvs) = read_vg(&raw, 3, &tmp.path().join("lvm-out"));
    assert_eq!((&vg.name, &vg.uuid), (&vg_in.name, &vg_in.uuid));
    assert_eq!(pvs[0].pv_uuid, pvs_in[0].pv_uuid);
    assert!(vg.seqno > vg_in.seqno, "growth writes metadata: seqno {} -> {}", vg_in.seqno, vg.seqno);
    let (root_in, root) = (vg_in.lv("rootlv").unwrap(), vg.lv("rootlv").unwrap());
    // Everything but the PV's loop device, whose number is whatever was free for each read.
    let same_place = |m: &kib::phase0::lvm::LvMapping| (m.lv.clone(), m.lv_uuid.clone(), m.pv_uuid.clone(), m.pv_index, m.offset_bytes_in_pv, m.size_bytes, m.first_pe, m.extent_count);
    assert_eq!(same_place(root), same_place(root_in), "the root LV did not move or grow");
    let var = vg.lv("varlv").unwrap();
    let var_in = vg_in.lv("varlv").unwrap();
    assert_eq!(var.first_pe, var_in.first_pe);
    assert_eq!(var.first_pe + var.extent_count, vg.pvs[0].pe_count, "varlv fills the grown PV, in one segment");
    assert_eq!(var.extent_count, var_in.extent_count + 128);
    let mnt = mount_lv(&raw, pv_start + var.offset_bytes_in_pv, var.size_bytes, "xfs", &tmp.path().join("mnt"));
    let out = Command::new("stat").args(["-f", "-c", "%b %S"]).arg(&mnt.dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (blocks, bsize) = text.trim().split_once(' ').unwrap();
    let fs_bytes = blocks.parse::<u64>().unwrap() * bsize.parse::<u64>().unwrap();
    assert!(fs_bytes > var_in.size_bytes, "the xfs on varlv grew: {fs_bytes} bytes");
    drop(mnt);
    let bom = kib::bom::Bom::read(&tmp.path().join("out/bom.json")).unwrap();
    let g = bom.disk_growth.unwrap();
    assert_eq!((g.partition, g.lv.as_deref(), g.fstype.as_str()), (3, Some("rootvg/varlv"), "xfs"));
}
