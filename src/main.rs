use std::process::ExitCode;

use clap::Parser;
use kib::cli::{Cli, Command};
use kib::progress::{self, Event, Status};
use kib::{cmd, exec, ui};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = ui::init(&cli) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let out = cli.output;
    let started = std::time::Instant::now();
    let result = match &cli.command {
        Command::Customize(args) => cmd::customize::run(args),
        Command::Shell(args) => cmd::shell::run(args, out),
        Command::Validate(args) => cmd::validate::run(args, out),
        Command::SysprepOperations(args) => cmd::sysprep_operations::run(args, out),
        Command::Check(args) => cmd::check::run(args, out),
        Command::Inspect(args) => cmd::inspect::run(args, out),
        Command::Cleanup(args) => cmd::cleanup::run(args, out),
        Command::Fetch(args) => cmd::fetch::run(args, out),
        Command::Completions(args) => cmd::completions::run(args, out),
        Command::Man(args) => cmd::man::run(args, out),
        Command::Schema(args) => cmd::schema::run(args, out),
        Command::Matrix(c) => cmd::matrix::run(c, out),
        Command::Build(args) => cmd::build::run(args),
        Command::Cache(c) => cmd::cache::run(c, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The JSON-lines stream (customize --output json) ends with the failure too.
            progress::emit(Event::Result { status: Status::Failed, seconds: started.elapsed().as_secs_f64(), outputs: Vec::new(), error: Some(format!("{e:#}")) });
            eprintln!("error: {e:#}");
            match exec::interrupted() {
                Some(sig) => ExitCode::from(128 + sig as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}
