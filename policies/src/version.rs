//! A key's version and the rule that settles concurrent writes to it.
//!
//! Every key's state carries the [`Version`] of the change that wrote it: the
//! change's hybrid-logical-clock timestamp and its origin datacenter. Two
//! datacenters that write one key concurrently (before either has seen the other's
//! write) settle it by [`Version::merge`]: last writer wins by timestamp, the origin
//! id breaking ties, so every datacenter keeps the same write whatever order the
//! changes arrive in.
//!
//! Laws of `merge` (checked by the property tests in `version/tests.rs`):
//! - commutative: `a.merge(b) == b.merge(a)`;
//! - associative: `a.merge(b).merge(c) == a.merge(b.merge(c))`;
//! - idempotent: `a.merge(a) == a`, and merging a version already merged changes nothing.
//!
//! Together they make the outcome independent of delivery order and of duplicates,
//! which is what lets datacenters apply changes as they arrive and still converge.
//!
//! One binary encoding ([`Version::encode`]) serves the store's records, its
//! tombstones, snapshots on the wire and the Redis backend's metadata:
//! `[format 0x01][timestamp u64 LE][origin length u8][origin bytes]`.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::hlc::Timestamp;
use crate::vv::{MAX_ID_LEN, is_valid_id};

/// The format byte of [`Version::encode`].
const FORMAT: u8 = 1;
/// Bytes of an encoded version before its origin.
const HEAD: usize = 1 + 8 + 1;

/// Which write a key's state comes from. Ordered by timestamp, then origin id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version {
    /// The writing change's timestamp.
    pub hlc: Timestamp,
    /// The writing change's origin datacenter.
    pub origin: Arc<str>,
}

/// How an incoming write compares with the key's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The incoming write is newer: it replaces the current state.
    Wins,
    /// The incoming write is the one already there (a duplicate): nothing to do.
    Same,
    /// A newer write is already there: the incoming one is overwritten, a conflict
    /// to count and log, never to drop silently.
    Loses,
}

/// Why bytes could not be read as a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionDecodeError {
    /// Fewer bytes than the encoding needs.
    #[error("version is truncated")]
    Truncated,
    /// A format byte this build does not know.
    #[error("version format {0} is not known to this build")]
    UnknownFormat(u8),
    /// The origin is not a valid datacenter id.
    #[error("version names an invalid origin datacenter")]
    BadOrigin,
}

impl Version {
    /// The version of a change made at `hlc` by `origin`.
    pub fn new(hlc: Timestamp, origin: impl Into<Arc<str>>) -> Version {
        Version {
            hlc,
            origin: origin.into(),
        }
    }

    /// The join of two versions: the later write (last writer wins).
    pub fn merge(self, other: Version) -> Version {
        self.max(other)
    }

    /// How a write of version `self` fares against the key's `current` version
    /// (`None`: the key was never written).
    pub fn resolve(&self, current: Option<&Version>) -> Resolution {
        match current.map(|c| self.cmp(c)) {
            None | Some(Ordering::Greater) => Resolution::Wins,
            Some(Ordering::Equal) => Resolution::Same,
            Some(Ordering::Less) => Resolution::Loses,
        }
    }

    /// Appends the binary form (see the module documentation).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        out.extend_from_slice(&self.hlc.as_u64().to_le_bytes());
        // Origins are validated datacenter ids, at most 64 bytes.
        out.push(self.origin.len().min(MAX_ID_LEN) as u8);
        out.extend_from_slice(&self.origin.as_bytes()[..self.origin.len().min(MAX_ID_LEN)]);
    }

    /// The binary form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD + self.origin.len());
        self.encode(&mut out);
        out
    }

    /// Reads a version from the front of `input`, advancing it past the version.
    pub fn decode_prefix(input: &mut &[u8]) -> Result<Version, VersionDecodeError> {
        let Some((head, rest)) = input.split_first_chunk::<HEAD>() else {
            return Err(match input.first() {
                Some(&f) if f != FORMAT => VersionDecodeError::UnknownFormat(f),
                _ => VersionDecodeError::Truncated,
            });
        };
        if head[0] != FORMAT {
            return Err(VersionDecodeError::UnknownFormat(head[0]));
        }
        let mut hlc = [0u8; 8];
        hlc.copy_from_slice(&head[1..9]);
        let len = usize::from(head[9]);
        let (origin, rest) = rest
            .split_at_checked(len)
            .ok_or(VersionDecodeError::Truncated)?;
        let origin = std::str::from_utf8(origin).map_err(|_| VersionDecodeError::BadOrigin)?;
        if !is_valid_id(origin) {
            return Err(VersionDecodeError::BadOrigin);
        }
        *input = rest;
        Ok(Version::new(
            Timestamp::from_u64(u64::from_le_bytes(hlc)),
            origin,
        ))
    }

    /// Reads a version that fills all of `input`.
    pub fn decode(mut input: &[u8]) -> Result<Version, VersionDecodeError> {
        let version = Version::decode_prefix(&mut input)?;
        match input.is_empty() {
            true => Ok(version),
            false => Err(VersionDecodeError::Truncated),
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.hlc, &*self.origin).cmp(&(other.hlc, &*other.origin))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `timestamp@origin`, for logs.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.hlc, self.origin)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
