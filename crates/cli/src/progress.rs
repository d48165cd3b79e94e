//! Progress bars and log lines sharing one terminal: logs are written with
//! the bars suspended, so neither garbles the other.

use std::io::Write;
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar};

/// The process's bars. Hidden when stderr is not a terminal.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Add a bar to the process's bars.
pub(crate) fn add(bar: ProgressBar) -> ProgressBar {
    bars().add(bar)
}

/// Stderr for log lines, with the bars cleared while a line is written.
pub(crate) struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
