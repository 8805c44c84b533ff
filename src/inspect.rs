//! `kib inspect`: what an image holds, read-only — any image, kib's or not. For auditors who
//! did not build it.

use std::path::Path;

use anyhow::Result;
use indexmap::IndexMap;

use crate::phase0::{Filesystem, Image};
use crate::phase0::partition::Table;
use crate::pkg::{self, Package};

/// The report, as `--output json` prints it.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub image: String,
    pub format: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    pub os_release: IndexMap<String, String>,
    /// The image's architecture, from the ELF header of its /bin/sh.
    pub architecture: String,
    /// The architecture its dpkg database records for dpkg itself; differs from
    /// `architecture` only in a broken image (kib warns). `None` without dpkg.
    pub dpkg_architecture: Option<String>,
    pub partition_table: Table,
    pub filesystems: Vec<Filesystem>,
    /// LVM volume groups, their PVs and LVs with the filesystems on them (empty without LVM).
    pub volume_groups: Vec<crate::phase0::lvmap::VgRecord>,
    /// The SELinux policy when `/etc/selinux/config` says enforcing or permissive:
    /// `default (permissive)`.
    pub selinux: Option<String>,
    pub kernels: Vec<String>,
    /// Kubernetes components found: name to version (from packages, /etc/kubernetes-version
    /// and /etc/kib-release).
    pub kubernetes: IndexMap<String, String>,
    pub kib_release: Option<String>,
    pub packages: Vec<Package>,
}

impl Report {
    /// The neutral SBOM input of the inspected image: its file name, OS and packages.
    pub fn sbom_input(&self) -> crate::phase2::sbom::SbomInput {
        let name = Path::new(&self.image).file_name().map_or_else(|| self.image.clone(), |n| n.to_string_lossy().into_owned());
        crate::phase2::sbom::SbomInput::for_image(&name, self.os_release.clone(), &self.architecture, self.packages.clone())
    }
}

/// Builds the report of an image opened read-only.
pub fn report(image: &Image) -> Result<Report> {
    let root = image.root();
    let packages = pkg::installed(root)?;
    let mut kubernetes = IndexMap::new();
    for name in ["kubelet", "kubeadm", "kubectl", "kubernetes-cni", "cri-tools", "containerd", "containerd.io", "runc"] {
        if let Some(p) = packages.iter().find(|p| p.name == name) {
            kubernetes.insert(name.to_string(), p.version.clone());
        }
    }
    if let Some(v) = root.read_string(Path::new("/etc/kubernetes-version"))? {
        kubernetes.insert("kubernetes-version file".into(), v.trim().to_string());
    }
    for bin in ["/usr/bin/kubelet", "/usr/local/bin/kubelet", "/usr/local/bin/crictl", "/usr/local/bin/containerd"] {
        if root.exists(Path::new(bin)) && !kubernetes.keys().any(|k| bin.ends_with(k.as_str())) {
            kubernetes.insert(bin.to_string(), "present (not from a package)".into());
        }
    }
    Ok(Report {
        image: image.input.path.display().to_string(),
        format: image.input.format.clone(),
        virtual_size: image.input.virtual_size,
        os_release: image.facts.os_release.clone(),
        architecture: image.facts.arch.clone(),
        dpkg_architecture: image.facts.dpkg_arch.clone(),
        partition_table: image.table.clone(),
        filesystems: image.filesystems.clone(),
        volume_groups: image.volume_groups.clone(),
        selinux: match crate::selinux::detect(root) {
            Ok(Some(p)) => Some(format!("{} ({})", p.name, p.mode)),
            Ok(None) => None,
            Err(e) => Some(format!("broken: {e:#}")),
        },
        kernels: image.facts.kernels.clone(),
        kubernetes,
        kib_release: root.read_string(Path::new("/etc/kib-release"))?,
        packages,
    })
}

/// The report as text.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let os = r.os_release.get("PRETTY_NAME").cloned().unwrap_or_else(|| "unknown OS".into());
    s.push_str(&format!("image:        {} ({}, {} bytes)\n", r.image, r.format, r.virtual_size));
    let dpkg_note = match &r.dpkg_architecture {
        Some(d) if *d != r.architecture => format!(" (but dpkg says {d})"),
        _ => String::new(),
    };
    s.push_str(&format!("os:           {os}\narchitecture: {}{dpkg_note}\n", r.architecture));
    s.push_str(&format!("partitions:   {}\n", r.partition_table.kind_name()));
    for p in &r.partition_table.partitions {
        let fs = r.filesystems.iter().find(|f| f.partition == p.number && f.lv.is_none());
        s.push_str(&format!(
            "  {:>3}  start {:>12}  size {:>12}  type {}{}\n",
            p.number,
            p.start,
            p.size,
            p.type_id,
            fs.map(|f| format!("  {} on {}", f.fstype, f.mount_point)).unwrap_or_default()
        ));
    }
    for vg in &r.volume_groups {
        s.push_str(&format!(
            "lvm:          volume group {} (uuid {}, seqno {}, extent size {}) on partition(s) {}\n",
            vg.name,
            vg.uuid,
            vg.seqno,
            vg.extent_size,
            vg.pvs.iter().map(|p| p.partition.to_string()).collect::<Vec<_>>().join(", ")
        ));
        for lv in &vg.lvs {
            s.push_str(&format!(
                "  {:<12} start {:>12}  size {:>12}  extents {}-{}{}{}\n",
                lv.name,
                lv.offset,
                lv.size,
                lv.first_pe,
                lv.first_pe + lv.extent_count.saturating_sub(1),
                if lv.fstype.is_empty() { String::new() } else { format!("  {}", lv.fstype) },
                lv.mount_point.as_ref().map(|m| format!(" on {m}")).unwrap_or_default()
            ));
        }
    }
    if let Some(se) = &r.selinux {
        s.push_str(&format!("selinux:      {se}\n"));
    }
    s.push_str(&format!("kernels:      {}\n", r.kernels.join(", ")));
    for (k, v) in &r.kubernetes {
        s.push_str(&format!("kubernetes:   {k} {v}\n"));
    }
    if let Some(k) = &r.kib_release {
        s.push_str(&format!("kib-release:  {}\n", k.trim().replace('\n', "; ")));
    }
    s.push_str(&format!("packages:     {}\n", r.packages.len()));
    for p in &r.packages {
        s.push_str(&format!("  {} {} {}{}\n", p.name, p.version, p.architecture, if p.held { " (held)" } else { "" }));
    }
    s
}
