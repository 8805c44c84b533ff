//! The manifest loader on arbitrary text: YAML syntax, the schema (unknown fields, types), step
//! checks, timeouts, modes, variables and their references. Errors are expected; a panic, a hang
//! or a huge allocation is a bug.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let origin = Path::new("/fuzz/manifest.yaml");
    match kib::manifest::parse_str(text, origin, &[]) {
        Ok(m) => {
            // A loaded manifest's steps expand with the builtin facts set, as Phase 1 does.
            let mut vars = m.variables.clone();
            for b in kib::manifest::vars::BUILTIN {
                vars.0.insert((*b).to_string(), "x".to_string());
            }
            for step in &m.steps {
                if let Err(e) = step.action.expand(&vars) {
                    panic!("step `{}` loaded but does not expand: {e:?}", step.name);
                }
            }
        }
        Err(e) => {
            // Every error names the file it concerns (except a bad --set, which names no file).
            let msg = e.to_string();
            assert!(msg.contains("/fuzz/manifest.yaml"), "error without the file name: {msg}");
        }
    }
});
