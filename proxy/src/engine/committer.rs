//! The committer thread: moves logged changes from the memtable into the backend in
//! large transactions, with the applied vector they reach.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meridian_policies::VersionVector;

use super::backend::{BackendError, Session};
use super::{OpenError, Shared};
use crate::change::Change;
use crate::workers::{State, Worker};

/// Logged bytes after which the committer stops gathering, beyond
/// [`SMALL_CHANGE`] bytes a change: big values gain nothing from it (each has
/// pages of its own), and a store far behind its log needs that much more disk
/// when the log is replayed into it.
const GATHER_BYTES: usize = 1 << 20;
/// Logged bytes a change may take without counting toward [`GATHER_BYTES`].
/// Small writes log about 70 bytes each: counted whole, a gather of SETs ended
/// after 15,000 of them, 60 ms at -P 16, well short of the backend's period.
/// Now the backend's own bound on changes ends it (`redis-benchmark -t set -P 16
/// -r 100000`: the committer's CPU per SET 1.9 µs against 2.2-3.0).
const SMALL_CHANGE: usize = 128;
/// A durable checkpoint at least this often while changes flow.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between attempts while the backend is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One writer batch, logged and visible in the memtable.
pub(super) struct Logged {
    pub(super) batch: u64,
    pub(super) changes: Vec<Change>,
    /// The applied vector once these changes are in.
    pub(super) applied: VersionVector,
    /// The log position after these changes.
    pub(super) end_lsn: u64,
    /// Commit durably at once (an installed snapshot).
    pub(super) durable: bool,
    /// Their size in the log.
    pub(super) bytes: usize,
}

/// The writer's end of the queue to the committer.
///
/// Bounded in changes (the engine's `max_unstored`), not batches: at a few thousand
/// small writes per second each write is a batch of its own, and a bound in batches
/// would stall writes for as long as one durable checkpoint of the store takes.
pub(super) struct Queue {
    tx: Sender<Logged>,
    budget: Arc<Budget>,
    max: usize,
}

/// The queue's state, shared by the writer and the committer.
#[derive(Default)]
struct Budget {
    state: Mutex<Queued>,
    /// The committer released changes, or stopped.
    freed: Condvar,
    /// The committer should stop gathering: enough is queued, the writer waits for
    /// room, or the writer has let go of the queue.
    full: Condvar,
}

#[derive(Default)]
struct Queued {
    /// Changes handed to the committer and not yet committed.
    changes: usize,
    /// Their size in the log.
    bytes: usize,
    /// The committer has stopped.
    stopped: bool,
    /// The writer waits for room.
    waiting: bool,
    /// The writer has let go of the queue (it is shutting down).
    closing: bool,
    /// The backend's most changes in one transaction.
    max_changes: usize,
    /// A reader waits for the writer batches up to this one to be committed (a
    /// peer's snapshot): commit them now rather than at the end of the period
    /// (0: nobody waits).
    hurry: u64,
}

impl Queued {
    fn gathered(&self) -> bool {
        self.closing
            || self.waiting
            || self.changes >= self.max_changes
            || self.bytes >= GATHER_BYTES + self.changes.saturating_mul(SMALL_CHANGE)
            || self.hurry > 0
    }
}

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committer committed `changes` up to writer batch `batch`.
    fn release(&self, changes: usize, bytes: usize, batch: u64) {
        let mut state = self.lock();
        state.changes = state.changes.saturating_sub(changes);
        state.bytes = state.bytes.saturating_sub(bytes);
        if batch >= state.hurry {
            state.hurry = 0;
        }
        self.freed.notify_all();
    }

    /// Waits up to `wait` for more to commit at once; less when a commit is full
    /// already, the writer waits for room, or the writer is shutting down.
    fn gather(&self, wait: Duration) {
        let state = self.lock();
        let _ = self
            .full
            .wait_timeout_while(state, wait, |state| !state.gathered());
    }
}

/// Marks the committer stopped when its thread ends, however it ends.
struct Stopped(Arc<Budget>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.freed.notify_all();
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.budget.lock().closing = true;
        self.budget.full.notify_all();
    }
}

/// Asks the committer to commit what it gathers now (see [`Hurry::commit_through`]).
#[derive(Clone)]
pub(super) struct Hurry(Arc<Budget>);

impl Hurry {
    /// Has the committer commit writer batches up to `batch` as soon as they reach
    /// it, rather than gather more until its period ends. Waiting for the commit
    /// is the caller's part (`Shared::committed`).
    pub(super) fn commit_through(&self, batch: u64) {
        let mut state = self.0.lock();
        state.hurry = state.hurry.max(batch);
        if state.gathered() {
            self.0.full.notify_all();
        }
    }
}

impl Queue {
    /// A handle that hurries the committer along.
    pub(super) fn hurry(&self) -> Hurry {
        Hurry(self.budget.clone())
    }

    /// Whether [`Queue::send`] would take `n` more changes without waiting.
    pub(super) fn has_room(&self, n: usize) -> bool {
        let state = self.budget.lock();
        state.stopped || state.changes == 0 || state.changes + n.max(1) <= self.max
    }

    /// Hands a batch to the committer, waiting while it is far behind
    /// (backpressure, never a dropped change). Fails once the committer stopped.
    pub(super) fn send(&self, logged: Logged) -> Result<(), ()> {
        let n = logged.changes.len().max(1);
        let mut state = self.budget.lock();
        while !state.stopped && state.changes > 0 && state.changes + n > self.max {
            state.waiting = true;
            self.budget.full.notify_all();
            state = self
                .budget
                .freed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.waiting = false;
        if state.stopped {
            return Err(());
        }
        let gathered = state.gathered();
        state.changes += n;
        state.bytes += logged.bytes;
        if !gathered && state.gathered() {
            self.budget.full.notify_all();
        }
        drop(state);
        self.tx.send(logged).map_err(|_| ())
    }
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    dc: &str,
    max: usize,
) -> Result<(Queue, JoinHandle<()>), OpenError> {
    let (tx, rx) = channel();
    let budget = Arc::new(Budget::default());
    let gather = shared.backend.commit_gather();
    budget.lock().max_changes = gather.max_changes;
    let stopped = Stopped(budget.clone());
    let span = tracing::info_span!("worker", dc = %dc, worker = "committer");
    let worker = shared.workers.register("committer", None);
    let handle = std::thread::Builder::new()
        .name(format!("committer-{dc}"))
        .spawn(move || {
            let stopped = stopped;
            span.in_scope(|| run(&shared, rx, &stopped.0, &worker, gather));
            if worker.state() != State::Failed {
                worker.set(State::Done);
            }
        })
        .map_err(OpenError::Thread)?;
    Ok((Queue { tx, budget, max }, handle))
}

/// The committer's state between batches.
struct Committer<'a> {
    shared: &'a Shared,
    worker: &'a Worker,
    target: Box<dyn Session>,
    last_checkpoint: Instant,
    /// What the last commit reached, while no checkpoint has made it durable.
    since_checkpoint: Option<(VersionVector, u64)>,
    /// The vector the last commit reached.
    applied: Option<VersionVector>,
    /// Batches committed since the last durable checkpoint, oldest first.
    undurable: Vec<(u64, Vec<Change>)>,
}

fn run(
    shared: &Shared,
    rx: Receiver<Logged>,
    budget: &Budget,
    worker: &Worker,
    gather: super::backend::Gather,
) {
    let mut committer = Committer {
        shared,
        worker,
        target: shared.backend.session(),
        last_checkpoint: Instant::now(),
        since_checkpoint: None,
        applied: None,
        undurable: Vec::new(),
    };
    worker.set(State::Idle);
    let mut last_commit = Instant::now() - gather.every;
    loop {
        let first = match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                if !committer.checkpoint_idle() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(wait) = gather.every.checked_sub(last_commit.elapsed())
            && first.changes.len() < gather.max_changes
            && !first.durable
        {
            budget.gather(wait);
        }
        last_commit = Instant::now();
        let batches = take_batches(first, &rx, gather.max_changes);
        let queued: usize = batches.iter().map(|b| b.changes.len().max(1)).sum();
        let bytes: usize = batches.iter().map(|b| b.bytes).sum();
        let last = batches.last().map_or(0, |b| b.batch);
        if !committer.commit_batches(batches) {
            return;
        }
        budget.release(queued, bytes, last);
    }
    committer.finish();
}

/// `first` and the batches queued behind it, up to `max` changes.
fn take_batches(first: Logged, rx: &Receiver<Logged>, max: usize) -> Vec<Logged> {
    let mut count = first.changes.len();
    let mut batches = vec![first];
    while count < max {
        match rx.try_recv() {
            Ok(next) => {
                count += next.changes.len();
                batches.push(next);
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    batches
}

impl Committer<'_> {
    /// Commits, retrying while the backend is unreachable or failing for now;
    /// returns whether the commit was a durable checkpoint, or `None` once the
    /// backend failed for good. After a failure, the retry also commits again
    /// everything committed since the last durable checkpoint, durably: a store
    /// opened again after an I/O error has lost it (the memtable still serves it).
    fn commit(
        &mut self,
        changes: &[Change],
        vector: &VersionVector,
        durable: bool,
    ) -> Result<bool, BackendError> {
        self.worker.set(State::Busy);
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let result = if failures == 0 {
                self.target.commit(changes, vector, durable)
            } else {
                let again: Vec<Change> = (self.undurable.iter())
                    .flat_map(|(_, c)| c.iter().cloned())
                    .chain(changes.iter().cloned())
                    .collect();
                self.target.commit(&again, vector, true)
            };
            self.shared.backend_stats.record(started.elapsed());
            match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "the backend takes commits again");
                    }
                    self.worker.set(State::Idle);
                    return Ok(durable || failures > 0);
                }
                Err(e) if e.retryable() => {
                    self.worker.set(State::Throttled);
                    self.worker.error(&e);
                    if failures == 0 {
                        tracing::warn!(error = %e, "the backend cannot take commits for now; logged writes wait in memory and are retried");
                    }
                    failures += 1;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Commits; when the backend refuses the batch, commits its changes one by one
    /// instead, reporting and skipping the ones it refuses, so that one bad change
    /// neither stops the others nor goes unnoticed. `None` once writes are stopped.
    fn commit_or_isolate(
        &mut self,
        changes: &[Change],
        vector: &VersionVector,
        durable: bool,
    ) -> Option<bool> {
        match self.commit(changes, vector, durable) {
            Ok(done) => Some(done),
            Err(e) if e.refused() && !changes.is_empty() => self.isolate(changes, vector),
            Err(e) => self.stop(&e),
        }
    }

    /// Commits `changes` one at a time, each with the vector it reaches (so a crash
    /// meanwhile leaves a vector that replay continues from), then the batch's
    /// vector durably.
    fn isolate(&mut self, changes: &[Change], vector: &VersionVector) -> Option<bool> {
        let mut reached = self.applied.clone().unwrap_or_default();
        for change in changes {
            reached.advance(&change.origin, change.seq);
            match self.commit(std::slice::from_ref(change), &reached, false) {
                Ok(_) => {}
                Err(e) if e.refused() => self.refused(change, &e),
                Err(e) => return self.stop(&e),
            }
        }
        match self.commit(&[], vector, true) {
            Ok(_) => Some(true),
            Err(e) => self.stop(&e),
        }
    }

    /// Reports a logged change the backend will not store: it is acknowledged and
    /// in the log, so this is loud (log, counter, the committer's errors in
    /// `/status`), and writes go on.
    fn refused(&self, change: &Change, e: &BackendError) {
        let keys: Vec<String> = (change.ops.iter())
            .map(|op| String::from_utf8_lossy(&op.key).into_owned())
            .collect();
        tracing::error!(
            origin = %change.origin,
            seq = change.seq,
            ?keys,
            error = %e,
            "the backend refused a logged change; its keys keep their previous values there"
        );
        self.worker.error(e);
        self.shared
            .stats
            .refused_by_backend
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The backend failed for good: writes stop until a restart replays the log.
    fn stop(&self, e: &BackendError) -> Option<bool> {
        let why = format!(
            "the backend failed ({e}); logged writes will be applied when the proxy restarts"
        );
        tracing::error!("{why}");
        self.worker.error(&why);
        self.worker.set(State::Failed);
        self.shared.set_broken(why);
        None
    }

    /// Writes stopped: checkpoints what came last, so retention can proceed.
    fn checkpoint_idle(&mut self) -> bool {
        let Some((vector, end_lsn)) = self.since_checkpoint.take() else {
            return true;
        };
        if self.commit_or_isolate(&[], &vector, true).is_none() {
            return false;
        }
        self.durable(end_lsn);
        true
    }

    /// After a durable checkpoint: the log before `end_lsn` may go, and what was
    /// committed since the last one leaves the memtable.
    fn durable(&mut self, end_lsn: u64) {
        self.last_checkpoint = Instant::now();
        self.since_checkpoint = None;
        checkpointed(self.shared, end_lsn);
        let Some(&(last, _)) = self.undurable.last() else {
            return;
        };
        self.shared.memtable.committed(last);
        self.undurable.clear();
    }

    /// Commits the batches in one transaction (a durable checkpoint when one is
    /// due or asked for). Their keys leave the memtable at the next durable
    /// checkpoint: until then a store that fails could lose them.
    fn commit_batches(&mut self, batches: Vec<Logged>) -> bool {
        let Some(last) = batches.last() else {
            return true;
        };
        let forced = batches.iter().any(|b| b.durable);
        let (batch, vector, end_lsn) = (last.batch, last.applied.clone(), last.end_lsn);
        let changes: Vec<Change> = batches.into_iter().flat_map(|b| b.changes).collect();
        let checkpoint = forced || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        let Some(durable) = self.commit_or_isolate(&changes, &vector, checkpoint) else {
            return false;
        };
        self.undurable.push((batch, changes));
        if durable {
            self.durable(end_lsn);
        } else {
            self.since_checkpoint = Some((vector.clone(), end_lsn));
        }
        self.shared.committed.send_replace(batch);
        self.applied = Some(vector);
        true
    }

    /// The writer is gone: makes everything committed durable.
    fn finish(mut self) {
        if let Some(vector) = self.applied.take()
            && let Err(e) = self.target.commit(&[], &vector, true)
        {
            tracing::error!(error = %e, "final checkpoint failed; the log will be replayed at start-up");
        }
    }
}

/// After a durable checkpoint reaching `end_lsn`: the log before it may go.
fn checkpointed(shared: &Shared, end_lsn: u64) {
    shared
        .retention
        .durable
        .store(end_lsn, std::sync::atomic::Ordering::Release);
    shared.retain();
}
