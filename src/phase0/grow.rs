//! Disk growth (`disk.size`, `--disk-size`): the working copy is made larger, the GPT backup
//! header moved to the new end, the root partition extended into the new space and its
//! filesystem grown online. Nothing is moved: the partition keeps its start, so no data is
//! rewritten. The standard tools do the work: sfdisk for the table, resize2fs, xfs_growfs and
//! `btrfs filesystem resize` for the filesystems.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::partition::{Partition, Table, TableKind};
use crate::exec;
use crate::sys::Sys;

/// What growing did, for the BOM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Growth {
    /// The input's virtual size, in bytes.
    pub from_bytes: u64,
    /// The new virtual size, in bytes.
    pub to_bytes: u64,
    /// The grown partition's number (0: a filesystem on the whole disk).
    pub partition: u32,
    /// The partition's size before and after, in bytes.
    pub partition_from_bytes: u64,
    pub partition_to_bytes: u64,
    pub fstype: String,
    /// `VG/LV` when the grown filesystem lies on an LVM logical volume (the partition is its PV).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv: Option<String>,
}

/// Checks that the partition holding the root (`number`, 0 for a whole-disk filesystem) can grow:
/// it must be the last partition on the disk, and `new_size` not smaller than `old_size`.
///
/// Errors: a smaller size (kib never shrinks), or a partition after the root's.
pub fn check(table: &Table, number: u32, old_size: u64, new_size: u64) -> Result<()> {
    if new_size < old_size {
        bail!(
            "disk size {} is smaller than the image's {} ({old_size} bytes); kib grows disks but never shrinks them",
            human(new_size),
            human(old_size)
        );
    }
    if number == 0 {
        return Ok(());
    }
    let root = table.partitions.iter().find(|p| p.number == number).with_context(|| format!("partition {number} is not in the table"))?;
    if let Some(after) = table.partitions.iter().filter(|p| p.start > root.start).min_by_key(|p| p.start) {
        bail!(
            "cannot grow the disk: the root filesystem is on partition {number}, and partition {} lies after it (at byte {}); \
             kib only grows the last partition",
            after.number,
            after.start
        );
    }
    Ok(())
}

/// Extends the file `disk` to `new_size` bytes (sparse), moves the GPT backup header and
/// partition entries to the new end, and extends partition `number` (unless 0) to the end of the
/// usable space. Returns the re-read table.
///
/// Errors: the file cannot be extended (a full host filesystem), or sfdisk fails (its output is
/// shown). sfdisk runs through `sys`.
pub fn grow_table(sys: &dyn Sys, disk: &Path, table: &Table, number: u32, new_size: u64) -> Result<Table> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .and_then(|f| f.set_len(new_size))
        .with_context(|| format!("extending the working copy {} to {new_size} bytes", disk.display()))?;
    if table.kind == TableKind::Gpt {
        sys.run(
            crate::exec::host_tool("sfdisk").args(["--no-reread", "--no-tell-kernel", "--relocate", "gpt-bak-std"]).arg(disk),
            "sfdisk --relocate gpt-bak-std (moving the GPT backup header to the new end)",
            None,
        )?;
    }
    if number > 0 {
        // `, +`: keep the start, take all the free space after it.
        sys.run(
            crate::exec::host_tool("sh")
                .args(["-c", r#"printf ', +\n' | exec sfdisk --quiet --no-reread --no-tell-kernel -N "$1" "$2""#, "sh"])
                .arg(number.to_string())
                .arg(disk),
            &format!("sfdisk -N {number} (growing partition {number})"),
            None,
        )?;
    }
    super::partition::read(disk).with_context(|| format!("reading the partition table of {} after growing it", disk.display()))
}

/// [`grow_table`] for the partition holding a `fstype` filesystem, checking that it did not move.
/// Returns the new table, the partition as it is now, and the BOM's record.
///
/// Errors: those of [`grow_table`], or sfdisk moved the partition's start.
pub fn grow_partition(sys: &dyn Sys, disk: &Path, table: &Table, number: u32, old_size: u64, new_size: u64, fstype: &str) -> Result<(Table, Partition, Growth)> {
    let before = partition(table, number, old_size)?;
    let grown = grow_table(sys, disk, table, number, new_size)?;
    let after = partition(&grown, number, new_size)?;
    if after.start != before.start {
        bail!("sfdisk moved partition {} from byte {} to {}; refusing to go on", after.number, before.start, after.start);
    }
    let growth = Growth {
        from_bytes: old_size,
        to_bytes: new_size,
        partition: after.number,
        partition_from_bytes: before.size,
        partition_to_bytes: after.size,
        fstype: fstype.to_string(),
        lv: None,
    };
    Ok((grown, after, growth))
}

/// The partition `number` of `table`, or the whole disk of `disk_size` bytes when `number` is 0.
pub fn partition(table: &Table, number: u32, disk_size: u64) -> Result<Partition> {
    if number == 0 {
        return Ok(Partition { number: 0, start: 0, size: disk_size, type_id: String::new(), part_uuid: String::new(), name: String::new() });
    }
    table.partitions.iter().find(|p| p.number == number).cloned().with_context(|| format!("partition {number} vanished from the table"))
}

/// Whether `fstype` is grown before it is mounted. ext2/3/4 are: their online resize needs
/// CAP_SYS_RESOURCE, which privileged containers and some hosts (this one) do not grant, and the
/// offline resize needs a fresh `e2fsck -f`. xfs and btrfs only grow while mounted.
pub fn grows_offline(fstype: &str) -> bool {
    matches!(fstype, "ext2" | "ext3" | "ext4")
}

/// Grows the filesystem `fstype` on `device` to fill it: ext2/3/4 unmounted (`e2fsck -f -p`, then
/// `resize2fs`), xfs and btrfs mounted at `mount_dir` (`xfs_growfs`, `btrfs filesystem resize
/// max`). See [`grows_offline`].
///
/// Errors: a filesystem kib cannot grow (anything else), errors e2fsck cannot repair on its own,
/// or a failing tool (its output is shown). The tools run through `sys`.
pub fn grow_filesystem(sys: &dyn Sys, fstype: &str, device: &Path, mount_dir: &Path) -> Result<()> {
    let what = format!("growing the {fstype} root filesystem");
    match fstype {
        "ext2" | "ext3" | "ext4" => {
            // -p repairs only what is safe without a human; exit 1 means it did.
            match sys.run(crate::exec::host_tool("e2fsck").args(["-f", "-p"]).arg(device), &format!("e2fsck -f -p before {what}"), None) {
                Ok(_) | Err(exec::ExecError::Failed { code: Some(1), .. }) => {}
                Err(e) => return Err(e).context("the root filesystem has errors e2fsck -p cannot repair; kib does not grow it"),
            }
            sys.run(crate::exec::host_tool("resize2fs").arg(device), &what, None)?;
        }
        "xfs" => {
            sys.run(crate::exec::host_tool("xfs_growfs").arg(mount_dir), &what, None)?;
        }
        "btrfs" => {
            sys.run(Command::new("btrfs").args(["filesystem", "resize", "max"]).arg(mount_dir), &what, None)?;
        }
        other => bail!("kib cannot grow a {other} root filesystem (it grows ext2/3/4, xfs and btrfs)"),
    }
    Ok(())
}

/// `20.0 GiB`-style size for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, start: u64, size: u64) -> Partition {
        Partition { number, start, size, type_id: String::new(), part_uuid: String::new(), name: String::new() }
    }

    #[test]
    fn only_the_last_partition_grows_and_never_shrinks() {
        let table = Table { kind: TableKind::Gpt, sector_size: 512, partitions: vec![part(14, 1 << 20, 3 << 20), part(15, 4 << 20, 124 << 20), part(1, 128 << 20, 1 << 30)] };
        check(&table, 1, 2 << 30, 4 << 30).unwrap();
        check(&table, 1, 2 << 30, 2 << 30).unwrap();
        let e = check(&table, 1, 2 << 30, 1 << 30).unwrap_err().to_string();
        assert!(e.contains("1.0 GiB is smaller than the image's 2.0 GiB"), "{e}");
        let e = check(&table, 15, 2 << 30, 4 << 30).unwrap_err().to_string();
        assert!(e.contains("partition 1 lies after it"), "{e}");
        check(&Table { kind: TableKind::None, sector_size: 512, partitions: vec![] }, 0, 1 << 30, 2 << 30).unwrap();
    }

    #[test]
    fn grows_a_gpt_disk_and_its_last_partition_in_place() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("d.raw");
        std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
        let ok = crate::exec::host_tool("sh")
            .args(["-c", "printf 'label: gpt\\nstart=2048, size=4096, type=L\\nstart=8192, size=20480, type=L\\n' | sfdisk --quiet \"$1\"", "sh"])
            .arg(&disk)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let before = super::super::partition::read(&disk).unwrap();
        let grown = grow_table(&crate::sys::real::RealSys, &disk, &before, 2, 256 << 20).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 256 << 20);
        let p1 = grown.partitions.iter().find(|p| p.number == 1).unwrap();
        let p2 = grown.partitions.iter().find(|p| p.number == 2).unwrap();
        assert_eq!((p1.start, p1.size), (2048 * 512, 4096 * 512));
        assert_eq!(p2.start, 8192 * 512, "the grown partition keeps its start");
        // The usable space ends 33 sectors before the end, where the backup entries and header are.
        assert_eq!(p2.start + p2.size, (256 << 20) - 33 * 512);
        assert_eq!(p2.part_uuid, before.partitions[1].part_uuid);
        let verify = crate::exec::host_tool("sfdisk").arg("--verify").arg(&disk).output().unwrap();
        let text = String::from_utf8_lossy(&verify.stdout).to_string() + &String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && !text.contains("not on the end"), "{text}");
    }
}
