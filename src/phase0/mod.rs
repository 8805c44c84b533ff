//! Phase 0: the base image. Verify it, make a sparse raw working copy, read its partition
//! table, attach partitions as loop devices and mount its tree as its own fstab says.
//!
//! The order, which the unit tests in `tests.rs` check call by call through the recording fake
//! of [`crate::sys`]:
//! 1. every partition (or the whole disk) is probed with blkid;
//! 2. root selection: Linux filesystems only, partitions typed as a root first, then the
//!    largest; each is attached and mounted in turn until one has `/etc/os-release` (the others
//!    are unmounted and detached again);
//! 3. growth (`disk.size`): the root is unmounted and detached, the file and its GPT grown with
//!    sfdisk, the root attached at its new size, its filesystem grown (ext2/3/4 before mounting,
//!    xfs and btrfs after) and mounted again;
//! 4. fstab: filesystems shallowest first, then bind entries; `noauto`, swap and
//!    pseudo-filesystems skipped; one the kernel cannot mount (ENODEV, vfat here) skipped with a
//!    warning.
//!
//! Every loop device and mount is a guard on one stack ([`crate::sys::Stack`]), undone strictly
//! in reverse on close, on error and on drop. Everything mounted here lives in kib's private
//! mount namespace (see [`crate::mounts::enter_private_namespace`]); every loop device has
//! autoclear set.

pub mod facts;
pub mod fstab;
pub mod grow;
pub mod lvm;
pub mod lvmap;
pub mod partition;
pub mod probe;
pub mod verify;
pub mod workcopy;

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::backend::Backend;
use crate::guest::GuestRoot;
use crate::{guestfs, mounts};
use crate::sys::{self, LoopDev, MountFlags, Mounted, Stack, Sys};
use crate::workdir::WorkDir;
use facts::Facts;
use lvmap::Volume;
use partition::{Partition, Table, TableKind};

/// How Phase 0 opens an image.
#[derive(Debug, Clone)]
pub struct Options {
    /// The input disk image (raw, qcow2, or anything qemu-img reads). Never written to.
    pub image: PathBuf,
    /// Check the image against a `SHA256SUMS`/`sha256sum.txt` beside it, when one lists it.
    pub verify: bool,
    /// Where the per-run work directory is created.
    pub work_base: PathBuf,
    /// kib's cache (`/var/cache/kib`): remembers the checksums of inputs already read in full.
    pub cache_dir: Option<PathBuf>,
    /// Open for reading only (`kib check`): a raw input is attached directly, read-only, with no
    /// working copy, and every filesystem is mounted read-only without journal replay. Its
    /// SHA-256 is computed only to verify it against a checksum list.
    pub read_only: bool,
    /// Grow the disk to this many bytes before mounting the rest of the tree (see [`grow`]).
    /// Not with `read_only`.
    pub grow_to: Option<u64>,
    /// Start from this raw disk instead of the input: a build-cache snapshot of this input,
    /// already grown and customized by some steps (see [`crate::buildcache`]). Used only when
    /// the input's SHA-256 is known without reading it (see [`verify::InputCache`]); then the
    /// snapshot is cloned or copied as the working copy and `grow_to` must be `None`.
    pub start_from: Option<PathBuf>,
    /// How the filesystems are reached: loop devices and mounts, or libguestfs's appliance
    /// reading the tree out into a tmpfs ([`crate::guestfs`]).
    pub backend: Backend,
    /// The guestfs backend's cache folder and appliance time limit (guestfs backend only;
    /// `None`: a cache in the work directory and [`guestfs::SESSION_LIMIT`]).
    pub guestfs: Option<guestfs::Settings>,
}

/// The input image as the BOM records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputRecord {
    /// The file Phase 0 read: the local input, or for a URL input its copy in kib's cache.
    pub path: PathBuf,
    /// The URL the image was downloaded from (`--disk-image URL`), credentials removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub sha256: String,
    pub format: String,
    pub virtual_size: u64,
    /// What the image was verified against, if anything: the checksum list's path or URL
    /// (credentials removed), or the pin (`--disk-image-sha256`, `--lock FILE`).
    #[serde(default)]
    pub verified_against: Option<String>,
    /// `read` when kib hashed the file in this run, `cache` when the file was unchanged since a
    /// run that did (see [`verify::InputCache`]).
    #[serde(default)]
    pub sha256_source: String,
}

/// A filesystem of the image that kib mounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filesystem {
    /// The partition holding it (for a logical volume: the partition of its physical volume).
    pub partition: u32,
    /// `VG/LV` when it lies on an LVM logical volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv: Option<String>,
    pub fstype: String,
    pub uuid: String,
    /// Where it is mounted, as an image path (`/`, `/boot`, `/boot/efi`).
    pub mount_point: String,
}

/// The mount data kib gives an image's filesystem of type `fstype`. xfs always gets `nouuid`:
/// the kernel refuses a second xfs with the UUID of one already mounted, which two builds from
/// the same base image (a matrix run with `-j 2`, or this host's own disk cloned) would be.
/// Read-only mounts also skip log replay (`noload`, `norecovery`, `nologreplay`), which would
/// write.
pub fn fs_data(fstype: &str, read_only: bool) -> Option<&'static str> {
    match (fstype, read_only) {
        ("xfs", false) => Some("nouuid"),
        ("xfs", true) => Some("norecovery,nouuid"),
        ("ext4" | "ext3", true) => Some("noload"),
        ("btrfs", true) => Some("nologreplay"),
        _ => None,
    }
}

/// What [`Image::lvm_grow_target`] found.
struct LvGrowTarget {
    found: lvmap::Found,
    /// The last partition (a PV's).
    last: Partition,
    /// The index of the VG in `found`.
    vg_index: usize,
    /// The LV that grows.
    lv: lvm::LvMapping,
    name: lvmap::LvName,
}

/// Runs Phase 0 (see [`Image::open`]).
pub fn run(opts: &Options) -> Result<Image> {
    Image::open(opts)
}

/// An opened image: the working copy, attached and mounted. Dropping it unmounts and detaches
/// everything and removes the work directory; [`Image::unmount`] and [`Image::close`] do the same
/// and report errors.
#[derive(Debug)]
pub struct Image {
    pub input: InputRecord,
    pub table: Table,
    pub facts: Facts,
    pub filesystems: Vec<Filesystem>,
    /// Host path of the mounted root.
    pub root_dir: PathBuf,
    /// The sparse raw working copy.
    pub disk: PathBuf,
    /// What growing the disk did, when it was asked to.
    pub growth: Option<grow::Growth>,
    /// The image's LVM volume groups, their PVs and LVs (empty without LVM).
    pub volume_groups: Vec<lvmap::VgRecord>,
    /// What lvm reported, for growth.
    lvm: Option<lvmap::Found>,
    root: Option<GuestRoot>,
    /// The loop devices and mounts of the tree, undone in reverse.
    held: Stack,
    sys: Arc<dyn Sys>,
    read_only: bool,
    grow_to: Option<u64>,
    /// With the guestfs backend: the appliance, what it mounted, and the tree before the steps.
    guestfs: Option<GuestfsTree>,
    // Declared last: dropped after the Drop impl has unmounted.
    work: WorkDir,
}

/// The guestfs backend's state of an opened image (see [`crate::guestfs`]).
#[derive(Debug)]
struct GuestfsTree {
    app: guestfs::Appliance,
    mounted: Vec<guestfs::Mounted>,
    before: guestfs::TreeState,
    /// The root filesystem to grow in the write-back session (its partition is grown already).
    grow: Option<guestfs::Grow>,
}

impl Image {
    /// Runs Phase 0 on the real system.
    ///
    /// Errors: a missing or unreadable image, a checksum mismatch (both sums shown), an image
    /// that refers to other files, a corrupt partition table, no Linux root filesystem, or a
    /// failing mount. Whatever was set up before the error is undone.
    pub fn open(opts: &Options) -> Result<Image> {
        Self::open_with(sys::real(), opts)
    }

    /// [`Image::open`] with every loop device, mount, probe and growth tool going through `sys`.
    /// The working copy is made for real in any case (qemu-img, no root needed).
    pub fn open_with(sys: Arc<dyn Sys>, opts: &Options) -> Result<Image> {
        let t = Instant::now();
        let input = &opts.image;
        let meta = std::fs::metadata(input).with_context(|| format!("disk image {} cannot be opened", input.display()))?;
        if !meta.is_file() {
            bail!("disk image {} is not a regular file", input.display());
        }
        let expected = if opts.verify {
            let e = verify::expected_sum(input).with_context(|| format!("reading the checksum list beside {}", input.display()))?;
            if e.is_none() {
                tracing::warn!("no SHA256SUMS or sha256sum.txt beside {} lists it: not verified", input.display());
            }
            e
        } else {
            None
        };
        let format = workcopy::inspect(input)?;
        let work = WorkDir::create(&opts.work_base)?;
        let disk = work.path().join("disk.raw");
        let root_dir = work.path().join("root");
        std::fs::create_dir(&root_dir)?;
        let mut image = Image {
            input: InputRecord {
                path: std::path::absolute(input).unwrap_or_else(|_| input.clone()),
                url: None,
                sha256: String::new(),
                format: format.format.clone(),
                virtual_size: format.virtual_size,
                verified_against: None,
                sha256_source: "read".into(),
            },
            table: Table { kind: TableKind::None, sector_size: 512, partitions: Vec::new() },
            facts: Facts::default(),
            filesystems: Vec::new(),
            root_dir,
            disk,
            growth: None,
            volume_groups: Vec::new(),
            lvm: None,
            root: None,
            held: Stack::default(),
            sys,
            read_only: opts.read_only,
            grow_to: if opts.read_only { None } else { opts.grow_to },
            guestfs: None,
            work,
        };
        let cache = opts.cache_dir.as_deref().map(verify::InputCache::new);
        let known = cache.as_ref().and_then(|c| c.lookup(input));
        if opts.read_only && format.format == "raw" {
            image.disk = image.input.path.clone();
            image.input.sha256 = match (&known, &expected) {
                (Some(k), _) => k.clone(),
                (None, Some(_)) => crate::hash::sha256_file(input).with_context(|| format!("reading {}", input.display()))?,
                (None, None) => String::new(),
            };
        } else if let (Some(snapshot), Some(sum)) = (&opts.start_from, &known) {
            let copying = crate::progress::Activity::task("working copy from the build cache", std::fs::metadata(snapshot).ok().map(|m| m.len()));
            let how = workcopy::clone_or_copy(snapshot, &image.disk, &copying).with_context(|| format!("copying the build-cache snapshot {}", snapshot.display()))?;
            copying.finish();
            tracing::debug!("working copy from the build cache {} ({})", snapshot.display(), how.name());
            image.input.sha256 = sum.clone();
        } else {
            image.input.sha256 = workcopy::make(input, &format, &image.disk, known.as_deref())?;
        }
        match (&cache, known) {
            (_, Some(_)) => image.input.sha256_source = "cache".into(),
            (Some(c), None) if !image.input.sha256.is_empty() => c.store(input, &image.input.sha256),
            _ => {}
        }
        if let Some(e) = expected {
            if e.sha256 != image.input.sha256 {
                bail!(
                    "checksum mismatch for {}: {} lists sha256 {}, but the file's sha256 is {}. The download may be corrupt or \
                     tampered with; fetch it again, or pass --no-verify to skip this check",
                    input.display(),
                    e.list.display(),
                    e.sha256,
                    image.input.sha256
                );
            }
            tracing::info!("verified {} against {}", input.display(), e.list.display());
            image.input.verified_against = Some(e.list.display().to_string());
        }
        tracing::debug!("working copy ready ({}, {} bytes) in {:.1?}", format.format, format.virtual_size, t.elapsed());
        let activity = crate::progress::Activity::step(match opts.backend {
            Backend::Loop => "partition table, loop devices, mounts",
            Backend::Guestfs => "partition table, the tree through libguestfs",
        });
        image.table = partition::read(&image.disk).with_context(|| format!("reading the partition table of {}", input.display()))?;
        match opts.backend {
            Backend::Loop => image.mount_tree().with_context(|| format!("mounting the filesystems of {}", input.display()))?,
            Backend::Guestfs => {
                let settings = opts.guestfs.clone().unwrap_or_else(|| guestfs::Settings { cache: image.work.path().join("guestfs-cache"), session_limit: guestfs::SESSION_LIMIT });
                image.extract_tree(&settings).with_context(|| format!("reading the filesystems of {} through libguestfs", input.display()))?
            }
        }
        activity.finish();
        if let Err(e) = image.facts.check_arch() {
            if opts.read_only {
                tracing::warn!("{}: {e}", input.display());
            } else {
                bail!("{}: {e}; kib would install packages for the wrong architecture, so it stops here", input.display());
            }
        }
        tracing::info!(
            "phase 0 done in {:.1?}: {} {} ({}), root on partition {}",
            t.elapsed(),
            image.facts.os_release.get("PRETTY_NAME").map_or("unknown OS", String::as_str),
            image.facts.arch,
            image.table.kind_name(),
            image.filesystems.first().map_or(0, |f| f.partition)
        );
        Ok(image)
    }

    /// The mounted root, for safe access to the image's files.
    pub fn root(&self) -> &GuestRoot {
        self.root.as_ref().expect("image is mounted")
    }

    /// The work directory of this run.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The system this image is attached and mounted through; the chroot session uses it too.
    pub fn sys(&self) -> &Arc<dyn Sys> {
        &self.sys
    }

    /// The partitions (or the whole disk), each probed with blkid, and those blkid calls LVM
    /// physical volumes.
    ///
    /// Errors: the disk cannot be read, or blkid fails.
    fn probe_partitions(&self) -> Result<(Vec<Partition>, Vec<probe::Probe>, Vec<Partition>)> {
        let parts = self.partitions_or_whole_disk()?;
        let mut probes = Vec::with_capacity(parts.len());
        for p in &parts {
            probes.push(self.sys.probe(&self.disk, p.start, p.size).with_context(|| format!("probing partition {} with blkid", p.number))?);
        }
        let pvs = parts.iter().zip(&probes).filter(|(_, pr)| pr.get("TYPE").map(String::as_str) == Some(lvmap::PV_TYPE)).map(|(p, _)| p.clone()).collect();
        Ok((parts, probes, pvs))
    }

    fn partitions_or_whole_disk(&self) -> Result<Vec<Partition>> {
        if !self.table.partitions.is_empty() {
            return Ok(self.table.partitions.clone());
        }
        let size = std::fs::metadata(&self.disk)?.len();
        Ok(vec![Partition { number: 0, start: 0, size, type_id: String::new(), part_uuid: String::new(), name: String::new() }])
    }

    /// The guestfs backend's Phase 0: the tree read out through the appliance into a tmpfs at
    /// the root folder (see [`crate::guestfs::extract`]), then the facts, the filesystems and the
    /// tree's state for the write-back.
    fn extract_tree(&mut self, settings: &guestfs::Settings) -> Result<()> {
        let (_, _, pv_parts) = self.probe_partitions()?;
        let data = format!("mode=0755,size={}", self.grow_to.unwrap_or(0).max(self.input.virtual_size) + (256 << 20));
        let spec = sys::MountSpec { source: "kib-tree", source_at: None, target: &self.root_dir, at: &self.root_dir, fstype: "tmpfs", flags: MountFlags::empty(), data: Some(&data) };
        self.held.push_mount(Mounted::mount(&self.sys, &spec).context("mounting a tmpfs for the image's tree")?);
        let app = guestfs::Appliance::prepare(&self.work.path().join("guestfs"), &settings.cache, settings.session_limit)?;
        tracing::info!("libguestfs's appliance runs under {}", app.accel.to_uppercase());
        let activity = crate::progress::Activity::task("reading the tree out through libguestfs", None);
        let found = guestfs::extract(&app, &self.disk, &self.root_dir, self.work.path(), &pv_parts.iter().map(|p| p.number).collect::<Vec<_>>())?;
        let mounted = found.mounted;
        activity.finish();
        let (vols, probes) = self.map_appliance_lvm(found.lvm_reports.as_ref())?;
        let root = GuestRoot::open(&self.root_dir).context("opening the image's tree")?;
        let Some(os) = facts::os_release(&root).context("reading os-release")? else {
            bail!("the root filesystem libguestfs found has no /etc/os-release");
        };
        self.facts = facts::collect(&root, os).context("reading the image's architecture and kernels")?;
        self.root = Some(root);
        for m in &mounted {
            let i = match lvm::parse_lv_spec(&m.device) {
                Some(r) => vols.iter().position(|v| v.lv.as_ref().is_some_and(|n| n.vg == r.vg && n.lv == r.lv)),
                None => vols.iter().position(|v| v.lv.is_none() && v.part.number == m.partition().unwrap_or(0)),
            };
            let get = |k: &str| i.and_then(|i| probes[i].get(k).cloned()).unwrap_or_default();
            let fstype = Some(get("TYPE")).filter(|t| !t.is_empty()).or_else(|| found.filesystems.iter().find(|(d, _)| *d == m.device).map(|(_, t)| t.clone())).unwrap_or_default();
            self.filesystems.push(Filesystem {
                partition: i.map_or_else(|| m.partition().unwrap_or(0), |i| vols[i].part.number),
                lv: lvm::parse_lv_spec(&m.device).map(|r| format!("{}/{}", r.vg, r.lv)),
                fstype,
                uuid: get("UUID"),
                mount_point: m.mount_point.clone(),
            });
        }
        self.record_volume_groups(&vols, &probes);
        let grow = match self.grow_to {
            Some(size) => self.grow_table_for_guestfs(size, &mounted).context("growing the disk")?,
            None => None,
        };
        let before = if self.read_only { guestfs::TreeState::default() } else { guestfs::TreeState::record(&self.root_dir).context("recording the tree's state")? };
        tracing::debug!("{} paths read out of {} filesystem(s)", before.len(), mounted.len());
        self.guestfs = Some(GuestfsTree { app, mounted, before, grow });
        Ok(())
    }

    /// The guestfs backend's volumes: the partitions (or the whole disk), then the LVs of lvm's
    /// reports from the appliance, mapped as the loop backend maps its own reports ([`lvmap`]),
    /// each probed with blkid at its byte range in the file; the mapping is kept in `self.lvm`.
    /// Returns every volume and its probe, in that order. A layout kib cannot map is a warning,
    /// not an error: the appliance mounts whatever lvm activates; only the BOM's record (and
    /// `disk.size`) need the mapping.
    ///
    /// Errors: blkid fails.
    fn map_appliance_lvm(&mut self, reports: Option<&(String, String)>) -> Result<(Vec<Volume>, Vec<probe::Probe>)> {
        let (parts, mut probes, pv_parts) = self.probe_partitions()?;
        let mut vols: Vec<Volume> = parts.into_iter().map(Volume::partition).collect();
        if let Some((pvs_json, lvs_json)) = reports {
            let devices: Vec<String> = pv_parts.iter().map(|p| guestfs::device_of(p.number)).collect();
            match lvmap::from_reports(pvs_json, lvs_json, &devices, &pv_parts) {
                Ok(lvm) => {
                    for v in lvm.volumes() {
                        probes.push(self.sys.probe(&self.disk, v.part.start, v.part.size).with_context(|| format!("probing {} with blkid", v.describe()))?);
                        vols.push(v);
                    }
                    self.lvm = Some(lvm);
                }
                Err(e) => {
                    self.lvm = None;
                    tracing::warn!("the image's LVM layout is not recorded in the BOM: {e:#}");
                }
            }
        }
        Ok((vols, probes))
    }

    /// `disk.size` with the guestfs backend: the working copy and the partition holding the root
    /// (which must be the last) grow now, with sfdisk on the file, as with loop devices; the
    /// filesystem grows in the write-back session (see [`guestfs::Grow`]). Returns what that
    /// session must grow, `None` when the size is unchanged.
    ///
    /// Errors: a smaller size, a partition after the root's, a filesystem kib cannot grow, or
    /// sfdisk fails.
    fn grow_table_for_guestfs(&mut self, new_size: u64, mounted: &[guestfs::Mounted]) -> Result<Option<guestfs::Grow>> {
        let old_size = std::fs::metadata(&self.disk)?.len();
        if self.lvm.is_some() {
            return self.grow_lvm_for_guestfs(new_size, old_size);
        }
        let root_fs = self.filesystems.iter().find(|f| f.mount_point == "/").cloned().context("no root filesystem to grow")?;
        if let Some(lv) = &root_fs.lv {
            bail!("disk.size: the root filesystem is on the logical volume {lv}, and kib could not map the image's LVM layout (see the warning above)");
        }
        let device = mounted.iter().find(|m| m.mount_point == "/").map(|m| m.device.clone()).context("no root filesystem to grow")?;
        grow::check(&self.table, root_fs.partition, old_size, new_size)?;
        if new_size == old_size {
            return Ok(None);
        }
        let g = guestfs::Grow { device, fstype: root_fs.fstype.clone(), mount_point: "/".into(), lvm: None };
        g.commands()?;
        let (table, _, growth) = grow::grow_partition(&*self.sys, &self.disk, &self.table, root_fs.partition, old_size, new_size, &root_fs.fstype)?;
        tracing::info!(
            "grew the disk from {} to {} and partition {} from {} to {}; its {} filesystem grows when the changes are written back",
            grow::human(old_size),
            grow::human(new_size),
            growth.partition,
            grow::human(growth.partition_from_bytes),
            grow::human(growth.partition_to_bytes),
            root_fs.fstype
        );
        self.growth = Some(growth);
        self.table = table;
        Ok(Some(g))
    }

    /// The LV `disk.size` grows on an LVM image, with either backend: the last partition must
    /// hold a PV, and the LV allocated last on it grows, in place (no other LV after it).
    ///
    /// Errors: the last partition holds no PV or no LV, or that LV cannot grow in place.
    fn lvm_grow_target(&self) -> Result<LvGrowTarget> {
        let found = self.lvm.clone().expect("called with LVM");
        let last = self.table.partitions.iter().max_by_key(|p| p.start).cloned().context("the disk has no partition table to grow")?;
        let Some((vg_index, pvi)) = found.pv_partitions.iter().enumerate().find_map(|(g, ps)| ps.iter().position(|p| p.number == last.number).map(|i| (g, i))) else {
            bail!("disk.size: the image has LVM, but its last partition ({}) is not an LVM physical volume; kib grows only the last partition", last.number);
        };
        let vg = &found.vgs[vg_index];
        let Some(lv) = vg.lvs.iter().filter(|m| m.pv_index == pvi).max_by_key(|m| m.first_pe).cloned() else {
            bail!("disk.size: the physical volume on partition {} holds no logical volume kib could grow", last.number);
        };
        vg.growable_in_place(&lv.lv).map_err(|e| anyhow::anyhow!("disk.size: {e}; kib grows a logical volume only in place, as one contiguous segment"))?;
        let name = lvmap::LvName { vg: vg.name.clone(), lv: lv.lv.clone() };
        Ok(LvGrowTarget { found, last, vg_index, lv, name })
    }

    /// `disk.size` on an LVM image with the guestfs backend, as [`Image::grow_lvm`] does it with
    /// loop devices: the last partition must be a PV, and the LV allocated last on it grows as
    /// one contiguous run. The partition and the GPT grow now (sfdisk on the file); the PV, the
    /// LV and its filesystem in the write-back session ([`guestfs::GrowLv`]), after which lvm's
    /// reports there give the BOM the grown layout. Returns what that session must grow.
    ///
    /// Errors: the last partition holds no PV, the LV cannot grow in place, its filesystem is one
    /// kib does not grow, or an xfs or btrfs LV the image's fstab does not mount.
    fn grow_lvm_for_guestfs(&mut self, new_size: u64, old_size: u64) -> Result<Option<guestfs::Grow>> {
        let LvGrowTarget { found, last, name, .. } = self.lvm_grow_target()?;
        let record = self.volume_groups.iter().find(|g| g.name == name.vg).and_then(|g| g.lvs.iter().find(|l| l.name == name.lv));
        let fstype = record.map(|l| l.fstype.clone()).unwrap_or_default();
        if !probe::LINUX_FS.contains(&fstype.as_str()) {
            bail!("disk.size: {name} is the logical volume that can grow (it is last on its PV), but it holds {}, which kib does not grow", if fstype.is_empty() { "no filesystem".to_string() } else { fstype });
        }
        let mount_point = record.and_then(|l| l.mount_point.clone());
        if mount_point.is_none() && !grow::grows_offline(&fstype) {
            bail!("disk.size: {name} ({fstype}) is the logical volume that can grow, and the image's fstab does not mount it; the guestfs backend grows xfs and btrfs only where they are mounted");
        }
        grow::check(&self.table, last.number, old_size, new_size)?;
        if new_size == old_size {
            return Ok(None);
        }
        let g = guestfs::Grow {
            device: format!("/dev/{}/{}", name.vg, name.lv),
            fstype: fstype.clone(),
            mount_point: mount_point.unwrap_or_else(|| "/".into()),
            lvm: Some(guestfs::GrowLv {
                pv: guestfs::device_of(last.number),
                lv: name.to_string(),
                pv_partitions: found.pv_partitions.iter().flatten().map(|p| p.number).collect(),
            }),
        };
        g.commands()?;
        let (table, after, mut growth) = grow::grow_partition(&*self.sys, &self.disk, &self.table, last.number, old_size, new_size, &fstype)?;
        growth.lv = Some(name.to_string());
        tracing::info!(
            "grew the disk from {} to {} and partition {} (LVM PV) from {} to {}; the PV, {name} and its {fstype} filesystem grow when the changes are written back",
            grow::human(old_size),
            grow::human(new_size),
            after.number,
            grow::human(last.size),
            grow::human(after.size)
        );
        self.growth = Some(growth);
        self.table = table;
        Ok(Some(g))
    }

    /// The backend this image was opened with.
    pub fn backend(&self) -> Backend {
        if self.guestfs.is_some() {
            Backend::Guestfs
        } else {
            Backend::Loop
        }
    }

    /// With the guestfs backend, writes what the steps and sysprep changed in the tree back into
    /// the working copy, and with `trim` discards the filesystems' free blocks (see
    /// [`crate::guestfs::write_back`]). Nothing with loop devices (their writes are in place).
    ///
    /// Errors: the appliance or tar fails; the tree stays as it is.
    pub fn write_back(&mut self, trim: bool) -> Result<()> {
        let Some(g) = &self.guestfs else { return Ok(()) };
        if self.read_only {
            return Ok(());
        }
        let changes = g.before.changes(&self.root_dir).context("finding what the steps changed")?;
        tracing::info!("writing back {} changed and {} removed paths through libguestfs", changes.write.len(), changes.remove.len());
        let grown_lvm = guestfs::write_back(&g.app, &self.disk, &self.root_dir, self.work.path(), &g.mounted, &changes, g.grow.as_ref(), trim).context("writing the changes back into the disk")?;
        if let Some(reports) = grown_lvm {
            // The grown LV's new extents, for the BOM, as lvm now reports them.
            let (vols, probes) = self.map_appliance_lvm(Some(&reports))?;
            self.record_volume_groups(&vols, &probes);
        } else if g.grow.as_ref().is_some_and(|g| g.lvm.is_some()) {
            tracing::warn!("lvm's reports after growing could not be read in the appliance; the BOM's volume groups show the layout before growing");
        }
        Ok(())
    }

    fn mount_tree(&mut self) -> Result<()> {
        let (parts, mut probes, pv_parts) = self.probe_partitions()?;
        let mut vols: Vec<Volume> = parts.iter().cloned().map(Volume::partition).collect();
        if !pv_parts.is_empty() {
            let dir = lvmap::private_system_dir(self.work.path())?;
            let found = lvmap::read(&self.sys, &self.disk, &pv_parts, &dir).context("reading the image's LVM volume groups")?;
            for v in found.volumes() {
                probes.push(self.sys.probe(&self.disk, v.part.start, v.part.size).with_context(|| format!("probing {} with blkid", v.describe()))?);
                vols.push(v);
            }
            self.lvm = Some(found);
        }
        // Root candidates: Linux filesystems, partitions typed as a root first, then the largest.
        let mut candidates: Vec<usize> =
            (0..vols.len()).filter(|&i| probes[i].get("TYPE").is_some_and(|t| probe::LINUX_FS.contains(&t.as_str()))).collect();
        candidates.sort_by_key(|&i| (!partition::ROOT_TYPES.contains(&vols[i].part.type_id.as_str()), std::cmp::Reverse(vols[i].part.size)));
        let mut examined = Vec::new();
        for &i in &candidates {
            let v = &vols[i];
            let p = &v.part;
            let fstype = probes[i]["TYPE"].clone();
            let dev = LoopDev::attach(&self.sys, &self.disk, p.start, p.size, self.read_only)?;
            let (flags, data) = self.mount_options(&fstype);
            let source = dev.path().to_string_lossy().into_owned();
            self.held.push_loop(dev);
            let spec = sys::MountSpec { source: &source, source_at: None, target: &self.root_dir, at: &self.root_dir, fstype: &fstype, flags, data };
            let mounted = Mounted::mount(&self.sys, &spec).with_context(|| format!("mounting {} ({fstype})", v.describe()))?;
            self.held.push_mount(mounted);
            let root = GuestRoot::open(&self.root_dir).context("opening the mounted root")?;
            if let Some(os) = facts::os_release(&root).with_context(|| format!("reading os-release on {}", v.describe()))? {
                self.facts = facts::collect(&root, os).context("reading the image's architecture and kernels")?;
                self.root = Some(root);
                self.filesystems.push(Filesystem {
                    partition: p.number,
                    lv: v.lv.as_ref().map(ToString::to_string),
                    fstype,
                    uuid: probes[i].get("UUID").cloned().unwrap_or_default(),
                    mount_point: "/".into(),
                });
                break;
            }
            drop(root);
            self.held.close()?;
            examined.push(format!("{} ({fstype}) has no /etc/os-release", v.describe()));
        }
        if self.root.is_none() {
            if self.table.kind == TableKind::None && candidates.is_empty() {
                examined.push("no partition table, and no filesystem kib recognizes on the whole disk (is it a disk image?)".into());
            }
            for (i, (v, pr)) in vols.iter().zip(&probes).enumerate() {
                if v.part.number > 0 && !candidates.contains(&i) {
                    let what = pr.get("TYPE").map_or("no filesystem kib recognizes".to_string(), |t| format!("{t}, not a Linux root filesystem"));
                    examined.push(format!("{}: {what}", v.describe()));
                }
            }
            bail!("no Linux root filesystem found (none has /etc/os-release): {}", examined.join("; "));
        }
        let vols = match self.grow_to {
            Some(size) => self.grow_root(size, &vols, &probes).context("growing the disk")?,
            None => vols,
        };
        self.mount_fstab(&vols, &probes)?;
        self.record_volume_groups(&vols, &probes);
        Ok(())
    }

    /// Fills [`Image::volume_groups`] from what lvm reported, blkid found and kib mounted.
    fn record_volume_groups(&mut self, vols: &[Volume], probes: &[probe::Probe]) {
        let Some(found) = &self.lvm else { return };
        let filesystems = &self.filesystems;
        self.volume_groups = found.records(|name| {
            let shown = name.to_string();
            let i = vols.iter().position(|v| v.lv.as_ref() == Some(name));
            let pr = i.map(|i| &probes[i]);
            (
                pr.and_then(|p| p.get("TYPE").cloned()).unwrap_or_default(),
                pr.and_then(|p| p.get("UUID").cloned()).unwrap_or_default(),
                filesystems.iter().find(|f| f.lv.as_deref() == Some(shown.as_str())).map(|f| f.mount_point.clone()),
            )
        });
    }

    /// Grows the disk to `new_size` bytes with the root partition and its filesystem: the root is
    /// unmounted and detached, the working copy and its table grown, then the root attached at its
    /// new size, its filesystem grown (ext2/3/4 before mounting, xfs and btrfs after), and mounted
    /// again. Returns the new partitions, in the same order as `parts`.
    fn grow_root(&mut self, new_size: u64, vols: &[Volume], probes: &[probe::Probe]) -> Result<Vec<Volume>> {
        let old_size = std::fs::metadata(&self.disk)?.len();
        if self.lvm.is_some() {
            return self.grow_lvm(new_size, old_size, vols, probes);
        }
        let root_fs = self.filesystems[0].clone();
        grow::check(&self.table, root_fs.partition, old_size, new_size)?;
        if new_size == old_size {
            return Ok(vols.to_vec());
        }
        self.unmount()?;
        self.filesystems.clear();
        let (table, after, growth) = grow::grow_partition(&*self.sys, &self.disk, &self.table, root_fs.partition, old_size, new_size, &root_fs.fstype)?;
        let dev = LoopDev::attach(&self.sys, &self.disk, after.start, after.size, false)?;
        let device = dev.path().to_path_buf();
        self.held.push_loop(dev);
        let offline = grow::grows_offline(&root_fs.fstype);
        if offline {
            grow::grow_filesystem(&*self.sys, &root_fs.fstype, &device, &self.root_dir)?;
        }
        let source = device.to_string_lossy().into_owned();
        let spec = sys::MountSpec { source: &source, source_at: None, target: &self.root_dir, at: &self.root_dir, fstype: &root_fs.fstype, flags: MountFlags::empty(), data: fs_data(&root_fs.fstype, false) };
        let mounted = Mounted::mount(&self.sys, &spec).with_context(|| format!("mounting the grown partition {} ({})", after.number, root_fs.fstype))?;
        self.held.push_mount(mounted);
        self.root = Some(GuestRoot::open(&self.root_dir).context("opening the mounted root")?);
        self.filesystems.push(root_fs.clone());
        if !offline {
            grow::grow_filesystem(&*self.sys, &root_fs.fstype, &device, &self.root_dir)?;
        }
        tracing::info!(
            "grew the disk from {} to {} and partition {} ({}) from {} to {}",
            grow::human(old_size),
            grow::human(new_size),
            after.number,
            root_fs.fstype,
            grow::human(growth.partition_from_bytes),
            grow::human(growth.partition_to_bytes)
        );
        self.growth = Some(growth);
        self.table = table;
        Ok(vols.iter().map(|v| Volume::partition(self.table.partitions.iter().find(|q| q.number == v.part.number).cloned().unwrap_or_else(|| after.clone()))).collect())
    }

    /// `disk.size` on an image with LVM. The last partition must be a PV; the LV allocated last
    /// on it grows, so that it stays one contiguous run of extents: the partition and the GPT
    /// grow (sfdisk), the PV and the LV grow in the VG's metadata ([`lvmap::grow_lv`]), and the
    /// filesystem on the LV grows on its loop device (ext2/3/4 unmounted, xfs and btrfs mounted
    /// at a private folder, or at the root when the LV holds it). Returns the new volumes, in
    /// the same order as `vols`.
    ///
    /// Errors: the last partition holds no PV, the LV cannot grow in place (another LV follows
    /// it), or a filesystem kib cannot grow.
    fn grow_lvm(&mut self, new_size: u64, old_size: u64, vols: &[Volume], probes: &[probe::Probe]) -> Result<Vec<Volume>> {
        let LvGrowTarget { found, last, vg_index: vgi, lv: m, name } = self.lvm_grow_target()?;
        let vg = &found.vgs[vgi];
        let vi = vols.iter().position(|v| v.lv.as_ref() == Some(&name)).context("the LV to grow is not among the volumes")?;
        let fstype = probes[vi].get("TYPE").cloned().unwrap_or_default();
        if !probe::LINUX_FS.contains(&fstype.as_str()) {
            bail!("disk.size: {name} is the logical volume that can grow (it is last on its PV), but it holds {}, which kib does not grow", if fstype.is_empty() { "no filesystem".to_string() } else { fstype });
        }
        grow::check(&self.table, last.number, old_size, new_size)?;
        if new_size == old_size {
            return Ok(vols.to_vec());
        }
        let root_on_it = self.filesystems[0].lv.as_deref() == Some(name.to_string().as_str());
        let root_fs = self.filesystems[0].clone();
        if root_on_it {
            self.unmount()?;
            self.filesystems.clear();
        }
        let table = grow::grow_table(&*self.sys, &self.disk, &self.table, last.number, new_size)?;
        let after = grow::partition(&table, last.number, new_size)?;
        if after.start != last.start {
            bail!("sfdisk moved partition {} from byte {} to {}; refusing to go on", after.number, last.start, after.start);
        }
        let pv_parts: Vec<Partition> = found.pv_partitions[vgi].iter().map(|p| if p.number == after.number { after.clone() } else { p.clone() }).collect();
        let dir = lvmap::private_system_dir(self.work.path())?;
        let grown = lvmap::grow_lv(&self.sys, &self.disk, &pv_parts, after.number, &vg.name, &m.lv, &dir)?;
        let new_vols = {
            let mut v: Vec<Volume> = vols.iter().filter(|v| v.lv.is_none()).map(|v| Volume::partition(table.partitions.iter().find(|q| q.number == v.part.number).cloned().unwrap_or_else(|| v.part.clone()))).collect();
            v.extend(grown.volumes());
            v
        };
        if new_vols.len() != vols.len() || new_vols.iter().zip(vols).any(|(a, b)| a.lv != b.lv) {
            bail!("the volume groups changed shape while growing {name}; refusing to go on");
        }
        let lv_vol = new_vols[vi].part.clone();
        let dev = LoopDev::attach(&self.sys, &self.disk, lv_vol.start, lv_vol.size, false)?;
        let device = dev.path().to_path_buf();
        let offline = grow::grows_offline(&fstype);
        if root_on_it {
            self.held.push_loop(dev);
            if offline {
                grow::grow_filesystem(&*self.sys, &fstype, &device, &self.root_dir)?;
            }
            let source = device.to_string_lossy().into_owned();
            let spec = sys::MountSpec { source: &source, source_at: None, target: &self.root_dir, at: &self.root_dir, fstype: &fstype, flags: MountFlags::empty(), data: fs_data(&fstype, false) };
            let mounted = Mounted::mount(&self.sys, &spec).with_context(|| format!("mounting the grown {name} ({fstype})"))?;
            self.held.push_mount(mounted);
            self.root = Some(GuestRoot::open(&self.root_dir).context("opening the mounted root")?);
            self.filesystems.push(root_fs);
            if !offline {
                grow::grow_filesystem(&*self.sys, &fstype, &device, &self.root_dir)?;
            }
        } else {
            let mut held = Stack::default();
            held.push_loop(dev);
            if offline {
                grow::grow_filesystem(&*self.sys, &fstype, &device, &self.root_dir)?;
            } else {
                let at = self.work.path().join("grow-lv");
                std::fs::create_dir_all(&at)?;
                let source = device.to_string_lossy().into_owned();
                let spec = sys::MountSpec { source: &source, source_at: None, target: &at, at: &at, fstype: &fstype, flags: MountFlags::empty(), data: fs_data(&fstype, false) };
                held.push_mount(Mounted::mount(&self.sys, &spec).with_context(|| format!("mounting {name} ({fstype}) to grow it"))?);
                grow::grow_filesystem(&*self.sys, &fstype, &device, &at)?;
            }
            held.close()?;
        }
        tracing::info!(
            "grew the disk from {} to {}, partition {} (LVM PV) from {} to {}, and {name} ({fstype}) from {} to {}",
            grow::human(old_size),
            grow::human(new_size),
            after.number,
            grow::human(last.size),
            grow::human(after.size),
            grow::human(m.size_bytes),
            grow::human(lv_vol.size)
        );
        self.growth = Some(grow::Growth {
            from_bytes: old_size,
            to_bytes: new_size,
            partition: after.number,
            partition_from_bytes: last.size,
            partition_to_bytes: after.size,
            fstype,
            lv: Some(name.to_string()),
        });
        self.table = table;
        self.lvm = Some(grown);
        Ok(new_vols)
    }

    /// Mounts what the image's /etc/fstab lists, below the root, shallowest first (in fstab
    /// order among equals): filesystems of this disk by UUID, LABEL, PARTUUID or PARTLABEL, then
    /// bind entries (both paths inside the image). `noauto`, swap, pseudo-filesystems and
    /// entries matching nothing on this disk are skipped; a filesystem the kernel cannot mount
    /// (vfat here) is skipped with a warning.
    fn mount_fstab(&mut self, vols: &[Volume], probes: &[probe::Probe]) -> Result<()> {
        let text = self.root().read_string(Path::new("/etc/fstab"))?.unwrap_or_default();
        let mut entries: Vec<fstab::Entry> = fstab::parse(&text)
            .into_iter()
            .filter(|e| e.mount_point.starts_with('/') && e.mount_point != "/" && e.fstype != "swap")
            .collect();
        // Filesystems shallowest first; bind entries after all of them (their sources lie on them).
        entries.sort_by_key(|e| (e.is_bind(), Path::new(&e.mount_point).components().count()));
        for e in entries {
            if e.noauto() {
                tracing::info!("fstab entry for {} is noauto; not mounted", e.mount_point);
                continue;
            }
            if e.is_bind() {
                let fstab::Spec::Other(source) = &e.spec else { continue };
                if !source.starts_with('/') {
                    continue;
                }
                let root = self.root.as_ref().expect("image is mounted");
                let mounted = mounts::bind_in(&self.sys, root, Path::new(source), true, Path::new(&e.mount_point))
                    .with_context(|| format!("fstab bind entry {source} on {}", e.mount_point))?;
                self.held.push_mount(mounted);
                continue;
            }
            let found = (0..vols.len()).find(|&i| {
                let (v, pr) = (&vols[i], &probes[i]);
                let p = &v.part;
                // A PV's partition holds no filesystem of its own.
                if pr.get("TYPE").map(String::as_str) == Some(lvmap::PV_TYPE) {
                    return false;
                }
                match &e.spec {
                    fstab::Spec::Uuid(u) => pr.get("UUID").is_some_and(|v| v.eq_ignore_ascii_case(u)),
                    fstab::Spec::Label(l) => pr.get("LABEL") == Some(l),
                    fstab::Spec::PartUuid(u) => v.lv.is_none() && p.part_uuid.eq_ignore_ascii_case(u),
                    fstab::Spec::PartLabel(l) => v.lv.is_none() && &p.name == l,
                    fstab::Spec::Other(dev) => {
                        lvm::parse_lv_spec(dev).is_some_and(|r| v.lv.as_ref().is_some_and(|n| n.vg == r.vg && n.lv == r.lv))
                    }
                }
            });
            let Some(i) = found else {
                if matches!(e.spec, fstab::Spec::Other(_)) && !e.fstype.starts_with("ext") && e.fstype != "xfs" && e.fstype != "btrfs" {
                    continue; // tmpfs, proc and the like: nothing of the disk
                }
                tracing::warn!("fstab entry for {} ({:?}) matches no filesystem in this image; not mounted", e.mount_point, e.spec);
                continue;
            };
            let v = &vols[i];
            let p = &v.part;
            let fstype = probes[i].get("TYPE").cloned().unwrap_or_else(|| e.fstype.clone());
            let dev = LoopDev::attach(&self.sys, &self.disk, p.start, p.size, self.read_only)?;
            let source = dev.path().to_string_lossy().into_owned();
            self.held.push_loop(dev);
            let (flags, ro_data) = self.mount_options(&fstype);
            let mut data: Vec<String> = e.options.iter().filter(|o| o.starts_with("subvol")).cloned().collect();
            data.extend(ro_data.map(str::to_string));
            let data = (!data.is_empty()).then(|| data.join(","));
            let root = self.root.as_ref().expect("image is mounted");
            match mounts::mount_in(&self.sys, root, Path::new(&e.mount_point), &source, &fstype, flags, data.as_deref()) {
                Ok(mounted) => {
                    self.held.push_mount(mounted);
                    self.filesystems.push(Filesystem {
                        partition: p.number,
                        lv: v.lv.as_ref().map(ToString::to_string),
                        fstype,
                        uuid: probes[i].get("UUID").cloned().unwrap_or_default(),
                        mount_point: e.mount_point.clone(),
                    });
                }
                Err(err) if err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error()))) => {
                    tracing::warn!(
                        "this kernel cannot mount {fstype}: {} ({}) is not mounted; steps that write there will fail",
                        e.mount_point,
                        v.describe()
                    );
                    self.held.close_last()?;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Mount flags and data for a filesystem: read-write, or read-only without journal replay.
    fn mount_options(&self, fstype: &str) -> (MountFlags, Option<&'static str>) {
        (if self.read_only { MountFlags::RDONLY } else { MountFlags::empty() }, fs_data(fstype, self.read_only))
    }

    /// Unmounts every filesystem and detaches the loop devices, in reverse order of setting them
    /// up; then, as a safety net, anything still mounted below the root (a mount a step left).
    /// Safe to call twice. The working copy stays until [`Image::close`].
    pub fn unmount(&mut self) -> Result<()> {
        self.root = None;
        self.held.close()?;
        mounts::unmount_tree(&self.root_dir)
    }

    /// Unmounts, detaches and removes the work directory with the working copy.
    pub fn close(mut self) -> Result<()> {
        self.unmount()?;
        let work = std::mem::replace(&mut self.work, WorkDir::detached());
        work.close()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("cleaning up the image: {e:#}");
        }
    }
}

impl Table {
    /// `gpt`, `mbr` or `no partition table`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
            TableKind::None => "no partition table",
        }
    }
}

#[cfg(test)]
mod tests;
