//! Running model configurations with stateright's checker and judging the
//! results: an unmutated run must hold every safety property and reach every
//! `sometimes` property; a mutated run must violate at least one safety
//! property (the mutation is "caught").

use std::fmt;
use std::hash::Hash;
use std::time::Instant;

use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// A property's result in one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyResult {
    /// The property's name.
    pub name: &'static str,
    /// Whether it is a safety property (`always`) or a reachability one
    /// (`sometimes`).
    pub kind: PropertyKind,
    /// Whether the checker found a discovery: a counterexample for `always`,
    /// an example for `sometimes`.
    pub discovered: bool,
    /// The discovered path's actions and final state, when discovered.
    pub trace: Option<String>,
}

/// The two property kinds the models use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyKind {
    /// Must hold in every reachable state.
    Always,
    /// Must hold in some reachable state.
    Sometimes,
}

/// What the checker reported for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Unique states explored.
    pub states: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Per-property results.
    pub properties: Vec<PropertyResult>,
}

/// How a run is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// The unmutated protocol: all properties must hold or be reached.
    Baseline,
    /// A mutation: some safety property must be violated.
    Mutation(&'static str),
    /// An environment outside the protocol's guarantees, kept so the gap
    /// stays documented by a counterexample: some safety property must be
    /// violated (if the protocol learns to cover it, the row flips and must
    /// become a baseline).
    KnownGap(&'static str),
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The model's name.
    pub model: &'static str,
    /// The configuration's name.
    pub config: &'static str,
    /// Baseline or mutation.
    pub kind: RunKind,
    /// The checker's outcome.
    pub outcome: Outcome,
}

impl RunReport {
    /// Whether the run came out as required: a baseline with every safety
    /// property held and every `sometimes` property reached, or a mutation
    /// caught by at least one safety property.
    #[must_use]
    pub fn passed(&self) -> bool {
        let props = &self.outcome.properties;
        match self.kind {
            RunKind::Baseline => props.iter().all(|p| match p.kind {
                PropertyKind::Always => !p.discovered,
                PropertyKind::Sometimes => p.discovered,
            }),
            RunKind::Mutation(_) | RunKind::KnownGap(_) => props
                .iter()
                .any(|p| p.kind == PropertyKind::Always && p.discovered),
        }
    }

    /// The counterexamples found for safety properties, one text block
    /// each: the property's name, the actions leading to the violation and
    /// the violating state.
    #[must_use]
    pub fn counterexamples(&self) -> Vec<String> {
        self.outcome
            .properties
            .iter()
            .filter(|p| p.kind == PropertyKind::Always)
            .filter_map(|p| p.trace.as_ref().map(|t| format!("{}: {}", p.name, t)))
            .collect()
    }

    fn verdicts(&self) -> String {
        let props = &self.outcome.properties;
        match self.kind {
            RunKind::Baseline => props
                .iter()
                .map(|p| {
                    let word = match (p.kind, p.discovered) {
                        (PropertyKind::Always, false) => "held",
                        (PropertyKind::Always, true) => "VIOLATED",
                        (PropertyKind::Sometimes, true) => "reached",
                        (PropertyKind::Sometimes, false) => "UNREACHED",
                    };
                    format!("{}: {word}", p.name)
                })
                .collect::<Vec<_>>()
                .join("; "),
            RunKind::Mutation(name) | RunKind::KnownGap(name) => {
                let by: Vec<_> = props
                    .iter()
                    .filter(|p| p.kind == PropertyKind::Always && p.discovered)
                    .map(|p| p.name)
                    .collect();
                let what = if matches!(self.kind, RunKind::Mutation(_)) {
                    "mutation"
                } else {
                    "known gap"
                };
                if by.is_empty() {
                    format!("{what} {name}: MISSED")
                } else {
                    format!("{what} {name}: caught by {}", by.join(", "))
                }
            }
        }
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<14} {:<22} {:>9} {:>7.2}s  {:<4}  {}",
            self.model,
            self.config,
            self.outcome.states,
            self.outcome.seconds,
            if self.passed() { "ok" } else { "FAIL" },
            self.verdicts()
        )
    }
}

/// The table's header line, aligned with [`RunReport`]'s `Display`.
#[must_use]
pub fn table_header() -> String {
    format!(
        "{:<14} {:<22} {:>9} {:>8}  {:<4}  {}",
        "model", "configuration", "states", "seconds", "", "properties / mutation"
    )
}

/// Checks `model` exhaustively (breadth-first, `threads` worker threads).
///
/// A mutation run stops at the first safety violation; a baseline run
/// explores every reachable state (it could stop early only if every
/// property, safety ones included, had a discovery).
pub fn check<M>(model: M, kind: RunKind, threads: usize) -> Outcome
where
    M: Model + Send + Sync + 'static,
    M::State: Hash + Send + Sync + Clone + PartialEq + fmt::Debug + 'static,
    M::Action: Clone + PartialEq + fmt::Debug,
{
    let properties: Vec<(&'static str, PropertyKind)> = model
        .properties()
        .iter()
        .map(|p| {
            let kind = match p.expectation {
                Expectation::Sometimes => PropertyKind::Sometimes,
                Expectation::Always | Expectation::Eventually => PropertyKind::Always,
            };
            (p.name, kind)
        })
        .collect();
    let finish = match kind {
        RunKind::Baseline => HasDiscoveries::All,
        RunKind::Mutation(_) | RunKind::KnownGap(_) => HasDiscoveries::AnyFailures,
    };
    let started = Instant::now();
    let checker = model
        .checker()
        .threads(threads.max(1))
        .finish_when(finish)
        .spawn_bfs()
        .join();
    let seconds = started.elapsed().as_secs_f64();
    let found = checker.discoveries();
    Outcome {
        states: checker.unique_state_count(),
        seconds,
        properties: properties
            .into_iter()
            .map(|(name, kind)| {
                let trace = found
                    .get(name)
                    .map(|path| format!("{path}final state: {:?}", path.last_state()));
                PropertyResult {
                    name,
                    kind,
                    discovered: trace.is_some(),
                    trace,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: RunKind, props: &[(PropertyKind, bool)]) -> RunReport {
        RunReport {
            model: "m",
            config: "c",
            kind,
            outcome: Outcome {
                states: 1,
                seconds: 0.0,
                properties: props
                    .iter()
                    .map(|&(kind, discovered)| PropertyResult {
                        name: "p",
                        kind,
                        discovered,
                        trace: None,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn baseline_fails_on_a_violation_or_an_unreached_path() {
        use PropertyKind::{Always, Sometimes};
        assert!(report(RunKind::Baseline, &[(Always, false), (Sometimes, true)]).passed());
        assert!(!report(RunKind::Baseline, &[(Always, true), (Sometimes, true)]).passed());
        assert!(!report(RunKind::Baseline, &[(Always, false), (Sometimes, false)]).passed());
    }

    #[test]
    fn mutation_passes_only_when_a_safety_property_catches_it() {
        use PropertyKind::{Always, Sometimes};
        assert!(report(RunKind::Mutation("x"), &[(Always, true)]).passed());
        assert!(
            !report(
                RunKind::Mutation("x"),
                &[(Always, false), (Sometimes, true)]
            )
            .passed()
        );
        let row = report(RunKind::Mutation("x"), &[(Always, false)]);
        assert!(row.to_string().contains("MISSED"));
    }
}
