//! `cargo xtask`: slipstream's project automation.
//!
//! `cargo xtask ci` is the one command that tests everything; `.ci/run` calls
//! it. The other commands run one part of it, or provision what it needs. Only
//! the standard library is used, so xtask itself builds in seconds.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports on its terminal"
)]

mod bench;
mod ci;
mod demo;
mod deps;
mod error;
mod exec;
mod json;
mod matrix;
mod nats;
mod stage;
mod workspace;

use std::process::ExitCode;

use crate::ci::ModelDepth;
use crate::error::XtaskError;
use crate::nats::VersionRequest;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                          everything CI checks, in order: fmt, deps, clippy,
                              tests, models, live-server suites
  it [--server-version V]     the live-server suites against nats-server V
  it --matrix                 every live suite against every supported nats-server
                              (2.10, 2.11, 2.12, 2.14, 2.15) and a version x suite table
  model [--deep]              the protocol models and their table
  nats-server [--version V]   print the path of a nats-server binary (installed
                              under <target>/tools/ if needed; $NATS_SERVER_BIN wins)
  demo                        the walk-through against a throwaway server
  bench [-- ARGS]             every criterion benchmark and a summary table;
                              ARGS go to criterion (e.g. --quick, a filter)
  help                        this text

V defaults to 2.15.1.";

/// One parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Task {
    Ci,
    Demo,
    It(VersionRequest),
    Matrix,
    Model(ModelDepth),
    NatsServer(VersionRequest),
    Bench(Vec<String>),
    Help,
}

fn main() -> ExitCode {
    let args: Result<Vec<String>, XtaskError> = std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| XtaskError::Usage(format!("argument {arg:?} is not UTF-8")))
        })
        .collect();
    match args.and_then(|args| parse(&args)).and_then(execute) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error}");
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(1))
        }
    }
}

fn parse(args: &[String]) -> Result<Task, XtaskError> {
    let Some((command, rest)) = args.split_first() else {
        return Err(XtaskError::Usage(format!("no command given\n\n{USAGE}")));
    };
    let task = match command.as_str() {
        "ci" => Task::Ci,
        "it" => match rest {
            [flag] if flag == "--matrix" => Task::Matrix,
            _ => Task::It(version_option(rest, "--server-version")?),
        },
        "nats-server" => Task::NatsServer(version_option(rest, "--version")?),
        "model" => match rest {
            [] => Task::Model(ModelDepth::Standard),
            [flag] if flag == "--deep" => Task::Model(ModelDepth::Deep),
            _ => return Err(unknown_options("model", rest)),
        },
        "demo" => Task::Demo,
        "bench" => Task::Bench(match rest {
            [dashes, extra @ ..] if dashes == "--" => extra.to_vec(),
            [] => Vec::new(),
            _ => return Err(unknown_options("bench", rest)),
        }),
        "help" | "--help" | "-h" => Task::Help,
        other => {
            return Err(XtaskError::Usage(format!(
                "unknown command `{other}`\n\n{USAGE}"
            )));
        }
    };
    let takes_options = matches!(
        task,
        Task::It(_) | Task::Matrix | Task::NatsServer(_) | Task::Model(_) | Task::Bench(_)
    );
    if !takes_options && !rest.is_empty() {
        return Err(unknown_options(command, rest));
    }
    Ok(task)
}

fn unknown_options(command: &str, rest: &[String]) -> XtaskError {
    XtaskError::Usage(format!(
        "`{command}` does not take `{}`\n\n{USAGE}",
        rest.join(" ")
    ))
}

/// Reads `FLAG V` or `FLAG=V`; no other option is accepted.
fn version_option(rest: &[String], flag: &str) -> Result<VersionRequest, XtaskError> {
    let mut request = VersionRequest::Default;
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        let value = if word == flag {
            words
                .next()
                .ok_or_else(|| {
                    XtaskError::Usage(format!("{flag} needs a value, e.g. {flag} 2.15.1"))
                })?
                .clone()
        } else if let Some(value) = word.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value.to_owned()
        } else {
            return Err(XtaskError::Usage(format!(
                "unknown option `{word}`\n\n{USAGE}"
            )));
        };
        nats::validate_version(&value)?;
        request = VersionRequest::Exact(value);
    }
    Ok(request)
}

fn execute(task: Task) -> Result<(), XtaskError> {
    match task {
        Task::Ci => ci::ci(),
        Task::Demo => demo::demo(),
        Task::It(request) => ci::it(&request),
        Task::Matrix => ci::matrix(),
        Task::Model(depth) => ci::model(depth),
        Task::NatsServer(request) => {
            let workspace = workspace::Workspace::load()?;
            let path = nats::provision(&workspace, &request)?;
            println!("{}", path.display());
            Ok(())
        }
        Task::Bench(extra) => bench::bench(&extra),
        Task::Help => {
            println!("{USAGE}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(line: &str) -> Result<Task, XtaskError> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse(&args)
    }

    #[test]
    fn nats_server_version_is_read_in_both_spellings() {
        let exact = Task::NatsServer(VersionRequest::Exact("2.14.6".into()));
        assert_eq!(parse_words("nats-server --version 2.14.6").unwrap(), exact);
        assert_eq!(parse_words("nats-server --version=2.14.6").unwrap(), exact);
        assert_eq!(
            parse_words("nats-server").unwrap(),
            Task::NatsServer(VersionRequest::Default)
        );
    }

    #[test]
    fn it_takes_a_server_version_and_model_takes_deep() {
        assert_eq!(
            parse_words("it --server-version 2.10.26").unwrap(),
            Task::It(VersionRequest::Exact("2.10.26".into()))
        );
        assert_eq!(parse_words("it --matrix").unwrap(), Task::Matrix);
        assert_eq!(
            parse_words("model --deep").unwrap(),
            Task::Model(ModelDepth::Deep)
        );
        assert_eq!(
            parse_words("model").unwrap(),
            Task::Model(ModelDepth::Standard)
        );
    }

    #[test]
    fn wrong_command_lines_are_usage_errors() {
        for line in [
            "",
            "build",
            "ci --fast",
            "it --version 2.15.1",
            "it --matrix --server-version 2.15.1",
            "it --matrix=yes",
            "nats-server --version",
            "nats-server --version >=2",
            "model --shallow",
        ] {
            let error = parse_words(line).unwrap_err();
            assert_eq!(error.exit_code(), 2, "`{line}` gave {error}");
        }
    }

    #[test]
    fn bench_passes_what_follows_dashes_to_criterion() {
        assert_eq!(
            parse_words("bench -- --quick apply").unwrap(),
            Task::Bench(vec!["--quick".into(), "apply".into()])
        );
        assert_eq!(parse_words("bench").unwrap(), Task::Bench(Vec::new()));
        assert_eq!(parse_words("bench --quick").unwrap_err().exit_code(), 2);
    }
}
