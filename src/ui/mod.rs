//! What the user sees while kib works: the log lines (tracing), and the progress of phases,
//! steps and long tasks ([`crate::progress`] events), shown one of three ways:
//!
//! - **bars** on a terminal (stdout and stderr both TTYs, `NO_COLOR` unset, `TERM` not `dumb`):
//!   one line per running phase, step and task with a spinner and its elapsed time (tasks with a
//!   bar, bytes and rate), a line with its duration when it ends, log lines printed above the
//!   bars (tracing-indicatif's writer), and a summary table at the end;
//! - **plain** lines otherwise (a pipe, a log, `NO_COLOR`): no escape codes, a line when a phase
//!   or step starts and ends, and at most one line every [`plain::EVERY`] for a long task;
//! - **json** with `--output json` on `kib customize`: JSON lines on stdout (see the README's
//!   event table), logs stay on stderr.
//!
//! Timestamps appear only with `-v` or in the `--log-file`.

mod bars;
mod json;
mod plain;
mod summary;

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::{Cli, Command, OutputFormat};
use crate::progress;

pub use summary::Summary;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Plain,
    Json,
}

/// Chooses the mode: `json` for `customize --output json`; bars when both standard streams are
/// terminals and neither `NO_COLOR` (any non-empty value) nor `TERM=dumb` is set; plain lines
/// otherwise.
pub fn mode(output: OutputFormat, json_events: bool) -> Mode {
    if output == OutputFormat::Json && json_events {
        return Mode::Json;
    }
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() && !no_color && !dumb {
        Mode::Bars
    } else {
        Mode::Plain
    }
}

/// Sets up logging and progress for `cli`'s command: installs the tracing subscriber (stderr,
/// through the bars' writer in bars mode; plus the `--log-file`, with timestamps) and the
/// progress sink (none with `-q`, except the JSON stream). No thread starts here: kib enters its
/// mount namespace later, which needs a single-threaded process. Returns the mode.
///
/// Errors: the log file cannot be opened.
pub fn init(cli: &Cli) -> Result<Mode> {
    let json_events = matches!(cli.command, Command::Customize(_));
    let mode = mode(cli.output, json_events);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "info,kib::output=debug",
        (false, _) => "debug",
    };
    let filter = || EnvFilter::try_from_env("KIB_LOG").unwrap_or_else(|_| level.into());
    let summary = Arc::new(Mutex::new(Summary::default()));
    let timestamps = cli.verbose > 0;
    let file_layer = match &cli.log_file {
        Some(path) => {
            let f = open_log(path)?;
            let file_level = if cli.verbose > 1 { "debug" } else { "info,kib::output=debug" };
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(Mutex::new(f))
                    .with_filter(EnvFilter::try_from_env("KIB_LOG").unwrap_or_else(|_| file_level.into())),
            )
        }
        None => None,
    };
    let registry = tracing_subscriber::registry().with(file_layer);
    match mode {
        Mode::Bars => {
            let multi = indicatif::MultiProgress::new();
            let writer = tracing_indicatif::writer::IndicatifWriter::<tracing_indicatif::writer::Stderr>::new(multi.clone());
            let console = tracing_subscriber::fmt::layer().event_format(Console { timestamps, ansi: true }).with_writer(writer).with_filter(filter());
            registry.with(console).init();
            if !cli.quiet {
                let _ = progress::install(Box::new(bars::Bars::new(multi, summary)));
            }
        }
        Mode::Plain | Mode::Json => {
            let console = tracing_subscriber::fmt::layer().event_format(Console { timestamps, ansi: false }).with_writer(std::io::stderr).with_filter(filter());
            registry.with(console).init();
            let sink: Box<dyn progress::Sink> = if mode == Mode::Json { Box::new(json::Json::new()) } else { Box::new(plain::Plain::new(summary)) };
            // -q: only warnings and errors, no progress; the JSON stream is the output asked for.
            if !cli.quiet || mode == Mode::Json {
                let _ = progress::install(sink);
            }
        }
    }
    Ok(mode)
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening the log file {}", path.display()))
}

/// The console's log format: the message alone for INFO, `warning: `/`error: `/`debug: `
/// before others; the time first with `-v`.
struct Console {
    timestamps: bool,
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for Console
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &tracing::Event<'_>) -> std::fmt::Result {
        if self.timestamps {
            write!(writer, "{} ", humantime::format_rfc3339_millis(std::time::SystemTime::now()))?;
        }
        let level = *event.metadata().level();
        let (name, colour) = match level {
            tracing::Level::ERROR => ("error: ", "\x1b[31m"),
            tracing::Level::WARN => ("warning: ", "\x1b[33m"),
            tracing::Level::INFO => ("", ""),
            tracing::Level::DEBUG => ("debug: ", "\x1b[2m"),
            tracing::Level::TRACE => ("trace: ", "\x1b[2m"),
        };
        if self.ansi && !colour.is_empty() {
            write!(writer, "{colour}{name}\x1b[0m")?;
        } else {
            write!(writer, "{name}")?;
        }
        if level == tracing::Level::WARN {
            let mut message = String::new();
            ctx.format_fields(Writer::new(&mut message), event)?;
            progress::warn(message.clone());
            write!(writer, "{message}")?;
        } else {
            ctx.format_fields(writer.by_ref(), event)?;
        }
        writeln!(writer)
    }
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`.
pub fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1000.0)
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let s = seconds.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A byte count for people: `812.4 MiB`.
pub fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(duration(0.25), "250ms");
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(bytes(3 << 20), "3.00 MiB");
    }
}
