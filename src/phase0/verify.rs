//! Verifying an input image against the checksum list published beside it.

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
/// `<hex>  <name>` or `<hex> *<name>` (binary mode), as `sha256sum` writes them; a name with a
/// leading `./` matches too. `Ok(None)` when no list names the image.
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

/// The checksum listed for `name` in sha256sum-format `text`.
pub fn find_in_list(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (sum, rest) = line.trim().split_once(char::is_whitespace)?;
        let listed = rest.trim_start().trim_start_matches('*');
        let listed = listed.strip_prefix("./").unwrap_or(listed);
        (listed == name && sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sum.to_ascii_lowercase())
    })
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
