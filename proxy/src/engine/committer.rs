//! The committer thread: moves logged changes from the memtable into the store in
//! large transactions, with the applied vector they reach.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meridian_policies::VersionVector;

use super::{OpenError, Shared};
use crate::change::Change;

/// Batches waiting for the committer before the writer waits (bounds the memtable).
const QUEUE_BATCHES: usize = 256;
/// Most changes in one store transaction.
const MAX_CHANGES: usize = 16_384;
/// A durable checkpoint at least this often while changes flow.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

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
        if let Err(e) = shared.store.commit(&changes, &vector, checkpoint) {
            // The changes stay in the memtable (reads remain right) and in the log
            // (a restart replays them); new writes are refused until then.
            let why = format!(
                "the embedded store failed ({e}); logged writes will be applied when the proxy restarts"
            );
            tracing::error!("{why}");
            shared.set_broken(why);
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
        applied = Some(vector);
    }
    // The writer is gone: make everything committed durable.
    if let Some(vector) = applied {
        if let Err(e) = shared.store.commit(&[], &vector, true) {
            tracing::error!(error = %e, "final store checkpoint failed; the log will be replayed at start-up");
        }
    }
}
