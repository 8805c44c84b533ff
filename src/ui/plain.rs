//! Plain progress lines on stderr, for pipes, logs and `NO_COLOR`: no escape codes; a line when a
//! phase or step starts and ends; for a long task, at most one line every [`EVERY`]; and when
//! nothing was printed for [`QUIET`] while something runs (apt in a long step), a line saying
//! what is still running.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use super::Summary;
use crate::progress::{Event, Kind, Sink, Status};

/// How often a long task prints its progress at most.
pub const EVERY: Duration = Duration::from_secs(5);

/// After this long without a line, say what is still running.
pub const QUIET: Duration = Duration::from_secs(15);

#[derive(Default)]
struct State {
    /// Running activities by id (ids grow: the last is the innermost), with their label, start
    /// and the last progress line printed for them.
    open: BTreeMap<u64, (Kind, String, Instant, Option<Instant>)>,
    last_line: Option<Instant>,
}

pub struct Plain {
    state: Arc<Mutex<State>>,
    summary: Arc<Mutex<Summary>>,
    ticker: Once,
}

impl Plain {
    pub fn new(summary: Arc<Mutex<Summary>>) -> Plain {
        Plain { state: Arc::default(), summary, ticker: Once::new() }
    }
}

fn indent(kind: Kind) -> &'static str {
    match kind {
        Kind::Phase => "",
        Kind::Step => "  ",
        Kind::Task => "    ",
    }
}

/// `512.00 MiB of 1.00 GiB (50%), 120.00 MiB/s`
pub(super) fn amount(bytes: u64, total: Option<u64>, seconds: f64) -> String {
    let rate = if seconds > 0.0 { format!(", {}/s", super::bytes((bytes as f64 / seconds) as u64)) } else { String::new() };
    match total {
        Some(t) => format!("{} of {} ({}%){rate}", super::bytes(bytes), super::bytes(t), (bytes.min(t) * 100).checked_div(t).unwrap_or(100)),
        None => format!("{}{rate}", super::bytes(bytes)),
    }
}

fn print(state: &mut State, line: &str) {
    state.last_line = Some(Instant::now());
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Started with the first activity (never before: kib enters its mount namespace first, which
/// needs a single-threaded process), it wakes once a second.
fn tick(state: &Mutex<State>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Ok(mut s) = state.lock() else { return };
        let now = Instant::now();
        if s.last_line.is_some_and(|l| now.duration_since(l) < QUIET) {
            continue;
        }
        if let Some((kind, label, start, _)) = s.open.values().next_back().cloned() {
            print(&mut s, &format!("{}{label}: still running ({})", indent(kind), super::duration(now.duration_since(start).as_secs_f64())));
        }
    }
}

impl Sink for Plain {
    fn event(&self, event: &Event) {
        if let Ok(mut s) = self.summary.lock() {
            s.record(event);
        }
        let Ok(mut state) = self.state.lock() else { return };
        match event {
            Event::Start { id, kind, label, .. } => {
                state.open.insert(*id, (*kind, label.clone(), Instant::now(), None));
                if *kind != Kind::Task {
                    print(&mut state, &format!("{}{label}", indent(*kind)));
                }
                let shared = Arc::clone(&self.state);
                self.ticker.call_once(|| {
                    std::thread::spawn(move || tick(&shared));
                });
            }
            Event::Progress { id, kind, label, bytes, total_bytes, seconds } => {
                let now = Instant::now();
                let Some(entry) = state.open.get_mut(id) else { return };
                let last = entry.3.unwrap_or(entry.2);
                if now.duration_since(last) < EVERY {
                    return;
                }
                entry.3 = Some(now);
                let line = format!("{}{label}: {}", indent(*kind), amount(*bytes, *total_bytes, *seconds));
                print(&mut state, &line);
            }
            Event::End { id, kind, label, status, seconds, bytes } => {
                state.open.remove(id);
                let what = match (status, bytes) {
                    (Status::Ok, Some(b)) if *b > 0 => format!("done in {} ({})", super::duration(*seconds), amount(*b, None, *seconds)),
                    (Status::Ok, _) => format!("done in {}", super::duration(*seconds)),
                    (Status::Failed, _) => format!("FAILED after {}", super::duration(*seconds)),
                    (Status::Skipped, _) => "skipped".to_string(),
                };
                print(&mut state, &format!("{}{label}: {what}", indent(*kind)));
            }
            Event::Warning { .. } => {}
            Event::Result { status: Status::Ok, seconds, outputs, .. } => {
                let table = self.summary.lock().map(|s| s.render(*seconds, outputs)).unwrap_or_default();
                let _ = writeln!(std::io::stdout().lock(), "\n{}", table.trim_end());
            }
            Event::Result { .. } => {}
        }
    }
}
