//! Logical changes: what the log stores and replication ships.
//!
//! A change records effects, not statements: `INCR` becomes the resulting value,
//! `EXPIRE 10` becomes an absolute expiry time. Each [`Op`] carries the key's new
//! state: whole, or for a big value as an edit of one named version of it
//! ([`Patch`]), applied only to that version. Either way applying a change twice,
//! or applying it on another datacenter, gives the same result (idempotent apply).

mod byte_string;
mod patch;
mod sorted;

use meridian_policies::{Timestamp, Version, VersionVector};
use serde::{Deserialize, Serialize};

pub use patch::Patch;
pub use sorted::SortedSet;

/// Format version of encoded changes. A reader refuses versions it does not know
/// rather than misreading them. Formats 1 (no `deps`, no `path`) and 2 (every op
/// a whole state) are still read.
pub const CHANGE_FORMAT: u8 = 3;

/// One committed write: dense `seq` per `origin`, ordered by `hlc` across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The datacenter that made it.
    pub origin: String,
    /// Its position among `origin`'s changes, from 1.
    pub seq: u64,
    /// Its hybrid-logical-clock timestamp (packed).
    pub hlc: u64,
    /// The user whose keys it changes.
    pub user: Vec<u8>,
    /// The new state of each key it touched, in command order.
    pub ops: Vec<Op>,
    /// Causal dependencies: what the origin had applied of other datacenters when the
    /// change was made. A receiver applies the change only once it has applied all
    /// of them. On the wire and in the log: a sequence of `(origin, seq)` pairs.
    #[serde(with = "deps")]
    pub deps: VersionVector,
    /// The datacenters the change has passed, the origin first (loop-prevention tags).
    /// In a log it ends with the datacenter that logged it.
    pub path: Vec<String>,
}

/// A change as format 2 wrote it.
#[derive(Deserialize)]
struct ChangeV2 {
    origin: String,
    seq: u64,
    hlc: u64,
    user: Vec<u8>,
    ops: Vec<OpV2>,
    #[serde(with = "deps")]
    deps: VersionVector,
    path: Vec<String>,
}

/// An op as formats 1 and 2 wrote it: always the whole new state.
#[derive(Serialize, Deserialize)]
struct OpV2 {
    key: Vec<u8>,
    value: Option<Value>,
}

impl From<OpV2> for Op {
    fn from(op: OpV2) -> Op {
        Op::new(op.key, op.value)
    }
}

/// A change as format 1 wrote it.
#[derive(Deserialize)]
struct ChangeV1 {
    origin: String,
    seq: u64,
    hlc: u64,
    user: Vec<u8>,
    ops: Vec<OpV2>,
}

/// The new state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The key.
    pub key: Vec<u8>,
    /// Its value afterwards; `None` when the key was deleted, or, for an op read
    /// as an edit ([`Op::unbuilt`]), until the datacenter applying it rebuilds it.
    pub value: Option<Value>,
    /// The same state as an edit of the key's previous one, when that is much
    /// smaller: what the log and the wire carry.
    pub patch: Option<Patch>,
}

impl Op {
    /// An op that writes `value` whole.
    pub fn new(key: Vec<u8>, value: Option<Value>) -> Op {
        Op {
            key,
            value,
            patch: None,
        }
    }

    /// Whether it was read as an edit and its new state is not rebuilt yet.
    pub fn unbuilt(&self) -> bool {
        self.patch.is_some() && self.value.is_none()
    }
}

/// How an op is written: the whole new state, or an edit of the previous one.
#[derive(Serialize, Deserialize)]
enum Written {
    Whole(Option<Value>),
    Edit(Patch),
}

impl Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let written = match &self.patch {
            Some(patch) => Written::Edit(patch.clone()),
            None => Written::Whole(self.value.clone()),
        };
        (&self.key, written).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
        let (key, written) = <(Vec<u8>, Written)>::deserialize(d)?;
        Ok(match written {
            Written::Whole(value) => Op::new(key, value),
            Written::Edit(patch) => Op {
                key,
                value: None,
                patch: Some(patch),
            },
        })
    }
}

/// A key's value and expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The data.
    pub data: Data,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expire_at_ms: Option<u64>,
}

/// The data types meridian stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    /// A Redis string.
    String(#[serde(with = "byte_string")] Vec<u8>),
    /// A Redis hash, fields in the order they were first set (Redis's order for
    /// the small hashes applications mostly have); in the log and on the wire a
    /// map, as the sorted hashes of earlier builds were, so their records read.
    Hash(indexmap::IndexMap<Vec<u8>, Vec<u8>>),
    /// A Redis set, members in byte order.
    Set(std::collections::BTreeSet<Vec<u8>>),
    /// A Redis list.
    List(std::collections::VecDeque<Vec<u8>>),
    /// A Redis sorted set.
    Zset(SortedSet),
}

impl Data {
    /// Its type as Redis's `TYPE` names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::String(_) => "string",
            Data::Hash(_) => "hash",
            Data::Set(_) => "set",
            Data::List(_) => "list",
            Data::Zset(_) => "zset",
        }
    }
}

impl Value {
    /// Bytes of data it holds (fields and values of a hash).
    pub fn size(&self) -> usize {
        match &self.data {
            Data::String(s) => s.len(),
            Data::Hash(fields) => fields.iter().map(|(f, v)| f.len() + v.len()).sum(),
            Data::Set(members) => members.iter().map(Vec::len).sum(),
            Data::List(items) => items.iter().map(Vec::len).sum(),
            Data::Zset(set) => set.size(),
        }
    }

    /// Whether the value has expired at `now_ms`: once the clock is past its
    /// deadline, as Redis reckons it, so that a Redis backend behind the proxy
    /// never still lists a key the proxy calls expired.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms.is_some_and(|at| at < now_ms)
    }
}

/// Why bytes could not be read as a change.
#[derive(Debug, thiserror::Error)]
pub enum ChangeDecodeError {
    /// Empty input.
    #[error("empty change record")]
    Empty,
    /// A format this build does not know (written by a newer meridian).
    #[error("change format {0} is not known to this build (it reads format {CHANGE_FORMAT})")]
    UnknownFormat(u8),
    /// The body does not decode.
    #[error("change record is malformed: {0}")]
    Malformed(#[from] postcard::Error),
}

impl Change {
    /// The version its writes give the keys they touch.
    pub fn version(&self) -> Version {
        Version::new(Timestamp::from_u64(self.hlc), self.origin.as_str()).with_seq(self.seq)
    }

    /// Appends the encoded change (format byte, then the body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(CHANGE_FORMAT);
        // Straight into `out`. Serialising plain owned data cannot fail; should it,
        // the record holds the format byte alone, which decoding refuses.
        if postcard::to_extend(self, Appending(out)).is_err() {
            out.truncate(start + 1);
        }
    }

    /// The origin and sequence number of an encoded change, read without decoding
    /// the rest (every format begins with them); `None` when the bytes do not begin
    /// like a change, which [`Change::decode`] then explains.
    pub fn peek(bytes: &[u8]) -> Option<(&str, u64)> {
        match bytes.split_first() {
            Some((1..=CHANGE_FORMAT, body)) => postcard::take_from_bytes::<(&str, u64)>(body)
                .ok()
                .map(|(head, _)| head),
            _ => None,
        }
    }

    /// Reads a change written by [`Change::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Change, ChangeDecodeError> {
        match bytes.split_first() {
            None => Err(ChangeDecodeError::Empty),
            Some((&CHANGE_FORMAT, body)) => Ok(postcard::from_bytes(body)?),
            Some((2, body)) => {
                let v2: ChangeV2 = postcard::from_bytes(body)?;
                Ok(Change {
                    origin: v2.origin,
                    seq: v2.seq,
                    hlc: v2.hlc,
                    user: v2.user,
                    ops: v2.ops.into_iter().map(Op::from).collect(),
                    deps: v2.deps,
                    path: v2.path,
                })
            }
            Some((1, body)) => {
                let v1: ChangeV1 = postcard::from_bytes(body)?;
                Ok(Change {
                    path: vec![v1.origin.clone()],
                    origin: v1.origin,
                    seq: v1.seq,
                    hlc: v1.hlc,
                    user: v1.user,
                    ops: v1.ops.into_iter().map(Op::from).collect(),
                    deps: VersionVector::new(),
                })
            }
            Some((&other, _)) => Err(ChangeDecodeError::UnknownFormat(other)),
        }
    }
}

/// `deps` as a sequence of `(origin, seq)` pairs, the form format 2 has always had.
mod deps {
    use meridian_policies::{VersionVector, is_valid_dc_id};
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(deps: &VersionVector, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(deps.iter())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VersionVector, D::Error> {
        let pairs = Vec::<(String, u64)>::deserialize(d)?;
        let mut deps = VersionVector::new();
        for (origin, seq) in pairs {
            if !is_valid_dc_id(&origin) {
                return Err(D::Error::custom("a dependency names an invalid datacenter"));
            }
            deps.advance(&origin, seq);
        }
        Ok(deps)
    }
}

/// Bytes appended to a borrowed buffer, for serialisers that take an owned writer.
struct Appending<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appending<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_formats() {
        let change = Change {
            origin: "us-east".into(),
            seq: 7,
            hlc: 123 << 16,
            user: b"u42".to_vec(),
            ops: vec![
                Op::new(
                    b"{u42}:a".to_vec(),
                    Some(Value {
                        data: Data::String(b"1".to_vec()),
                        expire_at_ms: Some(9),
                    }),
                ),
                Op::new(b"{u42}:b".to_vec(), None),
            ],
            deps: "eu-west:3".parse().unwrap(),
            path: vec!["us-east".into(), "eu-west".into()],
        };
        let mut bytes = Vec::new();
        change.encode(&mut bytes);
        assert_eq!(Change::decode(&bytes).unwrap(), change);
        assert_eq!(Change::peek(&bytes), Some(("us-east", 7)));
        let mut appended = b"before".to_vec();
        change.encode(&mut appended);
        assert_eq!(appended, [&b"before"[..], &bytes].concat());
        bytes[0] = 9;
        let old_ops: Vec<OpV2> = (change.ops.iter())
            .map(|op| OpV2 {
                key: op.key.clone(),
                value: op.value.clone(),
            })
            .collect();
        let mut v1 = vec![1];
        v1.extend(
            postcard::to_stdvec(&(&change.origin, 7u64, change.hlc, &change.user, &old_ops))
                .unwrap(),
        );
        assert_eq!(Change::peek(&v1), Some(("us-east", 7)));
        let old = Change::decode(&v1).unwrap();
        assert_eq!(
            (old.seq, old.path.clone(), old.deps.len(), &old.ops),
            (7, vec!["us-east".to_string()], 0, &change.ops)
        );
        // Format 2: every op whole, deps and path as now.
        let mut v2 = vec![2];
        v2.extend(
            postcard::to_stdvec(&(
                &change.origin,
                7u64,
                change.hlc,
                &change.user,
                &old_ops,
                change.deps.iter().collect::<Vec<_>>(),
                &change.path,
            ))
            .unwrap(),
        );
        assert_eq!(Change::decode(&v2).unwrap(), change);
        // An op written as an edit is read back unbuilt, its edit kept.
        let mut edited = change.clone();
        edited.ops[0].patch = Some(Patch {
            base: change.version(),
            edit: patch::Edit::String {
                prefix: 1,
                suffix: 0,
                middle: b"x".to_vec(),
            },
            expire_at_ms: None,
        });
        let mut bytes3 = Vec::new();
        edited.encode(&mut bytes3);
        let read = Change::decode(&bytes3).unwrap();
        assert!(read.ops[0].unbuilt() && read.ops[0].patch == edited.ops[0].patch);
        assert!(matches!(
            Change::decode(&bytes),
            Err(ChangeDecodeError::UnknownFormat(9))
        ));
        assert!(matches!(Change::decode(&[]), Err(ChangeDecodeError::Empty)));
        assert_eq!(Change::peek(&bytes), None, "an unknown format");
        assert_eq!(Change::peek(&[]), None);
        assert_eq!(Change::peek(&[3, 0xff]), None, "cut short");
        assert!(matches!(
            Change::decode(&[1, 0xff]),
            Err(ChangeDecodeError::Malformed(_))
        ));
    }
}
