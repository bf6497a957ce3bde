//! Version vectors over datacenter ids.
//!
//! A [`VersionVector`] maps each origin datacenter to the highest sequence number
//! applied from it. Sequences are dense per origin, so `{us-east: 7}` means "every
//! change us-east made, up to and including its seventh". An absent entry is 0.
//!
//! Laws, checked by the property tests below:
//! - `merge` is commutative, associative and idempotent (a join semilattice);
//! - `a.merge(b)` dominates both `a` and `b`, and is the least vector that does;
//! - `dominates` is a partial order; `concurrent(a, b)` holds when neither dominates.

use std::fmt;
use std::str::FromStr;

use crate::varint;

/// The most entries a decoded vector may have: far more datacenters than a cluster
/// will ever have, few enough that a hostile input cannot make us allocate much.
pub const MAX_ENTRIES: usize = 256;
/// The longest datacenter id, in bytes (the topology file enforces the same limit).
pub const MAX_ID_LEN: usize = 64;

/// Highest applied sequence number per origin datacenter.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    /// Sorted by id, no duplicate ids, no zero sequences: one representation per value.
    entries: Vec<(Box<str>, u64)>,
}

/// Why bytes or text could not be read as a version vector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of the vector.
    #[error("version vector is truncated")]
    Truncated,
    /// A number is longer than 64 bits or not in its shortest form.
    #[error("version vector holds a malformed number")]
    BadNumber,
    /// More entries than [`MAX_ENTRIES`].
    #[error("version vector has {0} entries, more than the limit of {MAX_ENTRIES}")]
    TooManyEntries(u64),
    /// An id that is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("version vector entry {index} has an invalid datacenter id")]
    BadId {
        /// Position of the entry, from 0.
        index: usize,
    },
    /// Ids out of order or repeated (the encoding is canonical).
    #[error("version vector entry {index} is out of order or repeats an id")]
    NotCanonical {
        /// Position of the entry, from 0.
        index: usize,
    },
    /// A zero sequence number, which the canonical form leaves out.
    #[error("version vector entry {index} has sequence 0")]
    ZeroSequence {
        /// Position of the entry, from 0.
        index: usize,
    },
    /// Bytes left over after the vector.
    #[error("{0} unexpected bytes after the version vector")]
    TrailingBytes(usize),
    /// An entry of the text form is not `id:sequence`.
    #[error("version vector entry {index} is not of the form id:sequence")]
    BadTextEntry {
        /// Position of the entry, from 0.
        index: usize,
    },
}

/// Whether `id` is a well-formed datacenter id: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl VersionVector {
    /// The empty vector: nothing applied from anyone.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence applied from `origin` (0 when absent).
    pub fn get(&self, origin: &str) -> u64 {
        match self.find(origin) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// Raises the entry for `origin` to `seq`; never lowers it. `origin` must be a
    /// valid datacenter id (ids come from the validated topology).
    pub fn advance(&mut self, origin: &str, seq: u64) {
        debug_assert!(is_valid_id(origin), "invalid datacenter id {origin:?}");
        if seq == 0 {
            return;
        }
        match self.find(origin) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.max(seq),
            Err(i) => self.entries.insert(i, (origin.into(), seq)),
        }
    }

    /// Pointwise maximum: afterwards `self` dominates both inputs. In place and
    /// without allocating when `self` already names every origin `other` does.
    pub fn merge(&mut self, other: &VersionVector) {
        let mut missing = Vec::new();
        let mut mine = 0;
        for (id, seq) in &other.entries {
            while mine < self.entries.len() && self.entries[mine].0 < *id {
                mine += 1;
            }
            match self.entries.get_mut(mine) {
                Some(entry) if entry.0 == *id => entry.1 = entry.1.max(*seq),
                _ => missing.push((id.clone(), *seq)),
            }
        }
        if !missing.is_empty() {
            self.entries.extend(missing);
            self.entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
    }

    /// Whether every entry of `other` is at most the same entry of `self`
    /// (`self` has applied everything `other` has).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        let mut mine = self.entries.iter().peekable();
        other.entries.iter().all(|(id, seq)| {
            while mine.next_if(|(m, _)| m < id).is_some() {}
            mine.peek().is_some_and(|(m, s)| m == id && s >= seq)
        })
    }

    /// Whether neither vector dominates the other (each has seen something the other has not).
    pub fn concurrent(&self, other: &VersionVector) -> bool {
        !self.dominates(other) && !other.dominates(self)
    }

    /// The entries, sorted by datacenter id, without zeros.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(|(id, seq)| (&**id, *seq))
    }

    /// Number of non-zero entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every entry is zero.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the compact binary form: a varint count, then per entry a varint id
    /// length, the id's bytes, and a varint sequence, sorted by id.
    pub fn encode(&self, out: &mut Vec<u8>) {
        varint::put(out, self.entries.len() as u64);
        for (id, seq) in &self.entries {
            varint::put(out, id.len() as u64);
            out.extend_from_slice(id.as_bytes());
            varint::put(out, *seq);
        }
    }

    /// The compact binary form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.entries.len() * 12);
        self.encode(&mut out);
        out
    }

    /// Reads a vector from the front of `input`, advancing it past the vector.
    pub fn decode_prefix(input: &mut &[u8]) -> Result<Self, DecodeError> {
        let count = take_number(input)?;
        if count > MAX_ENTRIES as u64 {
            return Err(DecodeError::TooManyEntries(count));
        }
        let mut vv = VersionVector {
            entries: Vec::with_capacity(count as usize),
        };
        for index in 0..count as usize {
            let len = take_number(input)?;
            if len == 0 || len > MAX_ID_LEN as u64 {
                return Err(DecodeError::BadId { index });
            }
            let Some((id, rest)) = input.split_at_checked(len as usize) else {
                return Err(DecodeError::Truncated);
            };
            *input = rest;
            let id = std::str::from_utf8(id).map_err(|_| DecodeError::BadId { index })?;
            let seq = take_number(input)?;
            vv.push_canonical(index, id, seq)?;
        }
        Ok(vv)
    }

    /// Reads a vector that must fill all of `input`.
    pub fn decode(mut input: &[u8]) -> Result<Self, DecodeError> {
        let vv = Self::decode_prefix(&mut input)?;
        match input.len() {
            0 => Ok(vv),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// Appends an entry while decoding, enforcing the canonical form.
    fn push_canonical(&mut self, index: usize, id: &str, seq: u64) -> Result<(), DecodeError> {
        if !is_valid_id(id) {
            return Err(DecodeError::BadId { index });
        }
        if seq == 0 {
            return Err(DecodeError::ZeroSequence { index });
        }
        if self.entries.last().is_some_and(|(last, _)| **last >= *id) {
            return Err(DecodeError::NotCanonical { index });
        }
        self.entries.push((id.into(), seq));
        Ok(())
    }

    fn find(&self, origin: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(id, _)| (**id).cmp(origin))
    }
}

fn take_number(input: &mut &[u8]) -> Result<u64, DecodeError> {
    varint::take(input).map_err(|e| match e {
        varint::VarintError::Truncated => DecodeError::Truncated,
        varint::VarintError::Invalid => DecodeError::BadNumber,
    })
}

/// The text form: `id:seq` entries sorted by id and joined by commas
/// (`eu-west:7,us-east:12`); the empty vector is the empty string.
impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (id, seq)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}:{seq}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionVector{{{self}}}")
    }
}

/// Parses the text form. Entries may come in any order; an id may not repeat.
impl FromStr for VersionVector {
    type Err = DecodeError;

    fn from_str(text: &str) -> Result<Self, DecodeError> {
        let mut vv = VersionVector::new();
        if text.is_empty() {
            return Ok(vv);
        }
        for (index, entry) in text.split(',').enumerate() {
            if index >= MAX_ENTRIES {
                return Err(DecodeError::TooManyEntries(text.split(',').count() as u64));
            }
            let (id, seq) = entry
                .split_once(':')
                .ok_or(DecodeError::BadTextEntry { index })?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| DecodeError::BadTextEntry { index })?;
            if !is_valid_id(id) {
                return Err(DecodeError::BadId { index });
            }
            if seq == 0 {
                return Err(DecodeError::ZeroSequence { index });
            }
            if vv.find(id).is_ok() {
                return Err(DecodeError::NotCanonical { index });
            }
            vv.advance(id, seq);
        }
        Ok(vv)
    }
}

#[cfg(test)]
mod tests;
