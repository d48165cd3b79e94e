//! Where artifacts come from and go to (C1's `--artifacts`, `--export-to`,
//! and `status --artifacts`): a directory filled by hand with `slipstream
//! export`, a directory a fleet transport manages, or a NATS object store
//! bucket on the mirror's own server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use slipstream::fleet::{
    ArtifactTransport, FleetKey, FleetTimeouts, LocalDirTransport, ObjectStoreConfig,
    ObjectStoreTransport, TransportSource,
};
use slipstream::kv::validate_bucket_name;
use slipstream::{ArtifactManifest, BackendId, LocalArtifacts, NatsConnection, RestoreSource};

use crate::error::CliError;

/// The scheme that names a NATS object store bucket.
const NATS_SCHEME: &str = "nats://";

/// An artifact location on the command line: `nats://BUCKET` or a
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArtifactsArg {
    /// A local (or mounted) directory.
    Dir(PathBuf),
    /// An object store bucket on the server the command talks to.
    ObjectStore(String),
}

impl FromStr for ArtifactsArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix(NATS_SCHEME) {
            Some(bucket) => {
                // The server comes from --server: a host here would be
                // silently ignored, so it is refused.
                validate_bucket_name(bucket)
                    .map_err(|e| format!("{s:?}: nats://BUCKET names an object store bucket on --server's server: {e}"))?;
                Ok(Self::ObjectStore(bucket.to_owned()))
            }
            None if s.is_empty() => Err("an empty path".to_owned()),
            None => Ok(Self::Dir(PathBuf::from(s))),
        }
    }
}

impl fmt::Display for ArtifactsArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::ObjectStore(bucket) => write!(f, "{NATS_SCHEME}{bucket}"),
        }
    }
}

impl ArtifactsArg {
    /// Whether a fleet transport manages this place (an object store, or
    /// a directory with a transport's layout, or one about to get it).
    fn managed(&self, exporting_here: bool) -> bool {
        match self {
            Self::ObjectStore(_) => true,
            Self::Dir(dir) => exporting_here || is_transport_dir(dir),
        }
    }
}

/// Whether `dir` has the layout [`LocalDirTransport`] writes.
fn is_transport_dir(dir: &Path) -> bool {
    dir.join("meta").is_dir() && dir.join("objects").is_dir()
}

/// An artifact location, opened.
#[derive(Debug, Clone)]
pub(crate) enum Artifacts {
    /// Exports copied in by hand: read only.
    Hand(LocalArtifacts),
    /// A fleet transport: pointer, lease and payloads.
    Fleet(Arc<dyn ArtifactTransport>),
}

impl Artifacts {
    /// The engine's restore source (and the bootstrap's).
    pub(crate) fn source(&self) -> Arc<dyn RestoreSource> {
        match self {
            Self::Hand(dir) => Arc::new(dir.clone()),
            Self::Fleet(transport) => Arc::new(TransportSource::new(Arc::clone(transport))),
        }
    }

    /// The newest artifact's manifest and, where known, when it was made.
    ///
    /// # Errors
    /// The transport's or directory's failure.
    pub(crate) async fn newest(
        &self,
    ) -> Result<Option<(ArtifactManifest, Option<SystemTime>)>, CliError> {
        match self {
            Self::Fleet(transport) => Ok(transport
                .newest()
                .await?
                .map(|p| (p.manifest, p.published_at))),
            Self::Hand(dir) => {
                let manifest = dir.newest().await.map_err(|e| {
                    CliError::Usage(format!("--artifacts {}: {e}", dir.dir().display()))
                })?;
                Ok(manifest.map(|m| {
                    let made = made_at(dir.dir(), &m);
                    (m, made)
                }))
            }
        }
    }
}

/// When the hand-copied artifact with `manifest` was written: its manifest
/// file's modification time.
fn made_at(dir: &Path, manifest: &ArtifactManifest) -> Option<SystemTime> {
    let candidates = std::iter::once(dir.to_owned()).chain(
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
    candidates
        .filter_map(|path| {
            let file = path.join(slipstream::snapshot::MANIFEST_FILE);
            let bytes = std::fs::read(&file).ok()?;
            let found = ArtifactManifest::from_json(&bytes).ok()?;
            (found == *manifest).then(|| std::fs::metadata(&file).ok()?.modified().ok())?
        })
        .max()
}

/// What the fleet transports are for: which fold, on which connection.
pub(crate) struct Opener<'a> {
    /// The connection an object store is reached through.
    pub(crate) conn: Option<&'a NatsConnection>,
    /// The bucket the fold mirrors.
    pub(crate) bucket: &'a str,
    /// The fold's scope.
    pub(crate) scope: slipstream::WatchScope,
    /// The fold's backend.
    pub(crate) backend: BackendId,
    /// Replicas of object store buckets created here.
    pub(crate) replicas: usize,
    /// Bound on each server round trip.
    pub(crate) timeout: Duration,
}

impl Opener<'_> {
    fn key(&self) -> FleetKey {
        FleetKey::new(self.bucket, self.scope.clone(), self.backend)
    }

    /// Open `arg` as a fleet transport (created when absent).
    ///
    /// # Errors
    /// An object store without a connection, or the server's failure.
    pub(crate) async fn transport(
        &self,
        arg: &ArtifactsArg,
    ) -> Result<Arc<dyn ArtifactTransport>, CliError> {
        match arg {
            ArtifactsArg::Dir(dir) => Ok(Arc::new(LocalDirTransport::new(dir, self.key()))),
            ArtifactsArg::ObjectStore(bucket) => {
                let Some(conn) = self.conn else {
                    return Err(CliError::Usage(format!(
                        "{arg} needs --server to reach the object store"
                    )));
                };
                let timeouts = FleetTimeouts {
                    request: self.timeout,
                    ..FleetTimeouts::default()
                };
                let config = ObjectStoreConfig::new(bucket.clone())
                    .replicas(self.replicas)
                    .timeouts(timeouts);
                let client = conn.client()?;
                Ok(Arc::new(
                    ObjectStoreTransport::open(client, config, self.key()).await?,
                ))
            }
        }
    }

    /// Open `arg` to read artifacts from. `exporting_here` says the mirror
    /// also publishes there, so a directory gets the transport layout.
    ///
    /// # Errors
    /// As [`Opener::transport`]; a directory that does not exist.
    pub(crate) async fn artifacts(
        &self,
        arg: &ArtifactsArg,
        exporting_here: bool,
    ) -> Result<Artifacts, CliError> {
        if let ArtifactsArg::Dir(dir) = arg
            && !exporting_here
            && !dir.is_dir()
        {
            return Err(CliError::Usage(format!(
                "--artifacts {}: not a directory",
                dir.display()
            )));
        }
        match arg {
            ArtifactsArg::Dir(dir) if !arg.managed(exporting_here) => {
                Ok(Artifacts::Hand(LocalArtifacts::new(dir)))
            }
            _ => Ok(Artifacts::Fleet(self.transport(arg).await?)),
        }
    }
}

/// A duration on the command line: a number with a unit (`ms`, `s`, `m`,
/// `h`), or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30s, 5m, 1h"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// `age` as a short human figure.
pub(crate) fn describe_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_locations_parse_as_a_bucket_or_a_directory() {
        assert_eq!(
            "nats://fleet".parse::<ArtifactsArg>(),
            Ok(ArtifactsArg::ObjectStore("fleet".into()))
        );
        assert_eq!(
            "/srv/artifacts".parse::<ArtifactsArg>(),
            Ok(ArtifactsArg::Dir("/srv/artifacts".into()))
        );
        for bad in ["nats://", "nats://host:4222/b", "nats://a b", ""] {
            assert!(bad.parse::<ArtifactsArg>().is_err(), "{bad:?}");
        }
        assert_eq!(
            ArtifactsArg::ObjectStore("b".into()).to_string(),
            "nats://b"
        );
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "0s", "5 d", "m", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ages_read_in_the_largest_fitting_units() {
        assert_eq!(describe_age(Duration::from_secs(7)), "7 s");
        assert_eq!(describe_age(Duration::from_secs(125)), "2 min 5 s");
        assert_eq!(
            describe_age(Duration::from_secs(3 * 3600 + 120)),
            "3 h 2 min"
        );
        assert_eq!(
            describe_age(Duration::from_secs(2 * 86_400 + 3600)),
            "2 d 1 h"
        );
    }
}
