//! The committer thread: moves logged changes from the memtable into the backend in
//! large transactions, with the applied vector they reach.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meridian_policies::VersionVector;

use super::backend::Session;
use super::{OpenError, Shared};
use crate::change::Change;
use crate::workers::{State, Worker};

/// Most changes in one backend transaction.
const MAX_CHANGES: usize = 16_384;
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

/// How many changes are queued, and whether the committer has stopped.
#[derive(Default)]
struct Budget {
    state: Mutex<(usize, bool)>,
    freed: Condvar,
}

impl Budget {
    fn release(&self, changes: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = state.0.saturating_sub(changes);
        self.freed.notify_all();
    }
}

/// Marks the committer stopped when its thread ends, however it ends.
struct Stopped(Arc<Budget>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.0.freed.notify_all();
    }
}

impl Queue {
    /// Hands a batch to the committer, waiting while it is far behind
    /// (backpressure, never a dropped change). Fails once the committer stopped.
    pub(super) fn send(&self, logged: Logged) -> Result<(), ()> {
        let n = logged.changes.len().max(1);
        let mut state = self.budget.state.lock().unwrap_or_else(|e| e.into_inner());
        while !state.1 && state.0 > 0 && state.0 + n > self.max {
            state = self
                .budget
                .freed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.1 {
            return Err(());
        }
        state.0 += n;
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
    let stopped = Stopped(budget.clone());
    let span = tracing::info_span!("worker", dc = %dc, worker = "committer");
    let worker = shared.workers.register("committer", None);
    let handle = std::thread::Builder::new()
        .name(format!("committer-{dc}"))
        .spawn(move || {
            let stopped = stopped;
            span.in_scope(|| run(&shared, rx, &stopped.0, &worker));
            if worker.state() != State::Failed {
                worker.set(State::Done);
            }
        })
        .map_err(OpenError::Thread)?;
    Ok((Queue { tx, budget, max }, handle))
}

fn run(shared: &Shared, rx: Receiver<Logged>, budget: &Budget, worker: &Worker) {
    let mut target = shared.backend.session();
    let commit =
        |target: &mut Box<dyn Session>, changes: &[Change], vector: &VersionVector, durable| {
            worker.set(State::Busy);
            let done = commit_until_done(shared, target, changes, vector, durable, worker);
            worker.set(if done { State::Idle } else { State::Failed });
            done
        };
    worker.set(State::Idle);
    let mut last_checkpoint = Instant::now();
    let mut applied = None;
    // What the last commit reached, while no checkpoint has made it durable.
    let mut since_checkpoint: Option<(VersionVector, u64)> = None;
    loop {
        let first = match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                // Writes stopped: checkpoint what came last, so retention can proceed.
                if let Some((vector, end_lsn)) = since_checkpoint.take() {
                    if !commit(&mut target, &[], &vector, true) {
                        return;
                    }
                    last_checkpoint = Instant::now();
                    checkpointed(shared, end_lsn);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batches = vec![first];
        let mut count = batches[0].changes.len();
        while count < MAX_CHANGES {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.changes.len();
                    batches.push(next);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let Some(last) = batches.last() else { continue };
        let forced = batches.iter().any(|b| b.durable);
        let (batch, vector, end_lsn) = (last.batch, last.applied.clone(), last.end_lsn);
        let queued: usize = batches.iter().map(|b| b.changes.len().max(1)).sum();
        let changes: Vec<Change> = batches.into_iter().flat_map(|b| b.changes).collect();
        let checkpoint = forced || last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if !commit(&mut target, &changes, &vector, checkpoint) {
            return;
        }
        if checkpoint {
            last_checkpoint = Instant::now();
            checkpointed(shared, end_lsn);
            since_checkpoint = None;
        } else {
            since_checkpoint = Some((vector.clone(), end_lsn));
        }
        shared.memtable.committed(
            batch,
            changes
                .into_iter()
                .flat_map(|c| c.ops.into_iter().map(|op| op.key)),
        );
        shared.committed.send_replace(batch);
        budget.release(queued);
        applied = Some(vector);
    }
    // The writer is gone: make everything committed durable.
    if let Some(vector) = applied {
        if let Err(e) = target.commit(&[], &vector, true) {
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

/// Commits, retrying while the backend is unreachable (Redis restarting, say). The
/// changes wait in the memtable meanwhile, so reads stay right. Returns false after
/// a failure that retrying cannot fix: writes then stop until a restart replays the log.
fn commit_until_done(
    shared: &Shared,
    target: &mut Box<dyn Session>,
    changes: &[Change],
    applied: &VersionVector,
    durable: bool,
    worker: &Worker,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let result = target.commit(changes, applied, durable);
        shared.backend_stats.record(started.elapsed());
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        failures,
                        "the backend is reachable again; committing resumed"
                    );
                }
                return true;
            }
            Err(e) if e.retryable() => {
                worker.set(State::Throttled);
                worker.error(&e);
                if failures == 0 {
                    tracing::warn!(error = %e, "the backend is unreachable; logged writes wait in memory and are retried");
                }
                failures += 1;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                let why = format!(
                    "the backend failed ({e}); logged writes will be applied when the proxy restarts"
                );
                tracing::error!("{why}");
                worker.error(&why);
                shared.set_broken(why);
                return false;
            }
        }
    }
}
