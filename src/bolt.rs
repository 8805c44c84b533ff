//! A read-only reader of bbolt databases (go.etcd.io/bbolt's file format), just enough to list
//! the buckets and keys of containerd's metadata store (`io.containerd.metadata.v1.bolt/meta.db`:
//! `v1` → one bucket per namespace → `images` → one bucket per image name), so that `kib check`
//! asks "is there a namespace k8s.io, with image X" precisely rather than searching bytes.
//!
//! The format: fixed-size pages (the size is in the meta page), each with a 16-byte header (id,
//! flags, count, overflow). Pages 0 and 1 are meta pages; the valid one with the higher
//! transaction id names the root bucket's page. Branch pages hold `(pos, ksize, pgid)`
//! elements, leaf pages `(flags, pos, ksize, vsize)` elements; a leaf element with flag 1 is a
//! sub-bucket whose value is a bucket header (root page, sequence), followed by the bucket's own
//! page when it is small enough to live inline (root 0). The file comes from an image, so every
//! offset is checked: a damaged file is an error, never a panic.

use std::path::Path;

use anyhow::{bail, Context, Result};

const MAGIC: u32 = 0xED0C_DAED;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const HEADER: usize = 16;
/// Deepest page tree walked; bbolt's trees are a few levels deep.
const MAX_DEPTH: usize = 64;

/// An open database, read whole into memory.
pub struct Db {
    data: Vec<u8>,
    page_size: usize,
    root: u64,
}

/// A key of a bucket: its bytes, and whether it is a sub-bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub is_bucket: bool,
    value: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// FNV-1a, 64 bits: the meta page's checksum.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

impl Db {
    /// Reads the database file at `path` (at most `max` bytes).
    ///
    /// Errors: the file cannot be read, is larger than `max`, or is not a bbolt database.
    pub fn open(path: &Path, max: u64) -> Result<Db> {
        let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        if len > max {
            bail!("{} is {len} bytes, more than the {max} kib reads", path.display());
        }
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Db::from_bytes(data).with_context(|| format!("{} is not a bbolt database", path.display()))
    }

    /// A database from its bytes. Errors: no valid meta page.
    pub fn from_bytes(data: Vec<u8>) -> Result<Db> {
        let meta = |page_start: usize| -> Option<(u64, usize, u64)> {
            let m = page_start + HEADER;
            let flags = u16_at(&data, page_start + 8)?;
            if flags & META == 0 || u32_at(&data, m)? != MAGIC || u32_at(&data, m + 4)? != 2 {
                return None;
            }
            let checksum = u64_at(&data, m + 56)?;
            if fnv1a(data.get(m..m + 56)?) != checksum {
                return None;
            }
            let page_size = u32_at(&data, m + 8)? as usize;
            Some((u64_at(&data, m + 48)?, page_size, u64_at(&data, m + 16)?))
        };
        let first = meta(0).context("no valid meta page at the start")?;
        let second = meta(first.1);
        let (_, page_size, root) = match second {
            Some(s) if s.0 > first.0 => s,
            _ => first,
        };
        if !(512..=1 << 20).contains(&page_size) {
            bail!("page size {page_size} out of range");
        }
        Ok(Db { data, page_size, root })
    }

    /// The entries of the root bucket.
    pub fn root(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.walk_page(self.root, None, 0, &mut out)?;
        Ok(out)
    }

    /// The entries of the sub-bucket `entry` (which must be one).
    pub fn bucket(&self, entry: &Entry) -> Result<Vec<Entry>> {
        if !entry.is_bucket {
            bail!("`{}` is not a bucket", String::from_utf8_lossy(&entry.key));
        }
        let root = u64_at(&entry.value, 0).context("short bucket header")?;
        let mut out = Vec::new();
        if root == 0 {
            let inline = entry.value.get(HEADER..).context("inline bucket without its page")?;
            self.walk_inline(inline, &mut out)?;
        } else {
            self.walk_page(root, None, 0, &mut out)?;
        }
        Ok(out)
    }

    /// The entries along `path` of bucket names from the root; `None` when a name is missing.
    pub fn path(&self, path: &[&[u8]]) -> Result<Option<Vec<Entry>>> {
        let mut entries = self.root()?;
        for name in path {
            let Some(e) = entries.iter().find(|e| e.is_bucket && e.key == *name) else { return Ok(None) };
            entries = self.bucket(e)?;
        }
        Ok(Some(entries))
    }

    fn page(&self, id: u64) -> Result<&[u8]> {
        let start = usize::try_from(id).ok().and_then(|i| i.checked_mul(self.page_size)).context("page id out of range")?;
        let overflow = u32_at(&self.data, start + 12).context("page past the end of the file")? as usize;
        let len = (overflow + 1).checked_mul(self.page_size).context("page overflow out of range")?;
        self.data.get(start..start + len).with_context(|| format!("page {id} runs past the end of the file"))
    }

    fn walk_page(&self, id: u64, _parent: Option<u64>, depth: usize, out: &mut Vec<Entry>) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!("page tree deeper than {MAX_DEPTH}: a loop");
        }
        let page = self.page(id)?;
        let flags = u16_at(page, 8).context("short page")?;
        let count = usize::from(u16_at(page, 10).context("short page")?);
        if flags & BRANCH != 0 {
            for i in 0..count {
                let e = HEADER + i * 16;
                let child = u64_at(page, e + 8).context("branch element past the page")?;
                self.walk_page(child, Some(id), depth + 1, out)?;
            }
            Ok(())
        } else if flags & LEAF != 0 {
            Self::leaf(page, count, out)
        } else {
            bail!("page {id} is neither a branch nor a leaf (flags {flags:#x})")
        }
    }

    fn walk_inline(&self, page: &[u8], out: &mut Vec<Entry>) -> Result<()> {
        let flags = u16_at(page, 8).context("short inline page")?;
        if flags & LEAF == 0 {
            bail!("an inline bucket that is not a leaf");
        }
        Self::leaf(page, usize::from(u16_at(page, 10).context("short inline page")?), out)
    }

    fn leaf(page: &[u8], count: usize, out: &mut Vec<Entry>) -> Result<()> {
        for i in 0..count {
            let e = HEADER + i * 16;
            let (Some(flags), Some(pos), Some(ksize), Some(vsize)) = (u32_at(page, e), u32_at(page, e + 4), u32_at(page, e + 8), u32_at(page, e + 12)) else {
                bail!("leaf element {i} past the page");
            };
            let k = e + pos as usize;
            let v = k + ksize as usize;
            let (Some(key), Some(value)) = (page.get(k..v), page.get(v..v + vsize as usize)) else {
                bail!("leaf element {i}'s key or value past the page");
            };
            out.push(Entry { key: key.to_vec(), is_bucket: flags & BUCKET_LEAF != 0, value: value.to_vec() });
        }
        Ok(())
    }
}

/// containerd's metadata store in an image, as `kib check` reads it.
pub mod containerd {
    use super::*;

    /// Where containerd keeps it, as an image path.
    pub const META_DB: &str = "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db";

    /// The namespaces of the store, and the image names in each.
    pub fn images(db: &Db) -> Result<Vec<(String, Vec<String>)>> {
        let Some(namespaces) = db.path(&[b"v1"])? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for ns in namespaces.iter().filter(|e| e.is_bucket) {
            let entries = db.bucket(ns)?;
            let names = match entries.iter().find(|e| e.is_bucket && e.key == b"images") {
                Some(images) => db.bucket(images)?.iter().filter(|e| e.is_bucket).map(|e| String::from_utf8_lossy(&e.key).into_owned()).collect(),
                None => Vec::new(),
            };
            out.push((String::from_utf8_lossy(&ns.key).into_owned(), names));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Db {
        Db::open(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/containerd/meta.db")), 1 << 20).unwrap()
    }

    #[test]
    fn reads_containerds_namespaces_and_images() {
        let db = fixture();
        let mut got = containerd::images(&db).unwrap();
        got.sort();
        assert_eq!(
            got,
            [("default".to_string(), vec!["example.com/k8s.io/mirror:1".to_string()]), ("k8s.io".to_string(), vec!["registry.k8s.io/pause:3.9".to_string()])]
        );
        assert!(db.path(&[b"v1", b"nope"]).unwrap().is_none());
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let good = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/containerd/meta.db")).unwrap();
        let e = Db::from_bytes(b"not a database at all, just text".repeat(200)).err().unwrap().to_string();
        assert!(e.contains("no valid meta page"), "{e}");
        // Every byte of the pages past the metas flipped in turn: errors or other answers, never a panic.
        let page = 4096;
        for at in (2 * page..good.len()).step_by(61) {
            let mut bad = good.clone();
            bad[at] ^= 0xA5;
            if let Ok(db) = Db::from_bytes(bad) {
                let _ = containerd::images(&db);
            }
        }
        // A truncated file.
        let e = Db::from_bytes(good[..3 * page].to_vec()).and_then(|db| containerd::images(&db)).unwrap_err().to_string();
        assert!(e.contains("past the end of the file"), "{e}");
    }
}
