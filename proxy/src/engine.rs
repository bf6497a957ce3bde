//! The engine: the one writer of this datacenter's data, and the read path.
//!
//! Writes are funnelled to a single writer thread, which takes them in batches: it
//! runs each command against the store plus the batch's earlier effects, turns each
//! command's effects into one [`Change`] (origin, dense sequence, timestamp), appends
//! the batch to the log with one write, then commits it to the store with the new
//! applied vector in one transaction, and only then replies. Many pipelined or
//! concurrent writes thus cost one log append and one store commit.
//!
//! Reads run on the caller's task against a store snapshot; a connection waits for
//! its own earlier writes before reading, so it always reads them.

mod replay;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meridian_policies::VersionVector;
use tokio::sync::{mpsc, oneshot};

use crate::change::Value;
use crate::command::{DataFn, Keyspace};
use crate::log::{Log, LogError};
use crate::resp::Reply;
use crate::store::{Snapshot, Store, StoreError};

pub use writer::Fsync;

/// Wall time in milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The replication log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A log record that is intact but does not decode as a change.
    #[error("replication log record {lsn} is not a change this build can read: {message}")]
    BadRecord {
        /// Its position in the log.
        lsn: u64,
        /// What is wrong.
        message: String,
    },
    /// The writer thread could not be started.
    #[error("could not start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// Counters shown by INFO and /metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Changes committed by this datacenter.
    pub changes: AtomicU64,
    /// Write batches committed.
    pub batches: AtomicU64,
    /// Bytes appended to the log.
    pub log_bytes: AtomicU64,
    /// Changes replayed from the log at start-up.
    pub replayed: AtomicU64,
}

/// A handle on the engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    writes: mpsc::Sender<writer::Msg>,
}

#[derive(Debug)]
struct Shared {
    dc: String,
    store: Store,
    stats: Stats,
}

/// What the writer needs to know.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This datacenter's id.
    pub dc: String,
    /// When the log is synced.
    pub fsync: Fsync,
    /// The most a remote timestamp may lead our clock.
    pub max_drift: Duration,
}

impl Engine {
    /// Opens the log and the store in `data_dir`, replays what the store lacks, and
    /// starts the writer thread.
    pub fn open(data_dir: &Path, config: EngineConfig) -> Result<Engine, OpenError> {
        let (log, recovered) = Log::open(&data_dir.join("log"))?;
        std::fs::create_dir_all(data_dir).map_err(|e| LogError::Io {
            path: data_dir.to_owned(),
            source: e,
        })?;
        let store = Store::open(&data_dir.join("store.redb"))?;
        let state = replay::replay(&store, &config.dc, recovered)?;
        let shared = Arc::new(Shared {
            dc: config.dc.clone(),
            store,
            stats: Stats::default(),
        });
        shared
            .stats
            .replayed
            .store(state.replayed, Ordering::Relaxed);
        let writes = writer::spawn(shared.clone(), log, state, config)?;
        Ok(Engine { shared, writes })
    }

    /// This datacenter's id.
    pub fn dc(&self) -> &str {
        &self.shared.dc
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The applied version vector, as committed.
    pub fn applied(&self) -> Result<VersionVector, StoreError> {
        self.shared.store.applied()
    }

    /// Runs a read command against a fresh snapshot.
    pub fn read(&self, f: DataFn, args: &[Bytes]) -> Reply {
        match self.shared.store.snapshot() {
            Ok(snapshot) => {
                let mut ks = SnapshotKeyspace {
                    snapshot: &snapshot,
                    now_ms: wall_ms(),
                };
                f(&mut ks, args).unwrap_or_else(|e| e)
            }
            Err(e) => store_error(&e),
        }
    }

    /// Number of keys stored.
    pub fn key_count(&self) -> Result<u64, StoreError> {
        self.shared.store.snapshot()?.len()
    }

    /// A consistent snapshot of the data.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.shared.store.snapshot()
    }

    /// Queues a write command for `user`; the receiver yields its reply once the
    /// change is in the log and the store.
    pub async fn write(
        &self,
        f: DataFn,
        args: Vec<Bytes>,
        user: Bytes,
    ) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        let request = writer::Request {
            f,
            args,
            user,
            reply,
        };
        if let Err(mpsc::error::SendError(writer::Msg::Write(request))) =
            self.writes.send(writer::Msg::Write(request)).await
        {
            let _ = request.reply.send(Reply::error(
                "ERR the proxy is shutting down; retry on another connection",
            ));
        }
        rx
    }

    /// Stops the writer after the writes already queued, syncing the log and
    /// checkpointing the store.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.writes.send(writer::Msg::Shutdown(done)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn store_error(e: &StoreError) -> Reply {
    Reply::error(format!("ERR backend: {e}"))
}

/// The keyspace of a snapshot, for read commands.
struct SnapshotKeyspace<'s> {
    snapshot: &'s Snapshot,
    now_ms: u64,
}

impl Keyspace for SnapshotKeyspace<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Value>, Reply> {
        let stored = self.snapshot.get(key).map_err(|e| store_error(&e))?;
        Ok(stored.map(|s| s.value).filter(|v| !v.expired(self.now_ms)))
    }

    fn put(&mut self, _key: &[u8], _value: Option<Value>) {
        debug_assert!(false, "a read command tried to write");
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

#[cfg(test)]
mod tests;
