//! Published checksum lists: what distributions put beside their images.
//!
//! Two line formats, in any mix, with anything else (comments, PGP armour, blank lines) ignored:
//! - GNU, as `sha256sum`/`sha512sum` write them: `<hex>  <name>` (text mode) or `<hex> *<name>`
//!   (binary mode); a name may start with `./`. Ubuntu's and Debian's `SHA256SUMS`/`SHA512SUMS`,
//!   `sha256sum.txt`.
//! - BSD, as `sha256sum --tag` and `cksum` write them: `SHA256 (<name>) = <hex>`. Rocky's and
//!   CentOS's `CHECKSUM`, Fedora's `*-CHECKSUM` (inside a PGP clear-signed message).
//!
//! The algorithm of a GNU line is told by its digest's length (64 hex digits: SHA-256, 128:
//! SHA-512); of a BSD line by its tag, and a digest of the wrong length for its tag is ignored.

use sha2::Digest;

/// A digest algorithm checksum lists use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    Sha256,
    Sha512,
}

impl Algo {
    /// The length of its digest in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Algo::Sha256 => 64,
            Algo::Sha512 => 128,
        }
    }

    /// `sha256` or `sha512`, as messages and the BOM spell it.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }

    fn from_len(len: usize) -> Option<Algo> {
        [Algo::Sha256, Algo::Sha512].into_iter().find(|a| a.hex_len() == len)
    }

    fn from_tag(tag: &str) -> Option<Algo> {
        match tag {
            "SHA256" | "SHA2-256" => Some(Algo::Sha256),
            "SHA512" | "SHA2-512" => Some(Algo::Sha512),
            _ => None,
        }
    }
}

/// One digest of one file, as a list gives it: the algorithm and the lowercase hex digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sum {
    pub algo: Algo,
    pub hex: String,
}

impl std::fmt::Display for Sum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.algo.name(), self.hex)
    }
}

/// A line of a checksum list: a digest and the file name it is for (`None` for a bare digest, a
/// file such as `kubelet.sha256` holding nothing else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sum: Sum,
    pub name: Option<String>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every entry of a checksum list, in order. Lines in neither format are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches('\r').trim();
    // GNU escapes names holding `\` or a newline by starting the line with a backslash.
    let line = line.strip_prefix('\\').unwrap_or(line);
    // BSD: `SHA256 (name) = hex`.
    if let Some((algo, rest)) = line.split_once(" (").and_then(|(tag, rest)| Some((Algo::from_tag(tag.trim())?, rest))) {
        let (name, hex) = rest.rsplit_once(") = ")?;
        let hex = hex.trim();
        return (is_hex(hex) && hex.len() == algo.hex_len()).then(|| Entry { sum: Sum { algo, hex: hex.to_ascii_lowercase() }, name: Some(clean_name(name)) });
    }
    // GNU: `hex  name`, `hex *name`, or a bare `hex`.
    let (hex, name) = match line.split_once(char::is_whitespace) {
        Some((h, n)) => (h, Some(n)),
        None => (line, None),
    };
    let algo = Algo::from_len(hex.len()).filter(|_| is_hex(hex))?;
    let name = match name {
        Some(n) => {
            let n = n.trim_start();
            // `hex  name` leaves a space before the name after the first split, `hex *name` a star.
            let n = n.strip_prefix('*').unwrap_or(n);
            if n.is_empty() {
                None
            } else {
                Some(clean_name(n))
            }
        }
        None => None,
    };
    Some(Entry { sum: Sum { algo, hex: hex.to_ascii_lowercase() }, name })
}

fn clean_name(n: &str) -> String {
    n.strip_prefix("./").unwrap_or(n).to_string()
}

/// The digest `text` lists for the file `name` (a plain file name: the last segment of its URL).
/// An entry whose name is exactly `name` (or `./name`) wins; failing that, one whose last path
/// segment is `name`, if only one digest fits so; failing that, a bare digest when the list
/// holds nothing else. When the list gives both a SHA-256 and a SHA-512 for the file, SHA-256.
pub fn find(text: &str, name: &str) -> Option<Sum> {
    let entries = parse(text);
    let pick = |matches: Vec<&Entry>| -> Option<Sum> {
        matches.iter().find(|e| e.sum.algo == Algo::Sha256).or(matches.first()).map(|e| e.sum.clone())
    };
    let exact: Vec<&Entry> = entries.iter().filter(|e| e.name.as_deref() == Some(name)).collect();
    if !exact.is_empty() {
        return pick(exact);
    }
    let by_base: Vec<&Entry> = entries.iter().filter(|e| e.name.as_deref().and_then(|n| n.rsplit('/').next()) == Some(name)).collect();
    // Entries in several folders agree, or no guess is made.
    let ambiguous = by_base.iter().any(|a| by_base.iter().any(|b| a.sum.algo == b.sum.algo && a.sum.hex != b.sum.hex));
    if !by_base.is_empty() && !ambiguous {
        return pick(by_base);
    }
    match entries.as_slice() {
        [only] if only.name.is_none() => Some(only.sum.clone()),
        _ => None,
    }
}

/// Incremental SHA-256, plus SHA-512 when a list asks for it.
#[derive(Clone, Default)]
pub struct Hasher {
    sha256: sha2::Sha256,
    sha512: Option<sha2::Sha512>,
}

/// What [`Hasher::finish`] gives: the SHA-256 (always; the cache's key) and the SHA-512 when it
/// was asked for, both lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    pub sha512: Option<String>,
}

impl Digests {
    /// The digest of `algo`, if computed.
    pub fn get(&self, algo: Algo) -> Option<&str> {
        match algo {
            Algo::Sha256 => Some(&self.sha256),
            Algo::Sha512 => self.sha512.as_deref(),
        }
    }
}

impl Hasher {
    /// A hasher computing SHA-256, and SHA-512 too when `sha512`.
    pub fn new(sha512: bool) -> Self {
        Hasher { sha256: sha2::Sha256::new(), sha512: sha512.then(sha2::Sha512::new) }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }

    pub fn finish(self) -> Digests {
        Digests { sha256: hex::encode(self.sha256.finalize()), sha512: self.sha512.map(|h| hex::encode(h.finalize())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    fn s256(h: &str) -> Sum {
        Sum { algo: Algo::Sha256, hex: h.to_ascii_lowercase() }
    }

    #[test]
    fn gnu_text_and_binary_mode() {
        let text = format!("{A}  noble-server-cloudimg-amd64.img\n{B} *noble-server-cloudimg-arm64.img\n{A}  ./x.raw\n");
        assert_eq!(find(&text, "noble-server-cloudimg-amd64.img"), Some(s256(A)));
        assert_eq!(find(&text, "noble-server-cloudimg-arm64.img"), Some(s256(B)));
        assert_eq!(find(&text, "x.raw"), Some(s256(A)));
        assert_eq!(find(&text, "noble-server-cloudimg-amd64.img.manifest"), None);
        assert_eq!(find("nothex  disk\n", "disk"), None);
        // A name with spaces, and CRLF line ends.
        assert_eq!(find(&format!("{A}  my disk.raw\r\n"), "my disk.raw"), Some(s256(A)));
        assert_eq!(find(&format!("{A}  disk (1).raw\n"), "disk (1).raw"), Some(s256(A)));
    }

    #[test]
    fn bsd_format_as_rocky_and_fedora_publish_it() {
        // The shape of Rocky 9's CHECKSUM, and of Fedora's clear-signed *-CHECKSUM.
        let h = "c29b6e5f8e3b0a4bb3aa1cc6fe1aa5fbcef3b04bbfd8f8a5b8fe69aa4c9a4b11";
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# Rocky-9-GenericCloud-Base.latest.x86_64.qcow2: 609812480 bytes\n\
             SHA256 (Rocky-9-GenericCloud-Base.latest.x86_64.qcow2) = {h}\n\
             SHA256 (Rocky-9-GenericCloud-LVM.latest.x86_64.qcow2) = {A}\n-----BEGIN PGP SIGNATURE-----\niQIz\n"
        );
        assert_eq!(find(&text, "Rocky-9-GenericCloud-Base.latest.x86_64.qcow2"), Some(s256(h)));
        assert_eq!(find(&text, "Rocky-9-GenericCloud-LVM.latest.x86_64.qcow2"), Some(s256(A)));
        assert_eq!(find(&text, "Rocky-9-GenericCloud.latest.x86_64.qcow2"), None);
        // A digest of the wrong length for its tag is no entry.
        assert_eq!(find(&format!("SHA512 (x.img) = {A}\n"), "x.img"), None);
        // Names with parentheses still parse: the digest follows the last `) = `.
        assert_eq!(find(&format!("SHA256 (disk (1).img) = {A}\n"), "disk (1).img"), Some(s256(A)));
    }

    #[test]
    fn sha512_lists_as_debian_publishes_them() {
        let h512 = "f".repeat(128);
        let text = format!("{h512}  debian-12-genericcloud-amd64.raw\n{}  debian-12-genericcloud-amd64.qcow2\n", "e".repeat(128));
        assert_eq!(find(&text, "debian-12-genericcloud-amd64.raw"), Some(Sum { algo: Algo::Sha512, hex: h512.clone() }));
        let bsd = format!("SHA512 (debian-12-genericcloud-amd64.raw) = {}\n", h512.to_uppercase());
        assert_eq!(find(&bsd, "debian-12-genericcloud-amd64.raw"), Some(Sum { algo: Algo::Sha512, hex: h512.clone() }));
        // Both algorithms for one file: SHA-256 is preferred.
        let both = format!("{h512} *d.raw\n{A} *d.raw\n");
        assert_eq!(find(&both, "d.raw"), Some(s256(A)));
    }

    #[test]
    fn paths_bare_digests_and_ambiguity() {
        assert_eq!(find(&format!("{A}  bin/linux/amd64/kubectl\n"), "kubectl"), Some(s256(A)));
        assert_eq!(find(&format!("{A}\n"), "kubelet"), Some(s256(A)));
        assert_eq!(find(&format!("{A} \n"), "kubelet"), Some(s256(A)));
        // Two different digests under two folders: no guess.
        assert_eq!(find(&format!("{A}  a/disk.img\n{B}  b/disk.img\n"), "disk.img"), None);
        // A bare digest among named entries names nothing.
        assert_eq!(find(&format!("{A}\n{B}  other\n"), "disk.img"), None);
        assert!(parse("").is_empty());
    }

    #[test]
    fn hasher_gives_both_digests() {
        let mut h = Hasher::new(true);
        h.update(b"ab");
        h.update(b"c");
        let d = h.finish();
        assert_eq!(d.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(d.sha512.as_deref().unwrap().starts_with("ddaf35a193617aba"));
        assert_eq!(Hasher::new(false).finish().get(Algo::Sha512), None);
    }
}
