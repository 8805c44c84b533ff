//! The partition-table reader (`kib::phase0::partition::read_from`) on a disk built from the
//! input, so that a small input can stand for a large disk with a primary table at its start and
//! a backup at its end:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | flags; bit 0: recompute the CRC32s of every GPT header and entry array found first |
//! | 1..9 | the disk's length in bytes, little-endian (at least the data's length; at most 1 PiB) |
//! | 9..13 | how many of the remaining bytes are the head, little-endian |
//! | 13.. | the head (written at offset 0), then the tail (written so that it ends the disk) |
//!
//! Everything between head and tail reads as zeros, as in a sparse file. The CRC fix-up lets the
//! fuzzer past the checksums to the header fields a hostile image can set at will. Beyond "no
//! panic": an accepted table has every partition inside the disk, none overlapping, numbered in
//! increasing order.
#![no_main]

use std::io::{Read, Seek, SeekFrom};

use libfuzzer_sys::fuzz_target;

struct Disk {
    head: Vec<u8>,
    tail: Vec<u8>,
    len: u64,
    pos: u64,
}

impl Disk {
    fn tail_start(&self) -> u64 {
        self.len - self.tail.len() as u64
    }

    /// The byte range `[at, at + n)` if it lies wholly in the head or the tail.
    fn slice_mut(&mut self, at: u64, n: u64) -> Option<&mut [u8]> {
        let end = at.checked_add(n)?;
        if end <= self.head.len() as u64 {
            return self.head.get_mut(at as usize..end as usize);
        }
        let ts = self.tail_start();
        if at >= ts && end <= self.len {
            return self.tail.get_mut((at - ts) as usize..(end - ts) as usize);
        }
        None
    }
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let ts = self.tail_start();
        let n = if self.pos < self.head.len() as u64 {
            let src = &self.head[self.pos as usize..];
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        } else if self.pos >= ts {
            let src = &self.tail[(self.pos - ts) as usize..];
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        } else {
            let n = (ts - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Disk {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let pos = pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range"))?;
        self.pos = pos;
        Ok(pos)
    }
}

/// Recomputes the entry-array CRC (when the array lies in the head or the tail and is at most
/// 1 MiB) and the header CRC of a GPT header at `at`, if there is one.
fn fix_gpt_crcs(disk: &mut Disk, at: u64, sector: u64) {
    let Some(h) = disk.slice_mut(at, 92) else { return };
    if &h[..8] != b"EFI PART" {
        return;
    }
    let u32_at = |h: &[u8], o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or_default());
    let lba = u64::from_le_bytes(h[72..80].try_into().unwrap_or_default());
    let array_len = u64::from(u32_at(h, 80)) * u64::from(u32_at(h, 84));
    if array_len <= 1 << 20 {
        if let Some(array) = lba.checked_mul(sector).and_then(|a| disk.slice_mut(a, array_len)) {
            let crc = crc32fast::hash(array);
            if let Some(h) = disk.slice_mut(at, 92) {
                h[88..92].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    let Some(h) = disk.slice_mut(at, 92) else { return };
    h[16..20].fill(0);
    let crc = crc32fast::hash(h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    let flags = data[0];
    let len = u64::from_le_bytes(data[1..9].try_into().unwrap_or_default());
    let head_len = u32::from_le_bytes(data[9..13].try_into().unwrap_or_default()) as usize;
    let rest = &data[13..];
    let (head, tail) = rest.split_at(head_len.min(rest.len()));
    let len = len.clamp(rest.len() as u64, 1 << 50);
    let mut disk = Disk { head: head.to_vec(), tail: tail.to_vec(), len, pos: 0 };
    if flags & 1 != 0 {
        for sector in [512u64, 4096] {
            fix_gpt_crcs(&mut disk, sector, sector);
            if len >= sector {
                fix_gpt_crcs(&mut disk, (len / sector - 1) * sector, sector);
            }
        }
    }
    if let Ok(table) = kib::phase0::partition::read_from(&mut disk) {
        let mut last = 0;
        for p in &table.partitions {
            assert!(p.number > last, "partitions out of order: {:?}", table.partitions);
            last = p.number;
            assert!(p.start.checked_add(p.size).is_some_and(|end| end <= len), "partition past the end: {p:?}");
        }
        for a in &table.partitions {
            for b in &table.partitions {
                if a.number != b.number {
                    assert!(a.start + a.size <= b.start || b.start + b.size <= a.start, "overlap: {a:?} {b:?}");
                }
            }
        }
    }
});
