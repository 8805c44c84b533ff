//! Bars on a terminal: a spinner line per running phase and step with its elapsed time, a bar
//! with bytes, rate and ETA per task, a line with the duration when each ends, and the summary.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::Summary;
use crate::progress::{Event, Kind, Sink, Status};

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<u64, ProgressBar>>,
    summary: Arc<Mutex<Summary>>,
}

impl Bars {
    pub fn new(multi: MultiProgress, summary: Arc<Mutex<Summary>>) -> Bars {
        Bars { multi, bars: Mutex::new(HashMap::new()), summary }
    }
}

fn indent(kind: Kind) -> &'static str {
    match kind {
        Kind::Phase => "",
        Kind::Step => "  ",
        Kind::Task => "    ",
    }
}

fn style(kind: Kind, total: bool) -> ProgressStyle {
    let template = match (kind, total) {
        (Kind::Task, true) => "{prefix}{spinner:.cyan} {msg} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        (Kind::Task, false) => "{prefix}{spinner:.cyan} {msg} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
        (Kind::Phase, _) => "{prefix}{spinner:.green} {msg:.bold} {elapsed}",
        (Kind::Step, _) => "{prefix}{spinner:.green} {msg} {elapsed}",
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()).progress_chars("=> ")
}

impl Sink for Bars {
    fn event(&self, event: &Event) {
        if let Ok(mut s) = self.summary.lock() {
            s.record(event);
        }
        let Ok(mut bars) = self.bars.lock() else { return };
        match event {
            Event::Start { id, kind, label, total_bytes } => {
                let pb = self.multi.add(ProgressBar::new(total_bytes.unwrap_or(0)));
                pb.set_style(style(*kind, total_bytes.is_some()));
                pb.set_prefix(indent(*kind));
                pb.set_message(label.clone());
                pb.enable_steady_tick(Duration::from_millis(120));
                bars.insert(*id, pb);
            }
            Event::Progress { id, bytes, total_bytes, .. } => {
                if let Some(pb) = bars.get(id) {
                    if let Some(t) = total_bytes {
                        pb.set_length((*t).max(*bytes));
                    }
                    pb.set_position(*bytes);
                }
            }
            Event::End { id, kind, label, status, seconds, bytes } => {
                if let Some(pb) = bars.remove(id) {
                    pb.finish_and_clear();
                    self.multi.remove(&pb);
                }
                let (mark, what) = match (status, bytes) {
                    (Status::Ok, Some(b)) if *b > 0 => ("\x1b[32m✓\x1b[0m", format!("{}  {}", super::duration(*seconds), super::plain::amount(*b, None, *seconds))),
                    (Status::Ok, _) => ("\x1b[32m✓\x1b[0m", super::duration(*seconds)),
                    (Status::Failed, _) => ("\x1b[31m✗\x1b[0m", format!("failed after {}", super::duration(*seconds))),
                    (Status::Skipped, _) => ("\x1b[2m-\x1b[0m", "skipped".to_string()),
                };
                let label = if *kind == Kind::Phase { format!("\x1b[1m{label}\x1b[0m") } else { label.clone() };
                let _ = self.multi.println(format!("{}{mark} {label}  \x1b[2m{what}\x1b[0m", indent(*kind)));
            }
            Event::Warning { .. } => {}
            Event::Result { status, seconds, outputs, .. } => {
                for pb in bars.drain().map(|(_, pb)| pb) {
                    pb.finish_and_clear();
                }
                if *status == Status::Ok {
                    let table = self.summary.lock().map(|s| s.render(*seconds, outputs)).unwrap_or_default();
                    let _ = self.multi.suspend(|| writeln!(std::io::stdout().lock(), "\n{}", table.trim_end()));
                }
            }
        }
    }
}
