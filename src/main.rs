use std::process::ExitCode;

use clap::Parser;
use kib::cli::{Cli, Command};
use kib::{cmd, exec};

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
    let result = match &cli.command {
        Command::Customize(args) => cmd::customize::run(args),
        Command::Shell(args) => cmd::shell::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::SysprepOperations(args) => cmd::sysprep_operations::run(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Cleanup(args) => cmd::cleanup::run(args),
        Command::Fetch(args) => cmd::fetch::run(args),
        Command::Matrix(c) => cmd::matrix::run(c),
        Command::Build(args) => cmd::build::run(args),
    };
    match result {
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
