//! The interface between the engine and a database, and the one place that picks
//! an adapter for the configured kind.
//!
//! The engine needs the same few things of every database: the applied vector it
//! holds; per thread (writer, committer, start-up replay) a [`Session`] that reads a
//! batch's keys, reads keys' versions, lists its keys, and commits a batch of changes
//! with the applied vector atomically; a consistent snapshot of the whole store (for
//! peers bootstrapping and DIGEST); and client reads. Each adapter lives in a file of
//! its own: [`embedded`] (redb in the data directory) and [`redis`] (a Redis server).
//! Nothing outside this module and its adapters knows which one runs.

pub(super) mod embedded;
pub(super) mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use meridian_policies::{Version, VersionDecodeError, VersionVector};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::memtable::{Memtable, View};
use crate::change::{Change, Op, Value};
use crate::command::{DataFn, Spec};
use crate::resp::Reply;

pub use embedded::StoreError;
pub use redis::RedisStoreError;

/// Which database holds this datacenter's data: the topology file's `backend`.
pub use meridian_topology::Backend as BackendConfig;

/// A failure of the database behind the proxy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The embedded store failed or holds damaged data (retrying does not help).
    #[error(transparent)]
    Embedded(#[from] StoreError),
    /// The Redis server failed or is unreachable.
    #[error(transparent)]
    Redis(#[from] RedisStoreError),
    /// The database answered with an error of its own (its words, as a client of
    /// it would see them).
    #[error("{0}")]
    Refused(String),
}

impl BackendError {
    /// Whether trying again later can succeed (a database restarting, say).
    pub fn retryable(&self) -> bool {
        match self {
            BackendError::Embedded(e) => e.retryable(),
            BackendError::Redis(e) => e.retryable,
            BackendError::Refused(_) => false,
        }
    }

    /// Whether the database refused what was sent (a key it will not let this
    /// connection write), as opposed to failing or being unreachable: the changes
    /// it holds can be committed one by one to find the refused one.
    pub fn refused(&self) -> bool {
        matches!(self, BackendError::Redis(e) if e.refused && !e.retryable)
    }

    /// The error reply a client gets: the database's own words when it refused,
    /// otherwise a backend error naming the database.
    pub fn reply(&self) -> Reply {
        match self {
            BackendError::Refused(text) => Reply::Error(text.clone()),
            BackendError::Redis(e) => Reply::error(format!("ERR {e}")),
            BackendError::Embedded(e) => Reply::error(format!("ERR backend: {e}")),
        }
    }
}

/// A key's value with the version of the change that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The value.
    pub value: Value,
    /// Which change wrote it.
    pub version: Version,
}

/// Keys and their records, as a snapshot carries them.
pub type Entries = Vec<(Vec<u8>, Stored)>;

/// The format byte of [`Stored::encode`]. Format 1 (postcard of value, timestamp
/// and origin) is still read.
const RECORD_FORMAT: u8 = 2;

impl Stored {
    /// Appends the record: `[format 2][version][postcard value]`. The same bytes
    /// are the embedded store's records and a snapshot's entries on the wire.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Stored::encode_parts(&self.value, &self.version, out);
    }

    /// Appends the record of `value` at `version`, as [`Stored::encode`] does,
    /// without a `Stored` to own them.
    pub fn encode_parts(value: &Value, version: &Version, out: &mut Vec<u8>) {
        out.push(RECORD_FORMAT);
        version.encode(out);
        // Serialising plain owned data into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_stdvec(value).unwrap_or_default());
    }

    /// Reads a record written by [`Stored::encode`] (or by format 1).
    pub fn decode(bytes: &[u8]) -> Result<Stored, RecordError> {
        #[derive(Deserialize, Serialize)]
        struct V1 {
            value: Value,
            hlc: u64,
            origin: String,
        }
        match bytes.split_first() {
            Some((&RECORD_FORMAT, mut rest)) => {
                let version = Version::decode_prefix(&mut rest)?;
                let value = postcard::from_bytes(rest)?;
                Ok(Stored { value, version })
            }
            Some((1, body)) => {
                let v1: V1 = postcard::from_bytes(body)?;
                if !meridian_policies::is_valid_dc_id(&v1.origin) {
                    return Err(RecordError::Version(VersionDecodeError::BadOrigin));
                }
                Ok(Stored {
                    value: v1.value,
                    version: Version::new(
                        meridian_policies::Timestamp::from_u64(v1.hlc),
                        v1.origin,
                    ),
                })
            }
            Some((&v, _)) => Err(RecordError::UnknownFormat(v)),
            None => Err(RecordError::Empty),
        }
    }
}

/// Why bytes could not be read as a stored record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No bytes at all.
    #[error("empty record")]
    Empty,
    /// A format this build does not know (written by a newer meridian).
    #[error("record format {0} is not known to this build")]
    UnknownFormat(u8),
    /// The key's version does not decode.
    #[error("its version: {0}")]
    Version(#[from] VersionDecodeError),
    /// The value does not decode.
    #[error("its value: {0}")]
    Value(#[from] postcard::Error),
}

/// What a key holds in the database, as the writer needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// A value meridian understands (`None`: absent).
    Known(Option<Value>),
    /// A type meridian does not handle (a list written by another tool, say).
    Foreign(String),
}

/// What one SCAN call asks for.
#[derive(Debug, Clone, Copy)]
pub struct ScanArgs<'a> {
    /// Where to go on from: 0 to start, else a cursor an earlier page returned.
    pub cursor: u64,
    /// About how many keys to look at (Redis's COUNT, a hint).
    pub count: usize,
    /// Only keys matching this glob pattern (MATCH).
    pub pattern: Option<&'a [u8]>,
    /// Only keys of this type (TYPE).
    pub type_name: Option<&'a [u8]>,
}

/// One page of a SCAN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// The cursor of the next page; 0 when the scan is complete.
    pub cursor: u64,
    /// The keys of this page.
    pub keys: Vec<Vec<u8>>,
}

/// A read command: its spec, the function that runs it, its arguments.
pub type Read<'a> = (&'a Spec, DataFn, &'a [Bytes]);

/// A boxed future borrowing the backend (trait objects cannot have async methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What client reads need of the engine besides the backend.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadContext<'a> {
    /// Writes logged but not yet in the backend.
    pub(super) memtable: &'a Memtable,
    /// The newest writer batch committed to the backend.
    pub(super) committed: &'a watch::Sender<u64>,
    /// The most bytes of values the reads may return together; a read that would
    /// return more answers [`Reply::OverLimit`] instead of building its reply.
    pub(super) max_reply: usize,
    /// The user whose keys the reads touch (read replicas are chosen by it).
    pub(super) user: &'a [u8],
    /// What the reading session has seen: a replica serves it only once it has
    /// applied this.
    pub(super) token: &'a VersionVector,
}

/// How the committer gathers logged changes into one transaction of a backend.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gather {
    /// Least time between the starts of two commits.
    pub(super) every: Duration,
    /// Most changes in one transaction.
    pub(super) max_changes: usize,
}

/// A database behind the engine.
pub(super) trait Backend: Send + Sync + std::fmt::Debug {
    /// The database, for people: `embedded` or the Redis URL.
    fn name(&self) -> String;

    /// A connection for one thread: the writer, the committer, start-up replay.
    fn session(&self) -> Box<dyn Session>;

    /// How the committer gathers what the writer logs into transactions.
    fn commit_gather(&self) -> Gather;

    /// Whether a session's reads stay on this machine (no network round trip):
    /// then a client task may run writes that read the store.
    fn local_reads(&self) -> bool {
        false
    }

    /// The whole store and the vector it reaches, consistent with the memtable as
    /// `overlay` sees it: whatever the store lacks of the memtable's state is in
    /// the memtable at that moment. Blocks; call it off the async workers.
    fn snapshot(
        &self,
        memtable: &Memtable,
        overlay: &mut dyn FnMut(&View<'_>),
    ) -> Result<(VersionVector, Entries), BackendError>;

    /// Runs consecutive read commands of one connection against the newest data
    /// (the memtable over the store), in order.
    fn read_many<'a>(
        &'a self,
        ctx: ReadContext<'a>,
        reads: &'a [Read<'a>],
    ) -> BoxFuture<'a, Vec<Reply>>;

    /// Number of keys clients see, expired ones included until they are removed,
    /// counting every write this proxy has acknowledged.
    fn key_count<'a>(&'a self, ctx: ReadContext<'a>) -> BoxFuture<'a, Result<u64, BackendError>>;

    /// One page of a SCAN of the keyspace (meridian's own metadata left out).
    fn scan<'a>(
        &'a self,
        ctx: ReadContext<'a>,
        args: ScanArgs<'a>,
    ) -> BoxFuture<'a, Result<ScanPage, BackendError>>;

    /// A live key picked at random; `None` when there is none.
    fn random_key<'a>(
        &'a self,
        ctx: ReadContext<'a>,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>>;

    /// Each read replica's figures against `applied` (none for a database
    /// without replicas).
    fn replica_stats(&self, _applied: &VersionVector) -> Vec<ReplicaStats> {
        Vec::new()
    }
}

/// What one read replica did, and how far behind it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStats {
    /// Its URL.
    pub url: String,
    /// Read pipelines it served.
    pub reads: u64,
    /// Reads it could not serve: behind the session's token.
    pub skips: u64,
    /// Reads that failed on it (errors, no answer in time).
    pub errors: u64,
    /// Whether reads go to it now: its health check answers and no read failed
    /// on it since.
    pub up: bool,
    /// Changes this datacenter has applied that it had not, when it last said.
    pub behind_changes: u64,
    /// While behind, the age of the newest commit it had, in seconds.
    pub behind_seconds: f64,
}

/// One thread's connection to the database.
pub(super) trait Session: Send {
    /// The applied version vector the database holds.
    fn applied(&mut self) -> Result<VersionVector, BackendError>;

    /// The current state of `keys`, expiry times made absolute at `now_ms`.
    fn fetch(
        &mut self,
        keys: Vec<Vec<u8>>,
        now_ms: u64,
    ) -> Result<HashMap<Vec<u8>, Fetched>, BackendError>;

    /// The version of the change that last wrote each key, deletions included;
    /// `None` for a key never written.
    fn versions(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Version>>, BackendError>;

    /// Every key the database may hold (keys already deleted may be among them).
    fn keys(&mut self) -> Result<Vec<Vec<u8>>, BackendError>;

    /// Writes `changes` (each op replacing its key's state, versions included) and
    /// `applied` atomically; `durable` asks for a synced checkpoint where the
    /// database has a choice.
    fn commit(
        &mut self,
        changes: &[Change],
        applied: &VersionVector,
        durable: bool,
    ) -> Result<(), BackendError>;
}

/// Opens the configured database: the one place that knows which kinds exist.
pub(super) fn open(
    data_dir: &Path,
    config: &BackendConfig,
) -> Result<std::sync::Arc<dyn Backend>, BackendError> {
    Ok(match config {
        BackendConfig::Embedded => {
            std::sync::Arc::new(embedded::Embedded::open(&data_dir.join("store.redb"))?)
        }
        BackendConfig::Redis { url, replicas } => {
            std::sync::Arc::new(redis::RedisBackend::new(url, replicas)?)
        }
    })
}

/// Reads a key from a store as of one moment.
pub(super) trait KeyReader {
    /// The stored value of `key`, expired or not.
    fn value(&self, key: &[u8]) -> Result<Option<Value>, Reply>;
}

/// The newest data as a read command sees it: the memtable over a store (none: the
/// memtable alone).
pub(super) struct ReadKeyspace<'a, 'v> {
    pub(super) view: &'a View<'v>,
    pub(super) store: Option<&'a dyn KeyReader>,
    pub(super) now_ms: u64,
    /// Bytes of values the reads may still return.
    pub(super) budget: &'a std::cell::Cell<usize>,
}

impl crate::command::Keyspace for ReadKeyspace<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Value>, Reply> {
        let value = match (self.view.get(key), self.store) {
            (Some(entry), _) => entry.value.clone(),
            (None, Some(store)) => store.value(key)?,
            (None, None) => None,
        };
        let value = value.filter(|v| !v.expired(self.now_ms));
        if let Some(v) = &value {
            let size = key.len() + v.size();
            match self.budget.get().checked_sub(size) {
                Some(left) => self.budget.set(left),
                None => return Err(Reply::OverLimit),
            }
        }
        Ok(value)
    }

    fn put(&mut self, _key: &[u8], _value: Option<Value>) {
        debug_assert!(false, "a read command tried to write");
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

/// Each key's last op in `changes`, with its change's version, in key order: what
/// a commit writes.
///
/// An op replaces its key's whole state, so only the last one of a commit
/// matters: a key written many times in one commit (a counter) is written to
/// the database once. The embedded store inserts in key order, walking its
/// B-tree from one leaf to the next instead of jumping about it.
pub(super) fn newest_ops(changes: &[Change]) -> Vec<(&Op, Version)> {
    let ops: Vec<(&Op, usize)> = (changes.iter().enumerate())
        .flat_map(|(i, change)| change.ops.iter().map(move |op| (op, i)))
        .collect();
    // Sorted by the 8 bytes after the prefix every key shares, then by the whole
    // key where those are equal, then by position: a key's ops stay in order,
    // the last of each run is newest. Sorting by the whole key alone was a
    // comparison through `memcmp` each time, 32% of the committer's CPU under
    // pipelined writes on the embedded store (`redis-benchmark -t set -P 16 -r
    // 100000`, whose keys all start `key:0000000`).
    let shared = shared_prefix(ops.iter().map(|(op, _)| op.key.as_slice()));
    let mut order: Vec<(u64, usize)> = (ops.iter().enumerate())
        .map(|(at, (op, _))| (sort_word(&op.key, shared), at))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| ops[a.1].0.key.cmp(&ops[b.1].0.key))
            .then(a.1.cmp(&b.1))
    });
    let mut newest: Vec<(&Op, usize)> = Vec::with_capacity(order.len());
    let mut last_word = None;
    for (word, at) in order {
        let (op, i) = ops[at];
        match newest.last_mut() {
            Some(last) if last_word == Some(word) && last.0.key == op.key => *last = (op, i),
            _ => newest.push((op, i)),
        }
        last_word = Some(word);
    }
    (newest.into_iter())
        .map(|(op, i)| (op, changes[i].version()))
        .collect()
}

/// The length of the prefix all `keys` share.
fn shared_prefix<'a>(mut keys: impl Iterator<Item = &'a [u8]>) -> usize {
    let Some(first) = keys.next() else {
        return 0;
    };
    let mut shared = first;
    for key in keys {
        let n = shared.len().min(key.len());
        let same = (0..n).find(|&i| shared[i] != key[i]).unwrap_or(n);
        shared = &shared[..same];
        if shared.is_empty() {
            break;
        }
    }
    shared.len()
}

/// The 8 bytes of `key` after its first `skip`, zero-padded, as a number that
/// orders as they do: keys whose words differ order as their words; keys whose
/// words are equal may still differ further on.
fn sort_word(key: &[u8], skip: usize) -> u64 {
    let rest = key.get(skip..).unwrap_or_default();
    let mut word = [0u8; 8];
    let n = rest.len().min(8);
    word[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Data;
    use meridian_policies::Timestamp;

    /// Each key's last op, in key order, whatever the keys share or how they
    /// differ: against a plain stable sort by key.
    #[test]
    fn newest_ops_are_each_keys_last_in_key_order() {
        use proptest::prelude::*;
        let key = prop::collection::vec(prop::sample::select(vec![0u8, 1, b'k', b'y', 255]), 0..12);
        let change = prop::collection::vec(key, 1..4);
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&prop::collection::vec(change, 0..40), |batches| {
                let changes: Vec<Change> = (batches.iter().enumerate())
                    .map(|(i, keys)| Change {
                        origin: "dc1".into(),
                        seq: i as u64 + 1,
                        hlc: (i as u64 + 1) << 16,
                        user: b"u".to_vec(),
                        ops: (keys.iter().enumerate())
                            .map(|(j, k)| {
                                let v = format!("{i}.{j}").into_bytes();
                                let value = Value {
                                    data: Data::String(v),
                                    expire_at_ms: None,
                                };
                                // A common prefix, sometimes.
                                let key = if i % 2 == 0 {
                                    [b"key:000".as_slice(), k].concat()
                                } else {
                                    k.clone()
                                };
                                Op::new(key, Some(value))
                            })
                            .collect(),
                        deps: meridian_policies::VersionVector::new(),
                        path: vec!["dc1".into()],
                    })
                    .collect();
                let mut expected: Vec<(&Op, usize)> = (changes.iter().enumerate())
                    .flat_map(|(i, c)| c.ops.iter().map(move |op| (op, i)))
                    .collect();
                expected.sort_by(|a, b| a.0.key.cmp(&b.0.key));
                let mut newest: Vec<(&Op, usize)> = Vec::new();
                for (op, i) in expected {
                    match newest.last_mut() {
                        Some(last) if last.0.key == op.key => *last = (op, i),
                        _ => newest.push((op, i)),
                    }
                }
                let got: Vec<(&[u8], &Option<Value>, u64)> = (newest_ops(&changes).into_iter())
                    .map(|(op, v)| (op.key.as_slice(), &op.value, v.seq))
                    .collect();
                let want: Vec<(&[u8], &Option<Value>, u64)> = (newest.into_iter())
                    .map(|(op, i)| (op.key.as_slice(), &op.value, changes[i].seq))
                    .collect();
                prop_assert_eq!(got, want);
                Ok(())
            })
            .unwrap();
    }

    /// A stored record reads back as written, for each kind of value.
    #[test]
    fn stored_records_read_back_as_written() {
        let version = Version::new(Timestamp::from_u64(42 << 16), "dc1");
        for data in [
            Data::String(b"v".repeat(70_000)),
            Data::Hash(vec![(b"f".to_vec(), b"x".to_vec())].into_iter().collect()),
            Data::List(vec![b"a".to_vec(), b"b".to_vec()].into()),
        ] {
            let value = Value {
                data,
                expire_at_ms: Some(7),
            };
            let mut buf = vec![9];
            Stored::encode_parts(&value, &version, &mut buf);
            let stored = Stored::decode(&buf[1..]).expect("decodes");
            assert_eq!(stored.value, value);
            assert_eq!(stored.version, version);
        }
    }
}
