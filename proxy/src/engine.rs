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

mod backend;
mod committer;
pub mod conflicts;
mod error;
mod expiry;
mod marks;
mod memtable;
pub mod placement;
mod replay;
mod retention;
mod writer;

/// A map keyed by client data (keys, users): foldhash, seeded at random per map,
/// where the standard SipHash cost a tenth of the writer's time under `SET`.
pub(crate) type KeyMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use std::path::Path;
use std::sync::atomic::AtomicU64;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meridian_policies::VersionVector;
use tokio::sync::{oneshot, watch};

use crate::change::Value;
use crate::command::{DataFn, Spec};
use crate::log::{Log, LogError};
use crate::resp::Reply;
use crate::workers::Workers;
use backend::{Backend, ReadContext};

pub use backend::{BackendConfig, BackendError, Entries, ReplicaStats, ScanArgs, ScanPage, Stored};

/// The token of reads that follow no session (keyspace-wide reads).
static EMPTY_TOKEN: std::sync::LazyLock<VersionVector> =
    std::sync::LazyLock::new(VersionVector::new);
pub use error::{ApplyError, Unapplied};
pub use writer::{Fsync, Written};

/// A transaction (`MULTI` ... `EXEC`) of one user: its commands, run in order as
/// one change, and the keys it watches with the versions `WATCH` found.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// Each command's implementation and arguments.
    pub commands: Vec<(DataFn, Vec<Bytes>)>,
    /// Each watched key and its version when watched (`None`: never written).
    pub watched: Vec<(Vec<u8>, Option<meridian_policies::Version>)>,
}

/// Wall time in milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wall clock in microseconds since the Unix epoch.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The replication log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The backend could not be opened, reached, or holds damaged data.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A log record that is intact but does not decode as a change.
    #[error("replication log record {lsn} is not a change this build can read: {message}")]
    BadRecord {
        /// Its position in the log.
        lsn: u64,
        /// What is wrong.
        message: String,
    },
    /// Replaying the log into the backend failed.
    #[error("replaying the replication log into the backend failed: {0}")]
    Replay(#[source] BackendError),
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
    /// Syncs of the log to disk started (each batch's under `fsync = always`, the
    /// timed ones under `every-<N>ms`).
    pub log_syncs: AtomicU64,
    /// Changes replayed from the log at start-up.
    pub replayed: AtomicU64,
    /// Changes of other datacenters applied here.
    pub applied_remote: AtomicU64,
    /// Changes received again after they were applied (and skipped).
    pub duplicates: AtomicU64,
    /// Writes last-writer-wins discarded here without their writer having seen the
    /// write that beat them (see `conflicts`).
    pub conflicts: AtomicU64,
    /// Remote timestamps further ahead of this clock than the drift bound.
    pub clock_drift_refusals: AtomicU64,
    /// Forwarded writes refused because a later connection of their session had
    /// written here (their client had given them up; see `SessionFence`).
    pub session_writes_overtaken: AtomicU64,
    /// Logged changes the backend refused to store (each reported as it happens).
    pub refused_by_backend: AtomicU64,
    /// Keys this datacenter deleted because their TTL had passed.
    pub expired_keys: AtomicU64,
    /// Keys with a TTL, as the writer last counted them.
    pub expires: AtomicU64,
    /// Their average expiry (milliseconds since the Unix epoch; 0 with none).
    pub expires_average_at: AtomicU64,
    /// Keys of the store the start-up scan has still to look at for a TTL
    /// (`u64::MAX` until they are listed).
    pub expiry_scan_left: AtomicU64,
    /// Ops of this datacenter's changes written as edits of the state before.
    pub edits_written: AtomicU64,
    /// Changes of other datacenters held because an edit in them could not be
    /// rebuilt here (each asks its peer for a snapshot).
    pub edits_unbuildable: AtomicU64,
}

/// A handle on the engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    writes: writer::Writes,
}

#[derive(Debug)]
struct Shared {
    dc: String,
    /// Added to the wall clock for timestamps (the testbed skews datacenters).
    clock_offset_ms: i64,
    backend: Arc<dyn Backend>,
    memtable: memtable::Memtable,
    /// Everything logged (and so acknowledged), committed to the backend or not.
    applied: watch::Sender<VersionVector>,
    /// The log's next LSN: shippers wait on it for new records.
    appended: watch::Sender<u64>,
    /// Where the log lives, for readers.
    log_dir: std::path::PathBuf,
    /// The log's count of cut-off appends, for readers.
    log_rewrites: Arc<std::sync::atomic::AtomicU64>,
    /// Log checkpoints `(lsn, vector)`: every record before `lsn` is within `vector`.
    /// A peer whose applied vector dominates `vector` needs nothing before `lsn`.
    index: Mutex<Vec<(u64, VersionVector)>>,
    /// Timestamp of the newest change applied from each origin.
    last_hlc: Mutex<std::collections::HashMap<String, u64>>,
    /// Each user's newest change per origin.
    marks: marks::Marks,
    /// The newest conflicts found here.
    conflicts: conflicts::ConflictLog,
    /// Why writes are refused, after the backend failed for good.
    broken: Mutex<Option<String>>,
    /// Backend commit latencies.
    backend_stats: crate::metrics::Latency,
    /// The newest writer batch committed to the backend.
    committed: watch::Sender<u64>,
    /// The newest writer batch numbered, set before its changes count as applied.
    logged_batch: AtomicU64,
    stats: Stats,
    /// What log retention may remove (see `retention`).
    retention: retention::Retention,
    /// A peer holds this datacenter's own changes up to this number, which it
    /// lacks (its data was lost): local writes wait until a snapshot restores them.
    restoring: AtomicU64,
    /// Every background worker of this proxy, the engine's threads included.
    workers: Arc<Workers>,
    /// Whether this datacenter deletes a user's expired keys (it writes the
    /// user's data); none are deleted until it is set.
    expiry_owner: std::sync::OnceLock<ExpiryOwner>,
    /// Whether this datacenter may write as a home now (see
    /// [`Engine::set_write_fence`]); unset, it always may.
    write_fence: std::sync::OnceLock<WriteFence>,
    /// Users whose home has moved (see `placement`).
    placements: placement::Placements,
}

/// Given an expired key, its user when this datacenter deletes it.
type OwnerFn = dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync;

/// Decides whether this datacenter deletes an expired key: its user when it does.
struct ExpiryOwner(Box<OwnerFn>);

/// Whether this datacenter may write as a home now; the error says why not.
type FenceFn = dyn Fn() -> Result<(), String> + Send + Sync;
struct WriteFence(Box<FenceFn>);

impl std::fmt::Debug for WriteFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteFence")
    }
}

impl std::fmt::Debug for ExpiryOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryOwner")
    }
}

impl Shared {
    /// The store's data and the vector it reaches, and what `memtable` reads of the
    /// memtable at the same moment: together they give what clients read.
    fn stored<T>(
        &self,
        memtable: impl FnOnce(&memtable::View<'_>) -> T,
    ) -> Result<(VersionVector, Entries, T), BackendError> {
        let mut memtable = Some(memtable);
        let mut overlay = None;
        let (applied, entries) = self.backend.snapshot(&self.memtable, &mut |view| {
            if let Some(read) = memtable.take() {
                overlay = Some(read(view));
            }
        })?;
        let overlay = overlay.ok_or_else(|| {
            BackendError::Refused("ERR internal error: the snapshot skipped the memtable".into())
        })?;
        Ok((applied, entries, overlay))
    }

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
    /// Where the data lives.
    pub backend: BackendConfig,
    /// Added to the wall clock for write timestamps (the testbed skews datacenters).
    pub clock_offset_ms: i64,
    /// Logged changes not yet in the store before writes and applies wait
    /// (bounds the memtable; see [`DEFAULT_MAX_UNSTORED`]).
    pub max_unstored: usize,
    /// The most log kept for peers that have not acknowledged it, in bytes.
    pub log_retention: u64,
    /// Log segments are closed past this size (retention removes whole segments).
    pub log_segment_bytes: u64,
}

/// The session a write belongs to. The writer runs the writes of a session in the
/// order of its epochs: a forwarded write of an epoch its session has left here is
/// refused (`meridian_policies::SessionFence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSession {
    /// The session and its epoch as the write was sent.
    pub mark: meridian_policies::SessionMark,
    /// Whether a client of another datacenter sent it (forwarded here).
    pub forwarded: bool,
}

/// The longest a peer's snapshot waits for the store to take what is logged.
const SNAPSHOT_COMMIT_WAIT: Duration = Duration::from_secs(30);

/// How long a home remembers a session's latest epoch after its last write here:
/// longer than any forwarded request is resent (and than the forwarding window
/// remembers requests).
pub const SESSION_FENCE_KEEP: Duration = Duration::from_secs(10 * 60);

/// Default of [`EngineConfig::log_segment_bytes`].
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Default of [`EngineConfig::max_unstored`]: 256 Ki changes, some tens of MB.
pub const DEFAULT_MAX_UNSTORED: usize = 256 * 1024;

/// Reads every placement record the store holds (after replay, before any write).
fn load_placements(shared: &Shared) -> Result<(), OpenError> {
    let mut session = shared.backend.session();
    let keys: Vec<Vec<u8>> = (session.keys()?.into_iter())
        .filter(|k| k.starts_with(placement::PREFIX))
        .collect();
    for chunk in keys.chunks(1024) {
        for (key, fetched) in session.fetch(chunk.to_vec(), wall_ms())? {
            if let backend::Fetched::Known(value) = fetched {
                shared.placements.observe(&key, value.as_ref());
            }
        }
    }
    Ok(())
}

impl Engine {
    /// Opens the log and the backend, replays what the backend lacks, and starts the
    /// writer and committer threads.
    pub fn open(data_dir: &Path, config: EngineConfig) -> Result<Engine, OpenError> {
        let (log, recovered) = Log::open_sized(&data_dir.join("log"), config.log_segment_bytes)?;
        let base = retention::decode_base(&recovered.base)?;
        let log_start = base.0;
        tracing::debug!(
            records = recovered.records,
            truncated = recovered.truncated_bytes,
            "opened the replication log"
        );
        let backend = backend::open(data_dir, &config.backend)?;
        let workers = Arc::new(Workers::new(&config.dc));
        let state = replay::replay(backend.as_ref(), &config.dc, &log, base)?;
        let shared = Arc::new(Shared {
            dc: config.dc.clone(),
            clock_offset_ms: config.clock_offset_ms,
            backend,
            memtable: memtable::Memtable::default(),
            applied: watch::Sender::new(state.applied.clone()),
            appended: watch::Sender::new(log.next_lsn()),
            log_dir: data_dir.join("log"),
            log_rewrites: log.rewrites(),
            index: Mutex::new(state.index.clone()),
            last_hlc: Mutex::new(state.last_hlc_by_origin.clone()),
            marks: marks::Marks::default(),
            conflicts: conflicts::ConflictLog::default(),
            broken: Mutex::new(None),
            backend_stats: crate::metrics::Latency::default(),
            committed: watch::Sender::new(0),
            logged_batch: AtomicU64::new(0),
            stats: Stats::default(),
            retention: retention::Retention::new(
                config.log_retention,
                log_start,
                workers.register("retention", None),
            ),
            restoring: AtomicU64::new(0),
            workers: workers.clone(),
            expiry_owner: std::sync::OnceLock::new(),
            write_fence: std::sync::OnceLock::new(),
            placements: placement::Placements::default(),
        });
        load_placements(&shared)?;
        shared
            .stats
            .replayed
            .store(state.replayed, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            applied = %state.applied,
            next_seq = state.next_seq,
            replayed = state.replayed,
            log_end = shared.appended.borrow().to_owned(),
            "the engine resumes"
        );
        let writes = writer::spawn(shared.clone(), log, state, config)?;
        Ok(Engine { shared, writes })
    }

    /// Has the writer ask `may_write` before it runs each batch of local writes,
    /// and refuse the batch when it says no. A write is routed here while this
    /// datacenter holds its home lease, but it runs later, once the writer takes
    /// it: asked again where it runs, the lease fences a write that waited past
    /// it. Set once; later calls do nothing.
    pub fn set_write_fence(
        &self,
        may_write: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        let _ = self.shared.write_fence.set(WriteFence(Box::new(may_write)));
    }

    /// Starts active expiry: `owns(key)` gives the key's user when this datacenter
    /// deletes the key once expired (it writes the user's data), `None` when
    /// another does. Set once; later calls do nothing.
    pub fn set_expiry_owner(
        &self,
        owns: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) {
        let _ = self.shared.expiry_owner.set(ExpiryOwner(Box::new(owns)));
    }

    /// Keys with a TTL, and their average remaining TTL in milliseconds (as Redis
    /// reports `expires` and `avg_ttl` in INFO keyspace).
    pub fn expiry_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let count = self.shared.stats.expires.load(Relaxed);
        let average_at = self.shared.stats.expires_average_at.load(Relaxed);
        (count, average_at.saturating_sub(wall_ms()))
    }

    /// This datacenter's id.
    pub fn dc(&self) -> &str {
        &self.shared.dc
    }

    /// Every background worker of this proxy.
    pub(crate) fn workers(&self) -> &Arc<Workers> {
        &self.shared.workers
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The applied version vector: every change logged here, so acknowledged.
    pub fn applied(&self) -> VersionVector {
        self.shared.applied.borrow().clone()
    }

    /// Whether everything `token` names has been applied here (without copying the
    /// applied vector).
    pub fn covers(&self, token: &VersionVector) -> bool {
        self.shared.applied.borrow().dominates(token)
    }

    /// The applied vector's entry for `origin`.
    pub fn applied_of(&self, origin: &str) -> u64 {
        self.shared.applied.borrow().get(origin)
    }

    /// `user`'s newest change applied here, per origin: at least what any read of
    /// the user's keys here has returned (`None` when not known; the origins'
    /// whole positions then stand in for it).
    pub fn user_mark(&self, user: &[u8]) -> Option<Vec<(Box<str>, u64)>> {
        self.shared.marks.of(user)
    }

    /// The newest `count` conflicts found here, newest first.
    pub fn conflicts(&self, count: usize) -> Vec<conflicts::Conflict> {
        self.shared.conflicts.newest(count)
    }

    /// Watches the applied vector (it changes after every logged batch).
    pub fn watch_applied(&self) -> watch::Receiver<VersionVector> {
        self.shared.applied.subscribe()
    }

    /// Watches the log's next LSN (it grows with every logged batch).
    pub fn watch_log(&self) -> watch::Receiver<u64> {
        self.shared.appended.subscribe()
    }

    /// A reader of the log from `lsn` on.
    pub fn log_reader(&self, lsn: u64) -> crate::log::LogReader {
        crate::log::LogReader::open(&self.shared.log_dir, lsn)
            .watching(self.shared.log_rewrites.clone())
    }

    /// Where a peer that has applied `peer` must start reading the log: no record
    /// before it is missing from `peer`.
    /// `None` when the log no longer reaches back that far: the peer must bootstrap.
    pub fn resume_lsn(&self, peer: &VersionVector) -> Option<u64> {
        let index = self.shared.index.lock().unwrap_or_else(|p| p.into_inner());
        index
            .iter()
            .rev()
            .find(|(_, vector)| peer.dominates(vector))
            .map(|(lsn, _)| *lsn)
    }

    /// Installs a peer's snapshot (see the writer's `install_snapshot`); returns the
    /// number of keys it changed here.
    pub async fn install_snapshot(
        &self,
        vector: VersionVector,
        entries: Entries,
    ) -> Result<u64, ApplyError> {
        let (done, rx) = oneshot::channel();
        if self
            .writes
            .send(writer::Msg::Snapshot(vector, entries, done))
            .await
            .is_err()
        {
            return Err(ApplyError::ShuttingDown);
        }
        rx.await.map_err(|_| ApplyError::ShuttingDown)?
    }

    /// The store's data and the vector it reaches, read in one transaction (the
    /// embedded store) or with commits held off (Redis), for a peer to bootstrap from.
    ///
    /// It holds every change applied here when it was asked for: the store lags
    /// the log by up to a commit, and what the snapshot lacks, the shipper does
    /// not make up for when the peer is the changes' origin (nobody sends a
    /// datacenter its own changes). A datacenter restoring its lost data would
    /// stay short of its newest changes.
    pub async fn snapshot(&self) -> Result<(VersionVector, Entries), BackendError> {
        use std::sync::atomic::Ordering;
        let batch = self.shared.logged_batch.load(Ordering::Acquire);
        let mut committed = self.shared.committed.subscribe();
        self.writes.hurry_commits(batch);
        let stored = committed.wait_for(|&c| c >= batch);
        match tokio::time::timeout(SNAPSHOT_COMMIT_WAIT, stored).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                return Err(BackendError::Refused(format!(
                    "ERR the store did not take the changes logged here within {}s; no snapshot is taken without them",
                    SNAPSHOT_COMMIT_WAIT.as_secs()
                )));
            }
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            shared
                .stored(|_| ())
                .map(|(applied, entries, ())| (applied, entries))
        })
        .await
        .map_err(|e| BackendError::Refused(format!("ERR the snapshot task failed: {e}")))?
    }

    /// A peer has this datacenter's own changes up to `seq`; if this datacenter
    /// lacks them (it lost its data, or is new under an old name), local writes are
    /// refused until a snapshot restores them, so no change number is used twice.
    /// Returns whether writes are now held.
    pub fn peer_has_own_changes(&self, seq: u64) -> bool {
        use std::sync::atomic::Ordering;
        if seq <= self.applied().get(self.dc()) {
            return false;
        }
        if self.shared.restoring.fetch_max(seq, Ordering::AcqRel) < seq {
            tracing::warn!(
                seq,
                "a peer holds changes of this datacenter that it lacks: writes wait for a snapshot"
            );
        }
        true
    }

    /// Whether local writes wait for a snapshot (see [`Engine::peer_has_own_changes`]).
    pub fn restoring(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.shared.restoring.load(Ordering::Acquire) > self.applied().get(self.dc())
    }

    /// Tells log retention the oldest position a peer still needs.
    pub fn set_peers_need(&self, lsn: u64) {
        self.shared
            .retention
            .peers_need
            .store(lsn, std::sync::atomic::Ordering::Release);
    }

    /// Where the log starts, and how many segments retention has removed.
    pub fn log_start(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Acquire;
        let r = &self.shared.retention;
        (r.start.load(Acquire), r.removed.load(Acquire))
    }

    /// Timestamp of the newest change applied from each origin.
    pub fn last_hlc(&self) -> std::collections::HashMap<String, u64> {
        self.shared
            .last_hlc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies changes of other datacenters, in order. A change already applied is
    /// skipped; the changes returned could not be applied yet (a gap in their origin's
    /// sequence or dependencies not applied) and should be offered again later.
    pub async fn apply(
        &self,
        changes: Vec<crate::change::Change>,
    ) -> Result<Vec<crate::change::Change>, Unapplied> {
        let (done, rx) = oneshot::channel();
        if self
            .writes
            .send(writer::Msg::Apply(changes, done))
            .await
            .is_err()
        {
            return Err(ApplyError::ShuttingDown.into());
        }
        rx.await.map_err(|_| ApplyError::ShuttingDown)?
    }

    /// Backend commit latencies.
    pub(crate) fn backend_stats(&self) -> &crate::metrics::Latency {
        &self.shared.backend_stats
    }

    /// Why writes are stopped, if they are.
    pub fn broken(&self) -> Option<String> {
        self.shared.broken()
    }

    /// The backend, for people: `embedded` or the Redis URL.
    pub fn backend_name(&self) -> String {
        self.shared.backend.name()
    }

    /// Keys written but not yet committed to the backend.
    pub fn uncommitted(&self) -> usize {
        self.shared.memtable.len()
    }

    /// Runs a read command against the newest data.
    pub async fn read(&self, spec: &Spec, f: DataFn, args: &[Bytes]) -> Reply {
        self.read_many(&[(spec, f, args)], usize::MAX)
            .await
            .pop()
            .unwrap_or(Reply::Null)
    }

    /// Runs consecutive read commands of one connection, in order (with Redis
    /// behind, those that go to Redis travel as one pipeline).
    /// The values they return together are bounded by `max_reply` bytes: a read
    /// that would go past it answers [`Reply::OverLimit`] without building its reply.
    pub async fn read_many(
        &self,
        reads: &[(&Spec, DataFn, &[Bytes])],
        max_reply: usize,
    ) -> Vec<Reply> {
        self.read_many_as(reads, max_reply, b"", &VersionVector::new())
            .await
    }

    /// [`Engine::read_many`] for a session of `user` that has seen `token`: on Redis
    /// with read replicas, the user's replica serves them once it has applied the
    /// token (else the next in the user's order, then the primary).
    pub async fn read_many_as(
        &self,
        reads: &[(&Spec, DataFn, &[Bytes])],
        max_reply: usize,
        user: &[u8],
        token: &VersionVector,
    ) -> Vec<Reply> {
        let ctx = ReadContext {
            memtable: &self.shared.memtable,
            committed: &self.shared.committed,
            max_reply,
            user,
            token,
        };
        self.shared.backend.read_many(ctx, reads).await
    }

    /// Each read replica's reads served, skipped (behind the session) and failed,
    /// and how far behind this datacenter it is (none without replicas).
    pub fn replica_stats(&self) -> Vec<ReplicaStats> {
        self.shared
            .backend
            .replica_stats(&self.shared.applied.borrow())
    }

    /// Number of keys, expired ones included until they are removed (meridian's own
    /// metadata not counted).
    pub async fn key_count(&self) -> Result<u64, BackendError> {
        let all = self.shared.backend.key_count(self.read_context()).await?;
        // Less the placement records, which are meridian's own.
        Ok(all.saturating_sub(self.shared.placements.len() as u64))
    }

    /// This datacenter's clock in milliseconds since the Unix epoch, as its
    /// timestamps read it: how long ago a change was made is this less the
    /// physical part of the change's timestamp (across datacenters, their
    /// clocks' difference included).
    pub fn clock_ms(&self) -> u64 {
        wall_ms().saturating_add_signed(self.shared.clock_offset_ms)
    }

    /// One page of a SCAN of the keyspace.
    pub async fn scan(&self, args: ScanArgs<'_>) -> Result<ScanPage, BackendError> {
        self.shared.backend.scan(self.read_context(), args).await
    }

    /// A live key picked at random (RANDOMKEY).
    pub async fn random_key(&self) -> Result<Option<Vec<u8>>, BackendError> {
        self.shared.backend.random_key(self.read_context()).await
    }

    /// What reads of the whole keyspace need of the engine.
    fn read_context(&self) -> ReadContext<'_> {
        ReadContext {
            memtable: &self.shared.memtable,
            committed: &self.shared.committed,
            max_reply: usize::MAX,
            user: b"",
            token: &EMPTY_TOKEN,
        }
    }

    /// A digest of the data (keys, values and expiry times, not versions) and the
    /// number of keys: datacenters holding the same data have the same digest.
    /// Blocks: call it off the async workers.
    pub fn digest(&self) -> Result<(u64, u64), BackendError> {
        // What the store holds, then the memtable's newer state over it.
        let (_, stored, overlay) = self.shared.stored(|memtable| {
            memtable
                .iter()
                .map(|(key, entry)| (key.to_vec(), entry.value.clone()))
                .collect::<Vec<_>>()
        })?;
        let mut data: std::collections::BTreeMap<Vec<u8>, Value> =
            stored.into_iter().map(|(k, s)| (k, s.value)).collect();
        for (key, value) in overlay {
            match value {
                Some(v) => drop(data.insert(key, v)),
                None => drop(data.remove(&key)),
            }
        }
        let now = wall_ms();
        data.retain(|_, v| !v.expired(now));
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (key, value) in &data {
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key);
            let bytes = digest_bytes(value);
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
        Ok((data.len() as u64, hasher.digest()))
    }

    /// Queues a write command for `user` and runs it; the receiver yields its
    /// reply (and its sequence number) once the change is in the log. `session`:
    /// the session it belongs to, when a fence must order it (see [`WriteSession`]).
    pub async fn write(
        &self,
        f: DataFn,
        args: Vec<Bytes>,
        user: Bytes,
        session: Option<WriteSession>,
    ) -> oneshot::Receiver<Written> {
        let rx = self.write_deferred(f, args, user, session).await;
        self.run_writes();
        rx
    }

    /// [`Engine::write`], run with the writes the caller queues after it: the
    /// caller calls [`Engine::run_writes`] before it waits for any reply.
    pub async fn write_deferred(
        &self,
        f: DataFn,
        args: Vec<Bytes>,
        user: Bytes,
        session: Option<WriteSession>,
    ) -> oneshot::Receiver<Written> {
        self.queue(writer::Work::One(f, args), user, session).await
    }

    /// Runs the writes queued with [`Engine::write_deferred`] (unless another
    /// task is running them already).
    pub fn run_writes(&self) {
        self.writes.run();
    }

    /// Moves `user`'s home from here to datacenter `to`, as a change of this
    /// datacenter (see `placement`); `why` is recorded with it. Its reply is `OK`,
    /// or the error saying why not (this datacenter no longer writes the user).
    pub async fn move_home(
        &self,
        user: Bytes,
        to: String,
        why: &str,
    ) -> oneshot::Receiver<Written> {
        let work = writer::Work::Move {
            to,
            why: why.to_owned(),
        };
        let rx = self.queue(work, user, None).await;
        self.run_writes();
        rx
    }

    /// `user`'s placement record, when its home has moved.
    pub fn placement(&self, user: &[u8]) -> Option<placement::Placement> {
        self.shared.placements.get(user)
    }

    /// Every placement record held here.
    pub fn placements(&self) -> &placement::Placements {
        &self.shared.placements
    }

    /// Queues a transaction of `user`: its reply is the array of its commands'
    /// replies, their effects one change; or the null array, nothing run, when a
    /// key it watches has a version other than the one recorded.
    pub async fn transaction(
        &self,
        transaction: Transaction,
        user: Bytes,
        session: Option<WriteSession>,
    ) -> oneshot::Receiver<Written> {
        let work = writer::Work::Transaction(transaction);
        let rx = self.queue(work, user, session).await;
        self.run_writes();
        rx
    }

    /// The versions of `keys` now (`None`: never written), after the writes
    /// queued before: what `WATCH` records.
    pub async fn versions(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<meridian_policies::Version>>, Reply> {
        let (done, rx) = oneshot::channel();
        let stopping =
            || Reply::error("ERR the proxy is shutting down; retry on another connection");
        if self
            .writes
            .send(writer::Msg::Versions(keys, done))
            .await
            .is_err()
        {
            return Err(stopping());
        }
        rx.await.unwrap_or_else(|_| Err(stopping()))
    }

    async fn queue(
        &self,
        work: writer::Work,
        user: Bytes,
        session: Option<WriteSession>,
    ) -> oneshot::Receiver<Written> {
        let (reply, rx) = oneshot::channel();
        let request = writer::Request {
            work,
            user,
            session,
            reply,
        };
        self.writes.queue(request).await;
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

/// A value as the digest hashes it: a hash's fields sorted, so that datacenters
/// holding the same fields in another order (a big hash read back from Redis)
/// digest alike.
fn digest_bytes(value: &Value) -> Vec<u8> {
    // Serialising plain owned data into a Vec cannot fail.
    match &value.data {
        crate::change::Data::Hash(fields) => {
            let mut sorted: Vec<(&Vec<u8>, &Vec<u8>)> = fields.iter().collect();
            sorted.sort_unstable();
            postcard::to_stdvec(&(sorted, value.expire_at_ms)).unwrap_or_default()
        }
        _ => postcard::to_stdvec(value).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
