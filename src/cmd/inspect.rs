//! `kib inspect`: what an image holds, read-only (the report is [`crate::inspect`]'s), or an SBOM
//! of it.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{InspectArgs, OutputFormat};
use crate::phase0::{self, Image};
use crate::phase2::sbom;
use crate::{inspect, out};

pub fn run(args: &InspectArgs, output: OutputFormat) -> Result<ExitCode> {
    if args.sbom.is_some() && output == OutputFormat::Json {
        anyhow::bail!("--sbom prints an SBOM, which is JSON already; leave out --output json");
    }
    let backend = match super::mounting("inspect", args.backend)? {
        super::Entered::Ran(code) => return Ok(code),
        super::Entered::Here(choice) => choice.backend,
    };
    if let Some(out) = &args.sbom_output {
        crate::input::refuse_outputs_on_input(&args.image, std::slice::from_ref(out))?;
    }
    let image = Image::open(&phase0::Options {
        image: args.image.clone(),
        verify: false,
        work_base: args.work_dir.clone(),
        cache_dir: None,
        read_only: true,
        grow_to: None,
        start_from: None,
        backend,
        guestfs: Some(super::guestfs_settings(&crate::config::default_cache_dir(), args.appliance_timeout)),
    })?;
    let report = inspect::report(&image)?;
    image.close()?;
    if let Some(format) = args.sbom {
        let doc = format.render(&report.sbom_input())?;
        match &args.sbom_output {
            Some(path) => sbom::write_file(path, &doc)?,
            None => out::line(String::from_utf8_lossy(&doc).trim_end()),
        }
    } else {
        match output {
            OutputFormat::Json => out::line(serde_json::to_string_pretty(&report)?),
            OutputFormat::Text => out::line(inspect::text(&report).trim_end()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
