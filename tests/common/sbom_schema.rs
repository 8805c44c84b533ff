//! Validation of SBOM documents against the official JSON schemas vendored in
//! `testdata/schemas/` (see its README for where they come from). No network: the CycloneDX
//! schema's `$ref`s to `spdx.schema.json` and `jsf-0.82.schema.json` are served from that folder.
//! Shared by the unit tests in `src/phase2/sbom.rs` and the integration tests.

use std::path::PathBuf;

use serde_json::Value;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/schemas")
}

fn load(file: &str) -> Value {
    let path = schema_dir().join(file);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Serves the schemas the vendored ones refer to, by file name, from `testdata/schemas`;
/// refuses anything else (so a test can never reach the network).
struct LocalSchemas;

impl jsonschema::Retrieve for LocalSchemas {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let s = uri.as_str();
        for (prefix, file) in [
            ("http://cyclonedx.org/schema/spdx.schema.json", "spdx.schema.json"),
            ("http://cyclonedx.org/schema/jsf-0.82.schema.json", "jsf-0.82.schema.json"),
        ] {
            if s.starts_with(prefix) {
                return Ok(load(file));
            }
        }
        Err(format!("schema {s} is not vendored in testdata/schemas").into())
    }
}

/// Which standard.
#[derive(Debug, Clone, Copy)]
pub enum SbomKind {
    /// SPDX 2.3 (`spdx-schema.json`).
    Spdx23,
    /// CycloneDX 1.5 (`bom-1.5.schema.json`).
    CycloneDx15,
}

/// The schema violations of `doc`, as `<instance path>: <message>` lines; empty when it is valid.
pub fn schema_errors(doc: &Value, kind: SbomKind) -> Vec<String> {
    let schema = load(match kind {
        SbomKind::Spdx23 => "spdx-schema.json",
        SbomKind::CycloneDx15 => "bom-1.5.schema.json",
    });
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(true)
        .with_retriever(LocalSchemas)
        .build(&schema)
        .unwrap_or_else(|e| panic!("compiling the {kind:?} schema: {e}"));
    validator.iter_errors(doc).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// Panics with every violation when `doc` does not match its schema.
pub fn assert_schema_valid(doc: &Value, kind: SbomKind) {
    let errors = schema_errors(doc, kind);
    assert!(errors.is_empty(), "{kind:?} document violates its schema:\n{}", errors.join("\n"));
}

/// The venv holding the reference tools (`scripts/deps.sh` makes it): `KIB_SBOM_VALIDATORS`, else
/// `/var/cache/kib/sbom-validators/current`.
fn validators_venv() -> PathBuf {
    std::env::var_os("KIB_SBOM_VALIDATORS").map_or_else(|| PathBuf::from("/var/cache/kib/sbom-validators/current"), PathBuf::from)
}

/// Panics with the tool's findings unless the standard's own reference tool accepts the SBOM in
/// `file`: spdx-tools (the library behind `pyspdxtools`: parse, then validate) for SPDX,
/// cyclonedx-python-lib's `JsonStrictValidator` for CycloneDX (`scripts/lib/sbom-validate.py`).
#[allow(dead_code)] // used by the integration tests, not by sbom.rs's unit tests
pub fn assert_reference_tool_accepts(file: &std::path::Path, kind: SbomKind) {
    let python = validators_venv().join("bin/python3");
    assert!(python.exists(), "{} is missing: run scripts/deps.sh (it installs spdx-tools and cyclonedx-python-lib from PyPI)", python.display());
    let helper = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/sbom-validate.py");
    let which = match kind {
        SbomKind::Spdx23 => "spdx",
        SbomKind::CycloneDx15 => "cyclonedx",
    };
    let out = std::process::Command::new(&python).arg(&helper).arg(which).arg(file).output().expect("running scripts/lib/sbom-validate.py");
    assert!(
        out.status.success(),
        "the {which} reference tool rejects {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
