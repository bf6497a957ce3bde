//! The agreement's durable state: its Raft log, vote and state machine, in one
//! redb database (`data_dir/control.redb`).
//!
//! The state is small (home epochs and the latest reports) and its log grows only
//! when a link goes down or comes back, so every write is its own durable
//! transaction. Log entries, the vote and the state are stored as JSON: readable
//! with any tool, and their size does not matter here. The state machine is
//! persisted on every apply, so a restart resumes from it without replaying the
//! log; a snapshot is the same state, kept for a peer that fell behind.

// openraft's traits return its `StorageError` (over 200 bytes); the helpers here
// return the same so `?` carries it through.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use meridian_policies::{EpochCommand, Epochs};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Agreement, Entry, NodeId};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const STATE: &str = "state";
const SNAPSHOT: &str = "snapshot";

type Error = StorageError<NodeId>;

/// A storage failure in openraft's terms.
fn failed(verb: ErrorVerb, what: &str, e: impl std::fmt::Display) -> Error {
    StorageIOError::new(
        ErrorSubject::Store,
        verb,
        AnyError::error(format!("{what}: {e}")),
    )
    .into()
}

/// The database, shared by the log and the state machine.
#[derive(Debug, Clone)]
pub(super) struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the agreement's database at `path`.
    pub(super) fn open(path: &Path) -> Result<Store, String> {
        let db = Database::create(path)
            .map_err(|e| format!("cannot open the agreement's store {}: {e}", path.display()))?;
        let store = Store { db: Arc::new(db) };
        store.write(|_, _| Ok(())).map_err(|e| {
            format!(
                "cannot prepare the agreement's store {}: {e}",
                path.display()
            )
        })?;
        Ok(store)
    }

    /// Runs `f` in one durable write transaction.
    fn write(
        &self,
        f: impl FnOnce(
            &mut redb::Table<'_, u64, &[u8]>,
            &mut redb::Table<'_, &str, &[u8]>,
        ) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| failed(ErrorVerb::Write, "begin", e))?;
        {
            let mut log = txn
                .open_table(LOG)
                .map_err(|e| failed(ErrorVerb::Write, "open the log", e))?;
            let mut meta = txn
                .open_table(META)
                .map_err(|e| failed(ErrorVerb::Write, "open the metadata", e))?;
            f(&mut log, &mut meta)?;
        }
        txn.commit()
            .map_err(|e| failed(ErrorVerb::Write, "commit", e))
    }

    /// [`Store::write`] off the async workers: a durable commit waits for the disk,
    /// and on a busy disk that can take long enough to stall every task of the
    /// proxy (client connections included) if it ran on a worker.
    async fn write_off<F>(&self, f: F) -> Result<(), Error>
    where
        F: FnOnce(
                &mut redb::Table<'_, u64, &[u8]>,
                &mut redb::Table<'_, &str, &[u8]>,
            ) -> Result<(), Error>
            + Send
            + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.write(f)).await {
            Ok(result) => result,
            Err(e) => Err(failed(ErrorVerb::Write, "the agreement's store", e)),
        }
    }

    /// Sets a metadata value, durably, off the async workers.
    async fn put_off<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| failed(ErrorVerb::Write, key, e))?;
        self.write_off(move |_, meta| {
            meta.insert(key, bytes.as_slice())
                .map(drop)
                .map_err(|e| failed(ErrorVerb::Write, key, e))
        })
        .await
    }

    /// `table` in a new read transaction (kept alive by the returned one).
    fn read<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: TableDefinition<'_, K, V>,
    ) -> Result<(redb::ReadTransaction, redb::ReadOnlyTable<K, V>), Error> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| failed(ErrorVerb::Read, "begin", e))?;
        let opened = txn
            .open_table(table)
            .map_err(|e| failed(ErrorVerb::Read, redb::TableHandle::name(&table), e))?;
        Ok((txn, opened))
    }

    /// A metadata value.
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let (_txn, meta) = self.read(META)?;
        let Some(bytes) = meta.get(key).map_err(|e| failed(ErrorVerb::Read, key, e))? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| failed(ErrorVerb::Read, key, e))
    }

    /// The first and last entries of the log.
    fn log_bounds(&self) -> Result<Option<(Entry, Entry)>, Error> {
        let (_txn, log) = self.read(LOG)?;
        let decode = |row: Option<(redb::AccessGuard<'_, u64>, redb::AccessGuard<'_, &[u8]>)>| {
            row.map(|(_, v)| serde_json::from_slice::<Entry>(v.value()))
                .transpose()
                .map_err(|e| failed(ErrorVerb::Read, "a log entry", e))
        };
        let first = decode(
            log.first()
                .map_err(|e| failed(ErrorVerb::Read, "the log", e))?,
        )?;
        let last = decode(
            log.last()
                .map_err(|e| failed(ErrorVerb::Read, "the log", e))?,
        )?;
        Ok(first.zip(last))
    }
}

impl RaftLogReader<Agreement> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, Error> {
        let (_txn, log) = self.read(LOG)?;
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let rows = log
            .range::<u64>(bounds)
            .map_err(|e| failed(ErrorVerb::Read, "the log", e))?;
        let mut entries = Vec::new();
        for row in rows {
            let (_, value) = row.map_err(|e| failed(ErrorVerb::Read, "the log", e))?;
            entries.push(
                serde_json::from_slice(value.value())
                    .map_err(|e| failed(ErrorVerb::Read, "a log entry", e))?,
            );
        }
        Ok(entries)
    }
}

impl RaftLogStorage<Agreement> for Store {
    type LogReader = Store;

    async fn get_log_state(&mut self) -> Result<LogState<Agreement>, Error> {
        let purged: Option<LogId<NodeId>> = self.get(PURGED)?;
        let last = match self.log_bounds()? {
            Some((_, last)) => Some(last.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), Error> {
        self.put_off(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Error> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), Error> {
        self.put_off(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, Error> {
        Ok(self.get::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Agreement>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| failed(ErrorVerb::Write, "a log entry", e))?;
            rows.push((entry.log_id.index, bytes));
        }
        let result = self
            .write_off(move |log, _| {
                for (index, bytes) in &rows {
                    log.insert(*index, bytes.as_slice())
                        .map_err(|e| failed(ErrorVerb::Write, "a log entry", e))?;
                }
                Ok(())
            })
            .await;
        callback.log_io_completed(
            result
                .as_ref()
                .map(drop)
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        self.write_off(move |log, _| {
            log.retain_in(log_id.index.., |_, _| false)
                .map_err(|e| failed(ErrorVerb::Delete, "log entries", e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let bytes = serde_json::to_vec(&log_id).map_err(|e| failed(ErrorVerb::Write, PURGED, e))?;
        self.write_off(move |log, meta| {
            meta.insert(PURGED, bytes.as_slice())
                .map_err(|e| failed(ErrorVerb::Write, PURGED, e))?;
            log.retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| failed(ErrorVerb::Delete, "log entries", e))
        })
        .await
    }
}

/// What the state machine holds: the agreed home epochs, and what openraft needs
/// to know about them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) membership: StoredMembership<NodeId, openraft::EmptyNode>,
    pub(super) epochs: Epochs,
}

/// A snapshot as stored: its metadata and its bytes (the state, as JSON).
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::EmptyNode>,
    data: Vec<u8>,
}

/// The state machine: applies agreed commands to the epochs, persists the result,
/// and publishes it to the proxy.
#[derive(Debug)]
pub(super) struct StateMachine {
    store: Store,
    state: State,
    published: watch::Sender<Epochs>,
}

impl StateMachine {
    /// The state machine over `store`, resuming from what it persisted (or `n`
    /// datacenters all in service); `published` gets every new state.
    pub(super) fn open(
        store: Store,
        n: usize,
        published: watch::Sender<Epochs>,
    ) -> Result<StateMachine, Error> {
        let state = store.get::<State>(STATE)?.unwrap_or_else(|| State {
            last_applied: None,
            membership: StoredMembership::default(),
            epochs: Epochs::new(n),
        });
        published.send_replace(state.epochs.clone());
        Ok(StateMachine {
            store,
            state,
            published,
        })
    }
}

impl RaftStateMachine<Agreement> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::EmptyNode>,
        ),
        Error,
    > {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<u64>, Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => {
                    let outcome = self.state.epochs.apply(&command);
                    log_outcome(&command, &outcome, self.state.epochs.epoch());
                }
                EntryPayload::Membership(membership) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            replies.push(self.state.epochs.epoch());
        }
        self.store.put_off(STATE, &self.state).await?;
        self.published.send_if_modified(|published| {
            let changed = *published != self.state.epochs;
            *published = self.state.epochs.clone();
            changed
        });
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::EmptyNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let data = snapshot.into_inner();
        let state: State = serde_json::from_slice(&data)
            .map_err(|e| failed(ErrorVerb::Read, "a snapshot from the leader", e))?;
        self.store
            .put_off(
                SNAPSHOT,
                &StoredSnapshot {
                    meta: meta.clone(),
                    data,
                },
            )
            .await?;
        self.state = state;
        self.store.put_off(STATE, &self.state).await?;
        self.published.send_replace(self.state.epochs.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Agreement>>, Error> {
        Ok(self
            .store
            .get::<StoredSnapshot>(SNAPSHOT)?
            .map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }))
    }
}

/// Logs what an agreed command changed.
fn log_outcome(command: &EpochCommand, outcome: &meridian_policies::EpochOutcome, epoch: u64) {
    use meridian_policies::EpochOutcome;
    match outcome {
        EpochOutcome::Changed(dcs) => {
            tracing::warn!(
                epoch,
                ?dcs,
                ?command,
                "home epochs: datacenters changed service"
            )
        }
        EpochOutcome::Ignored(why) => {
            tracing::debug!(?command, why, "home epochs: a command was ignored")
        }
        EpochOutcome::Noted => {}
    }
}

/// Builds a snapshot of the state as it was when asked.
#[derive(Debug)]
pub(super) struct SnapshotBuilder {
    store: Store,
    state: State,
}

impl RaftSnapshotBuilder<Agreement> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Agreement>, Error> {
        let data = serde_json::to_vec(&self.state)
            .map_err(|e| failed(ErrorVerb::Write, "a snapshot", e))?;
        let id = match self.state.last_applied {
            Some(log_id) => format!("{}-{}", log_id.leader_id.term, log_id.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: id,
        };
        self.store
            .put_off(
                SNAPSHOT,
                &StoredSnapshot {
                    meta: meta.clone(),
                    data: data.clone(),
                },
            )
            .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
