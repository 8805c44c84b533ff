//! The table printed after a successful run: the phases, the slowest steps, the outputs.

use crate::progress::{Event, Kind, OutputFile, Status};

/// How many of the slowest steps the summary lists.
const SLOWEST: usize = 5;

/// What the summary needs, gathered from the events as they pass.
#[derive(Debug, Default)]
pub struct Summary {
    phases: Vec<(String, f64, Status)>,
    steps: Vec<(String, f64)>,
}

impl Summary {
    /// Notes a phase's or step's end.
    pub fn record(&mut self, event: &Event) {
        if let Event::End { kind, label, status, seconds, .. } = event {
            match kind {
                Kind::Phase => self.phases.push((label.clone(), *seconds, *status)),
                Kind::Step if *status == Status::Ok => self.steps.push((label.clone(), *seconds)),
                _ => {}
            }
        }
    }

    /// The table for a run that took `seconds` and wrote `outputs`, as plain text lines.
    pub fn render(&self, seconds: f64, outputs: &[OutputFile]) -> String {
        let mut s = String::new();
        let width = self
            .phases
            .iter()
            .map(|p| p.0.len())
            .chain(self.steps.iter().map(|p| p.0.len()))
            .chain(outputs.iter().map(|o| o.path.display().to_string().len()))
            .max()
            .unwrap_or(10)
            .clamp(10, 70);
        s.push_str(&format!("{:<width$}  {:>10}\n", "PHASE", "TIME"));
        for (label, secs, status) in &self.phases {
            let note = if *status == Status::Ok { "" } else { "  (failed)" };
            s.push_str(&format!("{label:<width$}  {:>10}{note}\n", super::duration(*secs)));
        }
        let mut steps = self.steps.clone();
        steps.sort_by(|a, b| b.1.total_cmp(&a.1));
        if !steps.is_empty() {
            s.push_str(&format!("\n{:<width$}  {:>10}\n", "SLOWEST STEPS", "TIME"));
            for (label, secs) in steps.iter().take(SLOWEST) {
                s.push_str(&format!("{:<width$}  {:>10}\n", truncate(label, width), super::duration(*secs)));
            }
        }
        if !outputs.is_empty() {
            s.push_str(&format!("\n{:<width$}  {:>10}  SHA256\n", "OUTPUT", "SIZE"));
            for o in outputs {
                s.push_str(&format!("{:<width$}  {:>10}  {}\n", o.path.display(), super::bytes(o.bytes), o.sha256.get(..16).unwrap_or(&o.sha256)));
            }
        }
        s.push_str(&format!("\n{:<width$}  {:>10}\n", "TOTAL", super::duration(seconds)));
        s
    }
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_phases_slowest_steps_first_and_outputs() {
        let mut s = Summary::default();
        let end = |kind, label: &str, seconds| Event::End { id: 1, kind, label: label.into(), status: Status::Ok, seconds, bytes: None };
        s.record(&end(Kind::Phase, "Phase 0: base", 1.5));
        s.record(&end(Kind::Step, "step 1/2 quick (file)", 0.1));
        s.record(&end(Kind::Step, "step 2/2 slow (packages)", 12.0));
        s.record(&end(Kind::Task, "hashing", 99.0));
        let out = s.render(14.0, &[OutputFile { path: "out/n.qcow2".into(), bytes: 2 << 20, sha256: "ab".repeat(32) }]);
        let slow = out.find("step 2/2 slow").unwrap();
        assert!(slow < out.find("step 1/2 quick").unwrap(), "{out}");
        assert!(out.contains("Phase 0: base") && out.contains("1.5s") && !out.contains("hashing"), "{out}");
        assert!(out.contains("out/n.qcow2") && out.contains("2.00 MiB") && out.contains("abababababababab") && out.contains("14.0s"), "{out}");
    }
}
