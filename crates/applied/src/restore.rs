//! Whether an artifact can bring a fold forward (K6, A3): the one check a
//! restore repair and a new node's bootstrap both make on a manifest.

use slipstream_kv::{Retention, WatchScope};
use slipstream_protocol::{restore_ahead, restore_allowed};
use slipstream_snapshot::{ArtifactManifest, BackendId};

use crate::error::{AppliedError, RestoreRefusal};

/// A restore step that failed at `stage`.
pub(crate) fn restore_failed(
    stage: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> AppliedError {
    AppliedError::RestoreFailed {
        stage,
        source: Box::new(source),
    }
}

/// Why an artifact cannot bring a fold at rank `local` forward, from its
/// manifest alone; `None` when it can. It must be of `backend` (any, for
/// `None`), cover `scope`, come from the bucket's current incarnation, and
/// pass K6 (`restore_allowed`): ahead of `local` and resumable inside the
/// retained log. A restore repair and a new node's bootstrap (local 0) both
/// decide with it.
#[must_use]
pub fn artifact_refusal(
    manifest: &ArtifactManifest,
    backend: Option<BackendId>,
    scope: &WatchScope,
    local: u64,
    retention: &Retention,
) -> Option<RestoreRefusal> {
    if let Some(store) = backend
        && !manifest.is_from(store)
    {
        return Some(RestoreRefusal::OtherBackend {
            artifact: manifest.backend_label(),
            store: store.to_string(),
        });
    }
    if !manifest.scope.covers(scope) {
        return Some(RestoreRefusal::ScopeNotCovered {
            artifact: manifest.scope.clone(),
            watch: scope.clone(),
        });
    }
    if let Some(identity) = manifest.cursor.identity()
        && *identity != retention.identity
    {
        return Some(RestoreRefusal::OtherIncarnation {
            artifact: identity.clone(),
            bucket: retention.identity.clone(),
        });
    }
    let artifact = manifest.cursor.rank();
    if restore_allowed(artifact, local, retention.first_revision) {
        return None;
    }
    Some(if restore_ahead(artifact, local) {
        RestoreRefusal::ArtifactExpired {
            artifact,
            first_sequence: retention.first_revision,
        }
    } else {
        RestoreRefusal::NotAhead {
            artifact,
            fold: local,
        }
    })
}
