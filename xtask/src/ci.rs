//! The stages of `cargo xtask ci` and the commands that run one of them alone.

use std::cell::Cell;

use crate::deps;
use crate::error::XtaskError;
use crate::exec::{self, TestCounts, cargo};
use crate::matrix;
use crate::nats::{self, VersionRequest};
use crate::stage::{Outcome, Pipeline};
use crate::workspace::Workspace;

/// The live-server suites' package.
const IT_PACKAGE: &str = "slipstream-it";
/// The model checker's package.
const MODELS_PACKAGE: &str = "slipstream-models";
/// The CLI's live tests are `#[ignore]`d in the plain test stage (no server
/// there) and run here with `--ignored`.
const CLI_PACKAGE: &str = "slipstream-cli";

/// How deep the models explore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelDepth {
    /// The bounds CI runs with.
    Standard,
    /// Larger bounds, for a run on demand.
    Deep,
}

/// Whether a stage whose package does not exist yet is skipped or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// In the full pipeline: the stage joins once the package lands.
    Skip,
    /// Asked for by name: running nothing must not look like success.
    Fail,
}

/// Everything CI checks, in order, stopping at the first failure.
pub(crate) fn ci() -> Result<(), XtaskError> {
    let workspace = Workspace::load()?;
    let mut pipeline = Pipeline::default();
    let counts = Cell::new(TestCounts::default());
    let result = run_all(&workspace, &mut pipeline, &counts);
    finish(&pipeline, &counts);
    result
}

/// The stage summary, then the test total as the very last line, where CI looks for it.
fn finish(pipeline: &Pipeline, counts: &Cell<TestCounts>) {
    eprintln!("\n{}", pipeline.summary());
    println!("{}", counts.get().closing_line());
}

fn run_all(
    workspace: &Workspace,
    pipeline: &mut Pipeline,
    counts: &Cell<TestCounts>,
) -> Result<(), XtaskError> {
    pipeline.stage("fmt", || {
        exec::run(cargo().args(["fmt", "--all", "--check"]))?;
        Ok(Outcome::Done)
    })?;
    pipeline.stage("deps", || deps::ensure(workspace))?;
    pipeline.stage("clippy", || {
        // The test stage's profile: cargo keys build scripts by profile,
        // and in `dev` RocksDB's C++ (over 20 minutes) would be compiled a
        // second time for the tests.
        exec::run(
            cargo()
                .args(["clippy", "--workspace", "--all-targets", "--all-features"])
                .args(["--profile", "test", "--", "-D", "warnings"]),
        )?;
        Ok(Outcome::Done)
    })?;
    pipeline.stage("model", || {
        model_stage(workspace, ModelDepth::Standard, Absent::Skip)
    })?;
    pipeline.stage("test", || {
        // One `cargo test` over the whole workspace, live suites included:
        // a second invocation with other packages selected would unify
        // features differently and rebuild shared dependencies (RocksDB's
        // build alone takes over 20 minutes).
        let mut command = cargo();
        command.args(["test", "--workspace", "--all-features"]);
        if workspace.has_package(IT_PACKAGE) || workspace.has_package(CLI_PACKAGE) {
            let server = nats::provision(workspace, &VersionRequest::Default)?;
            eprintln!("nats-server: {}", server.display());
            command.env("NATS_SERVER_BIN", &server);
            // The only ignored tests are the CLI's live ones, which need the server.
            command.args(["--", "--include-ignored"]);
        }
        exec::run_tests(&mut command, counts)?;
        Ok(Outcome::Done)
    })?;
    pipeline.stage("oldest server", || oldest_server_stage(workspace, counts))
}

/// The suites that pin what the backend relies on in the server, run on
/// the oldest supported version too (the test stage ran them on the default).
const CONFORMANCE_SUITES: [&str; 2] = ["conformance", "pins"];

fn oldest_server_stage(
    workspace: &Workspace,
    counts: &Cell<TestCounts>,
) -> Result<Outcome, XtaskError> {
    if !workspace.has_package(IT_PACKAGE) {
        return absent(IT_PACKAGE, Absent::Skip);
    }
    let server = nats::installed(workspace, nats::OLDEST_VERSION)?;
    eprintln!("nats-server {}: {}", nats::OLDEST_VERSION, server.display());
    let suites = CONFORMANCE_SUITES.map(str::to_owned);
    let runs = matrix::run_suites(&suites, &server);
    let mut total = counts.get();
    for run in &runs {
        total.add(run.counts());
    }
    counts.set(total);
    match suites.iter().zip(&runs).find(|(_, run)| !run.succeeded()) {
        Some((suite, _)) => Err(XtaskError::Other(format!(
            "the {suite} suite failed on nats-server {}",
            nats::OLDEST_VERSION
        ))),
        None => Ok(Outcome::Done),
    }
}

/// `cargo xtask it --matrix`.
pub(crate) fn matrix() -> Result<(), XtaskError> {
    let workspace = Workspace::load()?;
    let mut pipeline = Pipeline::default();
    pipeline.stage("deps", || deps::ensure(&workspace))?;
    pipeline.stage("matrix", || {
        matrix::matrix(&workspace)?;
        Ok(Outcome::Done)
    })
}

/// `cargo xtask model [--deep]`.
pub(crate) fn model(depth: ModelDepth) -> Result<(), XtaskError> {
    let workspace = Workspace::load()?;
    let mut pipeline = Pipeline::default();
    pipeline.stage("deps", || deps::ensure(&workspace))?;
    pipeline.stage("model", || model_stage(&workspace, depth, Absent::Fail))
}

/// `cargo xtask it [--server-version V]`.
pub(crate) fn it(request: &VersionRequest) -> Result<(), XtaskError> {
    let workspace = Workspace::load()?;
    let mut pipeline = Pipeline::default();
    let counts = Cell::new(TestCounts::default());
    let result = pipeline
        .stage("deps", || deps::ensure(&workspace))
        .and_then(|()| {
            pipeline.stage("it", || {
                it_stage(&workspace, request, Absent::Fail, &counts)
            })
        });
    finish(&pipeline, &counts);
    result
}

fn absent(package: &str, when: Absent) -> Result<Outcome, XtaskError> {
    match when {
        Absent::Skip => Ok(Outcome::Skipped("package not in workspace".to_owned())),
        Absent::Fail => Err(XtaskError::Other(format!(
            "package {package} is not in the workspace (yet)"
        ))),
    }
}

fn model_stage(
    workspace: &Workspace,
    depth: ModelDepth,
    when_absent: Absent,
) -> Result<Outcome, XtaskError> {
    if !workspace.has_package(MODELS_PACKAGE) {
        return absent(MODELS_PACKAGE, when_absent);
    }
    let mut command = cargo();
    command.args(["run", "--release", "-p", MODELS_PACKAGE, "--"]);
    if depth == ModelDepth::Deep {
        command.arg("--deep");
    }
    exec::run(&mut command)?;
    Ok(Outcome::Done)
}

fn it_stage(
    workspace: &Workspace,
    request: &VersionRequest,
    when_absent: Absent,
    counts: &Cell<TestCounts>,
) -> Result<Outcome, XtaskError> {
    if !workspace.has_package(IT_PACKAGE) {
        return absent(IT_PACKAGE, when_absent);
    }
    let server = nats::provision(workspace, request)?;
    eprintln!("nats-server: {}", server.display());
    exec::run_tests(
        cargo()
            .args(["test", "-p", IT_PACKAGE])
            .env("NATS_SERVER_BIN", &server),
        counts,
    )?;
    if workspace.has_package(CLI_PACKAGE) {
        exec::run_tests(
            cargo()
                .args([
                    "test",
                    "-p",
                    CLI_PACKAGE,
                    "--all-features",
                    "--test",
                    "live",
                ])
                .args(["--", "--ignored"])
                .env("NATS_SERVER_BIN", &server),
            counts,
        )?;
    }
    Ok(Outcome::Done)
}
