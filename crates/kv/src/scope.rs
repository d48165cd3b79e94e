//! Watch scopes and starts (V7), retention (V8), key validation.

use std::time::Duration;

use slipstream_protocol::{Eviction, ListingTruth, listing_truth};

use crate::cursor::{BucketIdentity, Timestamp, WatchCursor};
use crate::error::KvError;

/// Which keys a watch covers (V7).
///
/// A prefix is empty or ends at a token boundary (`.`), so the server can
/// filter it exactly with `$KV.<bucket>.<prefix>>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WatchScope {
    /// Every key of the bucket.
    All,
    /// Keys starting with this prefix.
    Prefix(String),
    /// Keys starting with any of these prefixes, on one server-side
    /// consumer. An empty list watches nothing, never the whole bucket.
    Prefixes(Vec<String>),
}

impl WatchScope {
    /// Whether `key` is in scope.
    #[must_use]
    pub fn contains(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(p) => key.starts_with(p.as_str()),
            Self::Prefixes(ps) => ps.iter().any(|p| key.starts_with(p.as_str())),
        }
    }

    /// Whether the scope is every key (the floor guard is sound only then).
    #[must_use]
    pub fn is_all(&self) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(p) => p.is_empty(),
            Self::Prefixes(ps) => ps.iter().any(String::is_empty),
        }
    }

    /// Whether the scope covers no key at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Prefixes(ps) if ps.is_empty())
    }

    /// Whether every key in `other` is also in `self` (artifact scope
    /// coverage).
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        if self.is_all() {
            return true;
        }
        let mine: &[String] = match self {
            Self::All => return true,
            Self::Prefix(p) => core::slice::from_ref(p),
            Self::Prefixes(ps) => ps,
        };
        let theirs: &[String] = match other {
            Self::All => return false,
            Self::Prefix(p) => core::slice::from_ref(p),
            Self::Prefixes(ps) => ps,
        };
        theirs
            .iter()
            .all(|t| mine.iter().any(|m| t.starts_with(m.as_str())))
    }

    /// Check every prefix (see [`validate_prefix`]).
    ///
    /// # Errors
    /// [`KvError::InvalidKey`] naming the first bad prefix.
    pub fn validate(&self) -> Result<(), KvError> {
        match self {
            Self::All => Ok(()),
            Self::Prefix(p) => validate_prefix(p),
            Self::Prefixes(ps) => ps.iter().try_for_each(|p| validate_prefix(p)),
        }
    }
}

/// Where a watch starts (V7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchStart {
    /// State-sync: the current value of every key in scope (delete markers
    /// included), then live changes.
    Relist,
    /// Delta: only messages after the cursor. Fails with
    /// [`KvError::CursorExpired`] when the cursor is outside the log (K1, K3,
    /// identity).
    After(WatchCursor),
}

/// The bucket's retention as the server reports it now (V8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// What the bucket's configuration lets retention remove (N11).
    pub eviction: Eviction,
    /// The first retained sequence (`last + 1` when empty).
    pub first_revision: u64,
    /// The last sequence ever stored.
    pub last_revision: u64,
    /// Which incarnation of the bucket this is.
    pub identity: BucketIdentity,
    /// The bucket's `max_age`, if any.
    pub max_age: Option<Duration>,
    /// The server's clock when this was read.
    pub observed_at: Timestamp,
}

impl Retention {
    /// Retention can remove a key's latest message (`max_age`, or
    /// discard-old under a limit): "not listed" no longer means "deleted".
    /// Per-message TTL does not count (N11).
    #[must_use]
    pub const fn evicts_current_values(&self) -> bool {
        self.eviction.evicts_current_values()
    }

    /// Age is the only way this bucket evicts current values (K11).
    #[must_use]
    pub const fn age_is_only_eviction(&self) -> bool {
        self.eviction.age_is_only_eviction()
    }

    /// K7 on this read and a cursor's memo, with the reason.
    #[must_use]
    pub const fn listing_truth(&self, seen_evicting: bool) -> ListingTruth {
        listing_truth(self.eviction, self.first_revision, seen_evicting)
    }
}

/// Check a bucket name: non-empty, characters `[a-zA-Z0-9_-]` (the server's
/// rule for KV bucket names).
///
/// # Errors
/// [`KvError::InvalidConfig`] naming the bad name.
pub fn validate_bucket_name(name: &str) -> Result<(), KvError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(KvError::InvalidConfig(format!(
            "bucket name {name:?} must be non-empty and use only [a-zA-Z0-9_-]"
        )))
    }
}

/// Check a key: non-empty, characters `[-/_=.a-zA-Z0-9]`, no leading or
/// trailing `.`, no empty token.
///
/// # Errors
/// [`KvError::InvalidKey`] with the reason.
pub fn validate_key(key: &str) -> Result<(), KvError> {
    let bad = |reason| {
        Err(KvError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('.') || key.ends_with('.') {
        return bad("starts or ends with '.'");
    }
    if key.contains("..") {
        return bad("empty token");
    }
    if !key.bytes().all(is_key_byte) {
        return bad("characters outside [-/_=.a-zA-Z0-9]");
    }
    Ok(())
}

/// Check a watch or listing prefix: empty, or key characters ending with
/// `.` (a token boundary the server can filter on exactly).
///
/// # Errors
/// [`KvError::InvalidKey`] with the reason.
pub fn validate_prefix(prefix: &str) -> Result<(), KvError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let bad = |reason| {
        Err(KvError::InvalidKey {
            key: prefix.to_owned(),
            reason,
        })
    };
    if !prefix.ends_with('.') {
        return bad("a prefix must be empty or end with '.'");
    }
    if prefix.starts_with('.') || prefix.contains("..") {
        return bad("empty token");
    }
    if !prefix.bytes().all(is_key_byte) {
        return bad("characters outside [-/_=.a-zA-Z0-9]");
    }
    Ok(())
}

const fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prefixes_watch_nothing() {
        let s = WatchScope::Prefixes(vec![]);
        assert!(s.is_empty());
        assert!(!s.is_all());
        assert!(!s.contains("a"));
    }

    #[test]
    fn prefix_scope_contains_only_its_keys() {
        let s = WatchScope::Prefixes(vec!["a.".into(), "b.".into()]);
        assert!(s.contains("a.x") && s.contains("b.y"));
        assert!(!s.contains("c.z") && !s.contains("a"));
    }

    #[test]
    fn coverage() {
        let a = WatchScope::Prefix("a.".into());
        let ab = WatchScope::Prefix("a.b.".into());
        assert!(WatchScope::All.covers(&a));
        assert!(a.covers(&ab));
        assert!(!ab.covers(&a));
        assert!(!a.covers(&WatchScope::All));
    }

    #[test]
    fn bucket_names_are_validated() {
        for ok in ["cfg", "a-b_C9"] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "bad name!", "a.b", "a*", "KV/x"] {
            assert!(validate_bucket_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_and_prefixes_are_validated() {
        for ok in ["a", "a.b", "A-b_c/d=e.1"] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>", "é"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "a.", "a.b."] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["a", ".", "a..", "a*."] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
