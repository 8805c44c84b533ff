//! `${name}` expansion, against a reference written independently here (a byte-at-a-time scan).
//! The input is `name=value` lines, a NUL byte, then the template. Beyond "no panic": the result
//! (or the failure) must match the reference, so `$${` escapes, lone `$`, unclosed `${` and
//! values that themselves contain `${...}` (copied, never expanded again) are all checked.
#![no_main]

use indexmap::IndexMap;
use kib::manifest::Vars;
use libfuzzer_sys::fuzz_target;

fn reference(vars: &IndexMap<String, String>, s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"$${") {
            out.extend_from_slice(b"${");
            i += 3;
        } else if b[i..].starts_with(b"${") {
            let close = b[i + 2..].iter().position(|&c| c == b'}')?;
            out.extend_from_slice(vars.get(&s[i + 2..i + 2 + close])?.as_bytes());
            i += 3 + close;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (defs, template) = text.split_once('\0').unwrap_or(("", text));
    let mut vars = Vars::default();
    for line in defs.lines() {
        if let Some((k, v)) = line.split_once('=') {
            vars.0.insert(k.to_string(), v.to_string());
        }
    }
    let out = vars.expand(template);
    assert_eq!(out.as_ref().ok(), reference(&vars.0, template).as_ref(), "template {template:?}");
    if !template.contains('$') {
        assert_eq!(out.as_deref(), Ok(template));
    }
});
