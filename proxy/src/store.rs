//! The embedded store: a redb database in the datacenter's data directory.
//!
//! Table `data` maps each key to its value and version (the timestamp and origin of
//! the change that wrote it); table `deleted` keeps the version of each deleted key
//! (a tombstone), so a write older than the delete, arriving from another
//! datacenter later, loses to it as it would to a value; table `meta` holds the
//! applied version vector. A batch
//! of changes updates both in one transaction, so the vector always describes exactly
//! the data beside it.
//!
//! Durability comes from the replication log, which is written first. Commits here are
//! cheap (not synced) except at checkpoints; after a crash the store may be behind the
//! log, and start-up replays the difference (see the applied vector).

use std::path::Path;

use meridian_policies::VersionVector;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::change::{Change, Value};

const DATA: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Deleted keys: `[hlc u64 LE][origin]`.
const DELETED: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("deleted");
const APPLIED: &str = "applied";
/// Format version of stored records.
const RECORD_FORMAT: u8 = 1;

/// A failure of the embedded store. Retrying does not help with a damaged database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb refused an operation.
    #[error("embedded store {what}: {message}")]
    Engine {
        /// What was being done.
        what: &'static str,
        /// redb's description.
        message: String,
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

fn engine(what: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Engine {
        what,
        message: e.to_string(),
    }
}

macro_rules! try_engine {
    ($what:literal, $e:expr) => {
        $e.map_err(|e| engine($what)(&e))?
    };
}

/// A key's value with the version of the change that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The value.
    pub value: Value,
    /// Timestamp of the writing change.
    pub hlc: u64,
    /// Datacenter of the writing change.
    pub origin: String,
}

/// Keys and their records, as a snapshot carries them.
pub type Entries = Vec<(Vec<u8>, Stored)>;

/// The embedded store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens or creates the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = try_engine!("open", Database::create(path));
        let txn = try_engine!("open", db.begin_write());
        try_engine!("open", txn.open_table(DATA));
        try_engine!("open", txn.open_table(META));
        try_engine!("open", txn.open_table(DELETED));
        try_engine!("open", txn.commit());
        Ok(Store { db })
    }

    /// The applied version vector.
    pub fn applied(&self) -> Result<VersionVector, StoreError> {
        self.snapshot()?.applied()
    }

    /// A consistent snapshot for reading.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = try_engine!("read", self.db.begin_read());
        Ok(Snapshot {
            table: try_engine!("read", txn.open_table(DATA)),
            deleted: std::cell::OnceCell::new(),
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
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        {
            let mut data = try_engine!("write", txn.open_table(DATA));
            let mut deleted = try_engine!("write", txn.open_table(DELETED));
            let mut buf = Vec::new();
            for change in changes {
                for op in &change.ops {
                    match &op.value {
                        None => {
                            try_engine!("write", data.remove(op.key.as_slice()));
                            let mut tomb = change.hlc.to_le_bytes().to_vec();
                            tomb.extend_from_slice(change.origin.as_bytes());
                            try_engine!(
                                "write",
                                deleted.insert(op.key.as_slice(), tomb.as_slice())
                            );
                        }
                        Some(value) => {
                            let stored = Stored {
                                value: value.clone(),
                                hlc: change.hlc,
                                origin: change.origin.clone(),
                            };
                            encode_record(&stored, &mut buf);
                            try_engine!("write", data.insert(op.key.as_slice(), buf.as_slice()));
                            try_engine!("write", deleted.remove(op.key.as_slice()));
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

/// A read-only view of the data at one point in time.
#[derive(Debug)]
pub struct Snapshot {
    txn: redb::ReadTransaction,
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// Opened on first use: most snapshots (a write batch's) never look at tombstones.
    deleted: std::cell::OnceCell<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

impl Snapshot {
    /// The version `(hlc, origin)` of the change that last wrote `key`, a delete
    /// included; `None` for a key never written.
    pub fn version(&self, key: &[u8]) -> Result<Option<(u64, String)>, StoreError> {
        if let Some(stored) = self.get(key)? {
            return Ok(Some((stored.hlc, stored.origin)));
        }
        let deleted = match self.deleted.get() {
            Some(table) => table,
            None => {
                let table = try_engine!("read", self.txn.open_table(DELETED));
                self.deleted.get_or_init(|| table)
            }
        };
        let Some(tomb) = try_engine!("read", deleted.get(key)) else {
            return Ok(None);
        };
        let bytes = tomb.value();
        match bytes.split_first_chunk::<8>() {
            Some((hlc, origin)) => Ok(Some((
                u64::from_le_bytes(*hlc),
                String::from_utf8_lossy(origin).into_owned(),
            ))),
            None => Err(StoreError::Damaged {
                key: String::from_utf8_lossy(key).into_owned(),
                message: "a tombstone shorter than its timestamp".into(),
            }),
        }
    }

    /// The applied vector the snapshot's data reaches.
    pub fn applied(&self) -> Result<VersionVector, StoreError> {
        let meta = try_engine!("read", self.txn.open_table(META));
        match try_engine!("read", meta.get(APPLIED)) {
            None => Ok(VersionVector::new()),
            Some(bytes) => VersionVector::decode(bytes.value()).map_err(|e| StoreError::Damaged {
                key: "(applied vector)".into(),
                message: e.to_string(),
            }),
        }
    }

    /// The stored record of `key`, expired or not.
    pub fn get(&self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        let Some(bytes) = try_engine!("read", self.table.get(key)) else {
            return Ok(None);
        };
        decode_record(bytes.value())
            .map(Some)
            .map_err(|message| StoreError::Damaged {
                key: String::from_utf8_lossy(key).into_owned(),
                message,
            })
    }

    /// Number of keys stored (expired ones included until they are removed).
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(try_engine!("read", self.table.len()))
    }

    /// Whether no keys are stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Every key and record, in key order (for digests and snapshots).
    pub fn scan(&self) -> Result<Vec<(Vec<u8>, Stored)>, StoreError> {
        let mut out = Vec::new();
        for entry in try_engine!("scan", self.table.iter()) {
            let (k, v) = try_engine!("scan", entry);
            let key = k.value().to_vec();
            let stored = decode_record(v.value()).map_err(|message| StoreError::Damaged {
                key: String::from_utf8_lossy(&key).into_owned(),
                message,
            })?;
            out.push((key, stored));
        }
        Ok(out)
    }
}

fn encode_record(stored: &Stored, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(RECORD_FORMAT);
    // Serialising plain owned data cannot fail.
    buf.extend_from_slice(&postcard::to_stdvec(stored).unwrap_or_default());
}

fn decode_record(bytes: &[u8]) -> Result<Stored, String> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((&v, _)) => Err(format!("record format {v} is not known to this build")),
        None => Err("empty record".into()),
    }
}
