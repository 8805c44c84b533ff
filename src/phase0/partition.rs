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

/// The GPT type GUID of an EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The GPT type GUID of a BIOS boot partition (GRUB's core image for BIOS on a GPT disk).
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

impl Table {
    /// Whether the disk can boot with BIOS firmware: an MBR table, or a GPT with a BIOS boot
    /// partition.
    pub fn boots_bios(&self) -> bool {
        self.kind == TableKind::Mbr || self.partitions.iter().any(|p| p.type_id == BIOS_BOOT_TYPE)
    }

    /// Whether the disk can boot with UEFI firmware: it has an EFI system partition (GPT type
    /// ESP, or MBR type 0xef).
    pub fn boots_uefi(&self) -> bool {
        self.partitions.iter().any(|p| p.type_id == ESP_TYPE || p.type_id == "0xef")
    }
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
    #[error("partition {number} ends (sector {last}) before it starts (sector {first})")]
    Inverted { number: u32, first: u64, last: u64 },
    #[error("the MBR's chain of logical partitions is broken: {0}")]
    CorruptMbr(String),
    #[error("partition {number} starts at sector {lba}, on a partition table sector")]
    OnTable { number: u32, lba: u64 },
    #[error("partition {number} (sectors {first}-{last}) lies outside the GPT's usable sectors {first_usable}-{last_usable}")]
    OutsideUsable { number: u32, first: u64, last: u64, first_usable: u64, last_usable: u64 },
}

/// The most GPT partition entries kib reads (the usual table has 128; the entries are read into
/// memory, so a hostile header must not be able to ask for 2³² of them).
pub const MAX_GPT_ENTRIES: u32 = 16384;

/// The GPT partition entry size kib reads, in bytes (the UEFI spec allows 128 × 2ⁿ, but every
/// partitioning tool writes 128, and gptman only reads 128).
pub const GPT_ENTRY_SIZE: u32 = 128;

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

/// As [`read`], from an open reader: `f` is the whole disk, its length the disk's size.
///
/// A GPT is looked for with 512-byte sectors, then 4096-byte ones; the primary header (sector 1)
/// is used when it and its entries are intact, else the backup (last sector). Without a GPT, the
/// MBR is read (primary and logical partitions); without either, the table is
/// [`TableKind::None`].
///
/// Errors: I/O; a GPT whose headers are both corrupt ([`TableError::CorruptGpt`], also for
/// headers that are intact but describe an entry array kib will not read: more than
/// [`MAX_GPT_ENTRIES`] entries, entries not [`GPT_ENTRY_SIZE`] bytes, or an array past the end of
/// the disk); a protective MBR without a GPT; a partition that ends before it starts, lies
/// outside the GPT's usable sectors or past the end of the disk, or overlaps another.
pub fn read_from<R: Read + Seek>(f: &mut R) -> Result<Table, TableError> {
    let disk_size = f.seek(SeekFrom::End(0))?;
    let mut found = None;
    for sector_size in [512, 4096] {
        match read_gpt(f, sector_size, disk_size) {
            Ok(gpt) => {
                found = Some(gpt);
                break;
            }
            Err(GptError::NoSignature) => continue,
            Err(e @ GptError::Corrupt(_)) => return Err(TableError::CorruptGpt(e.to_string())),
        }
    }
    let table = match found {
        Some((sector_size, header, entries)) => {
            let mut partitions = Vec::new();
            for (i, e) in entries.iter().enumerate().filter(|(_, e)| e.is_used()) {
                let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
                let (first, last) = (e.starting_lba, e.ending_lba);
                if last < first {
                    return Err(TableError::Inverted { number, first, last });
                }
                // A partition over the table itself would let writes into it corrupt the table.
                if first < header.first_usable_lba || last > header.last_usable_lba {
                    let (first_usable, last_usable) = (header.first_usable_lba, header.last_usable_lba);
                    return Err(TableError::OutsideUsable { number, first, last, first_usable, last_usable });
                }
                // Sector numbers are u64 on disk: a byte offset past u64 is past any disk's end.
                let past = || TableError::PastEnd { number, end: u64::MAX, disk_size };
                let start = e.starting_lba.checked_mul(sector_size).ok_or_else(past)?;
                let size = (e.ending_lba - e.starting_lba).checked_add(1).and_then(|n| n.checked_mul(sector_size)).ok_or_else(past)?;
                partitions.push(Partition {
                    number,
                    start,
                    size,
                    type_id: guid_string(&e.partition_type_guid),
                    part_uuid: guid_string(&e.unique_partition_guid).to_ascii_lowercase(),
                    name: e.partition_name.as_str().to_string(),
                });
            }
            Table { kind: TableKind::Gpt, sector_size, partitions }
        }
        None => read_mbr(f)?,
    };
    check(&table, disk_size)?;
    Ok(table)
}

/// Why no GPT was read with one sector size.
#[derive(Debug, thiserror::Error)]
enum GptError {
    /// Neither header has the `EFI PART` signature: no GPT (with this sector size).
    #[error("no GPT signature")]
    NoSignature,
    #[error("{0}")]
    Corrupt(String),
}

/// A GPT as read: its sector size in bytes, the header used and every entry (used or not).
type Gpt = (u64, gptman::GPTHeader, Vec<gptman::GPTPartitionEntry>);

/// Reads the GPT with `sector_size`-byte sectors: the primary header and its entries, or if
/// either is unreadable, the backup's.
///
/// gptman's `GPT::read_from` is not used: on an intact (CRC-correct) but hostile header it
/// allocates and reads as many entries as the header says (up to 2³²), panics on entries of
/// another size than 128 bytes, and panics when used entries start at sector 0. Only gptman's
/// header and entry decoders run here, after [`check_gpt_header`] has bounded the array.
fn read_gpt<R: Read + Seek>(f: &mut R, sector_size: u64, disk_size: u64) -> Result<Gpt, GptError> {
    let mut at = |lba: u64| -> Result<Gpt, gptman::Error> {
        f.seek(SeekFrom::Start(lba * sector_size))?;
        let header = gptman::GPTHeader::read_from(f)?;
        check_gpt_header(&header, sector_size, disk_size).map_err(|m| gptman::Error::Io(std::io::Error::other(m)))?;
        let entries = header.read_partitions(f, sector_size)?;
        Ok((sector_size, header, entries))
    };
    if disk_size < 2 * sector_size {
        return Err(GptError::NoSignature); // no room for a protective MBR and a header
    }
    let primary = match at(1) {
        Ok(gpt) => return Ok(gpt),
        Err(e) => e,
    };
    match (primary, at(disk_size / sector_size - 1)) {
        (_, Ok(gpt)) => Ok(gpt),
        (gptman::Error::InvalidSignature, Err(gptman::Error::InvalidSignature)) => Err(GptError::NoSignature),
        (p, Err(b)) => Err(GptError::Corrupt(format!("primary header: {}; backup header: {}", describe(&p), describe(&b)))),
    }
}

/// gptman's error with its I/O cause, which its own message leaves out.
fn describe(e: &gptman::Error) -> String {
    match e {
        gptman::Error::Io(io) => io.to_string(),
        e => e.to_string(),
    }
}

/// Checks that an intact GPT header describes an entry array kib can read: at most
/// [`MAX_GPT_ENTRIES`] entries of [`GPT_ENTRY_SIZE`] bytes, lying inside the disk.
fn check_gpt_header(h: &gptman::GPTHeader, sector_size: u64, disk_size: u64) -> Result<(), String> {
    if h.size_of_partition_entry != GPT_ENTRY_SIZE {
        return Err(format!("partition entries of {} bytes are not supported (only {GPT_ENTRY_SIZE})", h.size_of_partition_entry));
    }
    if h.number_of_partition_entries > MAX_GPT_ENTRIES {
        return Err(format!("{} partition entries declared; kib reads at most {MAX_GPT_ENTRIES}", h.number_of_partition_entries));
    }
    let array = u64::from(h.number_of_partition_entries) * u64::from(GPT_ENTRY_SIZE);
    let end = h.partition_entry_lba.checked_mul(sector_size).and_then(|start| start.checked_add(array));
    if end.is_none_or(|end| end > disk_size) {
        return Err(format!(
            "the partition entry array (sector {}, {array} bytes) lies past the end of the {disk_size}-byte disk",
            h.partition_entry_lba
        ));
    }
    Ok(())
}

/// The most logical partitions kib follows in an MBR's chain of extended boot records.
pub const MAX_LOGICAL_PARTITIONS: usize = 256;

/// One MBR partition entry: the partition's number, type, first sector and length in sectors.
struct MbrEntry {
    number: u32,
    sys: u8,
    start: u64,
    sectors: u64,
}

/// Reads the MBR: the four primary entries through mbrman's header decoder, the logical
/// partitions by following the extended boot records here. (mbrman's `MBR::read_from` panics
/// when used entries start at sector 0, in `find_alignment`, and adds sector numbers in `u32`,
/// which overflows on hostile tables.)
fn read_mbr<R: Read + Seek>(f: &mut R) -> Result<Table, TableError> {
    f.seek(SeekFrom::Start(0))?;
    let header = match mbrman::MBRHeader::read_from(f) {
        Ok(h) => h,
        Err(_) => return Ok(Table { kind: TableKind::None, sector_size: 512, partitions: Vec::new() }),
    };
    if header.iter().any(|(_, p)| p.is_used() && p.sys == 0xEE) {
        return Err(TableError::MissingGpt("no valid GPT header at sector 1 nor at the end of the disk".into()));
    }
    let mut entries: Vec<MbrEntry> = header
        .iter()
        .map(|(i, p)| MbrEntry {
            number: u32::try_from(i).unwrap_or(u32::MAX),
            sys: p.sys,
            start: u64::from(p.starting_lba),
            sectors: u64::from(p.sectors),
        })
        .collect();
    if let Some((_, ext)) = header.iter().find(|(_, p)| p.is_extended()) {
        entries.extend(read_logical(f, u64::from(ext.starting_lba))?);
    }
    let sig = u32::from_le_bytes(header.disk_signature);
    let mut partitions = Vec::new();
    for e in entries.iter().filter(|e| e.sys != 0 && !is_extended(e.sys)) {
        if e.start == 0 {
            return Err(TableError::OnTable { number: e.number, lba: 0 });
        }
        partitions.push(Partition {
            number: e.number,
            start: e.start * 512,
            size: e.sectors * 512,
            type_id: format!("0x{:02x}", e.sys),
            part_uuid: format!("{sig:08x}-{:02x}", e.number),
            name: String::new(),
        });
    }
    let kind = if partitions.is_empty() { TableKind::None } else { TableKind::Mbr };
    Ok(Table { kind, sector_size: 512, partitions })
}

/// MBR partition types that hold logical partitions rather than a filesystem.
fn is_extended(sys: u8) -> bool {
    matches!(sys, 0x05 | 0x0F | 0x85 | 0xC5 | 0xD5)
}

/// Follows the chain of extended boot records from the extended partition's first sector:
/// each holds one logical partition (its start relative to that EBR) and the next EBR (relative
/// to the extended partition), numbered from 5. Sector numbers are `u32` on disk and added in
/// `u64` here, so they cannot overflow.
///
/// Errors: I/O; an EBR missing after the first, a chain that does not move forward, a logical
/// partition starting on its own EBR, or more than [`MAX_LOGICAL_PARTITIONS`].
fn read_logical<R: Read + Seek>(f: &mut R, extended_start: u64) -> Result<Vec<MbrEntry>, TableError> {
    let mut out = Vec::new();
    let mut relative = 0u64;
    loop {
        let ebr = extended_start + relative;
        let number = u32::try_from(5 + out.len()).unwrap_or(u32::MAX);
        let mut sector = [0u8; 512];
        f.seek(SeekFrom::Start(ebr * 512))?;
        let readable = f.read_exact(&mut sector).is_ok();
        if !readable || sector[510..] != [0x55, 0xAA] {
            if relative == 0 {
                break; // an empty extended partition needs no EBR
            }
            return Err(TableError::CorruptMbr(format!("no extended boot record at sector {ebr} (for partition {number})")));
        }
        let field = |at: usize| u64::from(u32::from_le_bytes([sector[at], sector[at + 1], sector[at + 2], sector[at + 3]]));
        let (sys, start, sectors) = (sector[446 + 4], field(446 + 8), field(446 + 12));
        if sys != 0 && start == 0 {
            return Err(TableError::OnTable { number, lba: ebr });
        }
        out.push(MbrEntry { number, sys, start: ebr + start, sectors });
        let next = field(462 + 8);
        if next == 0 {
            break;
        }
        if next <= relative {
            return Err(TableError::CorruptMbr(format!(
                "the extended boot record at sector {ebr} points back to sector {}",
                extended_start + next
            )));
        }
        if out.len() >= MAX_LOGICAL_PARTITIONS {
            return Err(TableError::CorruptMbr(format!("more than {MAX_LOGICAL_PARTITIONS} logical partitions")));
        }
        relative = next;
    }
    Ok(out)
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
        if w[0].start.saturating_add(w[0].size) > w[1].start {
            return Err(TableError::Overlap { a: w[0].number, b: w[1].number });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a sparse image of `mib` MiB and writes `script` with sfdisk (util-linux), the
    /// independent reference these tests compare against.
    fn image(mib: u64, script: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.raw");
        std::fs::File::create(&p).unwrap().set_len(mib << 20).unwrap();
        let mut child = crate::exec::host_tool("sfdisk")
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
        let out = crate::exec::host_tool("sfdisk").arg("--json").arg(p).output().unwrap();
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

    /// CRC-32 (IEEE, as GPT uses), written out here so that the tests forge tables
    /// independently of gptman.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// A 1 MiB GPT disk with two partitions (sectors 40-139 and 200-299), its primary header and
    /// entries edited by `edit(header, entries)` (sector 1, sectors 2-33) and every CRC recomputed,
    /// as a hostile image would have them. The backup header is wiped, so the primary is read.
    fn forged_gpt(edit: impl FnOnce(&mut [u8], &mut [u8])) -> Vec<u8> {
        let (_d, p) = image(
            1,
            "label: gpt\nfirst-lba: 34\nstart=40, size=100, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n\
             start=200, size=100, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        );
        let mut b = std::fs::read(&p).unwrap();
        let len = b.len();
        b[len - 512..].fill(0);
        let (head, rest) = b[512..].split_at_mut(512);
        edit(head, &mut rest[..128 * 128]);
        let array_crc = crc32(&b[1024..1024 + 128 * 128]);
        b[512 + 88..512 + 92].copy_from_slice(&array_crc.to_le_bytes());
        b[512 + 16..512 + 20].fill(0);
        let crc = crc32(&b[512..512 + 92]);
        b[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn read_bytes(b: Vec<u8>) -> Result<Table, TableError> {
        read_from(&mut std::io::Cursor::new(b))
    }

    fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn forged_gpt_helper_is_faithful() {
        let t = read_bytes(forged_gpt(|_, _| ())).unwrap();
        assert_eq!((t.kind, t.partitions.len(), t.partitions[1].start), (TableKind::Gpt, 2, 200 * 512));
    }

    /// Fuzz finding (fuzz/corpus/partition/regression-gptman-find-alignment-panic): used entries
    /// starting at sector 0 made gptman's `GPT::read_from` panic (`find_alignment` unwraps the
    /// maximum of an empty range).
    #[test]
    fn used_entries_at_sector_zero_are_an_error_not_a_panic() {
        let b = forged_gpt(|_, e| {
            set_u64(e, 32, 0);
            set_u64(e, 128 + 32, 0);
        });
        let err = read_bytes(b).unwrap_err().to_string();
        assert!(err.contains("partition 1 (sectors 0-139) lies outside the GPT's usable sectors 34-"), "{err}");
    }

    #[test]
    fn hostile_gpt_headers_are_refused_without_reading_the_array() {
        // 2^32-1 entries: gptman would allocate for all and read until the disk ends.
        let b = forged_gpt(|h, _| h[80..84].copy_from_slice(&u32::MAX.to_le_bytes()));
        let err = read_bytes(b).unwrap_err().to_string();
        assert!(err.contains("GPT partition table is corrupt") && err.contains("4294967295 partition entries declared"), "{err}");
        // 256-byte entries (UEFI allows them): gptman asserts 128 and panics.
        let b = forged_gpt(|h, _| h[84..88].copy_from_slice(&256u32.to_le_bytes()));
        let err = read_bytes(b).unwrap_err().to_string();
        assert!(err.contains("partition entries of 256 bytes are not supported"), "{err}");
        // An entry array past the end of the disk, and one whose byte offset overflows u64.
        for lba in [4096, u64::MAX / 8] {
            let b = forged_gpt(|h, _| set_u64(h, 72, lba));
            let err = read_bytes(b).unwrap_err().to_string();
            assert!(err.contains("lies past the end of the 1048576-byte disk"), "{err}");
        }
    }

    #[test]
    fn hostile_gpt_entries_are_refused() {
        // Ends before it starts.
        let err = read_bytes(forged_gpt(|_, e| set_u64(e, 40, 39))).unwrap_err().to_string();
        assert!(err.contains("partition 1 ends (sector 39) before it starts (sector 40)"), "{err}");
        // Sectors whose byte offsets overflow u64, inside a forged usable area.
        let b = forged_gpt(|h, e| {
            set_u64(h, 48, u64::MAX);
            set_u64(e, 128 + 32, u64::MAX / 2);
            set_u64(e, 128 + 40, u64::MAX - 1);
        });
        let err = read_bytes(b).unwrap_err().to_string();
        assert!(err.contains("partition 2 ends at byte 18446744073709551615, past the end"), "{err}");
        // Overlapping partitions in an intact table.
        let err = read_bytes(forged_gpt(|_, e| set_u64(e, 128 + 32, 100))).unwrap_err().to_string();
        assert!(err.contains("partitions 1 and 2 overlap"), "{err}");
    }

    /// Fuzz finding (fuzz/corpus/partition/regression-mbrman-find-alignment-panic): a used MBR
    /// entry starting at sector 0 made mbrman's `MBR::read_from` panic in `find_alignment`.
    #[test]
    fn mbr_entry_at_sector_zero_is_an_error_not_a_panic() {
        let mut b = vec![0u8; 1 << 20];
        b[510..512].copy_from_slice(&[0x55, 0xAA]);
        b[446 + 4] = 0x83; // used, starting_lba 0, 100 sectors
        b[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        let err = read_bytes(b).unwrap_err().to_string();
        assert!(err.contains("partition 1 starts at sector 0, on a partition table sector"), "{err}");
    }

    #[test]
    fn logical_partitions_match_sfdisk_and_broken_chains_are_errors() {
        let (_d, p) = image(
            16,
            "label: dos\nstart=8, size=120, type=5\nstart=16, size=16, type=83\nstart=40, size=16, type=82\nstart=2048, type=83\n",
        );
        let t = read(&p).unwrap();
        let reference = sfdisk_json(&p);
        let theirs: Vec<(u64, u64)> = reference["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] != "5")
            .map(|p| (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512))
            .collect();
        let ours: Vec<(u64, u64)> = t.partitions.iter().map(|p| (p.start, p.size)).collect();
        assert_eq!(ours.len(), 3);
        assert_eq!(ours.iter().collect::<std::collections::HashSet<_>>(), theirs.iter().collect());
        assert_eq!(t.partitions.iter().map(|p| p.number).collect::<Vec<_>>(), [2, 5, 6]);
        // The first EBR's "next" pointing back at itself: a loop, not a hang.
        let mut b = std::fs::read(&p).unwrap();
        let ebr = 8 * 512;
        b[ebr + 462 + 8..ebr + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
        let second = (0..b.len() / 512).skip(9).find(|s| b[s * 512 + 510..s * 512 + 512] == [0x55, 0xAA]).unwrap();
        b[second * 512 + 462 + 8..second * 512 + 462 + 12].copy_from_slice(&((second as u32) - 8).to_le_bytes());
        b[ebr + 462 + 8..ebr + 462 + 12].copy_from_slice(&((second as u32) - 8).to_le_bytes());
        let err = read_bytes(b).unwrap_err().to_string();
        assert!(err.contains("chain of logical partitions is broken") && err.contains("points back"), "{err}");
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
