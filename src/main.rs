use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use kib::cli::{Cli, Command};
use kib::{customize, exec, manifest, mounts, phase2::sysprep};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "info,kib::output=debug",
        (false, _) => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KIB_LOG").unwrap_or_else(|_| level.into()))
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match exec::interrupted() {
                Some(sig) => ExitCode::from(128 + sig as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// For the subcommands that attach and mount: checks for root, then enters kib's private mount
/// namespace (before any thread starts) and installs the SIGINT/SIGTERM handlers.
fn mounting_as_root(subcommand: &str) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("kib {subcommand} must run as root: it attaches loop devices and mounts filesystems");
    }
    mounts::enter_private_namespace()?;
    exec::install_signal_handlers()?;
    Ok(())
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Shell(args) => {
            mounting_as_root("shell")?;
            kib::shell::run(&args)
        }
        command => run_to_end(command).map(|()| ExitCode::SUCCESS),
    }
}

fn run_to_end(command: Command) -> Result<()> {
    match command {
        Command::Shell(_) => unreachable!("handled by run"),
        Command::Customize(args) => {
            mounting_as_root("customize")?;
            customize::run(&args)
        }
        Command::Check(args) => {
            mounting_as_root("check")?;
            customize::check(&args)
        }
        Command::Inspect(args) => {
            mounting_as_root("inspect")?;
            let image = kib::phase0::Image::open(&kib::phase0::Options {
                image: args.image.clone(),
                verify: false,
                work_base: args.work_dir.clone(),
                cache_dir: None,
                read_only: true,
                grow_to: None,
            })?;
            let report = kib::inspect::report(&image)?;
            image.close()?;
            if let Some(format) = args.sbom {
                let doc = format.render(&kib::phase2::sbom::SbomInput::from_report(&report))?;
                match &args.sbom_output {
                    Some(path) => kib::phase2::sbom::write_file(path, &doc)?,
                    None => kib::out::line(String::from_utf8_lossy(&doc).trim_end()),
                }
            } else if args.output == "json" {
                kib::out::line(serde_json::to_string_pretty(&report)?);
            } else {
                kib::out::line(kib::inspect::text(&report).trim_end());
            }
            Ok(())
        }
        Command::Cleanup(args) => {
            if !rustix::process::geteuid().is_root() {
                bail!("kib cleanup must run as root: it detaches loop devices");
            }
            // binfmt_misc may have to be mounted to find stale handlers: in kib's own namespace.
            mounts::enter_private_namespace()?;
            let r = kib::cleanup::run(&args.work_dir)?;
            for h in &r.binfmt_handlers {
                kib::out::line(format!("removed binfmt_misc handler {h}"));
            }
            for d in &r.loop_devices {
                kib::out::line(format!("detached loop device {d}"));
            }
            for d in &r.work_dirs {
                kib::out::line(format!("removed work directory {}", d.display()));
            }
            for d in &r.skipped_live {
                kib::out::line(format!("kept {} (its kib process is running)", d.display()));
            }
            if r.loop_devices.is_empty() && r.work_dirs.is_empty() && r.binfmt_handlers.is_empty() {
                kib::out::line(format!("nothing to clean up in {}", args.work_dir.display()));
            }
            Ok(())
        }
        Command::Validate(args) => {
            let m = manifest::load(&args.manifest, &args.set)?;
            kib::out::line(format!("{} ({}): {} steps from {} files", m.name, m.path.display(), m.steps.len(), m.files.len()));
            for (i, s) in m.steps.iter().enumerate() {
                kib::out::line(format!("{:3}. {:<14} {}  [{}]", i + 1, s.action.kind(), s.name, s.origin.display()));
            }
            Ok(())
        }
        Command::Fetch(args) => customize::fetch_all(&args),
        Command::SysprepOperations => {
            for op in sysprep::OPERATIONS {
                kib::out::line(format!("{:<14} {}", op.name, op.description));
            }
            Ok(())
        }
    }
}
