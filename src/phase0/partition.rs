//! Reading the disk's partition table (GPT through `gptman`, MBR through `mbrman`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The kind of partition table found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No table: the whole disk may hold one filesystem.
    None,
}

/// One partition, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// The partition number as the OS numbers it (GPT entry index + 1; MBR 1-4, logical 5+).
    pub number: u32,
    /// Offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT type GUID (uppercase, dashed) or MBR type as `0x83`.
    pub type_id: String,
    /// GPT unique partition GUID (lowercase), or the MBR form `<disk signature>-<NN>`.
    pub part_uuid: String,
    /// GPT partition name; empty for MBR.
    pub name: String,
}

/// A disk's partition table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Table {
    pub kind: TableKind,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
}

/// Why a table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read the partition table: {0}")]
    Io(#[from] std::io::Error),
    #[error("the GPT partition table is corrupt (primary and backup): {0}")]
    CorruptGpt(String),
    #[error("the disk has a protective MBR but no readable GPT: {0}")]
    MissingGpt(String),
    #[error("partition {number} ends at byte {end}, past the end of the {disk_size}-byte disk")]
    PastEnd { number: u32, end: u64, disk_size: u64 },
    #[error("partitions {a} and {b} overlap")]
    Overlap { a: u32, b: u32 },
}

/// The well-known GPT type GUIDs of Linux root partitions (Discoverable Partitions Spec).
pub const ROOT_TYPES: &[&str] = &[
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", // x86-64
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", // arm64
    "44479540-F297-41B2-9AF7-D131D5F0458A", // x86
    "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", // arm32
    "72EC70A6-CF74-40E6-BD49-4BDA08E8F224", // riscv64
];

/// Formats GPT's mixed-endian GUID bytes as the usual dashed text.
pub fn guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// Reads the table of the disk image at `path`, checks that partitions lie inside the disk and do
/// not overlap, and returns them sorted by number.
pub fn read(path: &Path) -> Result<Table, TableError> {
    let mut f = std::fs::File::open(path)?;
    read_from(&mut f)
}

/// As [`read`], from an open reader.
pub fn read_from<R: Read + Seek>(f: &mut R) -> Result<Table, TableError> {
    let disk_size = f.seek(SeekFrom::End(0))?;
    let table = match gptman::GPT::find_from(f) {
        Ok(gpt) => Table {
            kind: TableKind::Gpt,
            sector_size: gpt.sector_size,
            partitions: gpt
                .iter()
                .filter(|(_, e)| e.is_used())
                .map(|(i, e)| Partition {
                    number: i,
                    start: e.starting_lba * gpt.sector_size,
                    size: (e.ending_lba + 1).saturating_sub(e.starting_lba) * gpt.sector_size,
                    type_id: guid_string(&e.partition_type_guid),
                    part_uuid: guid_string(&e.unique_partition_guid).to_ascii_lowercase(),
                    name: e.partition_name.as_str().to_string(),
                })
                .collect(),
        },
        Err(gptman::Error::InvalidSignature) => read_mbr(f)?,
        Err(e) => return Err(TableError::CorruptGpt(e.to_string())),
    };
    check(&table, disk_size)?;
    Ok(table)
}

fn read_mbr<R: Read + Seek>(f: &mut R) -> Result<Table, TableError> {
    f.seek(SeekFrom::Start(0))?;
    let mbr = match mbrman::MBR::read_from(f, 512) {
        Ok(m) => m,
        Err(_) => return Ok(Table { kind: TableKind::None, sector_size: 512, partitions: Vec::new() }),
    };
    if mbr.iter().any(|(_, p)| p.is_used() && p.sys == 0xEE) {
        return Err(TableError::MissingGpt("no valid GPT header at sector 1 nor at the end of the disk".into()));
    }
    let sig = mbr.header.disk_signature;
    let sig = u32::from_le_bytes(sig);
    let partitions: Vec<Partition> = mbr
        .iter()
        .filter(|(_, p)| p.is_used() && !matches!(p.sys, 0x05 | 0x0F | 0x85))
        .map(|(i, p)| Partition {
            number: i as u32,
            start: u64::from(p.starting_lba) * 512,
            size: u64::from(p.sectors) * 512,
            type_id: format!("0x{:02x}", p.sys),
            part_uuid: format!("{sig:08x}-{i:02x}"),
            name: String::new(),
        })
        .collect();
    let kind = if partitions.is_empty() { TableKind::None } else { TableKind::Mbr };
    Ok(Table { kind, sector_size: 512, partitions })
}

fn check(table: &Table, disk_size: u64) -> Result<(), TableError> {
    let mut parts: Vec<&Partition> = table.partitions.iter().collect();
    parts.sort_by_key(|p| p.start);
    for p in &parts {
        let end = p.start.saturating_add(p.size);
        if end > disk_size {
            return Err(TableError::PastEnd { number: p.number, end, disk_size });
        }
    }
    for w in parts.windows(2) {
        if w[0].start + w[0].size > w[1].start {
            return Err(TableError::Overlap { a: w[0].number, b: w[1].number });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Makes a sparse image of `mib` MiB and writes `script` with sfdisk (util-linux), the
    /// independent reference these tests compare against.
    fn image(mib: u64, script: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.raw");
        std::fs::File::create(&p).unwrap().set_len(mib << 20).unwrap();
        let mut child = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("sfdisk (Debian package fdisk) is needed by this test");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        (d, p)
    }

    fn sfdisk_json(p: &Path) -> serde_json::Value {
        let out = Command::new("sfdisk").arg("--json").arg(p).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn reads_a_cloud_style_gpt() {
        let (_d, p) = image(
            64,
            "label: gpt\n\
             start=2048, size=6144, type=21686148-6449-6E6F-744E-656564454649, name=bios\n\
             start=8192, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
             start=24576, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n",
        );
        let t = read(&p).unwrap();
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.partitions.len(), 3);
        let reference = sfdisk_json(&p);
        for (ours, theirs) in t.partitions.iter().zip(reference["partitiontable"]["partitions"].as_array().unwrap()) {
            assert_eq!(ours.start, theirs["start"].as_u64().unwrap() * 512);
            assert_eq!(ours.size, theirs["size"].as_u64().unwrap() * 512);
            assert_eq!(ours.type_id, theirs["type"].as_str().unwrap());
            assert_eq!(ours.part_uuid, theirs["uuid"].as_str().unwrap().to_ascii_lowercase());
        }
        assert_eq!(t.partitions[2].number, 3);
        assert_eq!(t.partitions[2].name, "root");
        assert!(ROOT_TYPES.contains(&t.partitions[2].type_id.as_str()));
    }

    #[test]
    fn reads_an_mbr() {
        let (_d, p) = image(32, "label: dos\nlabel-id: 0x12345678\nstart=2048, size=4096, type=83\nstart=8192, type=82\n");
        let t = read(&p).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[0].start, 2048 * 512);
        assert_eq!(t.partitions[0].size, 4096 * 512);
        assert_eq!(t.partitions[0].type_id, "0x83");
        assert_eq!(t.partitions[0].part_uuid, "12345678-01");
        assert_eq!(t.partitions[1].number, 2);
        assert_eq!(t.partitions[1].start + t.partitions[1].size, 32 << 20);
    }

    #[test]
    fn no_table_is_not_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plain");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(read(&p).unwrap().kind, TableKind::None);
        std::fs::write(&p, b"this is not a disk image").unwrap();
        assert_eq!(read(&p).unwrap().partitions.len(), 0);
    }

    #[test]
    fn corrupt_gpt_is_reported() {
        let (_d, p) = image(8, "label: gpt\nstart=2048, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n");
        // Flip a byte in the primary header and in the backup header.
        let mut bytes = std::fs::read(&p).unwrap();
        let len = bytes.len();
        bytes[512 + 40] ^= 0xff;
        bytes[len - 512 + 40] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("GPT partition table is corrupt"), "{e}");
        // Primary only: the backup header still serves.
        let (_d2, p2) = image(8, "label: gpt\nstart=2048, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n");
        let mut bytes = std::fs::read(&p2).unwrap();
        bytes[512 + 40] ^= 0xff;
        std::fs::write(&p2, &bytes).unwrap();
        assert_eq!(read(&p2).unwrap().partitions.len(), 1);
    }

    #[test]
    fn overlapping_and_oversized_partitions_are_refused() {
        let (_d, p) = image(8, "label: dos\nstart=2048, size=4096, type=83\nstart=8192, size=4096, type=83\n");
        let mut bytes = std::fs::read(&p).unwrap();
        // Second MBR entry (offset 446 + 16): starting LBA at +8, make it start inside the first.
        bytes[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&3000u32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("partitions 1 and 2 overlap"));
        bytes[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&16000u32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("past the end"));
    }
}
