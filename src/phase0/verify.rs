//! Verifying an input image against the checksum list published beside it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Checksum list names looked for in the image's folder, in this order.
pub const SUMS_FILES: &[&str] = &["SHA256SUMS", "sha256sum.txt"];

/// The expected SHA-256 of an image, and the list that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub sha256: String,
    pub list: PathBuf,
}

/// Looks for the image's file name in `SHA256SUMS` or `sha256sum.txt` beside it. Lines are
/// `<hex>  <name>` or `<hex> *<name>` (binary mode), as `sha256sum` writes them, or
/// `SHA256 (<name>) = <hex>` (BSD); a name with a leading `./` matches too. `Ok(None)` when no
/// list names the image.
pub fn expected_sum(image: &Path) -> std::io::Result<Option<Expected>> {
    let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = image.file_name().and_then(|n| n.to_str()) else { return Ok(None) };
    for list in SUMS_FILES {
        let list = dir.join(list);
        let text = match std::fs::read_to_string(&list) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(sha256) = find_in_list(&text, name) {
            return Ok(Some(Expected { sha256, list }));
        }
    }
    Ok(None)
}

/// The SHA-256 listed for `name` in `text`, a checksum list in GNU (`sha256sum`) or BSD
/// (`SHA256 (name) = hex`) format (see [`crate::fetch::sums`]).
pub fn find_in_list(text: &str, name: &str) -> Option<String> {
    crate::fetch::sums::find(text, name).filter(|s| s.algo == crate::fetch::sums::Algo::Sha256).map(|s| s.hex)
}

/// Remembers the SHA-256 of input images kib has read in full, so that a later build from the
/// same unchanged file need not read it again. A record is keyed by the file's absolute path and
/// is valid only while the file's device, inode, size, modification and change times are the
/// same: any write to the file changes its ctime. Records live in `<cache>/inputs/`.
#[derive(Debug, Clone)]
pub struct InputCache {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
struct Record {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    sha256: String,
}

impl Record {
    fn of(path: &Path, m: &std::fs::Metadata, sha256: String) -> Record {
        Record {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            sha256,
        }
    }
}

impl InputCache {
    /// A cache under `cache_dir` (such as `/var/cache/kib`).
    pub fn new(cache_dir: &Path) -> Self {
        InputCache { dir: cache_dir.join("inputs") }
    }

    fn file(&self, path: &Path) -> PathBuf {
        self.dir.join(format!("{}.json", crate::hash::sha256_bytes(path.as_os_str().as_encoded_bytes())))
    }

    /// The remembered SHA-256 of `path`, if the file is unchanged since it was recorded.
    pub fn lookup(&self, path: &Path) -> Option<String> {
        let path = std::path::absolute(path).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        let text = std::fs::read(self.file(&path)).ok()?;
        let rec: Record = serde_json::from_slice(&text).ok()?;
        let now = Record::of(&path, &meta, rec.sha256.clone());
        (rec == now).then_some(rec.sha256)
    }

    /// Records the SHA-256 of `path` as it is now. Best effort: a failure is only logged.
    pub fn store(&self, path: &Path, sha256: &str) {
        let result = (|| -> std::io::Result<()> {
            let path = std::path::absolute(path)?;
            let meta = std::fs::metadata(&path)?;
            std::fs::create_dir_all(&self.dir)?;
            let rec = Record::of(&path, &meta, sha256.to_string());
            let file = self.file(&path);
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(&rec)?)?;
            std::fs::rename(&tmp, &file)
        })();
        if let Err(e) = result {
            tracing::debug!("not caching the input's checksum: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    #[test]
    fn finds_text_binary_and_dotslash_entries() {
        let text = format!("{A}  other.img\n{B} *disk.qcow2\n{A}  ./x.raw\n");
        assert_eq!(find_in_list(&text, "disk.qcow2").unwrap(), B.to_lowercase());
        assert_eq!(find_in_list(&text, "x.raw").unwrap(), A);
        assert_eq!(find_in_list(&text, "missing"), None);
        assert_eq!(find_in_list("nothex  disk\n", "disk"), None);
    }

    #[test]
    fn input_cache_forgets_changed_files() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.raw");
        std::fs::write(&img, b"one").unwrap();
        let cache = InputCache::new(&d.path().join("cache"));
        assert_eq!(cache.lookup(&img), None);
        cache.store(&img, A);
        assert_eq!(cache.lookup(&img).as_deref(), Some(A));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&img, b"two").unwrap();
        assert_eq!(cache.lookup(&img), None);
    }

    #[test]
    fn looks_beside_the_image() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("debian.raw");
        std::fs::write(&img, b"x").unwrap();
        assert_eq!(expected_sum(&img).unwrap(), None);
        std::fs::write(d.path().join("sha256sum.txt"), format!("{A}  debian.raw\n")).unwrap();
        let e = expected_sum(&img).unwrap().unwrap();
        assert_eq!(e.sha256, A);
        assert!(e.list.ends_with("sha256sum.txt"));
    }
}
