//! `kib validate`: load a manifest with its includes and variables, check it, list its steps.
//! Touches no image and needs no root.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{OutputFormat, ValidateArgs};
use crate::{manifest, out};

pub fn run(args: &ValidateArgs, output: OutputFormat) -> Result<ExitCode> {
    let m = manifest::load_with(&args.manifest, &args.set, args.provider.as_deref())?;
    if output == OutputFormat::Json {
        let steps: Vec<_> = m.steps.iter().map(|s| serde_json::json!({"name": s.name, "kind": s.action.kind(), "origin": s.origin})).collect();
        let files: Vec<_> = m.files.iter().map(|f| serde_json::json!(f)).collect();
        out::line(serde_json::to_string_pretty(&serde_json::json!({"name": m.name, "path": m.path, "files": files, "steps": steps}))?);
        return Ok(ExitCode::SUCCESS);
    }
    out::line(format!("{} ({}): {} steps from {} files", m.name, m.path.display(), m.steps.len(), m.files.len()));
    if let Some((path, p)) = &m.provider {
        let formats: Vec<&str> = p.formats.iter().map(|f| f.name()).collect();
        out::line(format!("provider {} ({}): formats {}", p.name, path.display(), if formats.is_empty() { "-".into() } else { formats.join(", ") }));
    }
    for (i, s) in m.steps.iter().enumerate() {
        out::line(format!("{:3}. {:<14} {}  [{}]", i + 1, s.action.kind(), s.name, s.origin.display()));
    }
    Ok(ExitCode::SUCCESS)
}
