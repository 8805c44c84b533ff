//! `${name}` expansion of manifest strings.

use indexmap::IndexMap;

/// Variables kib provides: the image's Debian-style architecture (`amd64`, `arm64`) and its
/// os-release `ID`, `VERSION_ID` and `VERSION_CODENAME` (known once Phase 0 has looked at it),
/// kib's version, the build's start date (UTC, RFC 3339) and the manifest's name.
pub const BUILTIN: &[&str] = &["arch", "os_id", "os_version_id", "os_codename", "os_family", "package_format", "kib_version", "build_date", "manifest_name"];

/// A set of variables: name to value.
#[derive(Debug, Clone, Default)]
pub struct Vars(pub IndexMap<String, String>);

/// A `${name}` whose name is not a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undefined(pub String);

impl Vars {
    /// Replaces each `${name}` in `s` with the variable's value; `$${` gives a literal `${`.
    /// A `$` not followed by `{` is kept as it is.
    ///
    /// Errors: the first name that is not defined, or an unclosed `${`.
    pub fn expand(&self, s: &str) -> Result<String, Undefined> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix("${") {
                out.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('{') {
                let end = tail.find('}').ok_or_else(|| Undefined(format!("{{{tail}")))?;
                let name = &tail[..end];
                let value = self.0.get(name).ok_or_else(|| Undefined(name.to_string()))?;
                out.push_str(value);
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Whether `name` can be a variable: letters, digits and `_`, not starting with a digit,
    /// so that it is also a valid environment variable name for `run` steps.
    pub fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars([("arch".to_string(), "amd64".to_string()), ("v".to_string(), "1.30".to_string())].into_iter().collect())
    }

    #[test]
    fn expands_known_names() {
        assert_eq!(vars().expand("kubectl-${v}-${arch}").unwrap(), "kubectl-1.30-amd64");
    }

    #[test]
    fn keeps_lone_dollars_and_escapes() {
        assert_eq!(vars().expand("a $HOME $$ $${v} ${v}$").unwrap(), "a $HOME $$ ${v} 1.30$");
    }

    #[test]
    fn names_the_undefined_variable() {
        assert_eq!(vars().expand("x ${nope} y"), Err(Undefined("nope".into())));
        // An unclosed `${` names what follows it.
        assert_eq!(vars().expand("x ${v"), Err(Undefined("{v".into())));
    }

    #[test]
    fn validates_names() {
        assert!(Vars::valid_name("kubernetes_version"));
        assert!(!Vars::valid_name("1x"));
        assert!(!Vars::valid_name("a-b"));
    }
}
