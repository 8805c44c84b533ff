//! `kib schema`: the JSON Schema of manifests and phase files, derived with schemars from the
//! serde types that read them ([`crate::manifest::schema::ManifestFile`]), never written by hand.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::SchemaArgs;
use crate::cli::OutputFormat;
use crate::out;

/// The schema, as a JSON value (draft 2020-12).
pub fn schema() -> serde_json::Value {
    let mut s = schemars::schema_for!(crate::manifest::schema::ManifestFile).to_value();
    if let Some(o) = s.as_object_mut() {
        o.insert("title".into(), "kib manifest or phase file (apiVersion kib/v1)".into());
    }
    s
}

/// Prints the schema (it is JSON with `--output text` too).
///
/// Errors: none in practice (serializing a JSON value).
pub fn run(_args: &SchemaArgs, _output: OutputFormat) -> Result<ExitCode> {
    out::line(serde_json::to_string_pretty(&schema())?);
    Ok(ExitCode::SUCCESS)
}
