//! The writer: batches writes into changes, the log and the memtable; run by the
//! client tasks that write and by its own thread (see [`Writes`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_policies::{Hlc, SessionFence, Version, VersionVector};
use tokio::sync::{mpsc, oneshot};

use super::backend::{Entries, Fetched, Session};
use super::committer::{self, Logged, Queue};
use super::memtable::View;
use super::replay::{INDEX_EVERY, Resume};
use super::{ApplyError, EngineConfig, OpenError, Shared, wall_ms};
use crate::change::{Change, Op, Value};
use crate::command::{DataFn, Keyspace};
use crate::command::{lookup, wrong_type};
use crate::log::Log;
use crate::resp::Reply;
use crate::workers::{State, Worker};

mod apply;
mod edits;
mod snapshot;

/// Most writes taken into one batch.
const MAX_BATCH: usize = 1024;
/// Queued writes before senders wait (backpressure on clients).
const QUEUE: usize = 4096;
/// How much sooner than the writer thread planned a duty must fall due to wake it.
const WAKE_SLACK: Duration = Duration::from_millis(1);
/// Batches a client task runs for others before it hands the rest to a task.
const COMBINED_BATCHES: usize = 2;

/// When log appends are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before each batch is acknowledged.
    Always,
    /// At most this long after an append.
    Every(Duration),
    /// Left to the operating system.
    Never,
}

pub(super) struct Request {
    pub(super) work: Work,
    pub(super) user: Bytes,
    pub(super) session: Option<super::WriteSession>,
    pub(super) reply: oneshot::Sender<Written>,
}

/// What a write request runs.
pub(super) enum Work {
    /// One command.
    One(DataFn, Vec<Bytes>),
    /// A transaction's commands, as one change.
    Transaction(super::Transaction),
    /// Moving the user's home from here to another datacenter.
    Move {
        /// The new home.
        to: String,
        /// Why (recorded).
        why: String,
    },
}

impl Request {
    /// The commands it runs, in order.
    fn commands(&self) -> Vec<&[Bytes]> {
        match &self.work {
            Work::One(_, args) => vec![args.as_slice()],
            Work::Transaction(t) => t.commands.iter().map(|(_, a)| a.as_slice()).collect(),
            Work::Move { .. } => Vec::new(),
        }
    }

    /// Whether running it reads the backend: a command reads the state it
    /// changes, or a transaction checks the keys it watches.
    fn reads_backend(&self) -> bool {
        let watches = matches!(&self.work, Work::Transaction(t) if !t.watched.is_empty());
        watches
            || (self.commands().into_iter())
                .any(|args| lookup(&args[0]).is_some_and(|spec| spec.reads_state(args)))
    }
}

/// A write's reply, and the sequence number of this datacenter's newest change
/// once it ran: its own change, or, when it changed nothing (or failed), the one
/// before it. A session that saw the reply has seen this datacenter up to there.
#[derive(Debug, Clone)]
pub struct Written {
    /// What the client is answered.
    pub reply: Reply,
    /// This datacenter's newest change after the write (0: none yet).
    pub seq: u64,
}

/// Remote changes to apply, and where to say which could not be applied yet.
pub(super) type ApplyDone = oneshot::Sender<Result<Vec<Change>, super::Unapplied>>;

pub(super) enum Msg {
    Apply(Vec<Change>, ApplyDone),
    Snapshot(
        VersionVector,
        Entries,
        oneshot::Sender<Result<u64, ApplyError>>,
    ),
    /// The current versions of keys (`WATCH`), after the writes queued before.
    Versions(
        Vec<Vec<u8>>,
        oneshot::Sender<Result<Vec<Option<Version>>, Reply>>,
    ),
    Shutdown(oneshot::Sender<()>),
}

/// The engine's way to the writer: writes are queued and run by whichever task
/// finds the writer free; everything else goes to the writer thread.
///
/// Handing each write to a thread cost a park and a wake on each side of every
/// batch: about a third of the writer's time at one write per client. So a
/// client task that queues a write and finds the writer free runs the queued
/// writes itself, and whoever holds the writer runs those queued meanwhile
/// before and after letting it go (flat combining). The writer thread keeps what
/// may block: applies, snapshots, `WATCH`, timed syncs, expiry, writes that read
/// a remote backend, and every write under `fsync = always`.
#[derive(Debug, Clone)]
pub(super) struct Writes {
    core: Arc<Core>,
    msgs: mpsc::Sender<Msg>,
}

struct Core {
    /// `None` once stopped.
    writer: Mutex<Option<Writer>>,
    queue: Mutex<Queued>,
    /// Room in the queue: writers wait for it (backpressure on clients).
    room: tokio::sync::Semaphore,
    /// Wakes the writer thread: writes left to it, or a sync or expiry due sooner
    /// than it planned.
    wake: Arc<tokio::sync::Notify>,
    /// Every write runs on the writer thread (`fsync = always`: a sync per batch).
    thread_only: bool,
    /// The runtime of the tasks that write, for a task that runs writes left
    /// queued (`None`: the engine was opened outside one).
    runtime: Option<tokio::runtime::Handle>,
    /// Hurries the committer for a reader that waits for a commit.
    hurry: committer::Hurry,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

/// Writes waiting to run, in the order they came.
struct Queued {
    requests: VecDeque<Request>,
    /// The writer thread runs what is queued (a write in it may block): client
    /// tasks leave it be. Read and written under the queue's lock, so that a write
    /// queued as the thread lets go is run by one or the other.
    to_thread: bool,
    /// Why writes are refused once the writer is gone.
    gone: &'static str,
}

/// Why a write was not run.
const STOPPING: &str = "ERR the proxy is shutting down; retry on another connection";
const FAILED: &str =
    "ERR the writer stopped after a fault; writes are refused until the proxy restarts";

impl Writes {
    /// Queues a write to run with those queued after it: the caller calls
    /// [`Writes::run`] before it waits for its reply (and the write runs sooner
    /// when another task or the thread runs the queue). A connection's pipelined
    /// writes then run as one batch: a batch each cost a log append, more than a
    /// thread hand-off saved.
    pub(super) async fn queue(&self, request: Request) {
        match self.core.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                // Full: run what is queued (some of it may be the caller's own),
                // then wait for room.
                self.run();
                match self.core.room.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return refuse(vec![request], Reply::error(STOPPING), 0),
                }
            }
        }
        let to_thread = {
            let mut queued = self.core.queue();
            queued.requests.push_back(request);
            queued.to_thread
        };
        if to_thread {
            self.core.wake.notify_one();
        }
    }

    /// Runs the queued writes on this task when the writer is free (else its
    /// holder runs them; writes left to the writer thread, it runs).
    pub(super) fn run(&self) {
        if !self.core.queue().to_thread {
            self.core.combine(false);
        }
    }

    /// Has the committer commit writer batches up to `batch` without waiting out
    /// its period.
    pub(super) fn hurry_commits(&self, batch: u64) {
        self.core.hurry.commit_through(batch);
    }

    /// Sends the writer thread a message.
    pub(super) async fn send(&self, msg: Msg) -> Result<(), mpsc::error::SendError<Msg>> {
        self.msgs.send(msg).await
    }
}

impl Core {
    fn queue(&self) -> MutexGuard<'_, Queued> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the queued writes while the writer is free, and those queued while it
    /// ran them; returns at once when another holds the writer (it runs them when
    /// done). A client task runs a few batches, then hands what is left to a task
    /// of its own, so that its connection is not held up by the others' writes.
    /// `on_thread`: the caller is the writer thread, which may block.
    fn combine(self: &Arc<Self>, on_thread: bool) {
        let mut batches = 0;
        loop {
            let mut slot = match self.writer.try_lock() {
                Ok(slot) => slot,
                Err(TryLockError::WouldBlock) => return,
                Err(TryLockError::Poisoned(poisoned)) => self.fault(poisoned.into_inner()),
            };
            self.run_queued(&mut slot, on_thread, MAX_BATCH);
            drop(slot);
            if !self.runnable(on_thread) {
                return;
            }
            batches += 1;
            if batches >= COMBINED_BATCHES
                && let Some(runtime) = &self.runtime
            {
                let core = self.clone();
                runtime.spawn(async move { core.combine(false) });
                return;
            }
        }
    }

    /// Whether queued writes wait for the caller to run them.
    fn runnable(&self, on_thread: bool) -> bool {
        let queued = self.queue();
        !queued.requests.is_empty() && (on_thread || !queued.to_thread)
    }

    /// The writer thread lets the writer go: after running the writes left to it.
    /// Writes queued meanwhile by tasks that found the writer taken go to a task
    /// of their own (the thread stays free for what may block).
    fn release(self: &Arc<Self>, mut slot: MutexGuard<'_, Option<Writer>>) {
        if self.queue().to_thread {
            self.run_queued(&mut slot, true, usize::MAX);
        }
        drop(slot);
        if !self.runnable(false) {
            return;
        }
        match &self.runtime {
            Some(runtime) => {
                let core = self.clone();
                drop(runtime.spawn(async move { core.combine(false) }));
            }
            None => self.combine(true),
        }
    }

    /// Takes the writer, waiting for it (the writer thread only).
    fn lock(&self) -> MutexGuard<'_, Option<Writer>> {
        match self.writer.lock() {
            Ok(slot) => slot,
            Err(poisoned) => self.fault(poisoned.into_inner()),
        }
    }

    /// With the writer held: runs the queued writes in order, a batch at a time,
    /// up to `limit` of them. A client task leaves them to the writer thread, and
    /// wakes it, once a batch would block.
    fn run_queued(&self, slot: &mut Option<Writer>, on_thread: bool, mut limit: usize) {
        while limit > 0 {
            let batch: Vec<Request> = {
                let mut queued = self.queue();
                if queued.requests.is_empty() {
                    if on_thread && !self.thread_only {
                        queued.to_thread = false;
                    }
                    return;
                }
                if queued.to_thread && !on_thread {
                    return;
                }
                let n = queued.requests.len().min(MAX_BATCH).min(limit);
                queued.requests.drain(..n).collect()
            };
            let n = batch.len();
            limit -= n;
            let Some(writer) = slot.as_mut() else {
                self.room.add_permits(n);
                refuse(batch, Reply::error(self.queue().gone), 0);
                continue;
            };
            if !on_thread && writer.blocks(&batch) {
                let mut queued = self.queue();
                batch
                    .into_iter()
                    .rev()
                    .for_each(|r| queued.requests.push_front(r));
                queued.to_thread = true;
                drop(queued);
                self.wake.notify_one();
                return;
            }
            writer.worker.set(State::Busy);
            writer.commit_batch(batch);
            self.room.add_permits(n);
            writer.after_batch();
            writer.worker.set(State::Idle);
        }
    }

    /// The writer after a task panicked holding it: its state may be torn, so it
    /// is dropped and every write refused from then on.
    fn fault<'a>(
        &self,
        mut slot: MutexGuard<'a, Option<Writer>>,
    ) -> MutexGuard<'a, Option<Writer>> {
        if let Some(writer) = slot.take() {
            writer.worker.set(State::Failed);
            tracing::error!(
                "a task failed while it ran writes; writes are refused until the proxy restarts"
            );
            let mut queued = self.queue();
            queued.gone = FAILED;
            queued.to_thread = false;
        }
        slot
    }
}

/// Answers each request of `batch` with `reply`; `seq`: this datacenter's newest change.
fn refuse(batch: Vec<Request>, reply: Reply, seq: u64) {
    batch.into_iter().for_each(|r| {
        drop(r.reply.send(Written {
            reply: reply.clone(),
            seq,
        }))
    });
}

struct Writer {
    shared: Arc<Shared>,
    /// How the writer shows in `/status`.
    worker: Arc<Worker>,
    /// This datacenter's id, shared by the versions of its writes.
    dc: Arc<str>,
    log: Log,
    applied: VersionVector,
    next_seq: u64,
    batch_no: u64,
    clock: Hlc,
    clock_offset_ms: i64,
    fsync: Fsync,
    last_sync: Instant,
    /// `None` once stopped.
    syncer: Option<Syncer>,
    committer: Option<(Queue, JoinHandle<()>)>,
    /// The writer's own connection to the backend.
    session: Box<dyn Session>,
    /// Whether reading the backend stays on this machine (an embedded store): a
    /// client task may then run writes that read it.
    local_reads: bool,
    /// Keys with a TTL, for active expiry.
    expiring: super::expiry::Expiring,
    /// The keys of the store still to look at for a TTL, at start-up.
    expiry_scan: Option<ExpiryScan>,
    /// The latest epoch of each session that wrote here lately.
    fence: SessionFence,
    /// When the writer thread wakes next for a timed sync or expiry (`None`: not
    /// before a message comes).
    thread_wakes: Option<Instant>,
    wake: Arc<tokio::sync::Notify>,
}

/// The most expired keys one turn of the writer deletes.
const EXPIRE_PER_TURN: usize = 512;

/// What the backend holds for the keys a batch reads (those not in the memtable),
/// fetched at the batch's start in one go (one round trip to Redis).
struct Base(HashMap<Vec<u8>, Fetched>);

impl Base {
    /// Whether the backend holds a live value at `key`, of any type.
    fn exists(&self, key: &[u8], now_ms: u64) -> Result<bool, Reply> {
        match self.0.get(key) {
            Some(Fetched::Known(value)) => Ok(value.as_ref().is_some_and(|v| !v.expired(now_ms))),
            Some(Fetched::Foreign(_)) => Ok(true),
            None => Err(Reply::error(
                "ERR internal error: a key the command touches was not fetched",
            )),
        }
    }

    /// The state the backend holds at `key` (expired or not), when it was fetched.
    fn stored(&self, key: &[u8]) -> Option<&Option<Value>> {
        match self.0.get(key) {
            Some(Fetched::Known(value)) => Some(value),
            _ => None,
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>, Reply> {
        match self.0.get(key) {
            Some(Fetched::Known(value)) => Ok(value.clone()),
            Some(Fetched::Foreign(_)) => Err(wrong_type()),
            None => Err(Reply::error(
                "ERR internal error: a key the command touches was not fetched",
            )),
        }
    }
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    log: Log,
    resume: Resume,
    config: EngineConfig,
) -> Result<Writes, OpenError> {
    let (msgs, rx) = mpsc::channel(QUEUE);
    // Not listed yet: the writer thread lists the store's keys first.
    (shared.stats.expiry_scan_left).store(u64::MAX, Ordering::Relaxed);
    let committer = committer::spawn(shared.clone(), &config.dc, config.max_unstored)?;
    let hurry = committer.0.hurry();
    let syncer = Syncer::spawn(&config.dc, shared.workers.register("log-sync", None))?;
    // The writer thread's own timer, for its bounded waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(OpenError::Thread)?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let writer = Writer {
        worker: shared.workers.register("writer", None),
        session: shared.backend.session(),
        local_reads: shared.backend.local_reads(),
        dc: Arc::from(shared.dc.as_str()),
        shared,
        log,
        applied: resume.applied,
        next_seq: resume.next_seq,
        batch_no: 0,
        clock: Hlc::resume(resume.last_hlc, config.max_drift.as_millis() as u64),
        fsync: config.fsync,
        clock_offset_ms: config.clock_offset_ms,
        last_sync: Instant::now(),
        syncer: Some(syncer),
        committer: Some(committer),
        expiring: super::expiry::Expiring::default(),
        expiry_scan: None,
        fence: SessionFence::new(super::SESSION_FENCE_KEEP.as_millis() as u64),
        thread_wakes: None,
        wake: wake.clone(),
    };
    let thread_only = config.fsync == Fsync::Always;
    let core = Arc::new(Core {
        writer: Mutex::new(Some(writer)),
        queue: Mutex::new(Queued {
            requests: VecDeque::new(),
            to_thread: thread_only,
            gone: STOPPING,
        }),
        room: tokio::sync::Semaphore::new(QUEUE),
        wake,
        thread_only,
        runtime: tokio::runtime::Handle::try_current().ok(),
        hurry,
    });
    let span = tracing::info_span!("worker", dc = %config.dc, worker = "writer");
    let thread_core = core.clone();
    std::thread::Builder::new()
        .name(format!("writer-{}", config.dc))
        .spawn(move || span.in_scope(|| run(&thread_core, rx, &runtime)))
        .map_err(OpenError::Thread)?;
    Ok(Writes { core, msgs })
}

/// The writer thread: waits for a message, a wake-up or its next timed duty,
/// then runs them with the queued writes.
fn run(core: &Arc<Core>, mut rx: mpsc::Receiver<Msg>, runtime: &tokio::runtime::Runtime) {
    let _exit = ThreadExit(core);
    // The store's keys are listed without holding the writer: writes run meanwhile.
    let slot = core.lock();
    let shared = slot.as_ref().map(|w| w.shared.clone());
    core.release(slot);
    let scan = shared.and_then(|shared| ExpiryScan::start(&shared));
    let mut slot = core.lock();
    if let Some(writer) = slot.as_mut() {
        let left = scan.as_ref().map_or(0, |s| s.keys.len());
        (writer.shared.stats.expiry_scan_left).store(left as u64, Ordering::Relaxed);
        writer.expiry_scan = scan;
    }
    loop {
        let Some(writer) = slot.as_mut() else {
            return;
        };
        writer.worker.set(State::Idle);
        let wait = writer.thread_wait();
        core.release(slot);
        let received = runtime.block_on(async {
            let woken = core.wake.notified();
            let timer = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => Some(msg),
                () = woken => None,
                () = timer => None,
            }
        });
        slot = core.lock();
        let Some(writer) = slot.as_mut() else {
            return;
        };
        writer.worker.set(State::Busy);
        writer.due_duties();
        // The writes queued before a message run before it.
        let queued = core.queue().requests.len();
        core.run_queued(&mut slot, true, queued);
        let shutdown = match received {
            // Every sender is gone.
            Some(None) => Some(None),
            Some(Some(first)) => take_messages(&mut slot, first, &mut rx),
            None => None,
        };
        if let Some(done) = shutdown {
            core.run_queued(&mut slot, true, usize::MAX);
            if let Some(mut writer) = slot.take() {
                writer.finish();
            }
            // The store is released before saying so: whoever waits may reopen it at once.
            core.queue().to_thread = false;
            core.release(slot);
            if let Some(done) = done {
                let _ = done.send(());
            }
            return;
        }
    }
}

/// Tests hold the start-up scan for TTLs, to write while it is under way.
#[cfg(test)]
pub(super) static HOLD_EXPIRY_SCAN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Keys looked at for a TTL per turn of the start-up scan, the writer held.
const EXPIRY_SCAN_SLICE: usize = 256;

/// The start-up scan for TTLs: the store's keys, and how far it went.
struct ExpiryScan {
    keys: Vec<Vec<u8>>,
    next: usize,
}

impl ExpiryScan {
    /// Lists the store's keys (`None`: there are none, or they cannot be listed).
    fn start(shared: &Shared) -> Option<ExpiryScan> {
        match shared.backend.session().keys() {
            Ok(keys) if keys.is_empty() => None,
            Ok(keys) => Some(ExpiryScan { keys, next: 0 }),
            Err(e) => {
                tracing::warn!(error = %e, "could not list the keys to expire; expiry covers new writes only");
                None
            }
        }
    }
}

/// Ends the writer as its thread ends, however it ends: should it fail, writes
/// left to it are refused rather than left waiting.
struct ThreadExit<'a>(&'a Arc<Core>);

impl Drop for ThreadExit<'_> {
    fn drop(&mut self) {
        let core = self.0;
        let mut slot = core.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(writer) = slot.take() {
            writer.worker.set(State::Failed);
            tracing::error!(
                "the writer thread failed; writes are refused until the proxy restarts"
            );
            core.queue().gone = FAILED;
        }
        core.queue().to_thread = false;
        drop(slot);
        core.combine(true);
    }
}

/// Runs `first` and whatever other messages are queued, up to a batch, in
/// order, each after the writes queued before it; returns a shutdown request
/// (`Some(None)`: every sender is gone).
#[allow(clippy::option_option)]
fn take_messages(
    slot: &mut Option<Writer>,
    first: Msg,
    rx: &mut mpsc::Receiver<Msg>,
) -> Option<Option<oneshot::Sender<()>>> {
    let writer = slot.as_mut()?;
    let mut applies = Vec::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(msg) = next.take() {
        taken += 1;
        match msg {
            Msg::Apply(changes, done) => applies.push((changes, done)),
            Msg::Snapshot(vector, entries, done) => {
                for (changes, done) in applies.drain(..) {
                    let _ = done.send(writer.apply_remote(changes));
                }
                let _ = done.send(writer.install_snapshot(vector, entries));
            }
            Msg::Versions(keys, done) => {
                let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let versions = writer
                    .versions(refs)
                    .map(|mut found| keys.iter().map(|k| found.remove(k).flatten()).collect())
                    .map_err(|e| e.reply());
                let _ = done.send(versions);
            }
            Msg::Shutdown(done) => {
                for (changes, done) in applies.drain(..) {
                    let _ = done.send(writer.apply_remote(changes));
                }
                return Some(Some(done));
            }
        }
        if taken < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    for (changes, done) in applies {
        let _ = done.send(writer.apply_remote(changes));
    }
    None
}

impl Writer {
    /// Runs the timed log sync and active expiry when due; returns how long until
    /// the next is (`None`: none is planned).
    fn thread_wait(&mut self) -> Option<Duration> {
        self.due_duties();
        self.thread_wakes = self.next_duty();
        (self.thread_wakes).map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// When the timed sync or the next expiry falls due (`None`: neither will).
    fn next_duty(&self) -> Option<Instant> {
        if self.expiry_scan.is_some() {
            return Some(Instant::now());
        }
        let sync = match self.fsync {
            Fsync::Every(period) if self.log.is_dirty() => Some(self.last_sync + period),
            _ => None,
        };
        let expiry = self.next_expiry_in().map(|wait| Instant::now() + wait);
        match (sync, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timed sync and active expiry, when due, and a slice of the start-up
    /// scan for TTLs.
    fn due_duties(&mut self) {
        self.scan_expiring();
        self.expire_due();
        if let Fsync::Every(period) = self.fsync
            && self.log.is_dirty()
            && self.last_sync.elapsed() >= period
        {
            self.sync_in_background();
        }
    }

    /// After a batch: the timed sync when due, and a wake-up for the writer
    /// thread when the batch brought its next duty (a sync, an expiry) sooner
    /// than it planned. Within [`WAKE_SLACK`] of the plan it is left be: a
    /// wake-up per batch cost more than the batch.
    fn after_batch(&mut self) {
        if let Fsync::Every(period) = self.fsync
            && self.last_sync.elapsed() >= period
        {
            self.sync_in_background();
        }
        if let Some(at) = self.next_duty()
            && (self.thread_wakes).is_none_or(|planned| at + WAKE_SLACK < planned)
        {
            self.thread_wakes = Some(at);
            self.wake.notify_one();
        }
    }

    /// Whether running `batch` may block: it reads a remote backend, or the
    /// committer is too far behind to take it.
    fn blocks(&self, batch: &[Request]) -> bool {
        if let Some((committer, _)) = &self.committer
            && !committer.has_room(batch.len())
        {
            return true;
        }
        !self.local_reads && batch.iter().any(Request::reads_backend)
    }

    /// How long until the next key this datacenter deletes expires (`None`: no
    /// key has a TTL, or expiry has not started).
    fn next_expiry_in(&self) -> Option<Duration> {
        self.shared.expiry_owner.get()?;
        let at = self.expiring.next_due()?;
        // Whole milliseconds: the key is expired once the clock has passed it.
        Some(Duration::from_millis(at.saturating_sub(wall_ms()) + 1))
    }

    /// Indexes the TTLs of the next [`EXPIRY_SCAN_SLICE`] keys of the start-up
    /// scan. Keys in the memtable are passed over: written since, their TTL is
    /// indexed already, and the store may still hold an older value. The others
    /// cannot change while the writer is held, so what the store says of them
    /// stands. The scan held the writer from start to end: after a restart over
    /// 100,000 keys in Redis, the first write waited 0.54-0.66 s.
    fn scan_expiring(&mut self) {
        #[cfg(test)]
        if HOLD_EXPIRY_SCAN.load(Ordering::Relaxed) {
            return;
        }
        let Some(scan) = &mut self.expiry_scan else {
            return;
        };
        let slice: Vec<Vec<u8>> = {
            let view = self.shared.memtable.view();
            let end = (scan.next + EXPIRY_SCAN_SLICE).min(scan.keys.len());
            let slice = (scan.keys[scan.next..end].iter())
                .filter(|key| !view.contains_key(key.as_slice()))
                .cloned()
                .collect();
            scan.next = end;
            slice
        };
        let left = scan.keys.len() - scan.next;
        match self.session.fetch(slice, wall_ms()) {
            Ok(fetched) => {
                for (key, value) in fetched {
                    if let Fetched::Known(Some(value)) = value {
                        self.expiring.set(&key, value.expire_at_ms);
                    }
                }
                if left == 0 {
                    tracing::debug!(keys = scan.keys.len(), "scanned the store for TTLs");
                    self.expiry_scan = None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the keys to expire; expiry covers new writes only");
                self.expiry_scan = None;
            }
        }
        let left = self
            .expiry_scan
            .as_ref()
            .map_or(0, |s| s.keys.len() - s.next);
        (self.shared.stats.expiry_scan_left).store(left as u64, Ordering::Relaxed);
        self.count_expiring();
    }

    /// Records the expiry of every key `changes` touched.
    fn index_expiry(&mut self, changes: &[Change]) {
        for op in changes.iter().flat_map(|c| &c.ops) {
            let at = op.value.as_ref().and_then(|v| v.expire_at_ms);
            self.expiring.set(&op.key, at);
        }
        self.count_expiring();
    }

    fn count_expiring(&self) {
        let stats = &self.shared.stats;
        stats
            .expires
            .store(self.expiring.len() as u64, Ordering::Relaxed);
        stats
            .expires_average_at
            .store(self.expiring.average_at(), Ordering::Relaxed);
    }

    /// Deletes the keys whose TTL has passed, each user's as one change of this
    /// datacenter, where this datacenter writes the user's data; the others'
    /// deletions come from their writers.
    fn expire_due(&mut self) {
        let Some(owner) = self.shared.expiry_owner.get() else {
            return;
        };
        if self.shared.broken().is_some() {
            return;
        }
        let now = wall_ms();
        let due = self.expiring.take_due(now, EXPIRE_PER_TURN);
        if due.is_empty() {
            return;
        }
        let mut by_user: std::collections::BTreeMap<Vec<u8>, Vec<Op>> = Default::default();
        for key in due {
            if let Some(user) = (owner.0)(&key) {
                by_user.entry(user).or_default().push(Op::new(key, None));
            }
        }
        let changes: Vec<Change> = (by_user.into_iter())
            .map(|(user, ops)| self.local_change(user, ops, now))
            .collect();
        let deleted: u64 = changes.iter().map(|c| c.ops.len() as u64).sum();
        match self.publish(changes, true) {
            Ok(()) => {
                self.shared
                    .stats
                    .expired_keys
                    .fetch_add(deleted, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not log the deletion of expired keys");
                self.worker.error(&e);
            }
        }
    }

    /// What the backend holds for the keys the batch's commands read, those the
    /// memtable does not hold.
    fn base(&mut self, batch: &[Request], view: &View<'_>) -> Result<Base, Reply> {
        let mut keys: Vec<Vec<u8>> = batch
            .iter()
            .flat_map(Request::commands)
            .filter_map(|args| lookup(&args[0]).map(|spec| (spec, args)))
            .filter(|(spec, args)| spec.reads_state(args))
            .flat_map(|(spec, args)| spec.keys(args).map(<[u8]>::to_vec).collect::<Vec<_>>())
            .filter(|k| !view.contains_key(k.as_slice()))
            .collect();
        if keys.is_empty() {
            // Most batches (plain SETs) read nothing: no store snapshot to take.
            return Ok(Base(HashMap::new()));
        }
        keys.sort_unstable();
        keys.dedup();
        self.session
            .fetch(keys, wall_ms())
            .map(Base)
            .map_err(|e| e.reply())
    }

    /// Runs the batch's commands, logs their changes, publishes them, replies.
    fn commit_batch(&mut self, batch: Vec<Request>) {
        let seq = self.next_seq.saturating_sub(1);
        let refuse = |batch: Vec<Request>, reply: Reply| {
            batch.into_iter().for_each(|r| {
                drop(r.reply.send(Written {
                    reply: reply.clone(),
                    seq,
                }))
            });
        };
        if let Some(why) = self.shared.broken() {
            let reply = format!("ERR writes are stopped until the proxy restarts: {why}");
            return refuse(batch, Reply::error(reply));
        }
        let restoring = self.shared.restoring.load(Ordering::Acquire);
        if restoring > self.applied.get(&self.shared.dc) {
            let reply = format!(
                "TRYAGAIN this datacenter is restoring its data from a peer: its own changes up to #{restoring} exist elsewhere but not here"
            );
            return refuse(batch, Reply::error(reply));
        }
        if let Some(fence) = self.shared.write_fence.get()
            && let Err(why) = (fence.0)()
        {
            let reply = format!(
                "TRYAGAIN {} lost its lease as a home before this write ran; it did not run: {why}",
                self.dc
            );
            return refuse(batch, Reply::error(reply));
        }
        // The versions of the keys transactions watch, before the view is taken.
        let watched: Vec<&[u8]> = batch
            .iter()
            .filter_map(|r| match &r.work {
                Work::Transaction(t) => Some(t.watched.iter().map(|(k, _)| k.as_slice())),
                Work::One(..) | Work::Move { .. } => None,
            })
            .flatten()
            .collect();
        let versions = match watched.is_empty() {
            true => HashMap::new(),
            false => match self.versions(watched) {
                Ok(versions) => versions,
                Err(e) => return refuse(batch, e.reply()),
            },
        };
        let (changes, replies) = {
            // Read the backend under the view, as readers do (see memtable).
            let shared = self.shared.clone();
            let view = shared.memtable.view();
            match self.base(&batch, &view) {
                Ok(base) => self.run_commands(batch, &view, &base, &versions),
                Err(reply) => return refuse(batch, reply),
            }
        };
        match self.publish(changes, true) {
            Ok(()) => replies
                .into_iter()
                .for_each(|(tx, written)| drop(tx.send(written))),
            Err(e) => {
                self.worker.error(&e);
                let reply = Reply::error(format!("ERR {e}"));
                let seq = self.next_seq.saturating_sub(1);
                replies.into_iter().for_each(|(tx, _)| {
                    drop(tx.send(Written {
                        reply: reply.clone(),
                        seq,
                    }))
                });
            }
        }
    }

    /// Executes each request in order; each successful command's effects, or each
    /// transaction's, become one change. `versions`: the versions of the keys the
    /// batch's transactions watch, as the batch began.
    #[allow(clippy::type_complexity)]
    fn run_commands(
        &mut self,
        batch: Vec<Request>,
        view: &View<'_>,
        base: &Base,
        versions: &HashMap<Vec<u8>, Option<Version>>,
    ) -> (Vec<Change>, Vec<(oneshot::Sender<Written>, Written)>) {
        // Where the batch's earlier changes left each key they wrote: (change, op).
        // Positions, not copies of the values: a copy of each was an allocation
        // per write.
        let mut overlay: super::KeyMap<Vec<u8>, (usize, usize)> =
            super::KeyMap::with_capacity_and_hasher(batch.len(), Default::default());
        let mut changes: Vec<Change> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        // Ops of big values, with the state before them: written as edits where
        // that is much smaller.
        let mut edit_candidates = Vec::new();
        let now = wall_ms();
        // Users this batch moves away: their later writes in it must not run here.
        let mut moved: HashMap<Bytes, Arc<str>> = HashMap::new();
        for request in batch {
            let gone = (moved.get(&request.user).cloned())
                .or_else(|| (self.shared.placements).moved_away(&request.user, &self.dc));
            if let Some(to) = gone {
                let reply = Reply::error(format!(
                    "TRYAGAIN user '{}' has moved to {to}; {} no longer writes its data and did not run this write: send it again",
                    String::from_utf8_lossy(&request.user),
                    self.dc
                ));
                let seq = self.next_seq.saturating_sub(1);
                replies.push((request.reply, Written { reply, seq }));
                continue;
            }
            // A forwarded write that a later connection of its session overtook
            // here does not run (monotonic writes).
            if let Some(session) = request.session
                && let Err(overtaken) = self.fence.admit(session.mark, session.forwarded, now)
            {
                (self.shared.stats.session_writes_overtaken).fetch_add(1, Ordering::Relaxed);
                let reply = Reply::error(overtaken.to_string());
                let seq = self.next_seq.saturating_sub(1);
                replies.push((request.reply, Written { reply, seq }));
                continue;
            }
            let mut ks = BatchKeyspace {
                view,
                base,
                overlay: &overlay,
                changes: &changes,
                puts: Puts::default(),
                now_ms: now,
            };
            let outcome = match &request.work {
                Work::One(f, args) => f(&mut ks, args),
                Work::Move { to, why } => {
                    // The record names this change's own position: the new home
                    // takes the user's writes once it has applied it.
                    let record = super::placement::Placement {
                        home: Arc::from(to.as_str()),
                        from: self.dc.clone(),
                        seq: self.next_seq,
                        at_ms: self.clock_ms(now),
                        why: Arc::from(why.as_str()),
                    };
                    let key = super::placement::key(&request.user);
                    ks.puts.put(&key, Some(record.to_value()));
                    moved.insert(request.user.clone(), Arc::from(to.as_str()));
                    Ok(Reply::OK)
                }
                Work::Transaction(t) => {
                    // A watched key written since it was watched (before this
                    // batch, or by a request earlier in it) aborts the transaction.
                    let touched = t.watched.iter().any(|(key, version)| {
                        overlay.contains_key(key) || versions.get(key) != Some(version)
                    });
                    match touched {
                        true => Ok(Reply::NullArray),
                        // Each command's error is its reply; the others still run,
                        // as in Redis.
                        false => Ok(Reply::Array(
                            t.commands
                                .iter()
                                .map(|(f, args)| f(&mut ks, args).unwrap_or_else(|e| e))
                                .collect(),
                        )),
                    }
                }
            };
            let ops = std::mem::take(&mut ks.puts).ops;
            if outcome.is_ok() && !ops.is_empty() {
                for (i, op) in ops.iter().enumerate() {
                    // Small new states are written whole: no need to look for the old.
                    if !op.value.as_ref().is_some_and(edits::may_pay) {
                        continue;
                    }
                    let before = (overlay.get(&op.key))
                        .map(|&(c, o)| &changes[c].ops[o].value)
                        .or_else(|| view.get(op.key.as_slice()).map(|entry| &entry.value))
                        .or_else(|| base.stored(&op.key));
                    if let (Some(Some(old)), Some(new)) = (before, &op.value)
                        && edits::worth_trying(old, new, now)
                    {
                        edit_candidates.push((changes.len(), i, old.clone()));
                    }
                }
                for (i, op) in ops.iter().enumerate() {
                    overlay.insert(op.key.clone(), (changes.len(), i));
                }
                changes.push(self.local_change(request.user.to_vec(), ops, now));
            }
            let written = Written {
                reply: outcome.unwrap_or_else(|e| e),
                seq: self.next_seq.saturating_sub(1),
            };
            replies.push((request.reply, written));
        }
        if !edit_candidates.is_empty() {
            self.write_as_edits(&mut changes, edit_candidates, view);
        }
        (changes, replies)
    }

    /// Appends `changes` to the log, makes them visible, and queues them for the store.
    /// `local`: they are this datacenter's own (a failure hands their sequence
    /// numbers back).
    fn publish(&mut self, changes: Vec<Change>, local: bool) -> Result<(), LogWriteError> {
        if changes.is_empty() {
            return Ok(());
        }
        let (first_lsn, bytes) = match self.append(&changes, local) {
            Ok(appended) => appended,
            Err(e) => {
                if local {
                    self.next_seq = changes[0].seq;
                }
                return Err(e);
            }
        };
        let next_lsn = first_lsn + changes.len() as u64;
        self.advance(&changes, first_lsn, next_lsn);
        self.hand_over(changes, next_lsn, bytes);
        Ok(())
    }

    /// Appends the changes to the log with one write (synced first under
    /// `fsync = always`) and counts them; returns the first one's position and
    /// their size in the log.
    fn append(&mut self, changes: &[Change], local: bool) -> Result<(u64, usize), LogWriteError> {
        let mut bytes = 0;
        let first = self.log.append_with(changes, |c, out| {
            let start = out.len();
            c.encode(out);
            bytes += out.len() - start + 8;
        })?;
        if self.fsync == Fsync::Always {
            self.log.sync()?;
            self.last_sync = Instant::now();
            self.count_sync();
        }
        let stats = &self.shared.stats;
        stats.log_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let counter = if local {
            &stats.changes
        } else {
            &stats.applied_remote
        };
        counter.fetch_add(changes.len() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok((first, bytes))
    }

    /// Raises the applied vector and each origin's newest timestamp past logged
    /// changes, and checkpoints the log index when the changes cross a boundary.
    fn advance(&mut self, changes: &[Change], first_lsn: u64, next_lsn: u64) {
        let mut last_hlc = self
            .shared
            .last_hlc
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for change in changes {
            self.applied.advance(&change.origin, change.seq);
            match last_hlc.get_mut(&change.origin) {
                Some(hlc) => *hlc = change.hlc,
                None => drop(last_hlc.insert(change.origin.clone(), change.hlc)),
            }
        }
        if next_lsn / INDEX_EVERY > first_lsn / INDEX_EVERY {
            self.shared
                .index
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((next_lsn, self.applied.clone()));
        }
    }

    /// Numbers the next batch handed to the committer, and says so before its
    /// changes count as applied: whoever sees them applied can wait for their commit.
    fn next_batch(&mut self) {
        self.batch_no += 1;
        (self.shared.logged_batch).store(self.batch_no, std::sync::atomic::Ordering::Release);
    }

    /// Makes logged changes visible (memtable, applied vector, log position) and
    /// queues them for the committer.
    fn hand_over(&mut self, changes: Vec<Change>, next_lsn: u64, bytes: usize) {
        self.index_expiry(&changes);
        self.observe_placements(&changes);
        self.next_batch();
        self.shared.marks.record(
            changes
                .iter()
                .filter(|c| c.seq > 0)
                .map(|c| (c.user.as_slice(), c.origin.as_str(), c.seq)),
        );
        let ops = changes.iter().flat_map(|c| {
            let version = apply::shared_version(&self.dc, c);
            c.ops
                .iter()
                .map(move |op| (op.key.as_slice(), op.value.clone(), version.clone()))
        });
        self.shared.memtable.insert(self.batch_no, ops);
        self.shared.applied.send_replace(self.applied.clone());
        self.shared.appended.send_replace(next_lsn);
        let logged = Logged {
            batch: self.batch_no,
            changes,
            applied: self.applied.clone(),
            end_lsn: next_lsn,
            durable: false,
            bytes,
        };
        if let Some((committer, _)) = &self.committer {
            // Blocks while the committer is far behind: backpressure, never a dropped change.
            if committer.send(logged).is_err() {
                tracing::error!(
                    "the committer stopped; logged writes stay in the memtable and the log"
                );
            }
        }
    }

    /// Takes in the placement records among `changes`' ops.
    fn observe_placements(&self, changes: &[Change]) {
        let placement_ops = changes.iter().flat_map(|c| &c.ops);
        for op in placement_ops.filter(|op| op.key.starts_with(super::placement::PREFIX)) {
            self.shared.placements.observe(&op.key, op.value.as_ref());
        }
    }

    /// A new change of this datacenter: `user`'s `ops`, made at wall time `now`,
    /// numbered next.
    fn local_change(&mut self, user: Vec<u8>, ops: Vec<Op>, now: u64) -> Change {
        let hlc = self.clock.now(self.clock_ms(now)).as_u64();
        let change = Change {
            origin: self.shared.dc.clone(),
            seq: self.next_seq,
            hlc,
            user,
            ops,
            deps: self.deps(),
            path: vec![self.shared.dc.clone()],
        };
        self.next_seq += 1;
        change
    }

    /// A new local change's dependencies: what this datacenter has applied of the
    /// others.
    fn deps(&self) -> VersionVector {
        let mut deps = VersionVector::new();
        for (origin, seq) in self.applied.iter() {
            if origin != &*self.dc {
                deps.advance(origin, seq);
            }
        }
        deps
    }

    /// This datacenter's physical clock: the wall clock plus the configured offset.
    pub(super) fn clock_ms(&self, wall: u64) -> u64 {
        wall.saturating_add_signed(self.clock_offset_ms)
    }

    fn sync(&mut self) {
        if let Err(e) = self.log.sync() {
            tracing::error!(error = %e, "syncing the replication log failed");
        }
        self.last_sync = Instant::now();
        self.count_sync();
    }

    fn count_sync(&self) {
        (self.shared.stats.log_syncs).fetch_add(1, Ordering::Relaxed);
    }

    /// The timed sync of `fsync = "every-<N>ms"`, on the syncer thread: an fsync can
    /// take a hundred milliseconds while the store checkpoints on the same disk, and
    /// writes (acknowledged before the sync under this policy) must not wait for it.
    /// While a sync is still running the next one waits for a later period.
    fn sync_in_background(&mut self) {
        self.last_sync = Instant::now();
        let Some(syncer) = &self.syncer else {
            return self.sync();
        };
        if syncer.busy.load(Ordering::Acquire) {
            return;
        }
        match self.log.take_sync() {
            Ok(Some(handle)) => {
                syncer.busy.store(true, Ordering::Release);
                match syncer.tx.send(handle) {
                    Ok(()) => self.count_sync(),
                    Err(_) => {
                        syncer.busy.store(false, Ordering::Release);
                        self.sync();
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "syncing the replication log failed");
                self.worker.error(&e);
            }
        }
    }

    /// Syncs the log and waits for the committer to store everything.
    fn finish(&mut self) {
        if let Some(syncer) = self.syncer.take() {
            syncer.stop();
        }
        if let Err(e) = self.log.sync_now() {
            tracing::error!(error = %e, "syncing the replication log failed");
            self.worker.error(&e);
        }
        if let Some((sender, handle)) = self.committer.take() {
            drop(sender);
            let _ = handle.join();
        }
        self.worker.set(State::Done);
    }
}

/// A batch could not be appended to the log: nothing of it was written, and the
/// writes may be retried.
#[derive(Debug, thiserror::Error)]
#[error("could not write the replication log; nothing was written: {0}")]
pub(super) struct LogWriteError(#[from] pub(super) crate::log::LogError);

/// The thread that runs timed log syncs.
struct Syncer {
    tx: std::sync::mpsc::Sender<(std::fs::File, std::path::PathBuf)>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<()>,
}

impl Syncer {
    fn spawn(dc: &str, worker: Arc<Worker>) -> Result<Syncer, OpenError> {
        let (tx, rx) = std::sync::mpsc::channel::<(std::fs::File, std::path::PathBuf)>();
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = busy.clone();
        let span = tracing::info_span!("worker", dc = %dc, worker = "log-sync");
        worker.set(State::Idle);
        let thread = std::thread::Builder::new()
            .name(format!("log-sync-{dc}"))
            .spawn(move || {
                let _span = span.enter();
                for (file, path) in rx {
                    worker.set(State::Busy);
                    if let Err(e) = file.sync_data() {
                        tracing::error!(error = %e, path = %path.display(), "syncing the replication log failed");
                        worker.error(&e);
                    }
                    worker.set(State::Idle);
                    flag.store(false, Ordering::Release);
                }
                worker.set(State::Done);
            })
            .map_err(OpenError::Thread)?;
        Ok(Syncer { tx, busy, thread })
    }

    /// Waits for a sync in flight, then ends the thread.
    fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// One command's effects: the last state of each key it wrote, in first-touch
/// order. Lookups scan a few ops and index many, so a command's cost stays linear
/// in its keys (an MSET of 200,000 keys).
#[derive(Default)]
struct Puts {
    ops: Vec<Op>,
    /// Each key's position in `ops`, once there are more than [`Puts::SCAN`].
    index: HashMap<Vec<u8>, usize>,
}

impl Puts {
    const SCAN: usize = 8;

    fn position(&self, key: &[u8]) -> Option<usize> {
        if self.ops.len() <= Self::SCAN {
            self.ops.iter().position(|op| op.key == key)
        } else {
            self.index.get(key).copied()
        }
    }

    fn get(&self, key: &[u8]) -> Option<&Option<Value>> {
        self.position(key).map(|i| &self.ops[i].value)
    }

    fn put(&mut self, key: &[u8], value: Option<Value>) {
        if let Some(i) = self.position(key) {
            self.ops[i].value = value;
            return;
        }
        self.ops.push(Op::new(key.to_vec(), value));
        if self.ops.len() == Self::SCAN + 1 {
            self.index = (self.ops.iter().enumerate())
                .map(|(i, op)| (op.key.clone(), i))
                .collect();
        } else if self.ops.len() > Self::SCAN + 1 {
            self.index.insert(key.to_vec(), self.ops.len() - 1);
        }
    }
}

/// The keyspace a write sees: its own puts, the batch's earlier effects, the memtable,
/// then the store.
struct BatchKeyspace<'a, 'v> {
    view: &'a View<'v>,
    base: &'a Base,
    /// Where the batch's earlier changes left the keys they wrote.
    overlay: &'a super::KeyMap<Vec<u8>, (usize, usize)>,
    changes: &'a [Change],
    puts: Puts,
    now_ms: u64,
}

impl BatchKeyspace<'_, '_> {
    /// The key's state as this command, the batch's earlier commands or the
    /// memtable left it, newest first; `None` when the backend has the last word.
    fn newer(&self, key: &[u8]) -> Option<&Option<Value>> {
        self.puts
            .get(key)
            .or_else(|| (self.overlay.get(key)).map(|&(c, o)| &self.changes[c].ops[o].value))
            .or_else(|| self.view.get(key).map(|entry| &entry.value))
    }
}

impl Keyspace for BatchKeyspace<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Value>, Reply> {
        let value = match self.newer(key) {
            Some(value) => value.clone(),
            None => self.base.get(key)?,
        };
        Ok(value.filter(|v| !v.expired(self.now_ms)))
    }

    fn exists(&mut self, key: &[u8]) -> Result<bool, Reply> {
        match self.newer(key) {
            Some(value) => Ok(value.as_ref().is_some_and(|v| !v.expired(self.now_ms))),
            None => self.base.exists(key, self.now_ms),
        }
    }

    fn put(&mut self, key: &[u8], value: Option<Value>) {
        self.puts.put(key, value);
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}
