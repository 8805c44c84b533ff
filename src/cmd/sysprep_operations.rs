//! `kib sysprep-operations`: what Phase 2's sysprep does, by the names `sysprep.skip` takes.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{OutputFormat, SysprepOperationsArgs};
use crate::out;
use crate::phase2::sysprep;

pub fn run(_args: &SysprepOperationsArgs, output: OutputFormat) -> Result<ExitCode> {
    if output == OutputFormat::Json {
        let ops: Vec<_> = sysprep::OPERATIONS.iter().map(|op| serde_json::json!({"name": op.name, "description": op.description})).collect();
        out::line(serde_json::to_string_pretty(&ops)?);
        return Ok(ExitCode::SUCCESS);
    }
    for op in sysprep::OPERATIONS {
        out::line(format!("{:<14} {}", op.name, op.description));
    }
    out::line(format!(
        "{:<14} {}",
        crate::selinux::SKIP_NAME,
        "after the last write into the tree: label every file with the image's own SELinux policy (setfiles), when /etc/selinux/config says enforcing or permissive"
    ));
    Ok(ExitCode::SUCCESS)
}
