//! `kib sysprep-operations`: what Phase 2's sysprep does, by the names `sysprep.skip` takes.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::SysprepOperationsArgs;
use crate::out;
use crate::phase2::sysprep;

pub fn run(_args: &SysprepOperationsArgs) -> Result<ExitCode> {
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
