//! `--output json`: every progress event as one JSON object per line on stdout, with `t`, the
//! seconds since the run started. Progress events of one task come at most once a second.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::progress::{Event, Sink};

/// How often a task's progress is written at most.
const EVERY: Duration = Duration::from_secs(1);

pub struct Json {
    started: Instant,
    last: Mutex<HashMap<u64, Instant>>,
}

impl Json {
    pub fn new() -> Json {
        Json { started: Instant::now(), last: Mutex::new(HashMap::new()) }
    }
}

impl Sink for Json {
    fn event(&self, event: &Event) {
        if let Event::Progress { id, .. } = event {
            let now = Instant::now();
            let Ok(mut last) = self.last.lock() else { return };
            if last.get(id).is_some_and(|l| now.duration_since(*l) < EVERY) {
                return;
            }
            last.insert(*id, now);
        }
        let Ok(mut v) = serde_json::to_value(event) else { return };
        if let Some(o) = v.as_object_mut() {
            o.insert("t".into(), serde_json::json!((self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0));
        }
        let mut out = std::io::stdout().lock();
        // A closed pipe must not stop the build: the guards still have to unwind.
        let _ = writeln!(out, "{v}").and_then(|()| out.flush());
    }
}
