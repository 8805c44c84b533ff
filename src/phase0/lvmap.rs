//! Phase 0's LVM: finding the image's volume groups and mapping their logical volumes to byte
//! ranges of the disk, without device-mapper and without activating anything.
//!
//! 1. Partitions that blkid calls `LVM2_member` are the physical volumes.
//! 2. Each is attached **read-only** as a loop device of kib's own, and lvm's reports read with
//!    [`super::lvm::report_args`] (`pvs`, then `lvs -a --segments`), always `--readonly` and
//!    `--devices` naming only those loop devices, with `LVM_SYSTEM_DIR` a private folder of the
//!    run's work directory holding an empty `lvm.conf` (so neither the host's lvm.conf, nor its
//!    devices file, backups, archives or locks are used). The loop devices are detached again
//!    at once.
//! 3. [`super::lvm::map_volume_groups`] turns the reports into byte ranges and refuses what
//!    cannot be one loop device (striped, mirrored, RAID, thin, snapshots, non-contiguous,
//!    spanned, missing PVs), naming each LV and its layout.
//!
//! Each mapped LV is then a [`Volume`] like a partition: probed with blkid, a root candidate,
//! matched against fstab (`/dev/mapper/VG-LV`, `/dev/VG/LV`, UUID, LABEL) and attached with its
//! own autoclear loop device at `partition start + pe_start + first extent × extent size`.
//!
//! Growth ([`grow_lv`]) is the only writer: `pvresize` and `lvextend --driverloaded n` (metadata
//! only) with a private `locking_dir`, so that a host VG of the same name is never locked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::lvm::{self, Report, VolumeGroup};
use super::partition::Partition;
use crate::exec::ExecError;
use crate::sys::{LoopDev, Stack, Sys};

/// blkid's `TYPE` of an LVM physical volume.
pub const PV_TYPE: &str = "LVM2_member";

/// Something that may hold a filesystem: a partition (or the whole disk), or a logical volume
/// inside one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// For a partition: itself. For an LV: `number` is its PV's partition, `start`/`size` the
    /// LV's byte range in the disk, and the other fields empty.
    pub part: Partition,
    /// `VG/LV` for a logical volume.
    pub lv: Option<LvName>,
}

/// A logical volume's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvName {
    pub vg: String,
    pub lv: String,
}

impl std::fmt::Display for LvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.vg, self.lv)
    }
}

impl Volume {
    /// A partition.
    pub fn partition(p: Partition) -> Volume {
        Volume { part: p, lv: None }
    }

    /// `partition 3` or `logical volume rootvg/varlv (partition 3)`, for messages.
    pub fn describe(&self) -> String {
        match &self.lv {
            Some(n) => format!("logical volume {n} (partition {})", self.part.number),
            None => format!("partition {}", self.part.number),
        }
    }
}

/// A physical volume as the BOM and `kib inspect` record it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PvRecord {
    /// The partition holding it.
    pub partition: u32,
    pub uuid: String,
    /// Bytes from the start of the partition to its first extent.
    pub pe_start: u64,
    /// Number of physical extents.
    pub pe_count: u64,
}

/// A logical volume as the BOM and `kib inspect` record it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LvRecord {
    pub name: String,
    pub uuid: String,
    /// Byte offset in the disk image (partition start + pe_start + first extent × extent size).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// First physical extent and number of extents on its PV.
    pub first_pe: u64,
    pub extent_count: u64,
    /// The partition of its PV.
    pub partition: u32,
    /// What blkid found on it (`xfs`, `ext4`, `swap`; empty: nothing).
    #[serde(default)]
    pub fstype: String,
    #[serde(default)]
    pub fs_uuid: String,
    /// Where kib mounted it, as an image path; absent when it was not mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<String>,
}

/// A volume group as the BOM and `kib inspect` record it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VgRecord {
    pub name: String,
    pub uuid: String,
    /// The metadata sequence number (unchanged by kib unless `disk.size` grew an LV).
    pub seqno: u64,
    /// Extent size in bytes.
    pub extent_size: u64,
    pub pvs: Vec<PvRecord>,
    pub lvs: Vec<LvRecord>,
}

/// The image's volume groups as read from its PV partitions.
#[derive(Debug, Clone)]
pub struct Found {
    pub vgs: Vec<VolumeGroup>,
    /// For each VG, the partition of each of its PVs (same order as `VolumeGroup::pvs`).
    pub pv_partitions: Vec<Vec<Partition>>,
}

impl Found {
    /// Every mapped LV as a [`Volume`], in report order.
    pub fn volumes(&self) -> Vec<Volume> {
        let mut out = Vec::new();
        for (vg, parts) in self.vgs.iter().zip(&self.pv_partitions) {
            for m in &vg.lvs {
                let p = &parts[m.pv_index];
                out.push(Volume {
                    part: Partition {
                        number: p.number,
                        start: p.start + m.offset_bytes_in_pv,
                        size: m.size_bytes,
                        type_id: String::new(),
                        part_uuid: String::new(),
                        name: String::new(),
                    },
                    lv: Some(LvName { vg: vg.name.clone(), lv: m.lv.clone() }),
                });
            }
        }
        out
    }

    /// The records for the BOM; `probe` gives each LV's blkid probe, `mounted` its mount point.
    pub fn records(&self, fs_of: impl Fn(&LvName) -> (String, String, Option<String>)) -> Vec<VgRecord> {
        self.vgs
            .iter()
            .zip(&self.pv_partitions)
            .map(|(vg, parts)| VgRecord {
                name: vg.name.clone(),
                uuid: vg.uuid.clone(),
                seqno: vg.seqno,
                extent_size: vg.extent_size,
                pvs: vg.pvs.iter().zip(parts).map(|(pv, p)| PvRecord { partition: p.number, uuid: pv.uuid.clone(), pe_start: pv.pe_start, pe_count: pv.pe_count }).collect(),
                lvs: vg
                    .lvs
                    .iter()
                    .map(|m| {
                        let p = &parts[m.pv_index];
                        let (fstype, fs_uuid, mount_point) = fs_of(&LvName { vg: vg.name.clone(), lv: m.lv.clone() });
                        LvRecord {
                            name: m.lv.clone(),
                            uuid: m.lv_uuid.clone(),
                            offset: p.start + m.offset_bytes_in_pv,
                            size: m.size_bytes,
                            first_pe: m.first_pe,
                            extent_count: m.extent_count,
                            partition: p.number,
                            fstype,
                            fs_uuid,
                            mount_point,
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Where lvm finds its configuration: `DIR/lvm.conf` (empty), created if missing. Locks of
/// writing commands go to `DIR/lock` (see [`write_config`]).
pub fn private_system_dir(work: &Path) -> Result<PathBuf> {
    let dir = work.join("lvm");
    std::fs::create_dir_all(dir.join("lock")).with_context(|| format!("creating lvm's private folder {}", dir.display()))?;
    let conf = dir.join("lvm.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").with_context(|| format!("writing {}", conf.display()))?;
    }
    Ok(dir)
}

/// An `lvm` command with kib's private environment: `LVM_SYSTEM_DIR`, no fd warnings.
pub fn lvm_command(system_dir: &Path, args: &[String]) -> Command {
    let mut c = crate::exec::host_tool("lvm");
    c.env("LVM_SYSTEM_DIR", system_dir).env("LVM_SUPPRESS_FD_WARNINGS", "1").args(args);
    c
}

/// The `--config` of commands that write metadata: [`lvm::LVM_CONFIG`] plus a private
/// `locking_dir`, so that the lock is never the host's `/run/lock/lvm/V_<VG>`.
pub fn write_config(system_dir: &Path) -> String {
    format!("{} global {{ locking_dir=\"{}\" }}", lvm::LVM_CONFIG, system_dir.join("lock").display())
}

fn lvm_error(e: ExecError, what: &str) -> anyhow::Error {
    match e {
        ExecError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("{what}: the image has LVM physical volumes and this host has no `lvm` command; install lvm2 (Debian: apt-get install lvm2)")
        }
        e => anyhow::Error::new(e).context(what.to_string()),
    }
}

/// Reads the volume groups on the PV partitions `pvs` of `disk`: attaches each read-only, runs
/// the two reports, detaches them, and maps every LV.
///
/// Errors: lvm missing or failing (its stderr shown), reports kib cannot read, an image's loop
/// device that the host activated (device-mapper holders appeared), or LVs that cannot be mapped
/// ([`lvm::LvmError::Refused`]: each named with its layout).
pub fn read(sys: &Arc<dyn Sys>, disk: &Path, pvs: &[Partition], system_dir: &Path) -> Result<Found> {
    let mut held = Stack::default();
    let mut devices = Vec::new();
    for p in pvs {
        let dev = LoopDev::attach(sys, disk, p.start, p.size, true).with_context(|| format!("attaching LVM physical volume partition {}", p.number))?;
        devices.push(dev.path().to_string_lossy().into_owned());
        held.push_loop(dev);
    }
    let devs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let parts: Vec<String> = pvs.iter().map(|p| p.number.to_string()).collect();
    let what = |r: &str| format!("reading the LVM metadata of partition(s) {} with `lvm {r}` (read-only, on {})", parts.join(", "), devices.join(","));
    let pvs_json = sys.output(&mut lvm_command(system_dir, &lvm::report_args(Report::Pvs, &devs)), &what("pvs")).map_err(|e| lvm_error(e, &what("pvs")))?;
    let lvs_json = sys.output(&mut lvm_command(system_dir, &lvm::report_args(Report::Lvs, &devs)), &what("lvs")).map_err(|e| lvm_error(e, &what("lvs")))?;
    refuse_host_activation(&devices)?;
    held.close().context("detaching the LVM physical volumes after reading them")?;
    from_reports(&pvs_json, &lvs_json, &devices, pvs)
}

/// Maps the volume groups of lvm's `pvs` and `lvs` reports ([`lvm::report_args`]), read with
/// `devices[i]` holding the physical volume on partition `pvs[i]`: the loop backend's own loop
/// devices, or the guestfs appliance's `/dev/sdaN`.
///
/// Errors: reports kib cannot read, a PV on another device, or LVs that cannot be mapped
/// ([`lvm::LvmError::Refused`]: each named with its layout).
pub fn from_reports(pvs_json: &str, lvs_json: &str, devices: &[String], pvs: &[Partition]) -> Result<Found> {
    let pv_rows = lvm::parse_pvs(pvs_json)?;
    let seg_rows = lvm::parse_lvs(lvs_json)?;
    let vgs = lvm::map_volume_groups(&pv_rows, &seg_rows)?;
    let mut pv_partitions = Vec::new();
    for vg in &vgs {
        let mut parts = Vec::new();
        for pv in &vg.pvs {
            let i = devices.iter().position(|d| *d == pv.device).ok_or_else(|| anyhow::anyhow!("lvm reported physical volume {} on {}, which is not one of kib's devices", pv.uuid, pv.device))?;
            parts.push(pvs[i].clone());
        }
        pv_partitions.push(parts);
    }
    for vg in &vgs {
        tracing::info!(
            "LVM: volume group {} (seqno {}, {} PV(s), extent size {} bytes): {}",
            vg.name,
            vg.seqno,
            vg.pvs.len(),
            vg.extent_size,
            vg.lvs.iter().map(|m| format!("{} ({} bytes at extent {})", m.lv, m.size_bytes, m.first_pe)).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(Found { vgs, pv_partitions })
}

/// On a host with device-mapper and udev's lvm2 rules, attaching a PV can make the host activate
/// the image's VG. kib cannot stop that; it notices (the loop device has holders) and stops.
fn refuse_host_activation(devices: &[String]) -> Result<()> {
    for d in devices {
        let Some(name) = Path::new(d).file_name() else { continue };
        let holders = Path::new("/sys/block").join(name).join("holders");
        let held: Vec<String> = std::fs::read_dir(&holders).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        if !held.is_empty() {
            bail!(
                "the host activated the image's volume group on kib's loop device {d} (device-mapper holders: {}): its udev lvm2 rules \
                 autoactivate every PV that appears. kib never activates the image's LVs; run kib where udev does not autoactivate \
                 (a container, or event_activation=0 in the host's lvm.conf), and deactivate them with `vgchange -an` on the host",
                held.join(", ")
            );
        }
    }
    Ok(())
}

/// Grows the LV `lv` of `vg` into the free extents that follow it on its PV, after the PV's
/// partition (`grown`, a partition number among `pv_parts`, the VG's PV partitions at their
/// new sizes) was grown: attaches the VG's PVs, `pvresize`s the grown one, reads how many
/// extents now follow the LV, `lvextend --driverloaded n --alloc contiguous -l +N VG/LV PV`
/// (metadata only, nothing activated, the new extents only right after the LV's own), detaches,
/// and reads the VG again. The caller checked [`VolumeGroup::growable_in_place`] first.
///
/// Errors: a failing lvm command (its output shown), or a result that is not one mapped run.
pub fn grow_lv(sys: &Arc<dyn Sys>, disk: &Path, pv_parts: &[Partition], grown: u32, vg: &str, lv: &str, system_dir: &Path) -> Result<Found> {
    let mut held = Stack::default();
    let mut devices = Vec::new();
    let mut grown_dev = None;
    for p in pv_parts {
        let dev = LoopDev::attach(sys, disk, p.start, p.size, false).with_context(|| format!("attaching PV partition {} to grow it", p.number))?;
        let d = dev.path().to_string_lossy().into_owned();
        if p.number == grown {
            grown_dev = Some(d.clone());
        }
        devices.push(d);
        held.push_loop(dev);
    }
    let grown_dev = grown_dev.with_context(|| format!("partition {grown} is not a PV of volume group {vg}"))?;
    let config = write_config(system_dir);
    let base = |cmd: &str| vec![cmd.to_string(), "--devices".to_string(), devices.join(","), "--config".to_string(), config.clone()];
    let mut a = base("pvresize");
    a.push(grown_dev.clone());
    sys.run(&mut lvm_command(system_dir, &a), &format!("lvm pvresize (the PV on partition {grown} fills it)"), None).map_err(|e| lvm_error(e, "lvm pvresize"))?;
    let devs: Vec<&str> = devices.iter().map(String::as_str).collect();
    let what = "reading the grown PV with `lvm pvs`";
    let pvs = lvm::parse_pvs(&sys.output(&mut lvm_command(system_dir, &lvm::report_args(Report::Pvs, &devs)), what).map_err(|e| lvm_error(e, what))?)?;
    let what = "reading the LVs with `lvm lvs`";
    let segs = lvm::parse_lvs(&sys.output(&mut lvm_command(system_dir, &lvm::report_args(Report::Lvs, &devs)), what).map_err(|e| lvm_error(e, what))?)?;
    let vgs = lvm::map_volume_groups(&pvs, &segs)?;
    let group = vgs.iter().find(|g| g.name == vg).with_context(|| format!("volume group {vg} vanished after pvresize"))?;
    let free = group.growable_in_place(lv).map_err(|e| anyhow::anyhow!("disk.size: {e}"))?;
    if free > 0 {
        let mut a = base("lvextend");
        a.extend(["--driverloaded".into(), "n".into(), "--alloc".into(), "contiguous".into(), "-l".into(), format!("+{free}"), format!("{vg}/{lv}"), grown_dev.clone()]);
        sys.run(&mut lvm_command(system_dir, &a), &format!("lvm lvextend --driverloaded n {vg}/{lv} by {free} extents (metadata only)"), None)
            .map_err(|e| lvm_error(e, "lvm lvextend"))?;
    }
    held.close()?;
    read(sys, disk, pv_parts, system_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_config_has_a_private_lock_dir() {
        let c = write_config(Path::new("/w/run-1/lvm"));
        assert!(c.starts_with(lvm::LVM_CONFIG));
        assert!(c.ends_with("global { locking_dir=\"/w/run-1/lvm/lock\" }"), "{c}");
    }
}
