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
//! A version also carries the change's sequence number at its origin, so a
//! receiver can tell whether an incoming change had seen the state it replaces
//! ([`Version::unseen_by`]): that is how overwritten concurrent writes are found
//! and logged as conflicts. It takes no part in the order.
//!
//! One binary encoding ([`Version::encode`]) serves the store's records, its
//! tombstones, snapshots on the wire and the Redis backend's metadata:
//! `[format 0x02][timestamp u64 LE][seq u64 LE][origin length u8][origin bytes]`.
//! Format 1 (no seq) is still read, with seq 0 (unknown).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::hlc::Timestamp;
use crate::vv::{MAX_ID_LEN, is_valid_id};

/// The format byte of [`Version::encode`].
const FORMAT: u8 = 2;
/// The format without a sequence number, still read.
const FORMAT_1: u8 = 1;

/// Which write a key's state comes from. Ordered by timestamp, then origin id;
/// equal when those are (the sequence number is not compared).
#[derive(Clone)]
pub struct Version {
    /// The writing change's timestamp.
    pub hlc: Timestamp,
    /// The writing change's origin datacenter.
    pub origin: Arc<str>,
    /// The writing change's sequence number at its origin (0: not known, for
    /// states written by builds that did not record it).
    pub seq: u64,
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl std::hash::Hash for Version {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.hlc, &*self.origin).hash(state);
    }
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
            seq: 0,
        }
    }

    /// The same version, naming the change's sequence number at its origin.
    pub fn with_seq(mut self, seq: u64) -> Version {
        self.seq = seq;
        self
    }

    /// Whether a change made at `origin` after it had applied `deps` of the other
    /// datacenters had not seen the state of this version: the two are concurrent,
    /// and whichever loses last-writer-wins is a conflict. A change has seen every
    /// earlier change of its own origin; of another origin, those up to its entry
    /// in `deps`. A version whose sequence number is not known counts as seen.
    pub fn unseen_by(&self, origin: &str, deps: &crate::VersionVector) -> bool {
        *self.origin != *origin && self.seq > 0 && deps.get(&self.origin) < self.seq
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
        out.extend_from_slice(&self.seq.to_le_bytes());
        // Origins are validated datacenter ids, at most 64 bytes.
        out.push(self.origin.len().min(MAX_ID_LEN) as u8);
        out.extend_from_slice(&self.origin.as_bytes()[..self.origin.len().min(MAX_ID_LEN)]);
    }

    /// The binary form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 8 + 1 + self.origin.len());
        self.encode(&mut out);
        out
    }

    /// Reads a version from the front of `input`, advancing it past the version.
    pub fn decode_prefix(input: &mut &[u8]) -> Result<Version, VersionDecodeError> {
        let mut rest = *input;
        let format = take::<1>(&mut rest)?[0];
        if format != FORMAT && format != FORMAT_1 {
            return Err(VersionDecodeError::UnknownFormat(format));
        }
        let hlc = u64::from_le_bytes(*take::<8>(&mut rest)?);
        let seq = match format {
            FORMAT => u64::from_le_bytes(*take::<8>(&mut rest)?),
            _ => 0,
        };
        let len = usize::from(take::<1>(&mut rest)?[0]);
        let (origin, rest) = rest
            .split_at_checked(len)
            .ok_or(VersionDecodeError::Truncated)?;
        let origin = std::str::from_utf8(origin).map_err(|_| VersionDecodeError::BadOrigin)?;
        if !is_valid_id(origin) {
            return Err(VersionDecodeError::BadOrigin);
        }
        *input = rest;
        Ok(Version::new(Timestamp::from_u64(hlc), origin).with_seq(seq))
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

/// The first `N` bytes of `input`, advancing it past them.
fn take<'a, const N: usize>(input: &mut &'a [u8]) -> Result<&'a [u8; N], VersionDecodeError> {
    let (head, rest) = input
        .split_first_chunk::<N>()
        .ok_or(VersionDecodeError::Truncated)?;
    *input = rest;
    Ok(head)
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

/// `timestamp@origin#seq` (`timestamp@origin` when the seq is not known), for
/// logs and the conflict log.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.hlc, self.origin)?;
        match self.seq {
            0 => Ok(()),
            seq => write!(f, "#{seq}"),
        }
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
