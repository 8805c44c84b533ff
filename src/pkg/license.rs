//! Package licences from Debian's machine-readable copyright files (DEP-5,
//! <https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/>).
//!
//! A package's `/usr/share/doc/<package>/copyright`, when it declares that format, has `Files:`
//! paragraphs whose `License:` field starts with a short name or a small expression (`GPL-2+`,
//! `GPL-1+ or Artistic`, `BSD-3-clause and Expat`). The names of all `Files:` paragraphs are
//! collected; they become an SPDX licence expression (the conjunction of the paragraphs) only
//! when every name maps to a current SPDX identifier, checked with the `spdx` crate. Otherwise
//! the Debian names alone are kept, and SBOMs say `NOASSERTION` (SPDX) or list the names
//! (CycloneDX `license.name`). Files in other formats give no licence: guessing from prose is not
//! done.

use std::path::Path;

use crate::guest::GuestRoot;

/// A package's licence as its copyright file (deb) or its `License` tag (rpm) declares it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PackageLicense {
    /// An SPDX licence expression equivalent to `declared`, such as
    /// `GPL-2.0-or-later AND MIT`; absent when some name has no SPDX identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spdx: Option<String>,
    /// The distinct `License:` short names of the `Files:` paragraphs, in order of appearance,
    /// as Debian writes them (`GPL-2+`, `Expat`).
    pub declared: Vec<String>,
}

/// Copyright files larger than this (bytes) are read only this far: the `Files:` paragraphs
/// come first, and a hostile image must not make kib read gigabytes.
const MAX_COPYRIGHT_BYTES: u64 = 4 << 20;

/// Reads the licence of `package` from `/usr/share/doc/<package>/copyright` in the image.
/// `None` when the file is missing, unreadable, not machine-readable, or names no licence;
/// problems are logged at debug level, never fatal: licences are "where known".
pub fn read(root: &GuestRoot, package: &str) -> Option<PackageLicense> {
    if package.is_empty() || package.contains('/') || package.starts_with('.') {
        return None;
    }
    let path = Path::new("/usr/share/doc").join(package).join("copyright");
    match root.read_regular_capped(&path, MAX_COPYRIGHT_BYTES) {
        Ok(Some(bytes)) => parse_copyright(&String::from_utf8_lossy(&bytes)),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!("reading {}: {e}", path.display());
            None
        }
    }
}

/// Parses a DEP-5 copyright file. `None` unless its header declares the machine-readable format
/// and at least one `Files:` paragraph names a licence.
pub fn parse_copyright(text: &str) -> Option<PackageLicense> {
    let mut paragraphs = text.split("\n\n").filter(|p| !p.trim().is_empty()).map(fields);
    let header = paragraphs.next()?;
    let format = header.iter().find(|(k, _)| k.eq_ignore_ascii_case("Format") || k.eq_ignore_ascii_case("Format-Specification")).map(|(_, v)| v.as_str())?;
    if !(format.contains("copyright-format/1.0") || format.contains("dep5")) {
        return None;
    }
    let mut declared: Vec<String> = Vec::new();
    // The header may carry a License: for the whole work; Files: paragraphs are what applies.
    for p in paragraphs {
        if !p.iter().any(|(k, _)| k.eq_ignore_ascii_case("Files")) {
            continue;
        }
        if let Some((_, v)) = p.iter().find(|(k, _)| k.eq_ignore_ascii_case("License")) {
            let name = v.split_whitespace().collect::<Vec<_>>().join(" ");
            if !name.is_empty() && !declared.contains(&name) {
                declared.push(name);
            }
        }
    }
    if declared.is_empty() {
        return None;
    }
    let spdx = to_spdx(&declared);
    Some(PackageLicense { spdx, declared })
}

/// The fields of one deb822 paragraph: name and the first line of the value (the synopsis;
/// continuation lines, the licence text, are dropped). Tolerant of the small sins real copyright
/// files commit (comment lines, stray text).
fn fields(paragraph: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in paragraph.lines() {
        if line.starts_with(' ') || line.starts_with('\t') || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            if !k.is_empty() && !k.contains(' ') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

/// The SPDX expression for a list of Debian licence fields that all apply (one per `Files:`
/// paragraph). `None` when any part cannot be mapped.
pub fn to_spdx(declared: &[String]) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for d in declared {
        match field_to_spdx(d)? {
            Mapped::PublicDomain => {}
            // A field's expression is a conjunction at its top level (`A AND (B OR C)`): its
            // terms are merged with the other paragraphs' so that each appears once.
            Mapped::Expr(e) => {
                for term in e.split(" AND ") {
                    if !parts.iter().any(|p| p == term) {
                        parts.push(term.to_string());
                    }
                }
            }
        }
    }
    if parts.is_empty() {
        return None;
    }
    let expr = if parts.len() == 1 { parts.remove(0) } else { parts.iter().map(|p| if p.contains(" OR ") && !p.starts_with('(') { format!("({p})") } else { p.clone() }).collect::<Vec<_>>().join(" AND ") };
    // The final word belongs to the spdx crate's parser: only what it accepts is emitted.
    spdx::Expression::parse(&expr).ok()?;
    Some(expr)
}

enum Mapped {
    /// Public domain has no SPDX identifier; it restricts nothing, so it is left out.
    PublicDomain,
    Expr(String),
}

/// One `License:` field: `A`, `A or B`, `A and B`, `A or B, and C`. Mixing `and` and `or`
/// without DEP-5's comma is ambiguous and is not mapped.
fn field_to_spdx(field: &str) -> Option<Mapped> {
    let lower = field.to_ascii_lowercase();
    let mut and_groups = Vec::new();
    for group in split_words(&lower, field, ", and ") {
        let has_or = contains_word(&group.to_ascii_lowercase(), "or");
        let has_and = contains_word(&group.to_ascii_lowercase(), "and");
        let (op, sep) = match (has_or, has_and) {
            (true, true) => return None,
            (true, false) => (" OR ", " or "),
            (false, _) => (" AND ", " and "),
        };
        let mut terms = Vec::new();
        for t in split_words(&group.to_ascii_lowercase(), group, sep) {
            match term_to_spdx(t.trim().trim_end_matches(','))? {
                Mapped::PublicDomain if op == " OR " => return None,
                Mapped::PublicDomain => {}
                Mapped::Expr(e) => terms.push(e),
            }
        }
        match terms.len() {
            0 => {}
            1 => and_groups.push(terms.remove(0)),
            _ if op == " OR " => and_groups.push(format!("({})", terms.join(op))),
            _ => and_groups.push(terms.join(op)),
        }
    }
    match and_groups.len() {
        0 => Some(Mapped::PublicDomain),
        // A lone `(A OR B)` needs no parentheses.
        1 => Some(Mapped::Expr(and_groups.remove(0).trim_start_matches('(').trim_end_matches(')').to_string())),
        _ => Some(Mapped::Expr(and_groups.join(" AND "))),
    }
}

/// Splits `original` at the case-insensitive separator `sep`, found in `lower`.
fn split_words<'a>(lower: &str, original: &'a str, sep: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in lower.match_indices(sep) {
        out.push(&original[start..i]);
        start = i + sep.len();
    }
    out.push(&original[start..]);
    out
}

fn contains_word(lower: &str, word: &str) -> bool {
    lower.split_whitespace().any(|w| w.trim_end_matches(',') == word)
}

/// One Debian short name, optionally `with <X> exception`.
fn term_to_spdx(term: &str) -> Option<Mapped> {
    let term = term.trim();
    let lower = term.to_ascii_lowercase();
    if let Some(i) = lower.find(" with ") {
        let base = match term_to_spdx(&term[..i])? {
            Mapped::Expr(e) => e,
            Mapped::PublicDomain => return None,
        };
        let exception = lower[i + 6..].trim().trim_end_matches(" exception").trim();
        let id = match exception {
            "autoconf" if base.starts_with("GPL-3") => "Autoconf-exception-3.0",
            "autoconf" => "Autoconf-exception-2.0",
            "bison" => "Bison-exception-2.2",
            "classpath" => "Classpath-exception-2.0",
            "font" => "Font-exception-2.0",
            "gcc-3.1" | "gcc-exception-3.1" | "gcc" if base.starts_with("GPL-3") => "GCC-exception-3.1",
            "libtool" => "Libtool-exception",
            "linux-syscall-note" => "Linux-syscall-note",
            "openssl" => return None, // no SPDX exception identifier
            _ => return None,
        };
        spdx::exception_id(id)?;
        return Some(Mapped::Expr(format!("{base} WITH {id}")));
    }
    match lower.as_str() {
        "public-domain" | "public domain" | "pd" => return Some(Mapped::PublicDomain),
        "expat" | "mit/expat" => return Some(Mapped::Expr("MIT".into())),
        _ => {}
    }
    // GPL family: GPL-2, GPL-2+, GPL-2.0+, GPLv2+, LGPL-2.1+, AGPL-3+, GFDL-1.2+.
    let norm = lower.replace("gplv", "gpl-").replace("gfdlv", "gfdl-");
    for family in ["lgpl", "agpl", "gpl", "gfdl"] {
        if let Some(rest) = norm.strip_prefix(family).and_then(|r| r.strip_prefix('-')) {
            let (ver, plus) = match rest.strip_suffix('+') {
                Some(v) => (v, true),
                None => (rest.strip_suffix("-only").or_else(|| rest.strip_suffix("-or-later")).unwrap_or(rest), rest.ends_with("-or-later")),
            };
            let ver = if ver.contains('.') { ver.to_string() } else { format!("{ver}.0") };
            let id = format!("{}-{ver}-{}", family.to_ascii_uppercase(), if plus { "or-later" } else { "only" });
            return valid(&id);
        }
    }
    if let Some(n) = lower.strip_prefix("bsd-").and_then(|r| r.strip_suffix("-clause")) {
        return valid(&format!("BSD-{n}-Clause"));
    }
    if lower == "apache-2" {
        return valid("Apache-2.0");
    }
    if lower == "mpl-2" {
        return valid("MPL-2.0");
    }
    // Debian's `Go` is the Go project's licence (golang.org/LICENSE), which is the BSD 3-clause
    // text word for word; SPDX lists it under that identifier and has no `Go` of its own.
    if lower == "go" {
        return valid("BSD-3-Clause");
    }
    // Anything else counts only if it is already a current SPDX identifier, spelled as SPDX
    // spells it, apart from case (`Zlib`, `ISC`, `BSL-1.0`, `curl`, `CC0-1.0`).
    if term.ends_with('+') {
        return None; // `X+` outside the GNU family has no current SPDX identifier
    }
    let mut capitalized = lower.clone();
    if let Some(first) = capitalized.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    [term.to_string(), term.to_ascii_uppercase(), capitalized].iter().find_map(|t| valid(t))
}

fn valid(id: &str) -> Option<Mapped> {
    let l = spdx::license_id(id)?;
    if l.is_deprecated() {
        return None;
    }
    Some(Mapped::Expr(l.name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(names: &[&str]) -> Option<String> {
        to_spdx(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn maps_debian_short_names() {
        assert_eq!(map(&["GPL-2+"]).as_deref(), Some("GPL-2.0-or-later"));
        assert_eq!(map(&["GPL-2"]).as_deref(), Some("GPL-2.0-only"));
        assert_eq!(map(&["LGPL-2.1+"]).as_deref(), Some("LGPL-2.1-or-later"));
        assert_eq!(map(&["GPLv3+"]).as_deref(), Some("GPL-3.0-or-later"));
        assert_eq!(map(&["GPL-2.0+"]).as_deref(), Some("GPL-2.0-or-later"));
        assert_eq!(map(&["Expat"]).as_deref(), Some("MIT"));
        assert_eq!(map(&["BSD-3-clause"]).as_deref(), Some("BSD-3-Clause"));
        assert_eq!(map(&["Apache-2.0"]).as_deref(), Some("Apache-2.0"));
        assert_eq!(map(&["zlib"]).as_deref(), Some("Zlib"));
        assert_eq!(map(&["GPL-2+", "public-domain", "Expat", "GPL-2+"]).as_deref(), Some("GPL-2.0-or-later AND MIT"));
        assert_eq!(map(&["LGPL-3+ or GPL-2+"]).as_deref(), Some("LGPL-3.0-or-later OR GPL-2.0-or-later"));
        assert_eq!(map(&["LGPL-3+ or GPL-2+", "MIT"]).as_deref(), Some("(LGPL-3.0-or-later OR GPL-2.0-or-later) AND MIT"));
        assert_eq!(map(&["GPL-2+ with Autoconf exception"]).as_deref(), Some("GPL-2.0-or-later WITH Autoconf-exception-2.0"));
        assert_eq!(map(&["BSD-3-clause or GPL-2, and Expat"]).as_deref(), Some("(BSD-3-Clause OR GPL-2.0-only) AND MIT"));
        // containerd's copyright file in bookworm (1.6.20~ds1-1+deb12u3).
        assert_eq!(
            map(&["Apache-2.0", "Apache-2.0 and Go", "BSD-2-Clause", "CC-BY-SA-4.0", "Go"]).as_deref(),
            Some("Apache-2.0 AND BSD-3-Clause AND BSD-2-Clause AND CC-BY-SA-4.0")
        );
    }

    #[test]
    fn refuses_what_has_no_spdx_identifier() {
        assert_eq!(map(&["GPL-2+", "OpenLDAP-custom"]), None);
        assert_eq!(map(&["permissive"]), None);
        assert_eq!(map(&["GPL"]), None);
        assert_eq!(map(&["public-domain"]), None);
        assert_eq!(map(&["A or B and C"]), None);
        assert_eq!(map(&["GPL-2+ with OpenSSL exception"]), None);
    }

    #[test]
    fn parses_machine_readable_copyright() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                    Upstream-Name: containerd\nSource: https://github.com/containerd/containerd\n\n\
                    Files: *\nCopyright: The containerd Authors\nLicense: Apache-2.0\n\n\
                    Files: vendor/github.com/x/*\nCopyright: 2015 X\nLicense: Expat\n\n\
                    Files: debian/*\nCopyright: 2017 Someone\nLicense: Apache-2.0\n\n\
                    License: Apache-2.0\n Licensed under the Apache License, Version 2.0\n .\n On Debian systems, see\n License: GPL-3\n\n\
                    License: Expat\n Permission is hereby granted\n";
        let l = parse_copyright(text).unwrap();
        assert_eq!(l.declared, vec!["Apache-2.0", "Expat"]);
        assert_eq!(l.spdx.as_deref(), Some("Apache-2.0 AND MIT"));
    }

    #[test]
    fn ignores_free_form_copyright_files() {
        assert_eq!(parse_copyright("This is the Debian prepackaged version of foo.\n\nLicense: GPL\n"), None);
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: SomethingCustom\n";
        let l = parse_copyright(text).unwrap();
        assert_eq!(l.declared, vec!["SomethingCustom"]);
        assert_eq!(l.spdx, None);
    }
}
