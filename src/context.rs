//! What a whole build shares: which phases run ([`PhaseSet`]) and the facts of the build itself
//! ([`BuildContext`]: its date, kib's version), passed down instead of kept in globals.

use std::fmt;

use anyhow::{bail, Result};

/// One of the three phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Phase 0: verify the input, make the working copy, grow it, attach and mount the tree.
    Base,
    /// Phase 1: the manifest's steps in the chroot.
    Customization,
    /// Phase 2: sysprep, BOM, SBOMs, fstrim, conversion.
    Artifacts,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 3] = [Phase::Base, Phase::Customization, Phase::Artifacts];

    /// Its number, as `--phases` and bom.json's `phases` write it: 0, 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            Phase::Base => 0,
            Phase::Customization => 1,
            Phase::Artifacts => 2,
        }
    }

    /// The phase numbered `n`. Errors: a number other than 0, 1 and 2.
    pub fn from_number(n: u8) -> Result<Phase> {
        match Phase::ALL.get(usize::from(n)) {
            Some(p) => Ok(*p),
            None => bail!("--phases: there is no phase {n}; the phases are 0, 1 and 2"),
        }
    }
}

/// The phases a run does (`--phases`): any non-empty set. Attaching and mounting happen in every
/// run; what `--phases` leaves out is Phase 0's verification and growth, Phase 1's steps, or
/// Phase 2's sysprep, fstrim, SBOMs and conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseSet {
    base: bool,
    customization: bool,
    artifacts: bool,
}

impl PhaseSet {
    /// All three phases.
    pub const ALL: PhaseSet = PhaseSet { base: true, customization: true, artifacts: true };

    /// From `--phases` numbers (each 0, 1 or 2; repeats allowed).
    ///
    /// Errors: an empty list, or a number that is no phase.
    pub fn from_numbers(list: &[u8]) -> Result<PhaseSet> {
        let mut set = PhaseSet { base: false, customization: false, artifacts: false };
        for &n in list {
            match Phase::from_number(n)? {
                Phase::Base => set.base = true,
                Phase::Customization => set.customization = true,
                Phase::Artifacts => set.artifacts = true,
            }
        }
        if set.is_empty() {
            bail!("--phases: name at least one of 0, 1 and 2");
        }
        Ok(set)
    }

    /// Whether the run does `phase`.
    pub fn contains(self, phase: Phase) -> bool {
        match phase {
            Phase::Base => self.base,
            Phase::Customization => self.customization,
            Phase::Artifacts => self.artifacts,
        }
    }

    fn is_empty(self) -> bool {
        !(self.base || self.customization || self.artifacts)
    }

    /// The phases, in order.
    pub fn phases(self) -> impl Iterator<Item = Phase> {
        Phase::ALL.into_iter().filter(move |p| self.contains(*p))
    }

    /// The phase numbers, in order: `[0, 1, 2]` (bom.json's `phases`).
    pub fn numbers(self) -> Vec<u8> {
        self.phases().map(Phase::number).collect()
    }
}

impl fmt::Display for PhaseSet {
    /// `0,1,2`, as `--phases` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.numbers().iter().map(u8::to_string).collect::<Vec<_>>().join(","))
    }
}

/// Facts of the build that steps and records see: `${build_date}`, `${kib_version}`, the BOM's
/// `build_started`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildContext {
    /// When this run started, UTC, RFC 3339 with seconds (bom.json's `build_started`).
    pub started: String,
    /// `${build_date}`: the date files name. This run's start, except where the build is a
    /// continuation of an earlier one or `kib check` checks one: then the date that build recorded.
    pub build_date: String,
    /// kib's version (`${kib_version}`, bom.json's `kib_version`).
    pub kib_version: String,
}

impl BuildContext {
    /// A build starting now.
    pub fn now() -> BuildContext {
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        BuildContext { build_date: started.clone(), started, kib_version: env!("CARGO_PKG_VERSION").to_string() }
    }

    /// This context with `${build_date}` set to `date` (an earlier build's `build_started`).
    pub fn with_build_date(mut self, date: &str) -> BuildContext {
        self.build_date = date.to_string();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_any_non_empty_set() {
        assert_eq!(PhaseSet::from_numbers(&[0, 1, 2]).unwrap(), PhaseSet::ALL);
        assert_eq!(PhaseSet::from_numbers(&[2, 0, 2]).unwrap().to_string(), "0,2");
        let p = PhaseSet::from_numbers(&[1]).unwrap();
        assert!(p.contains(Phase::Customization) && !p.contains(Phase::Base) && !p.contains(Phase::Artifacts));
        assert_eq!(p.numbers(), [1]);
        assert!(PhaseSet::from_numbers(&[]).unwrap_err().to_string().contains("at least one"));
        assert!(PhaseSet::from_numbers(&[3]).unwrap_err().to_string().contains("no phase 3"));
    }

    #[test]
    fn build_date_follows_an_earlier_build() {
        let c = BuildContext::now();
        assert_eq!(c.started, c.build_date);
        let c = c.with_build_date("2024-05-01T10:00:00Z");
        assert_eq!(c.build_date, "2024-05-01T10:00:00Z");
        assert_ne!(c.started, c.build_date);
    }
}
