//! LVM logical volumes as byte ranges of their physical volumes, without device-mapper.
//!
//! This module is pure arithmetic: it makes no system call and runs no command. Its input is
//! what the lvm tools report about kib's own loop devices (see [`report_args`] for the exact
//! command lines, and `testdata/lvm/NOTES.md` for why each option is there); its output says,
//! for each logical volume, which physical volume holds it and at which byte range, so that the
//! LV can be attached as one loop device at
//! `partition start + pe_start + first physical extent × extent size`, with the LV's size as
//! the size limit.
//!
//! Only LVs that are one contiguous run of extents on one PV present in the image can be mapped
//! that way. Everything else is refused with an error naming the LV and its layout: striped,
//! mirrored and RAID LVs, thin LVs and pools, COW snapshots and their origins, LVs made of
//! non-contiguous segments or spread over several PVs, LVs on a missing PV, and LVs that reach
//! past the end of their PV's device (a truncated image).
//!
//! Units: every size and offset in this module is in bytes unless its name says extents (`_pe`)
//! or sectors. The reports must be taken with `--units b --nosuffix`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

/// Fields for `pvs -o`: one row per PV, with its VG's fields.
pub const PVS_FIELDS: &str = "pv_name,pv_uuid,dev_size,pe_start,pv_size,pv_pe_count,pv_pe_alloc_count,pv_missing,\
vg_name,vg_uuid,vg_extent_size,vg_extent_count,vg_free_count,vg_seqno,pv_count,vg_missing_pv_count,vg_attr";

/// Fields for `lvs -a --segments -o`: one row per LV segment, hidden LVs included.
pub const LVS_FIELDS: &str = "vg_name,vg_uuid,vg_extent_size,vg_seqno,lv_name,lv_uuid,lv_full_name,lv_path,lv_dm_path,\
lv_layout,lv_role,lv_attr,lv_size,seg_count,segtype,stripes,stripe_size,seg_start,seg_start_pe,seg_size,seg_size_pe,\
seg_pe_ranges,devices,origin,pool_lv";

/// The `--config` string for every lvm command kib runs: no devices file, no udev, no lvmpolld,
/// no event activation, no monitoring, no metadata backup or archive. Reports run with
/// `--readonly`, which takes no lock at all; commands that write metadata (`pvresize`, `lvextend
/// --driverloaded n` for growth) must add `global { locking_dir="<private directory>" }`, or they
/// lock `/run/lock/lvm/V_<VG>`, the same file as a host VG of the same name.
pub const LVM_CONFIG: &str = "devices { use_devicesfile=0 obtain_device_list_from_udev=0 external_device_info_source=\"none\" \
hints=\"none\" } activation { udev_sync=0 udev_rules=0 monitoring=0 } global { use_lvmpolld=0 event_activation=0 } \
backup { backup=0 archive=0 }";

/// Which report to ask lvm for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `pvs`: PVs with their VGs ([`PvRow`]).
    Pvs,
    /// `lvs -a --segments`: LV segments ([`SegRow`]).
    Lvs,
}

/// The arguments after `lvm` for a read-only report about `devices` (kib's own loop devices,
/// one per partition holding a PV), in JSON with sizes in bytes.
///
/// Run it with the environment `LVM_SYSTEM_DIR=<an empty private directory>` (so none of the
/// host's lvm.conf, devices file, backups or archives is used) and `LVM_SUPPRESS_FD_WARNINGS=1`.
/// `--devices` makes lvm open only these devices; `--readonly` takes no lock, never talks to
/// device-mapper and never writes (measured with strace: no open for writing at all).
pub fn report_args(report: Report, devices: &[&str]) -> Vec<String> {
    let (cmd, fields) = match report {
        Report::Pvs => ("pvs", PVS_FIELDS),
        Report::Lvs => ("lvs", LVS_FIELDS),
    };
    let mut args = vec![cmd.to_string(), "--readonly".into(), "--devices".into(), devices.join(","), "--config".into(), LVM_CONFIG.into()];
    if report == Report::Lvs {
        args.extend(["-a".into(), "--segments".into()]);
    }
    args.extend(["--reportformat".into(), "json".into(), "--units".into(), "b".into(), "--nosuffix".into(), "-o".into(), fields.into()]);
    args
}

/// One row of the `pvs` report ([`PVS_FIELDS`]). Sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PvRow {
    /// The device lvm read the PV from (kib's loop device), or `[unknown]` for a missing PV.
    pub pv_name: String,
    pub pv_uuid: String,
    /// Size of the device, bytes (0 for a missing PV).
    #[serde(deserialize_with = "num")]
    pub dev_size: u64,
    /// Where the first physical extent starts, bytes from the start of the PV.
    #[serde(deserialize_with = "num")]
    pub pe_start: u64,
    /// Number of physical extents.
    #[serde(deserialize_with = "num")]
    pub pv_pe_count: u64,
    /// `missing` when the VG's metadata lists this PV but no device holds it.
    #[serde(default)]
    pub pv_missing: String,
    /// Empty for a PV in no VG.
    #[serde(default)]
    pub vg_name: String,
    #[serde(default)]
    pub vg_uuid: String,
    /// Extent size, bytes.
    #[serde(default, deserialize_with = "opt_num")]
    pub vg_extent_size: Option<u64>,
    /// Metadata sequence number.
    #[serde(default, deserialize_with = "opt_num")]
    pub vg_seqno: Option<u64>,
    /// How many PVs the VG's metadata names.
    #[serde(default, deserialize_with = "opt_num")]
    pub pv_count: Option<u64>,
    #[serde(default, deserialize_with = "opt_num")]
    pub vg_missing_pv_count: Option<u64>,
}

/// One row of the `lvs -a --segments` report ([`LVS_FIELDS`]): one segment of one LV.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SegRow {
    pub vg_name: String,
    pub vg_uuid: String,
    /// Extent size, bytes.
    #[serde(deserialize_with = "num")]
    pub vg_extent_size: u64,
    #[serde(deserialize_with = "num")]
    pub vg_seqno: u64,
    /// The LV's name; hidden LVs (`-a`) come in brackets, such as `[pool_tdata]`.
    pub lv_name: String,
    pub lv_uuid: String,
    /// `linear`, `striped`, `raid,raid1`, `thin,sparse`, `thin,pool`, `mirror`, …
    pub lv_layout: String,
    /// `public`, `private,…`, `public,origin,thickorigin`, `public,snapshot,thicksnapshot`, …
    pub lv_role: String,
    #[serde(default)]
    pub lv_attr: String,
    /// The LV's whole size, bytes.
    #[serde(deserialize_with = "num")]
    pub lv_size: u64,
    /// `linear`, `striped`, `mirror`, `raid1`, `thin`, `thin-pool`, `snapshot`, `cache`, …
    pub segtype: String,
    /// Number of stripes (or images) of this segment; 0 for thin.
    #[serde(deserialize_with = "num")]
    pub stripes: u64,
    /// First logical extent of this segment within the LV.
    #[serde(deserialize_with = "num")]
    pub seg_start_pe: u64,
    /// Length of this segment, extents.
    #[serde(deserialize_with = "num")]
    pub seg_size_pe: u64,
    /// The areas of this segment: `DEVICE(FIRST_PE)` items joined by commas, such as
    /// `/dev/loop3(448)`, `/dev/loop3(0),/dev/loop4(0)`, `[unknown](0)` or `pool_tdata(0)`.
    #[serde(default)]
    pub devices: String,
    /// For a snapshot: the LV it is a snapshot of.
    #[serde(default)]
    pub origin: String,
    /// For a thin LV: its pool.
    #[serde(default)]
    pub pool_lv: String,
}

#[derive(Deserialize)]
struct Envelope<T> {
    report: Vec<Section<T>>,
}
#[derive(Deserialize)]
struct Section<T> {
    #[serde(default = "Vec::new", alias = "pv", alias = "seg")]
    rows: Vec<T>,
}

/// lvm's JSON gives numbers as strings (`"4194304"`), `json_std` as numbers; both are read.
fn num<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    opt_num(d)?.ok_or_else(|| serde::de::Error::custom("expected a number, found an empty string"))
}
fn opt_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        U(u64),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::U(v)) => Ok(Some(v)),
        Some(N::S(s)) if s.is_empty() => Ok(None),
        Some(N::S(s)) => s.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("expected a whole number of bytes or extents, found {s:?} (was the report taken with --units b --nosuffix?)"))),
    }
}

/// Why the reports could not be read or the LVs not mapped.
#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    /// The report is not the JSON kib asked for.
    #[error("reading lvm's {report} report: {source}")]
    Json {
        report: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The two reports disagree, or a number is out of range.
    #[error("lvm's reports are inconsistent: {0}")]
    Inconsistent(String),
    /// Some LVs cannot be attached as one loop device each; one line per LV.
    #[error(
        "kib cannot map these logical volumes without device-mapper: {}. kib attaches each logical volume as one loop \
         device, so it maps only linear LVs that are one contiguous run of extents on one physical volume present in the \
         image. Nothing was activated or changed",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Refused(Vec<Refusal>),
}

/// An LV kib cannot map, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub vg: String,
    /// The LV's name (without brackets); empty when the whole VG is refused.
    pub lv: String,
    pub layout: Layout,
}

/// The layout that makes an LV unmappable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Striped over `stripes` PVs.
    Striped { stripes: u64 },
    /// `mirror` or one of the `raid*` segment types, with its number of images.
    MirrorOrRaid { segtype: String, images: u64 },
    /// A thin LV in `pool`.
    Thin { pool: String },
    /// A COW snapshot of `origin`.
    Snapshot { origin: String },
    /// The origin of one or more COW snapshots: writing to it would invalidate them.
    Origin,
    /// Linear, but its segments are not one contiguous run on the PV. `runs` are (first PE, extents).
    NonContiguous { runs: Vec<(u64, u64)> },
    /// Linear, but its segments lie on several PVs.
    Spanned { pvs: Vec<String> },
    /// Part of it lies on a PV that the image does not hold (`uuids` of the missing PVs).
    MissingPv { uuids: Vec<String> },
    /// The VG lists PVs that the image does not hold (a VG-wide refusal).
    VgMissingPvs { missing: u64, total: u64, uuids: Vec<String> },
    /// It reaches `end` bytes into a PV whose device has only `dev_size` bytes (a truncated image).
    BeyondDevice { pv: String, end: u64, dev_size: u64 },
    /// Any other segment type (cache, writecache, vdo, integrity, error, zero, …).
    Other { segtype: String, layout: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.lv.is_empty() { format!("volume group {}", self.vg) } else { format!("{}/{}", self.vg, self.lv) };
        match &self.layout {
            Layout::Striped { stripes } => write!(f, "{name} is striped over {stripes} physical volumes"),
            Layout::MirrorOrRaid { segtype, images } => write!(f, "{name} is {segtype} with {images} images (mirrored or RAID)"),
            Layout::Thin { pool } => write!(f, "{name} is a thin volume in pool {pool}"),
            Layout::Snapshot { origin } => write!(f, "{name} is a snapshot of {origin}"),
            Layout::Origin => write!(f, "{name} is the origin of snapshots, which writing to it would invalidate"),
            Layout::NonContiguous { runs } => {
                let r: Vec<String> = runs.iter().map(|(a, n)| format!("{}-{}", a, a.saturating_add(*n).saturating_sub(1))).collect();
                write!(f, "{name} is linear but made of {} non-contiguous segments (physical extents {})", runs.len(), r.join(", "))
            }
            Layout::Spanned { pvs } => write!(f, "{name} is linear but spread over {} physical volumes ({})", pvs.len(), pvs.join(", ")),
            Layout::MissingPv { uuids } => write!(f, "{name} lies on a physical volume the image does not hold (PV UUID {})", uuids.join(", ")),
            Layout::VgMissingPvs { missing, total, uuids } => write!(
                f,
                "{name} is missing {missing} of its {total} physical volumes (PV UUID {}); the image holds only part of it",
                uuids.join(", ")
            ),
            Layout::BeyondDevice { pv, end, dev_size } => {
                write!(f, "{name} reaches byte {end} of {pv}, which has only {dev_size} bytes (is the image truncated?)")
            }
            Layout::Other { segtype, layout } => write!(f, "{name} has segment type {segtype} (layout {layout})"),
        }
    }
}

/// A physical volume of a mapped VG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// The device lvm read it from: the loop device kib passed in `--devices`.
    pub device: String,
    pub uuid: String,
    /// Where its first extent starts, bytes from the start of the PV (its partition).
    pub pe_start: u64,
    /// Size of its device, bytes.
    pub dev_size: u64,
    /// Number of physical extents.
    pub pe_count: u64,
}

/// Where one linear LV lies: `size_bytes` bytes at `offset_bytes_in_pv` into the PV
/// `pvs[pv_index]` of its VG (the device `pv_device`). Add the PV's partition offset to get
/// the offset in the disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMapping {
    pub vg: String,
    pub lv: String,
    pub lv_uuid: String,
    /// Index into [`VolumeGroup::pvs`].
    pub pv_index: usize,
    /// The PV's device, as lvm reported it (kib's loop device).
    pub pv_device: String,
    pub pv_uuid: String,
    /// `pe_start + first_pe × extent_size`, bytes from the start of the PV.
    pub offset_bytes_in_pv: u64,
    /// The LV's size, bytes (`extent_count × extent_size`).
    pub size_bytes: u64,
    /// First physical extent on the PV.
    pub first_pe: u64,
    /// Length, extents.
    pub extent_count: u64,
}

impl LvMapping {
    /// The device-mapper name the guest gives this LV (`/dev/mapper/<name>`), dashes doubled.
    pub fn dm_name(&self) -> String {
        dm_name(&self.vg, &self.lv)
    }
}

/// A volume group whose public LVs all map to loop devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroup {
    pub name: String,
    pub uuid: String,
    /// Metadata sequence number (must be the same in the output image as in the input).
    pub seqno: u64,
    /// Extent size, bytes.
    pub extent_size: u64,
    /// Its PVs, in the order of the `pvs` report.
    pub pvs: Vec<PhysicalVolume>,
    /// Its public LVs, in the order of the `lvs` report.
    pub lvs: Vec<LvMapping>,
    /// Every allocated run on its PVs, hidden LVs included: (pv index, first PE, extents, LV name).
    pub allocated: Vec<(usize, u64, u64, String)>,
}

impl VolumeGroup {
    /// The mapping of the LV named `lv`.
    pub fn lv(&self, lv: &str) -> Option<&LvMapping> {
        self.lvs.iter().find(|m| m.lv == lv)
    }

    /// Whether `lv` can grow in place after its PV grows (`pvresize`, then `lvextend`): it must
    /// stay one contiguous run, so no other LV may be allocated after it on its PV. Returns the
    /// number of free extents that directly follow it now. Errors name the LV that is in the way.
    pub fn growable_in_place(&self, lv: &str) -> Result<u64, String> {
        let m = self.lv(lv).ok_or_else(|| format!("{}/{lv} is not a mapped logical volume", self.name))?;
        let end = m.first_pe.saturating_add(m.extent_count);
        let after = self.allocated.iter().filter(|(pv, first, _, owner)| *pv == m.pv_index && *first >= end && owner != lv).min_by_key(|a| a.1);
        if let Some((_, first, _, owner)) = after {
            return Err(format!(
                "{}/{lv} cannot grow as one contiguous segment: {}/{owner} is allocated after it on {} (extent {first})",
                self.name, self.name, m.pv_device
            ));
        }
        Ok(self.pvs[m.pv_index].pe_count.saturating_sub(end))
    }
}

/// Reads a `pvs --reportformat json` report.
pub fn parse_pvs(json: &str) -> Result<Vec<PvRow>, LvmError> {
    let e: Envelope<PvRow> = serde_json::from_str(json).map_err(|source| LvmError::Json { report: "pvs", source })?;
    Ok(e.report.into_iter().flat_map(|s| s.rows).collect())
}

/// Reads an `lvs --segments --reportformat json` report.
pub fn parse_lvs(json: &str) -> Result<Vec<SegRow>, LvmError> {
    let e: Envelope<SegRow> = serde_json::from_str(json).map_err(|source| LvmError::Json { report: "lvs", source })?;
    Ok(e.report.into_iter().flat_map(|s| s.rows).collect())
}

/// Splits the `devices` field into (device, first PE) items: `/dev/loop3(0),/dev/loop4(16)`.
/// An item is `NAME(DIGITS)`, followed by a comma or the end; NAME may itself contain commas or
/// parentheses.
pub fn parse_devices(s: &str) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        // The first "(DIGITS)" that ends the string or is followed by a comma.
        let mut found = None;
        for (i, _) in rest.match_indices('(') {
            let after = &rest[i + 1..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && after.as_bytes().get(digits) == Some(&b')') {
                let end = i + 1 + digits + 1;
                if end == rest.len() || rest.as_bytes()[end] == b',' {
                    found = Some((i, digits, end));
                    break;
                }
            }
        }
        let (i, digits, end) = found.ok_or_else(|| format!("cannot read the devices field {s:?}"))?;
        let pe = rest[i + 1..i + 1 + digits].parse().map_err(|_| format!("extent number out of range in {s:?}"))?;
        out.push((rest[..i].to_string(), pe));
        rest = rest.get(end + 1..).unwrap_or("");
    }
    Ok(out)
}

const UNKNOWN_DEVICE: &str = "[unknown]";

/// Maps every public LV of every VG in the reports to a byte range of one PV.
///
/// `pvs` and `segs` are the two reports ([`parse_pvs`], [`parse_lvs`]) taken on the same
/// devices. Private LVs (RAID images, thin pool data, …) are not mapped themselves; a public LV
/// built from them is refused. PVs that belong to no VG are ignored.
///
/// Errors: [`LvmError::Refused`] listing every LV (and every VG with missing PVs) that cannot be
/// mapped, in one message; [`LvmError::Inconsistent`] when the reports disagree (an LV on a
/// device the `pvs` report does not list, sizes that do not add up, arithmetic overflow).
pub fn map_volume_groups(pvs: &[PvRow], segs: &[SegRow]) -> Result<Vec<VolumeGroup>, LvmError> {
    let mut vgs: Vec<VolumeGroup> = Vec::new();
    let mut refusals = Vec::new();
    for p in pvs.iter().filter(|p| !p.vg_name.is_empty()) {
        let vg = match vgs.iter_mut().position(|v| v.uuid == p.vg_uuid) {
            Some(i) => &mut vgs[i],
            None => {
                let extent_size = p.vg_extent_size.filter(|&e| e > 0).ok_or_else(|| {
                    LvmError::Inconsistent(format!("the pvs report gives volume group {} no extent size", p.vg_name))
                })?;
                vgs.push(VolumeGroup {
                    name: p.vg_name.clone(),
                    uuid: p.vg_uuid.clone(),
                    seqno: p.vg_seqno.unwrap_or(0),
                    extent_size,
                    pvs: Vec::new(),
                    lvs: Vec::new(),
                    allocated: Vec::new(),
                });
                vgs.last_mut().expect("just pushed")
            }
        };
        vg.pvs.push(PhysicalVolume {
            device: p.pv_name.clone(),
            uuid: p.pv_uuid.clone(),
            pe_start: p.pe_start,
            dev_size: p.dev_size,
            pe_count: p.pv_pe_count,
        });
    }
    // VG-wide: PVs the metadata names but the image does not hold.
    for vg in &vgs {
        let rows: Vec<&PvRow> = pvs.iter().filter(|p| p.vg_uuid == vg.uuid).collect();
        let missing: Vec<String> = rows.iter().filter(|p| p.pv_missing == "missing" || p.pv_name == UNKNOWN_DEVICE).map(|p| p.pv_uuid.clone()).collect();
        let reported_missing = rows.iter().filter_map(|p| p.vg_missing_pv_count).max().unwrap_or(0);
        let total = rows.iter().filter_map(|p| p.pv_count).max().unwrap_or(rows.len() as u64);
        if !missing.is_empty() || reported_missing > 0 || total > rows.len() as u64 {
            let count = (missing.len() as u64).max(reported_missing).max(total.saturating_sub(rows.len() as u64));
            refusals.push(Refusal { vg: vg.name.clone(), lv: String::new(), layout: Layout::VgMissingPvs { missing: count, total, uuids: missing } });
        }
    }

    // Segments grouped by LV, in report order.
    let mut by_lv: BTreeMap<(String, String), Vec<&SegRow>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for s in segs {
        let key = (s.vg_uuid.clone(), s.lv_uuid.clone());
        if !by_lv.contains_key(&key) {
            order.push(key.clone());
        }
        by_lv.entry(key).or_default().push(s);
    }
    for key in order {
        let mut rows = by_lv.remove(&key).unwrap_or_default();
        rows.sort_by_key(|r| r.seg_start_pe);
        let first = rows[0];
        let vg_index = vgs.iter().position(|v| v.uuid == first.vg_uuid).ok_or_else(|| {
            LvmError::Inconsistent(format!("LV {}/{} belongs to a volume group the pvs report does not list", first.vg_name, first.lv_name))
        })?;
        let lv_name = first.lv_name.trim_start_matches('[').trim_end_matches(']').to_string();
        let vg = &mut vgs[vg_index];
        if vg.extent_size != first.vg_extent_size {
            return Err(LvmError::Inconsistent(format!(
                "{}/{lv_name}: the reports give extent sizes {} and {} bytes",
                vg.name, vg.extent_size, first.vg_extent_size
            )));
        }
        // Allocated runs on PVs, for every LV (hidden ones too), for growth checks.
        let mut runs: Vec<(usize, u64, u64)> = Vec::new();
        let mut missing = Vec::new();
        for r in &rows {
            let areas = parse_devices(&r.devices).map_err(|e| LvmError::Inconsistent(format!("{}/{lv_name}: {e}", vg.name)))?;
            for (dev, pe) in areas {
                if dev == UNKNOWN_DEVICE {
                    missing.push(dev);
                    continue;
                }
                if let Some(i) = vg.pvs.iter().position(|p| p.device == dev) {
                    // A striped segment's size is split over its stripes.
                    let len = if r.stripes > 1 { r.seg_size_pe / r.stripes } else { r.seg_size_pe };
                    runs.push((i, pe, len));
                    vg.allocated.push((i, pe, len, lv_name.clone()));
                }
                // Otherwise the area is another LV (a RAID image, thin pool data): not a PV.
            }
        }
        if !first.lv_role.split(',').any(|r| r == "public") {
            continue;
        }
        let refuse = |layout: Layout| Refusal { vg: vg.name.clone(), lv: lv_name.clone(), layout };
        let roles: Vec<&str> = first.lv_role.split(',').collect();
        let segtypes: Vec<&str> = rows.iter().map(|r| r.segtype.as_str()).collect();
        if roles.contains(&"snapshot") || segtypes.contains(&"snapshot") {
            refusals.push(refuse(Layout::Snapshot { origin: first.origin.clone() }));
            continue;
        }
        if roles.contains(&"origin") {
            refusals.push(refuse(Layout::Origin));
            continue;
        }
        if let Some(r) = rows.iter().find(|r| r.segtype != "linear" && !(r.segtype == "striped" && r.stripes == 1)) {
            let layout = match r.segtype.as_str() {
                "striped" => Layout::Striped { stripes: r.stripes },
                "thin" => Layout::Thin { pool: r.pool_lv.clone() },
                t if t == "mirror" || t.starts_with("raid") => Layout::MirrorOrRaid { segtype: t.to_string(), images: r.stripes },
                t => Layout::Other { segtype: t.to_string(), layout: first.lv_layout.clone() },
            };
            refusals.push(refuse(layout));
            continue;
        }
        if !missing.is_empty() {
            let uuids = pvs.iter().filter(|p| p.vg_uuid == vg.uuid && (p.pv_missing == "missing" || p.pv_name == UNKNOWN_DEVICE)).map(|p| p.pv_uuid.clone()).collect();
            refusals.push(refuse(Layout::MissingPv { uuids }));
            continue;
        }
        if runs.is_empty() {
            return Err(LvmError::Inconsistent(format!(
                "{}/{lv_name} is linear but the lvs report names none of the devices the pvs report lists ({:?})",
                vg.name,
                rows.iter().map(|r| r.devices.as_str()).collect::<Vec<_>>()
            )));
        }
        let mut on: Vec<usize> = runs.iter().map(|r| r.0).collect();
        on.dedup();
        if on.len() > 1 {
            let mut devices: Vec<String> = on.iter().map(|&i| vg.pvs[i].device.clone()).collect();
            devices.dedup();
            refusals.push(refuse(Layout::Spanned { pvs: devices }));
            continue;
        }
        // Contiguous: each run starts where the previous one ended (lvm normally merges such runs).
        if runs.windows(2).any(|w| w[0].1.checked_add(w[0].2) != Some(w[1].1)) {
            refusals.push(refuse(Layout::NonContiguous { runs: runs.iter().map(|r| (r.1, r.2)).collect() }));
            continue;
        }
        let pv_index = runs[0].0;
        let first_pe = runs[0].1;
        let pv = &vg.pvs[pv_index];
        let overflow = || LvmError::Inconsistent(format!("{}/{lv_name}: extent arithmetic overflows", vg.name));
        let extent_count = runs.iter().try_fold(0u64, |sum, r| sum.checked_add(r.2)).ok_or_else(overflow)?;
        let offset = first_pe.checked_mul(vg.extent_size).and_then(|b| b.checked_add(pv.pe_start)).ok_or_else(overflow)?;
        let size = extent_count.checked_mul(vg.extent_size).ok_or_else(overflow)?;
        if size != first.lv_size {
            return Err(LvmError::Inconsistent(format!(
                "{}/{lv_name}: its segments add up to {size} bytes but its size is {} bytes",
                vg.name, first.lv_size
            )));
        }
        let end = offset.checked_add(size).ok_or_else(overflow)?;
        if end > pv.dev_size {
            refusals.push(refuse(Layout::BeyondDevice { pv: pv.device.clone(), end, dev_size: pv.dev_size }));
            continue;
        }
        let mapping = LvMapping {
            vg: vg.name.clone(),
            lv: lv_name.clone(),
            lv_uuid: first.lv_uuid.clone(),
            pv_index,
            pv_device: pv.device.clone(),
            pv_uuid: pv.uuid.clone(),
            offset_bytes_in_pv: offset,
            size_bytes: size,
            first_pe,
            extent_count,
        };
        vg.lvs.push(mapping);
    }
    if !refusals.is_empty() {
        return Err(LvmError::Refused(refusals));
    }
    Ok(vgs)
}

/// The device-mapper name of `vg`/`lv`: both joined by `-`, with every `-` inside them doubled
/// (`my-vg`/`lv_root` → `my--vg-lv_root`).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// A logical volume named by an fstab spec or a `root=` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvRef {
    pub vg: String,
    pub lv: String,
}

/// Reads `/dev/mapper/VG-LV` (dashes inside the names doubled) or `/dev/VG/LV` into the VG and
/// LV names. Returns `None` for anything else, for a device-mapper name with a layer suffix
/// (`vg-lv-real`, `vg-pool-tpool`) and for names lvm would not allow.
///
/// The result is a candidate only: `/dev/md/root` or `/dev/mapper/luks-1234` have the same
/// shape. Match it against the VGs and LVs actually found in the image.
pub fn parse_lv_spec(spec: &str) -> Option<LvRef> {
    if let Some(name) = spec.strip_prefix("/dev/mapper/") {
        return parse_dm_name(name);
    }
    let rest = spec.strip_prefix("/dev/")?;
    let (vg, lv) = rest.split_once('/')?;
    if vg == "mapper" || vg == "disk" || !valid_name(vg) || !valid_name(lv) {
        return None;
    }
    Some(LvRef { vg: vg.to_string(), lv: lv.to_string() })
}

/// Splits a device-mapper name made by lvm (`VG-LV`, `-` inside names doubled).
pub fn parse_dm_name(name: &str) -> Option<LvRef> {
    let mut parts: Vec<String> = vec![String::new()];
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '-' {
            if chars.peek() == Some(&'-') {
                chars.next();
                parts.last_mut()?.push('-');
            } else {
                parts.push(String::new());
            }
        } else {
            parts.last_mut()?.push(c);
        }
    }
    if parts.len() != 2 || !valid_name(&parts[0]) || !valid_name(&parts[1]) {
        return None;
    }
    let lv = parts.pop()?;
    let vg = parts.pop()?;
    Some(LvRef { vg, lv })
}

/// lvm's rule for VG and LV names: `[A-Za-z0-9+_.-]`, not starting with `-`, not `.` or `..`,
/// at most 127 characters.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s != "."
        && s != ".."
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> (Vec<PvRow>, Vec<SegRow>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/lvm/reports");
        let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}.json"))).expect("captured report");
        (parse_pvs(&read("pvs")).expect("pvs"), parse_lvs(&read("lvs")).expect("lvs"))
    }

    fn refusals(name: &str) -> Vec<Refusal> {
        let (p, s) = load(name);
        match map_volume_groups(&p, &s) {
            Err(LvmError::Refused(r)) => r,
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn maps_the_fixture_images() {
        for name in ["debian-12-lvm-amd64", "debian-12-lvm-selinux-amd64"] {
            maps_a_fixture_image(name);
        }
    }

    fn maps_a_fixture_image(name: &str) {
        let (p, s) = load(name);
        let vgs = map_volume_groups(&p, &s).expect("maps");
        assert_eq!(vgs.len(), 1);
        let vg = &vgs[0];
        assert_eq!(vg.name, "rootvg");
        assert_eq!(vg.extent_size, 4 << 20);
        assert_eq!(vg.pvs.len(), 1);
        assert_eq!(vg.pvs[0].pe_start, 1 << 20);
        let root = vg.lv("rootlv").expect("rootlv");
        // rootlv: the first 448 extents (1792 MiB) right after pe_start.
        assert_eq!((root.first_pe, root.extent_count), (0, 448));
        assert_eq!(root.offset_bytes_in_pv, 1 << 20);
        assert_eq!(root.size_bytes, 1792 << 20);
        assert_eq!(root.dm_name(), "rootvg-rootlv");
        let var = vg.lv("varlv").expect("varlv");
        assert_eq!(var.first_pe, 448);
        assert_eq!(var.offset_bytes_in_pv, (1 << 20) + 448 * (4 << 20));
        assert_eq!(var.first_pe + var.extent_count, vg.pvs[0].pe_count, "varlv fills the PV");
        assert!(var.offset_bytes_in_pv + var.size_bytes <= vg.pvs[0].dev_size);
        // varlv is last on the PV: it may grow in place; rootlv may not.
        assert_eq!(vg.growable_in_place("varlv"), Ok(0));
        let e = vg.growable_in_place("rootlv").unwrap_err();
        assert!(e.contains("rootvg/varlv is allocated after it"), "{e}");
    }

    #[test]
    fn maps_odd_geometry() {
        // pe_start 3 MiB, 2 MiB extents, varlv at extents 4..=6.
        let (p, s) = load("tiny-lvm-odd-geometry");
        let vgs = map_volume_groups(&p, &s).expect("maps");
        let vg = &vgs[0];
        assert_eq!((vg.extent_size, vg.pvs[0].pe_start), (2 << 20, 3 << 20));
        let var = vg.lv("varlv").expect("varlv");
        assert_eq!(var.offset_bytes_in_pv, (3 << 20) + 4 * (2 << 20));
        assert_eq!(var.size_bytes, 3 * (2 << 20));
        let root = vg.lv("rootlv").expect("rootlv");
        assert_eq!((root.offset_bytes_in_pv, root.size_bytes), (3 << 20, 4 << 20));
        // Free extents 7.. follow varlv; rootlv has extents 2-3 free after it, then varlv.
        assert_eq!(vg.growable_in_place("varlv"), Ok(vg.pvs[0].pe_count - 7));
        let e = vg.growable_in_place("rootlv").unwrap_err();
        assert!(e.contains("rootlv cannot grow as one contiguous segment") && e.contains("/varlv is allocated after it"), "{e}");
        assert!(vg.growable_in_place("nolv").unwrap_err().contains("nolv is not a mapped logical volume"));
    }

    #[test]
    fn refuses_striped() {
        let r = refusals("tiny-lvm-striped");
        assert_eq!(r, vec![Refusal { vg: "rootvg".into(), lv: "varlv".into(), layout: Layout::Striped { stripes: 2 } }]);
        assert_eq!(r[0].to_string(), "rootvg/varlv is striped over 2 physical volumes");
    }

    #[test]
    fn refuses_spanned() {
        let r = refusals("tiny-lvm-spanned");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].lv, "varlv");
        assert!(matches!(&r[0].layout, Layout::Spanned { pvs } if pvs.len() == 2), "{r:?}");
    }

    #[test]
    fn refuses_non_contiguous() {
        let r = refusals("tiny-lvm-noncontig");
        assert_eq!(r, vec![Refusal { vg: "rootvg".into(), lv: "varlv".into(), layout: Layout::NonContiguous { runs: vec![(2, 2), (6, 1)] } }]);
        assert!(r[0].to_string().contains("physical extents 2-3, 6-6"), "{}", r[0]);
    }

    #[test]
    fn refuses_raid_and_mirror() {
        let r = refusals("tiny-lvm-raid1");
        assert_eq!(r, vec![Refusal { vg: "rootvg".into(), lv: "varlv".into(), layout: Layout::MirrorOrRaid { segtype: "raid1".into(), images: 2 } }]);
        let r = refusals("tiny-lvm-mirror");
        assert_eq!(r, vec![Refusal { vg: "rootvg".into(), lv: "varlv".into(), layout: Layout::MirrorOrRaid { segtype: "mirror".into(), images: 2 } }]);
    }

    #[test]
    fn refuses_thin_but_not_its_hidden_parts() {
        let r = refusals("tiny-lvm-thin");
        assert_eq!(r, vec![Refusal { vg: "rootvg".into(), lv: "varlv".into(), layout: Layout::Thin { pool: "pool".into() } }]);
    }

    #[test]
    fn refuses_snapshot_and_origin() {
        let r = refusals("tiny-lvm-snapshot");
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.contains(&Refusal { vg: "rootvg".into(), lv: "rootlv".into(), layout: Layout::Origin }));
        assert!(r.contains(&Refusal { vg: "rootvg".into(), lv: "varsnap".into(), layout: Layout::Snapshot { origin: "rootlv".into() } }));
    }

    #[test]
    fn refuses_a_vg_with_a_missing_pv() {
        let (p, s) = load("tiny-lvm-missing-pv");
        let err = map_volume_groups(&p, &s).unwrap_err();
        let LvmError::Refused(r) = &err else { panic!("{err}") };
        let missing_uuid = p.iter().find(|p| p.pv_missing == "missing").expect("a missing PV").pv_uuid.clone();
        assert_eq!(r[0], Refusal { vg: "rootvg".into(), lv: String::new(), layout: Layout::VgMissingPvs { missing: 1, total: 2, uuids: vec![missing_uuid.clone()] } });
        assert_eq!(r[1], Refusal { vg: "rootvg".into(), lv: "varlv".into(), layout: Layout::MissingPv { uuids: vec![missing_uuid.clone()] } });
        let text = err.to_string();
        assert!(text.contains("volume group rootvg is missing 1 of its 2 physical volumes"), "{text}");
        assert!(text.contains("rootvg/varlv lies on a physical volume the image does not hold"), "{text}");
        assert!(text.contains(&missing_uuid), "{text}");
    }

    #[test]
    fn refuses_an_lv_past_the_end_of_a_truncated_pv() {
        let (mut p, s) = load("tiny-lvm-odd-geometry");
        p[0].dev_size = (3 << 20) + 5 * (2 << 20); // cut inside varlv (extents 4..=6)
        let r = match map_volume_groups(&p, &s) {
            Err(LvmError::Refused(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.len(), 1);
        assert!(matches!(&r[0].layout, Layout::BeyondDevice { end, .. } if *end == (3 << 20) + 7 * (2 << 20)), "{r:?}");
    }

    #[test]
    fn inconsistent_reports_are_errors() {
        let (p, mut s) = load("tiny-lvm-odd-geometry");
        s[0].lv_size += 1;
        assert!(matches!(map_volume_groups(&p, &s), Err(LvmError::Inconsistent(_))));
        let (p, mut s) = load("tiny-lvm-odd-geometry");
        s[0].devices = "/dev/loop99(0)".into();
        assert!(matches!(map_volume_groups(&p, &s), Err(LvmError::Inconsistent(_))));
        assert!(matches!(map_volume_groups(&[], &s), Err(LvmError::Inconsistent(_))));
        assert!(matches!(parse_pvs("{\"report\": [{\"pv\": [{\"pv_name\": \"x\"}]}]}"), Err(LvmError::Json { report: "pvs", .. })));
        let bad_units = r#"{"report":[{"pv":[{"pv_name":"/dev/loop0","pv_uuid":"u","dev_size":"64.00m","pe_start":"1","pv_pe_count":"1"}]}]}"#;
        let e = parse_pvs(bad_units).unwrap_err().to_string();
        assert!(e.contains("--units b --nosuffix"), "{e}");
    }

    #[test]
    fn hostile_numbers_do_not_panic() {
        let (p, mut s) = load("tiny-lvm-noncontig");
        for r in s.iter_mut().filter(|r| r.lv_name == "varlv") {
            r.devices = format!("{}({})", r.devices.split('(').next().unwrap_or_default(), u64::MAX - 1);
            r.seg_size_pe = u64::MAX;
        }
        let e = map_volume_groups(&p, &s).unwrap_err();
        assert!(matches!(e, LvmError::Inconsistent(_) | LvmError::Refused(_)), "{e}");
        let (mut p, mut s) = load("tiny-lvm-odd-geometry");
        p[0].vg_extent_size = Some(u64::MAX);
        for r in &mut s {
            r.vg_extent_size = u64::MAX;
        }
        assert!(matches!(map_volume_groups(&p, &s), Err(LvmError::Inconsistent(_))));
    }

    #[test]
    fn reads_json_std_numbers_and_orphan_pvs() {
        let json = r#"{"report":[{"pv":[{"pv_name":"/dev/loop7","pv_uuid":"u","dev_size":67108864,"pe_start":1048576,
            "pv_pe_count":0,"pv_missing":"","vg_name":"","vg_uuid":"","vg_extent_size":"","vg_seqno":""}]}]}"#;
        let p = parse_pvs(json).expect("parses");
        assert_eq!(p[0].dev_size, 64 << 20);
        assert_eq!(p[0].vg_extent_size, None);
        assert_eq!(map_volume_groups(&p, &[]).expect("no VG"), vec![]);
    }

    #[test]
    fn parses_devices_fields() {
        assert_eq!(parse_devices("/dev/loop3(448)").unwrap(), vec![("/dev/loop3".into(), 448)]);
        assert_eq!(parse_devices("/dev/loop0(2),[unknown](0)").unwrap(), vec![("/dev/loop0".into(), 2), ("[unknown]".into(), 0)]);
        assert_eq!(parse_devices("/dev/odd(x),name(1)").unwrap(), vec![("/dev/odd(x),name".into(), 1)]);
        assert_eq!(parse_devices("").unwrap(), vec![]);
        assert_eq!(parse_devices("/dev/loop0").unwrap_err(), "cannot read the devices field \"/dev/loop0\"");
        assert!(parse_devices("/dev/loop0(99999999999999999999999)").unwrap_err().starts_with("extent number out of range in"));
    }

    #[test]
    fn report_command_lines() {
        let a = report_args(Report::Lvs, &["/dev/loop3", "/dev/loop4"]);
        assert_eq!(&a[..4], ["lvs", "--readonly", "--devices", "/dev/loop3,/dev/loop4"]);
        assert!(a.contains(&"--segments".to_string()) && a.contains(&"-a".to_string()));
        assert!(a.windows(2).any(|w| w[0] == "--units" && w[1] == "b"));
        let p = report_args(Report::Pvs, &["/dev/loop3"]);
        assert_eq!(p.last().map(String::as_str), Some(PVS_FIELDS));
        assert!(!p.contains(&"--segments".to_string()));
    }

    #[test]
    fn parses_fstab_lv_specs() {
        let r = |vg: &str, lv: &str| Some(LvRef { vg: vg.into(), lv: lv.into() });
        assert_eq!(parse_lv_spec("/dev/mapper/rootvg-rootlv"), r("rootvg", "rootlv"));
        assert_eq!(parse_lv_spec("/dev/mapper/debian--vg-root"), r("debian-vg", "root"));
        assert_eq!(parse_lv_spec("/dev/mapper/ubuntu--vg-ubuntu--lv"), r("ubuntu-vg", "ubuntu-lv"));
        assert_eq!(parse_lv_spec("/dev/mapper/a---b-c"), None, "a single dash after a doubled one splits three ways");
        assert_eq!(parse_lv_spec("/dev/mapper/vg-x----y"), r("vg", "x--y"));
        assert_eq!(parse_lv_spec("/dev/mapper/vg-pool-tpool"), None, "layer devices are not LVs");
        assert_eq!(parse_lv_spec("/dev/mapper/control"), None);
        assert_eq!(parse_lv_spec("/dev/mapper/-vg-lv"), None);
        assert_eq!(parse_lv_spec("/dev/rootvg/varlv"), r("rootvg", "varlv"));
        assert_eq!(parse_lv_spec("/dev/ol/root"), r("ol", "root"));
        assert_eq!(parse_lv_spec("/dev/rhel/home"), r("rhel", "home"));
        assert_eq!(parse_lv_spec("/dev/disk/by-uuid"), None);
        assert_eq!(parse_lv_spec("/dev/disk/by-uuid/1234"), None);
        assert_eq!(parse_lv_spec("/dev/vg/lv/extra"), None);
        assert_eq!(parse_lv_spec("/dev/vg/.."), None);
        assert_eq!(parse_lv_spec("/dev/sda1"), None);
        assert_eq!(parse_lv_spec("UUID=1234"), None);
        assert_eq!(parse_lv_spec("/dev/vg/l v"), None);
        for (vg, lv) in [("rootvg", "rootlv"), ("debian-vg", "root"), ("a-b-c", "d--e"), ("v.g+_", "l-")] {
            assert_eq!(parse_dm_name(&dm_name(vg, lv)), r(vg, lv), "round trip of {vg}/{lv}");
        }
    }
}
