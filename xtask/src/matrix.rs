//! `cargo xtask it --matrix`: every live suite against every supported
//! nats-server, and one table of version x suite.

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::Path;

use crate::error::XtaskError;
use crate::exec::{self, TestCounts, cargo};
use crate::nats::{self, SUPPORTED_VERSIONS};
use crate::workspace::Workspace;

/// The live-server suites' package.
const IT_PACKAGE: &str = "slipstream-it";
/// The CLI's package and its live suite.
const CLI_PACKAGE: &str = "slipstream-cli";
const CLI_LIVE: &str = "live";

/// How one suite did on one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SuiteRun {
    counts: TestCounts,
    succeeded: bool,
}

impl SuiteRun {
    /// The tests it counted.
    pub(crate) fn counts(&self) -> TestCounts {
        self.counts
    }

    /// Whether `cargo test` succeeded.
    pub(crate) fn succeeded(&self) -> bool {
        self.succeeded
    }

    fn render(&self) -> String {
        let TestCounts { passed, failed, .. } = self.counts;
        if self.succeeded {
            format!("{passed} ok")
        } else if passed + failed == 0 {
            "did not run".to_owned()
        } else {
            format!("FAIL {failed}/{}", passed + failed)
        }
    }
}

/// The live suites: each test file of the live-server package, then the
/// CLI's live suite.
fn suites(workspace: &Workspace) -> Result<Vec<String>, XtaskError> {
    let mut found = Vec::new();
    if let Some(member) = workspace.members.iter().find(|m| m.name == IT_PACKAGE) {
        found = test_files(&member.dir.join("tests"))?;
    }
    if workspace.has_package(CLI_PACKAGE) {
        found.push(CLI_LIVE.to_owned());
    }
    if found.is_empty() {
        return Err(XtaskError::Other(
            "no live suites in the workspace".to_owned(),
        ));
    }
    Ok(found)
}

/// The names of the `*.rs` files directly in `dir`, sorted.
fn test_files(dir: &Path) -> Result<Vec<String>, XtaskError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| XtaskError::Other(format!("read {}: {e}", dir.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "rs"))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// Run `suites` against the server at `server`, one `cargo test` each with
/// the flags of CI's test stage (so nothing is rebuilt).
pub(crate) fn run_suites(suites: &[String], server: &Path) -> Vec<SuiteRun> {
    suites
        .iter()
        .map(|suite| {
            let counts = Cell::new(TestCounts::default());
            let run = exec::run_tests(
                cargo()
                    .args(["test", "--workspace", "--all-features", "--test", suite])
                    .args(["--", "--include-ignored"])
                    .env("NATS_SERVER_BIN", server),
                &counts,
            );
            SuiteRun {
                counts: counts.get(),
                succeeded: run.is_ok(),
            }
        })
        .collect()
}

/// One row per suite, one column per version.
fn table(versions: &[&str], suites: &[String], cells: &[Vec<SuiteRun>]) -> String {
    let first = suites.iter().map(String::len).max().unwrap_or(5).max(5);
    let mut out = format!("{:first$}", "suite");
    for version in versions {
        let _ = write!(out, " | {version:>11}");
    }
    out.push('\n');
    for (row, suite) in suites.iter().enumerate() {
        let _ = write!(out, "{suite:first$}");
        for column in cells {
            let rendered = column.get(row).map_or_else(String::new, SuiteRun::render);
            let _ = write!(out, " | {rendered:>11}");
        }
        out.push('\n');
    }
    out
}

/// `cargo xtask it --matrix`.
pub(crate) fn matrix(workspace: &Workspace) -> Result<(), XtaskError> {
    let suites = suites(workspace)?;
    let mut cells = Vec::new();
    for version in SUPPORTED_VERSIONS {
        let server = nats::installed(workspace, version)?;
        eprintln!("==> nats-server {version}: {}", server.display());
        cells.push(run_suites(&suites, &server));
    }
    let rendered = table(&SUPPORTED_VERSIONS, &suites, &cells);
    println!("\n{rendered}");
    let failed = cells.iter().flatten().filter(|c| !c.succeeded).count();
    if failed == 0 {
        Ok(())
    } else {
        Err(XtaskError::Other(format!(
            "{failed} suite runs failed (see the table)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(passed: u64, failed: u64, succeeded: bool) -> SuiteRun {
        SuiteRun {
            counts: TestCounts {
                passed,
                failed,
                ignored: 0,
            },
            succeeded,
        }
    }

    #[test]
    fn the_table_has_a_row_per_suite_and_a_column_per_version() {
        let suites = vec!["conformance".to_owned(), "live".to_owned()];
        let cells = vec![
            vec![cell(40, 0, true), cell(9, 0, true)],
            vec![cell(39, 1, false), cell(0, 0, false)],
        ];
        let rendered = table(&["2.10.26", "2.15.1"], &suites, &cells);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), 3, "{rendered}");
        assert!(lines[0].contains("2.10.26") && lines[0].contains("2.15.1"));
        assert!(lines[1].starts_with("conformance") && lines[1].contains("40 ok"));
        assert!(lines[1].contains("FAIL 1/40"), "{rendered}");
        assert!(lines[2].contains("9 ok") && lines[2].contains("did not run"));
    }

    #[test]
    fn suites_are_the_test_files_in_order() {
        let dir = std::env::temp_dir().join(format!("xtask-suites-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["pins.rs", "backend.rs", "notes.md"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let found = test_files(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found, ["backend", "pins"]);
    }
}
