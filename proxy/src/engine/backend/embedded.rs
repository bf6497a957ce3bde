//! The embedded store: a redb database in the datacenter's data directory.
//!
//! Table `data` maps each key to its record (value and [`Version`]); table
//! `tombstones` keeps the version of each deleted key, so a write older than the
//! delete, arriving from another datacenter later, loses to it as it would to a
//! value; table `meta` holds the applied version vector. A batch of changes updates
//! them in one transaction, so the vector always describes exactly the data beside it.
//!
//! Durability comes from the replication log, which is written first. Commits here are
//! cheap (not synced) except at checkpoints; after a crash the store may be behind the
//! log, and start-up replays the difference (see the applied vector).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meridian_policies::{Timestamp, Version, VersionVector};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    Backend, BackendError, BoxFuture, Entries, Fetched, Gather, KeyReader, Read, ReadContext,
    ReadKeyspace, ScanArgs, ScanPage, Session, Stored, newest_ops,
};
use crate::change::{Change, Value};
use crate::engine::memtable::{Memtable, View};
use crate::engine::wall_ms;
use crate::resp::Reply;

const DATA: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Deleted keys: their [`Version`], encoded.
const TOMBSTONES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("tombstones");
/// Deleted keys as earlier builds kept them: `[hlc u64 LE][origin]`; moved into
/// `tombstones` when the store is opened.
const OLD_TOMBSTONES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("deleted");
const APPLIED: &str = "applied";

/// A failure of the embedded store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// redb refused an operation.
    #[error("embedded store {what}: {message}")]
    Engine {
        /// What was being done.
        what: &'static str,
        /// redb's description.
        message: String,
        /// An I/O failure (a full disk, say): the store is opened again and the
        /// operation retried. Anything else (damage) is not retried.
        retryable: bool,
    },
    /// A stored record that does not decode.
    #[error("embedded store holds a damaged record for key {key:?}: {message}")]
    Damaged {
        /// The key, lossily printed.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn engine<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| {
        let e: redb::Error = e.into();
        StoreError::Engine {
            what,
            retryable: matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
            message: e.to_string(),
        }
    }
}

macro_rules! try_engine {
    ($what:literal, $e:expr) => {
        $e.map_err(engine($what))?
    };
}

mod scan;

impl StoreError {
    /// Whether opening the store again and retrying can help.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Engine {
                retryable: true,
                ..
            }
        )
    }
}

fn damaged(key: &[u8], message: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        key: String::from_utf8_lossy(key).into_owned(),
        message: message.into(),
    }
}

/// The embedded store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens or creates the store at `path`; tombstones an earlier build kept move
    /// to the current table.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = try_engine!("open", Database::create(path));
        let txn = try_engine!("open", db.begin_write());
        try_engine!("open", txn.open_table(DATA));
        try_engine!("open", txn.open_table(META));
        {
            let mut tombstones = try_engine!("open", txn.open_table(TOMBSTONES));
            let old = try_engine!("open", txn.open_table(OLD_TOMBSTONES));
            for entry in try_engine!("open", old.iter()) {
                let (key, tomb) = try_engine!("open", entry);
                let version = old_tombstone(key.value(), tomb.value())?;
                try_engine!(
                    "open",
                    tombstones.insert(key.value(), version.to_bytes().as_slice())
                );
            }
        }
        try_engine!("open", txn.delete_table(OLD_TOMBSTONES));
        try_engine!("open", txn.commit());
        Ok(Store { db })
    }

    /// A consistent snapshot for reading.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = try_engine!("read", self.db.begin_read());
        Ok(Snapshot {
            table: try_engine!("read", txn.open_table(DATA)),
            tombstones: std::cell::OnceCell::new(),
            txn,
        })
    }

    /// Writes `changes` and the new `applied` vector in one transaction. Each op
    /// replaces its key's state. `durable` forces the commit to disk (a checkpoint).
    pub fn commit(
        &self,
        changes: &[Change],
        applied: &VersionVector,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = try_engine!("write", self.db.begin_write());
        // Between checkpoints, commits are durable as far as redb's page reuse
        // goes: pages a commit frees are reused by later ones, where with
        // `Durability::None` they were kept until the next synced commit and the
        // file grew by every transaction's churn (49 bytes of file per byte of data
        // under random overwrites; 3 with this). On Linux redb syncs such a commit
        // too (fdatasync). Measured against `None` with a checkpoint every 32
        // commits (`redis-benchmark -t set -r 100000`, -P 16 and -P 1): the same
        // requests/s and CPU per request, and a data directory 5x the size.
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::Eventual
        });
        {
            let mut data = try_engine!("write", txn.open_table(DATA));
            let mut tombstones = try_engine!("write", txn.open_table(TOMBSTONES));
            let mut buf = Vec::new();
            // Writes need not look for a tombstone to remove when there is none
            // (the common case: a workload that does not delete).
            let mut no_tombstones = try_engine!("write", tombstones.is_empty());
            for (op, version) in newest_ops(changes) {
                let key = op.key.as_slice();
                buf.clear();
                match &op.value {
                    None => {
                        try_engine!("write", data.remove(key));
                        version.encode(&mut buf);
                        try_engine!("write", tombstones.insert(key, buf.as_slice()));
                        no_tombstones = false;
                    }
                    Some(value) => {
                        Stored::encode_parts(value, &version, &mut buf);
                        let old = try_engine!("write", data.insert(key, buf.as_slice()))
                            .map_or(0, |old| old.value().len());
                        if shrinks(old, buf.len()) {
                            // redb rebuilds a leaf in place when a value shrinks, and
                            // merges leaves only on removal: a key space that once held
                            // big values kept leaves of a few small records each, and
                            // every commit rewrote several times the pages it needed.
                            try_engine!("write", data.remove(key));
                            try_engine!("write", data.insert(key, buf.as_slice()));
                        }
                        if !no_tombstones {
                            try_engine!("write", tombstones.remove(key));
                        }
                    }
                }
            }
            let mut meta = try_engine!("write", txn.open_table(META));
            try_engine!("write", meta.insert(APPLIED, applied.to_bytes().as_slice()));
        }
        try_engine!("commit", txn.commit());
        Ok(())
    }
}

/// Whether a record of `old` bytes replaced by one of `new` leaves its leaf much
/// emptier: worth a removal, which lets redb merge the leaf with a neighbour.
fn shrinks(old: usize, new: usize) -> bool {
    old >= SHRINK_FROM && new.saturating_mul(4) <= old
}

/// Records this big (an eighth of a page) that shrink fourfold are re-inserted.
const SHRINK_FROM: usize = 512;

/// A tombstone as earlier builds wrote it.
fn old_tombstone(key: &[u8], bytes: &[u8]) -> Result<Version, StoreError> {
    let (hlc, origin) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| damaged(key, "a tombstone shorter than its timestamp"))?;
    let origin = std::str::from_utf8(origin)
        .ok()
        .filter(|o| meridian_policies::is_valid_dc_id(o))
        .ok_or_else(|| damaged(key, "a tombstone names an invalid origin"))?;
    Ok(Version::new(
        Timestamp::from_u64(u64::from_le_bytes(*hlc)),
        origin,
    ))
}

/// A read-only view of the data at one point in time.
#[derive(Debug)]
pub struct Snapshot {
    txn: redb::ReadTransaction,
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// Opened on first use: most snapshots (a write batch's) never look at tombstones.
    tombstones: std::cell::OnceCell<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

impl Snapshot {
    /// The version of the change that last wrote `key`, a delete included; `None`
    /// for a key never written.
    pub fn version(&self, key: &[u8]) -> Result<Option<Version>, StoreError> {
        if let Some(stored) = self.get(key)? {
            return Ok(Some(stored.version));
        }
        let tombstones = match self.tombstones.get() {
            Some(table) => table,
            None => {
                let table = try_engine!("read", self.txn.open_table(TOMBSTONES));
                self.tombstones.get_or_init(|| table)
            }
        };
        match try_engine!("read", tombstones.get(key)) {
            None => Ok(None),
            Some(bytes) => Version::decode(bytes.value())
                .map(Some)
                .map_err(|e| damaged(key, format!("its tombstone: {e}"))),
        }
    }

    /// The applied vector the snapshot's data reaches.
    pub fn applied(&self) -> Result<VersionVector, StoreError> {
        let meta = try_engine!("read", self.txn.open_table(META));
        match try_engine!("read", meta.get(APPLIED)) {
            None => Ok(VersionVector::new()),
            Some(bytes) => VersionVector::decode(bytes.value())
                .map_err(|e| damaged(b"(applied vector)", e.to_string())),
        }
    }

    /// The stored record of `key`, expired or not.
    pub fn get(&self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        let Some(bytes) = try_engine!("read", self.table.get(key)) else {
            return Ok(None);
        };
        Stored::decode(bytes.value())
            .map(Some)
            .map_err(|e| damaged(key, e.to_string()))
    }

    /// Number of keys stored (expired ones included until they are removed).
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(try_engine!("read", self.table.len()))
    }

    /// Every key and record, in key order (for digests and snapshots).
    pub fn scan(&self) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        for entry in try_engine!("scan", self.table.iter()) {
            let (k, v) = try_engine!("scan", entry);
            let key = k.value().to_vec();
            let stored = Stored::decode(v.value()).map_err(|e| damaged(&key, e.to_string()))?;
            out.push((key, stored));
        }
        Ok(out)
    }
}

impl KeyReader for Snapshot {
    fn value(&self, key: &[u8]) -> Result<Option<Value>, Reply> {
        self.get(key)
            .map(|s| s.map(|s| s.value))
            .map_err(|e| Reply::error(format!("ERR backend: {e}")))
    }
}

/// The embedded store as the engine's backend.
#[derive(Debug, Clone)]
pub(in crate::engine) struct Embedded {
    slot: Arc<Slot>,
    /// Where each SCAN cursor handed out resumes.
    cursors: Arc<scan::Cursors>,
}

/// The open store, opened again after an I/O error: redb refuses every operation
/// after one ("previous I/O error") until the database is opened anew, so a disk
/// that was full and has room again would otherwise stop reads and writes for good.
#[derive(Debug)]
struct Slot {
    path: std::path::PathBuf,
    store: std::sync::RwLock<Option<Arc<Store>>>,
}

/// How long opening the store again waits for readers of the old one to finish.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Slot {
    fn current(&self) -> Result<Arc<Store>, StoreError> {
        self.store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Engine {
                what: "open",
                message: "the store is being opened again after an I/O error".into(),
                retryable: true,
            })
    }

    /// Drops the store and opens it again (waiting for the old one's readers).
    fn reopen(&self) {
        let mut slot = self.store.write().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        loop {
            match Store::open(&self.path) {
                Ok(store) => {
                    tracing::info!(path = %self.path.display(), "opened the embedded store again after an I/O error");
                    *slot = Some(Arc::new(store));
                    return;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "opening the embedded store again");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the embedded store again yet");
                    return;
                }
            }
        }
    }
}

impl Embedded {
    pub(in crate::engine) fn open(path: &Path) -> Result<Embedded, StoreError> {
        Ok(Embedded {
            slot: Arc::new(Slot {
                path: path.to_owned(),
                store: std::sync::RwLock::new(Some(Arc::new(Store::open(path)?))),
            }),
            cursors: Arc::new(scan::Cursors::new()),
        })
    }

    fn store(&self) -> Result<Arc<Store>, StoreError> {
        self.slot.current()
    }

    fn read(&self, view: &View<'_>, read: &Read<'_>, budget: &std::cell::Cell<usize>) -> Reply {
        // The snapshot is taken while the memtable view is held (see memtable).
        match self.store().and_then(|store| store.snapshot()) {
            Ok(snapshot) => {
                let mut ks = ReadKeyspace {
                    view,
                    store: Some(&snapshot),
                    now_ms: wall_ms(),
                    budget,
                };
                (read.1)(&mut ks, read.2).unwrap_or_else(|e| e)
            }
            Err(e) => Reply::error(format!("ERR backend: {e}")),
        }
    }

    fn scan_page(
        &self,
        memtable: &Memtable,
        args: &ScanArgs<'_>,
    ) -> Result<ScanPage, BackendError> {
        let after = self
            .cursors
            .resume_after(args.cursor)
            .map_err(BackendError::Refused)?;
        let (keys, resume) = {
            let view = memtable.view();
            let snapshot = self.store()?.snapshot()?;
            scan::page(
                &view,
                &snapshot,
                after.as_deref().map(Vec::as_slice),
                args,
                wall_ms(),
            )?
        };
        Ok(scan::answer(&self.cursors, keys, resume))
    }

    /// A live key after a random point of the key space (from the start again
    /// when none is after it).
    fn pick_key(&self, memtable: &Memtable) -> Result<Option<Vec<u8>>, BackendError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let seed = xxhash_rust::xxh3::xxh3_64(&nanos.to_le_bytes());
        let args = ScanArgs {
            cursor: 0,
            count: 64,
            pattern: None,
            type_name: None,
        };
        let view = memtable.view();
        let snapshot = self.store()?.snapshot()?;
        // Just before the point, so the key at it can be picked too.
        let mut after = scan::random_point(&snapshot, seed)?.and_then(|mut point| {
            while point.last() == Some(&0) {
                point.pop();
            }
            point.last_mut().map(|b| *b -= 1).map(|()| point)
        });
        let mut wrapped = false;
        loop {
            let (keys, resume) = scan::page(&view, &snapshot, after.as_deref(), &args, wall_ms())?;
            // One of the keys found after the point, so that keys that sit
            // close together in the key space are picked alike.
            if !keys.is_empty() {
                let i = (seed >> 32) as usize % keys.len();
                return Ok(keys.into_iter().nth(i));
            }
            match resume {
                Some(next) => after = Some(next),
                None if wrapped => return Ok(None),
                None => (after, wrapped) = (None, true),
            }
        }
    }

    fn count(&self, memtable: &Memtable) -> Result<u64, StoreError> {
        let view = memtable.view();
        let snapshot = self.store()?.snapshot()?;
        let mut count = snapshot.len()? as i64;
        for (key, entry) in view.iter() {
            let stored = snapshot.get(key)?.is_some();
            count += i64::from(entry.value.is_some()) - i64::from(stored);
        }
        Ok(count.max(0) as u64)
    }
}

impl Backend for Embedded {
    fn name(&self) -> String {
        "embedded".into()
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(self.clone())
    }

    /// Long: a commit rewrites each B-tree leaf it touches whole and syncs, so its
    /// cost grows with the leaves it touches more than with its keys. Random
    /// writes over 100,000 keys (`redis-benchmark -t set -r 100000 -c 50`) cost
    /// the proxy 9.5-9.8 µs a request at `-P 16` and 26-28 µs at `-P 1` with
    /// commits 10 ms apart; 6.9 and 20-25 µs 200 ms apart. At `-P 1` a commit of
    /// 200 ms still touched nearly every leaf for 12,000 changes: 500 ms apart the
    /// committer's CPU per SET fell from 4.9-5.4 µs to 3.3-3.4 (3 alternating
    /// runs each, after the overhead bench's 1 KB fill). Reads do not wait for
    /// commits (the memtable serves them), and changes leave the memtable at the
    /// durable checkpoint, once a second, either way: the memtable is no bigger.
    /// Up to 128 Ki changes a commit: 500 ms of writes at 250,000 a second.
    fn commit_gather(&self) -> Gather {
        Gather {
            every: Duration::from_millis(500),
            max_changes: 131_072,
        }
    }

    fn local_reads(&self) -> bool {
        true
    }

    fn snapshot(
        &self,
        memtable: &Memtable,
        overlay: &mut dyn FnMut(&View<'_>),
    ) -> Result<(VersionVector, Entries), BackendError> {
        // The read transaction begins while the memtable cannot change, so the two
        // describe one moment; the scan runs without holding writes.
        let snapshot = {
            let view = memtable.view();
            overlay(&view);
            self.store()?.snapshot()?
        };
        Ok((snapshot.applied()?, snapshot.scan()?))
    }

    fn read_many<'a>(
        &'a self,
        ctx: ReadContext<'a>,
        reads: &'a [Read<'a>],
    ) -> BoxFuture<'a, Vec<Reply>> {
        let view = ctx.memtable.view();
        let budget = std::cell::Cell::new(ctx.max_reply);
        let replies = reads
            .iter()
            .map(|read| self.read(&view, read, &budget))
            .collect();
        drop(view);
        Box::pin(std::future::ready(replies))
    }

    fn key_count<'a>(&'a self, ctx: ReadContext<'a>) -> BoxFuture<'a, Result<u64, BackendError>> {
        Box::pin(std::future::ready(
            self.count(ctx.memtable).map_err(BackendError::from),
        ))
    }

    fn scan<'a>(
        &'a self,
        ctx: ReadContext<'a>,
        args: ScanArgs<'a>,
    ) -> BoxFuture<'a, Result<ScanPage, BackendError>> {
        Box::pin(std::future::ready(self.scan_page(ctx.memtable, &args)))
    }

    fn random_key<'a>(
        &'a self,
        ctx: ReadContext<'a>,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(std::future::ready(self.pick_key(ctx.memtable)))
    }
}

impl Session for Embedded {
    fn applied(&mut self) -> Result<VersionVector, BackendError> {
        Ok(self.store()?.snapshot()?.applied()?)
    }

    fn fetch(
        &mut self,
        keys: Vec<Vec<u8>>,
        _now_ms: u64,
    ) -> Result<HashMap<Vec<u8>, Fetched>, BackendError> {
        let snapshot = self.store()?.snapshot()?;
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            let value = snapshot.get(&key)?.map(|s| s.value);
            out.insert(key, Fetched::Known(value));
        }
        Ok(out)
    }

    fn versions(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Version>>, BackendError> {
        let snapshot = self.store()?.snapshot()?;
        keys.iter()
            .map(|key| snapshot.version(key).map_err(BackendError::from))
            .collect()
    }

    fn keys(&mut self) -> Result<Vec<Vec<u8>>, BackendError> {
        let snapshot = self.store()?.snapshot()?;
        Ok(snapshot.scan()?.into_iter().map(|(key, _)| key).collect())
    }

    fn commit(
        &mut self,
        changes: &[Change],
        applied: &VersionVector,
        durable: bool,
    ) -> Result<(), BackendError> {
        let result = self
            .store()
            .and_then(|store| store.commit(changes, applied, durable));
        match result {
            Err(e) if e.retryable() => {
                self.slot.reopen();
                Err(e.into())
            }
            other => Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Data, Op};

    fn string(s: &str) -> Option<Value> {
        Some(Value {
            data: Data::String(s.as_bytes().to_vec()),
            expire_at_ms: None,
        })
    }

    fn change(seq: u64, ops: Vec<(&str, Option<Value>)>) -> Change {
        Change {
            origin: "us-east".into(),
            seq,
            hlc: 100 + seq,
            user: b"u".to_vec(),
            ops: (ops.into_iter())
                .map(|(k, v)| Op::new(k.as_bytes().to_vec(), v))
                .collect(),
            deps: VersionVector::default(),
            path: vec!["us-east".into()],
        }
    }

    /// One commit of many changes stores each key's last state with the version of
    /// the change that wrote it, whatever the order of keys and changes.
    #[test]
    fn a_commit_keeps_each_keys_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let changes = vec![
            change(1, vec![("b", string("b1")), ("a", string("a1"))]),
            change(2, vec![("c", string("c1")), ("b", None)]),
            change(3, vec![("a", string("a3")), ("c", None)]),
            change(4, vec![("c", string("c4"))]),
        ];
        let mut applied = VersionVector::default();
        applied.advance("us-east", 4);
        store.commit(&changes, &applied, false).unwrap();
        let snapshot = store.snapshot().unwrap();
        let state = |key: &str| {
            let stored = snapshot.get(key.as_bytes()).unwrap();
            let version = snapshot.version(key.as_bytes()).unwrap();
            (stored.map(|s| s.value), version)
        };
        let version = |i: usize| Some(changes[i].version());
        assert_eq!(state("a"), (string("a3"), version(2)));
        assert_eq!(state("b"), (None, version(1)));
        assert_eq!(state("c"), (string("c4"), version(3)));
        assert_eq!(snapshot.applied().unwrap(), applied);
    }

    /// Leaf pages of the data table.
    fn leaf_pages(store: &Store) -> u64 {
        let txn = store.db.begin_write().unwrap();
        let pages = txn.open_table(DATA).unwrap().stats().unwrap().leaf_pages();
        txn.abort().unwrap();
        pages
    }

    /// Keys that once held big values and now hold small ones take about the leaf
    /// pages they would have taken had they held small ones only: commits then
    /// rewrite few pages. Before, each leaf kept the few records it had held when
    /// the values were big (twenty times the pages here).
    #[test]
    fn values_that_shrink_leave_the_data_table_compact() {
        let keys: Vec<String> = (0..3000).map(|i| format!("{{u}}:key:{i:06}")).collect();
        let write = |store: &Store, seq: &mut u64, value: &str| {
            for chunk in keys.chunks(500) {
                *seq += 1;
                let ops = chunk.iter().map(|k| (k.as_str(), string(value))).collect();
                let mut applied = VersionVector::default();
                applied.advance("us-east", *seq);
                store.commit(&[change(*seq, ops)], &applied, false).unwrap();
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let small_only = Store::open(&dir.path().join("small.redb")).unwrap();
        write(&small_only, &mut 0, "v");
        let shrunk = Store::open(&dir.path().join("shrunk.redb")).unwrap();
        let mut seq = 0;
        write(&shrunk, &mut seq, &"x".repeat(1024));
        let big = leaf_pages(&shrunk);
        write(&shrunk, &mut seq, "v");
        let (small, after) = (leaf_pages(&small_only), leaf_pages(&shrunk));
        assert!(
            big > 10 * small,
            "{big} leaf pages of big values, {small} of small ones"
        );
        assert!(
            after <= 2 * small,
            "{after} leaf pages once the values shrank, against {small} for small values only"
        );
        let snapshot = shrunk.snapshot().unwrap();
        assert_eq!(
            snapshot
                .get(keys[1234].as_bytes())
                .unwrap()
                .map(|s| s.value),
            string("v")
        );
    }

    /// A store an earlier build wrote (format-1 records, tombstones as
    /// `[hlc LE][origin]` in table `deleted`) opens with both read as versions.
    #[test]
    fn reads_what_earlier_builds_wrote() {
        #[derive(serde::Serialize)]
        struct V1 {
            value: Value,
            hlc: u64,
            origin: String,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut data = txn.open_table(DATA).unwrap();
                let value = Value {
                    data: Data::String(b"v".to_vec()),
                    expire_at_ms: None,
                };
                let mut record = vec![1];
                record.extend(
                    postcard::to_stdvec(&V1 {
                        value,
                        hlc: 5,
                        origin: "eu-west".into(),
                    })
                    .unwrap(),
                );
                data.insert(b"{u}:a".as_slice(), record.as_slice()).unwrap();
                let mut old = txn.open_table(OLD_TOMBSTONES).unwrap();
                let mut tomb = 9u64.to_le_bytes().to_vec();
                tomb.extend_from_slice(b"us-east");
                old.insert(b"{u}:gone".as_slice(), tomb.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let snapshot = store.snapshot().unwrap();
        let version = |t: u64, dc: &str| Some(Version::new(Timestamp::from_u64(t), dc));
        assert_eq!(snapshot.version(b"{u}:a").unwrap(), version(5, "eu-west"));
        assert_eq!(
            snapshot.version(b"{u}:gone").unwrap(),
            version(9, "us-east")
        );
        assert_eq!(snapshot.version(b"{u}:never").unwrap(), None);
        drop(snapshot);
        drop(store);
        // Opened again: the old table is gone, the tombstone stays.
        let store = Store::open(&path).unwrap();
        let snapshot = store.snapshot().unwrap();
        assert_eq!(
            snapshot.version(b"{u}:gone").unwrap(),
            version(9, "us-east")
        );
    }
}
