//! `cargo xtask bench`: every criterion benchmark, then one summary table.
//!
//! The benchmarks report; nothing here fails on a number. The live one
//! (T1 against nats-server) gets a provisioned server like the live suites.

use std::process::Stdio;

use crate::error::XtaskError;
use crate::exec::{cargo, render};
use crate::nats::{self, VersionRequest};
use crate::workspace::Workspace;

/// One benchmark target: package, bench name, extra cargo arguments.
struct Target {
    package: &'static str,
    bench: &'static str,
    features: &'static [&'static str],
    needs_server: bool,
}

const TARGETS: &[Target] = &[
    Target {
        package: "slipstream-snapshot",
        bench: "stores",
        features: &["bench"],
        needs_server: false,
    },
    Target {
        package: "slipstream-fjall",
        bench: "fjall_store",
        features: &[],
        needs_server: false,
    },
    Target {
        package: "slipstream-rocksdb",
        bench: "rocksdb_store",
        features: &[],
        needs_server: false,
    },
    Target {
        package: "slipstream-applied",
        bench: "engine",
        features: &[],
        needs_server: false,
    },
    Target {
        package: "slipstream-it",
        bench: "applied_live",
        features: &[],
        needs_server: true,
    },
    Target {
        package: "slipstream-it",
        bench: "fleet",
        features: &[],
        needs_server: true,
    },
    Target {
        package: "slipstream-it",
        bench: "hot_keys",
        features: &[],
        needs_server: true,
    },
];

/// A row of the summary: benchmark id, median time, median throughput.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Row {
    id: String,
    time: String,
    throughput: Option<String>,
}

/// Runs every benchmark whose package exists, passing `extra` to criterion
/// (e.g. `--quick` or a filter), and prints the summary table.
pub(crate) fn bench(extra: &[String]) -> Result<(), XtaskError> {
    let workspace = Workspace::load()?;
    let mut rows = Vec::new();
    for target in TARGETS.iter().filter(|t| workspace.has_package(t.package)) {
        let mut command = cargo();
        command.args(["bench", "-p", target.package, "--bench", target.bench]);
        if !target.features.is_empty() {
            command.args(["--features", &target.features.join(",")]);
        }
        if target.needs_server {
            let server = nats::provision(&workspace, &VersionRequest::Default)?;
            command.env("NATS_SERVER_BIN", server);
        }
        command.arg("--").args(extra);
        let line = render(&command);
        eprintln!("$ {line}");
        let output = command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|source| XtaskError::Spawn {
                command: line.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        eprint!("{text}");
        if !output.status.success() {
            return Err(XtaskError::CommandFailed {
                command: line,
                code: output.status.code(),
            });
        }
        rows.extend(parse_criterion(&text));
    }
    println!("{}", table(&rows));
    Ok(())
}

/// Reads criterion's report: an id (on the `time:` line or the line before
/// it), the middle of the `time:` interval and of the `thrpt:` interval.
pub(crate) fn parse_criterion(text: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut previous = "";
    for line in text.lines() {
        if let Some((head, interval)) = line.split_once("time:") {
            let id = if head.trim().is_empty() {
                previous.trim()
            } else {
                head.trim()
            };
            if let Some(time) = middle(interval) {
                rows.push(Row {
                    id: id.to_owned(),
                    time,
                    throughput: None,
                });
            }
        } else if let Some((_, interval)) = line.split_once("thrpt:")
            && let Some(row) = rows.last_mut()
            && let Some(throughput) = middle(interval)
        {
            // A `change:` block's percentages are not a throughput.
            row.throughput = Some(throughput);
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    rows
}

/// `[1.0 ms 1.2 ms 1.4 ms]` -> `1.2 ms`.
fn middle(interval: &str) -> Option<String> {
    let inner = interval.trim().strip_prefix('[')?.split(']').next()?;
    let words: Vec<&str> = inner.split_whitespace().collect();
    match words.as_slice() {
        [_, _, value, unit, _, _] => Some(format!("{value} {unit}")),
        _ => None,
    }
}

fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.id.len()).max().unwrap_or(9).max(9);
    let mut out = format!(
        "{:width$}  {:>12}  {:>16}\n",
        "benchmark", "time", "throughput"
    );
    for row in rows {
        out.push_str(&format!(
            "{:width$}  {:>12}  {:>16}\n",
            row.id,
            row.time,
            row.throughput.as_deref().unwrap_or("-")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_reports_become_rows_with_time_and_throughput() {
        let text = "\
Benchmarking apply/batch_100: Analyzing
apply/batch_100         time:   [1.0000 ms 1.2000 ms 1.4000 ms]
                        thrpt:  [70.000 Kelem/s 83.000 Kelem/s 100.00 Kelem/s]
a/very/long/benchmark/id/that/wraps
                        time:   [5.0 s 5.5 s 6.0 s]
";
        let rows = parse_criterion(text);
        assert_eq!(
            rows,
            vec![
                Row {
                    id: "apply/batch_100".into(),
                    time: "1.2000 ms".into(),
                    throughput: Some("83.000 Kelem/s".into()),
                },
                Row {
                    id: "a/very/long/benchmark/id/that/wraps".into(),
                    time: "5.5 s".into(),
                    throughput: None,
                },
            ]
        );
    }

    #[test]
    fn a_change_against_the_last_run_keeps_the_rows_figures() {
        let text = "\
hydrate/engine_no_store
                        time:   [2.3 s 2.4 s 2.5 s]
                        thrpt:  [395.65 Kelem/s 407.57 Kelem/s 422.96 Kelem/s]
                 change:
                        time:   [+45.874% +58.240% +70.715%] (p = 0.00 < 0.05)
                        thrpt:  [-41.423% -36.805% -31.448%]
                        Performance has regressed.
";
        let rows = parse_criterion(text);
        assert_eq!(
            rows,
            vec![Row {
                id: "hydrate/engine_no_store".into(),
                time: "2.4 s".into(),
                throughput: Some("407.57 Kelem/s".into()),
            }]
        );
    }

    #[test]
    fn malformed_intervals_are_skipped() {
        assert!(parse_criterion("x time: [garbage]").is_empty());
    }
}
