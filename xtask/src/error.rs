//! The one error type of xtask and the exit code each case maps to.

use std::fmt;

/// Why an xtask command stopped.
#[derive(Debug)]
pub(crate) enum XtaskError {
    /// The command line was wrong; the message says how.
    Usage(String),
    /// A child process ran and failed.
    CommandFailed {
        /// The command as a shell line, for copying.
        command: String,
        /// Its exit code; `None` when a signal ended it.
        code: Option<i32>,
    },
    /// A child process could not be started at all.
    Spawn {
        /// The command as a shell line.
        command: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Anything else, described for a person.
    Other(String),
}

impl XtaskError {
    /// The exit code xtask ends with: a failed child's own code where it has one.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            XtaskError::Usage(_) => 2,
            XtaskError::CommandFailed {
                code: Some(code), ..
            } if *code != 0 => *code,
            XtaskError::CommandFailed { .. } | XtaskError::Spawn { .. } | XtaskError::Other(_) => 1,
        }
    }
}

impl fmt::Display for XtaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XtaskError::Usage(message) => write!(f, "{message}"),
            XtaskError::CommandFailed {
                command,
                code: Some(code),
            } => write!(f, "command failed with exit code {code}: {command}"),
            XtaskError::CommandFailed {
                command,
                code: None,
            } => write!(f, "command was killed by a signal: {command}"),
            XtaskError::Spawn { command, source } => {
                write!(f, "could not start `{command}`: {source}")
            }
            XtaskError::Other(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for XtaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            XtaskError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}
