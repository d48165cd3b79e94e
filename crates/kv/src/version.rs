//! `VersionToken` (V1): an entry's version, inline and heap-free.

use crate::error::KvError;

/// The most bytes a version token can hold.
pub const MAX_VERSION_LEN: usize = 10;

/// An entry's version as the backend reports it (V1).
///
/// Inline, at most [`MAX_VERSION_LEN`] bytes, never on the heap. NATS
/// versions are stream sequences encoded as 8 big-endian bytes; an unknown
/// version (length 0) is what a delivery whose revision could not be parsed
/// carries, and what synthetic repair deletes carry. Longer input is refused,
/// never truncated.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionToken {
    len: u8,
    bytes: [u8; MAX_VERSION_LEN],
}

impl VersionToken {
    /// The unknown version (length 0).
    #[must_use]
    pub const fn unknown() -> Self {
        Self {
            len: 0,
            bytes: [0; MAX_VERSION_LEN],
        }
    }

    /// A revision, as 8 big-endian bytes.
    #[must_use]
    pub const fn from_u64(revision: u64) -> Self {
        let be = revision.to_be_bytes();
        let mut bytes = [0; MAX_VERSION_LEN];
        let mut i = 0;
        while i < 8 {
            bytes[i] = be[i];
            i += 1;
        }
        Self { len: 8, bytes }
    }

    /// A version from raw bytes.
    ///
    /// # Errors
    /// [`KvError::InvalidVersion`] when `bytes` is longer than
    /// [`MAX_VERSION_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KvError> {
        if bytes.len() > MAX_VERSION_LEN {
            return Err(KvError::InvalidVersion { len: bytes.len() });
        }
        let mut out = Self::unknown();
        out.bytes[..bytes.len()].copy_from_slice(bytes);
        // Cannot truncate: the length was checked against a bound below 256.
        out.len = bytes.len() as u8;
        Ok(out)
    }

    /// The revision, when the token is 8 bytes long.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        let eight: [u8; 8] = self.as_bytes().try_into().ok()?;
        Some(u64::from_be_bytes(eight))
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Whether this is the unknown version.
    #[must_use]
    pub const fn is_unknown(&self) -> bool {
        self.len == 0
    }
}

impl Default for VersionToken {
    fn default() -> Self {
        Self::unknown()
    }
}

impl core::fmt::Debug for VersionToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.as_u64() {
            Some(rev) => write!(f, "VersionToken({rev})"),
            None if self.is_unknown() => f.write_str("VersionToken(unknown)"),
            None => write!(f, "VersionToken({:02x?})", self.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unknown_has_no_revision() {
        let t = VersionToken::unknown();
        assert!(t.is_unknown());
        assert_eq!(t.as_u64(), None);
        assert_eq!(t.as_bytes(), &[] as &[u8]);
    }

    #[test]
    fn edges_round_trip() {
        for rev in [0, 1, u64::MAX] {
            assert_eq!(VersionToken::from_u64(rev).as_u64(), Some(rev));
        }
    }

    #[test]
    fn eleven_bytes_are_refused_not_truncated() {
        assert!(matches!(
            VersionToken::from_bytes(&[1; 11]),
            Err(KvError::InvalidVersion { len: 11 })
        ));
        assert_eq!(
            VersionToken::from_bytes(&[7; 10]).unwrap().as_bytes(),
            &[7; 10]
        );
    }

    #[test]
    fn non_eight_byte_tokens_are_not_revisions() {
        assert_eq!(VersionToken::from_bytes(&[0, 0, 1]).unwrap().as_u64(), None);
    }

    proptest! {
        #[test]
        fn u64_round_trips_through_bytes(rev in any::<u64>()) {
            let t = VersionToken::from_u64(rev);
            let back = VersionToken::from_bytes(t.as_bytes()).unwrap();
            prop_assert_eq!(back, t);
            prop_assert_eq!(back.as_u64(), Some(rev));
        }
    }
}
