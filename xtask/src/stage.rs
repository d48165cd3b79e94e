//! Named, timed pipeline stages that stop at the first failure.

use std::time::{Duration, Instant};

use crate::error::XtaskError;

/// How a stage that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ran and passed.
    Done,
    /// It had nothing to do here; the reason is printed.
    Skipped(String),
}

/// A stage's name, its result and how long it took.
struct Record {
    name: &'static str,
    result: Result<Outcome, String>,
    elapsed: Duration,
}

/// Runs stages in order, printing a header and a timing for each.
#[derive(Default)]
pub(crate) struct Pipeline {
    records: Vec<Record>,
}

impl Pipeline {
    /// Runs one stage. The error is returned so the caller stops with `?`.
    pub(crate) fn stage(
        &mut self,
        name: &'static str,
        body: impl FnOnce() -> Result<Outcome, XtaskError>,
    ) -> Result<(), XtaskError> {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let result = body();
        let elapsed = started.elapsed();
        let secs = elapsed.as_secs_f64();
        match &result {
            Ok(Outcome::Done) => eprintln!("<== {name}: ok in {secs:.1}s"),
            Ok(Outcome::Skipped(why)) => eprintln!("<== {name}: skipped: {why}"),
            Err(error) => eprintln!("<== {name}: FAILED after {secs:.1}s: {error}"),
        }
        self.records.push(Record {
            name,
            result: result
                .as_ref()
                .map(Clone::clone)
                .map_err(ToString::to_string),
            elapsed,
        });
        result.map(|_| ())
    }

    /// One line per stage that ran, for the end of the log.
    pub(crate) fn summary(&self) -> String {
        let mut text = String::from("==> summary\n");
        for record in &self.records {
            let secs = record.elapsed.as_secs_f64();
            let status = match &record.result {
                Ok(Outcome::Done) => format!("ok       {secs:>7.1}s"),
                Ok(Outcome::Skipped(why)) => format!("skipped  ({why})"),
                Err(_) => format!("FAILED   {secs:>7.1}s"),
            };
            text.push_str(&format!("  {:<8} {status}\n", record.name));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_stage_is_returned_and_listed_in_the_summary() {
        let mut pipeline = Pipeline::default();
        pipeline.stage("fmt", || Ok(Outcome::Done)).unwrap();
        pipeline
            .stage("model", || {
                Ok(Outcome::Skipped("package not in workspace".into()))
            })
            .unwrap();
        let failure = pipeline.stage("test", || Err(XtaskError::Other("boom".into())));
        assert!(failure.is_err());
        let summary = pipeline.summary();
        assert!(summary.contains("fmt      ok"), "{summary}");
        assert!(
            summary.contains("model    skipped  (package not in workspace)"),
            "{summary}"
        );
        assert!(summary.contains("test     FAILED"), "{summary}");
    }
}
