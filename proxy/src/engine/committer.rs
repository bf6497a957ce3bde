//! The committer thread: moves logged changes from the memtable into the backend in
//! large transactions, with the applied vector they reach.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meridian_policies::VersionVector;

use super::backend::Target;
use super::{OpenError, Shared};
use crate::change::Change;

/// Batches waiting for the committer before the writer waits (bounds the memtable).
const QUEUE_BATCHES: usize = 256;
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
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    dc: &str,
) -> Result<(SyncSender<Logged>, JoinHandle<()>), OpenError> {
    let (tx, rx) = sync_channel(QUEUE_BATCHES);
    let span = tracing::info_span!("committer", dc = %dc);
    let handle = std::thread::Builder::new()
        .name(format!("committer-{dc}"))
        .spawn(move || span.in_scope(|| run(&shared, rx)))
        .map_err(OpenError::Thread)?;
    Ok((tx, handle))
}

fn run(shared: &Shared, rx: Receiver<Logged>) {
    let mut target = shared.backend.target();
    let mut last_checkpoint = Instant::now();
    let mut applied = None;
    while let Ok(first) = rx.recv() {
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
        let (batch, vector) = (last.batch, last.applied.clone());
        let changes: Vec<Change> = batches.into_iter().flat_map(|b| b.changes).collect();
        let checkpoint = last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if !commit_until_done(shared, &mut target, &changes, &vector, checkpoint) {
            return;
        }
        if checkpoint {
            last_checkpoint = Instant::now();
        }
        shared.memtable.committed(
            batch,
            changes
                .into_iter()
                .flat_map(|c| c.ops.into_iter().map(|op| op.key)),
        );
        shared.committed.send_replace(batch);
        applied = Some(vector);
    }
    // The writer is gone: make everything committed durable.
    if let Some(vector) = applied {
        if let Err(e) = target.commit(&[], &vector, true) {
            tracing::error!(error = %e.message, "final checkpoint failed; the log will be replayed at start-up");
        }
    }
}

/// Commits, retrying while the backend is unreachable (Redis restarting, say). The
/// changes wait in the memtable meanwhile, so reads stay right. Returns false after
/// a failure that retrying cannot fix: writes then stop until a restart replays the log.
fn commit_until_done(
    shared: &Shared,
    target: &mut Target<'_>,
    changes: &[Change],
    applied: &VersionVector,
    durable: bool,
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
            Err(e) if e.retryable => {
                if failures == 0 {
                    tracing::warn!(error = %e.message, "the backend is unreachable; logged writes wait in memory and are retried");
                }
                failures += 1;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                let why = format!(
                    "the backend failed ({}); logged writes will be applied when the proxy restarts",
                    e.message
                );
                tracing::error!("{why}");
                shared.set_broken(why);
                return false;
            }
        }
    }
}
