//! `kib validate`: load a manifest with its includes and variables, check it, list its steps.
//! Touches no image and needs no root.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::ValidateArgs;
use crate::{manifest, out};

pub fn run(args: &ValidateArgs) -> Result<ExitCode> {
    let m = manifest::load(&args.manifest, &args.set)?;
    out::line(format!("{} ({}): {} steps from {} files", m.name, m.path.display(), m.steps.len(), m.files.len()));
    for (i, s) in m.steps.iter().enumerate() {
        out::line(format!("{:3}. {:<14} {}  [{}]", i + 1, s.action.kind(), s.name, s.origin.display()));
    }
    Ok(ExitCode::SUCCESS)
}
