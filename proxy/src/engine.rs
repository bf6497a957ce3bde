//! The engine: the one writer of this datacenter's data, and the read path.
//!
//! Writes are funnelled to a single writer thread, which takes them in batches: it
//! runs each command against the newest data plus the batch's earlier effects, turns
//! each command's effects into one [`Change`](crate::change::Change) (origin, dense
//! sequence, timestamp), appends the batch to the log with one write, puts the
//! effects in the memtable, and replies. A committer thread then moves them into the
//! store in large transactions. An acknowledged write is in the log, so it survives
//! the process being killed; start-up replays what the store had not committed.
//!
//! Reads run on the caller's task against the memtable over a store snapshot; a
//! connection waits for its own earlier writes before reading, so it always sees them.

mod committer;
mod memtable;
mod replay;
mod writer;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
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
    /// A worker thread could not be started.
    #[error("could not start a worker thread: {0}")]
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
    memtable: memtable::Memtable,
    /// Everything logged (and so acknowledged), committed to the store or not.
    applied: Mutex<VersionVector>,
    /// Why writes are refused, after the store failed.
    broken: Mutex<Option<String>>,
    stats: Stats,
}

impl Shared {
    fn set_broken(&self, why: String) {
        *self.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
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
    /// starts the writer and committer threads.
    pub fn open(data_dir: &Path, config: EngineConfig) -> Result<Engine, OpenError> {
        let (log, recovered) = Log::open(&data_dir.join("log"))?;
        let store = Store::open(&data_dir.join("store.redb"))?;
        let state = replay::replay(&store, &config.dc, recovered)?;
        let shared = Arc::new(Shared {
            dc: config.dc.clone(),
            store,
            memtable: memtable::Memtable::default(),
            applied: Mutex::new(state.applied.clone()),
            broken: Mutex::new(None),
            stats: Stats::default(),
        });
        shared
            .stats
            .replayed
            .store(state.replayed, std::sync::atomic::Ordering::Relaxed);
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

    /// The applied version vector: every change logged here, so acknowledged.
    pub fn applied(&self) -> VersionVector {
        self.shared
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keys written but not yet committed to the store.
    pub fn uncommitted(&self) -> usize {
        self.shared.memtable.len()
    }

    /// Runs a read command against the newest data.
    pub fn read(&self, f: DataFn, args: &[Bytes]) -> Reply {
        // The snapshot must be taken while the memtable view is held (see memtable).
        let view = self.shared.memtable.view();
        match self.shared.store.snapshot() {
            Ok(snapshot) => {
                let mut ks = ViewKeyspace {
                    view: &view,
                    snapshot: &snapshot,
                    now_ms: wall_ms(),
                };
                f(&mut ks, args).unwrap_or_else(|e| e)
            }
            Err(e) => store_error(&e),
        }
    }

    /// Number of keys, expired ones included until they are removed.
    pub fn key_count(&self) -> Result<u64, StoreError> {
        let view = self.shared.memtable.view();
        let snapshot = self.shared.store.snapshot()?;
        let mut count = snapshot.len()? as i64;
        for (key, entry) in view.iter() {
            let stored = snapshot.get(key)?.is_some();
            count += i64::from(entry.value.is_some()) - i64::from(stored);
        }
        Ok(count.max(0) as u64)
    }

    /// Queues a write command for `user`; the receiver yields its reply once the
    /// change is in the log.
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

    /// Stops the writer after the writes already queued, syncs the log, lets the
    /// committer finish, and checkpoints the store.
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

/// The newest data: the memtable over a store snapshot.
struct ViewKeyspace<'a, 'v> {
    view: &'a memtable::View<'v>,
    snapshot: &'a Snapshot,
    now_ms: u64,
}

impl Keyspace for ViewKeyspace<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Value>, Reply> {
        let value = match self.view.get(key) {
            Some(entry) => entry.value.clone(),
            None => self
                .snapshot
                .get(key)
                .map_err(|e| store_error(&e))?
                .map(|s| s.value),
        };
        Ok(value.filter(|v| !v.expired(self.now_ms)))
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
