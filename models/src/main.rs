//! Runs every model configuration and prints the table; exits non-zero when
//! a property of an unmutated model is violated or unreached, or a mutation
//! is missed. `--deep` explores larger bounds; `--threads N` sets the
//! checker's worker threads (default 2); `--explain` prints every
//! counterexample (a failing baseline's are always printed).

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use slipstream_models::{Depth, RunKind, run_all, table_header};

fn main() -> ExitCode {
    let mut depth = Depth::Default;
    let mut threads = 2;
    let mut explain = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--deep" => depth = Depth::Deep,
            "--explain" => explain = true,
            "--threads" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => threads = n,
                None => return usage("--threads needs a positive number"),
            },
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut failures = 0usize;
    let mut rows = 0usize;
    let _ = writeln!(
        out,
        "slipstream models ({depth:?} bounds, {threads} threads)"
    );
    let _ = writeln!(out, "{}", table_header());
    run_all(depth, threads, |row| {
        rows += 1;
        if !row.passed() {
            failures += 1;
        }
        let _ = writeln!(out, "{row}");
        let failed_baseline = !row.passed() && row.kind == RunKind::Baseline;
        if explain || failed_baseline {
            for trace in row.counterexamples() {
                let _ = writeln!(out, "  counterexample for {trace}");
            }
        }
        let _ = out.flush();
    });
    let _ = writeln!(out, "total {:.1}s", started.elapsed().as_secs_f64());
    let _ = writeln!(out, "{} passed, {} failed", rows - failures, failures);
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage(problem: &str) -> ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "slipstream-models: {problem}\nusage: slipstream-models [--deep] [--explain] [--threads N]"
    );
    ExitCode::from(2)
}
