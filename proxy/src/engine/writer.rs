//! The writer thread: batches writes into changes, the log and the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_policies::{Hlc, VersionVector};
use tokio::sync::{mpsc, oneshot};

use super::replay::Resume;
use super::{EngineConfig, OpenError, Shared, store_error, wall_ms};
use crate::change::{Change, Op, Value};
use crate::command::{DataFn, Keyspace};
use crate::log::Log;
use crate::resp::Reply;
use crate::store::Snapshot;

/// Most writes taken into one batch.
const MAX_BATCH: usize = 512;
/// Queued writes before senders wait (backpressure on clients).
const QUEUE: usize = 4096;
/// A durable store checkpoint at least this often while writes flow.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

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
    pub(super) f: DataFn,
    pub(super) args: Vec<Bytes>,
    pub(super) user: Bytes,
    pub(super) reply: oneshot::Sender<Reply>,
}

pub(super) enum Msg {
    Write(Request),
    Shutdown(oneshot::Sender<()>),
}

struct Writer {
    shared: Arc<Shared>,
    log: Log,
    applied: VersionVector,
    next_seq: u64,
    clock: Hlc,
    fsync: Fsync,
    last_sync: Instant,
    last_checkpoint: Instant,
    /// Set when the store failed after the log took a batch: the proxy must restart
    /// (and replay) before it takes more writes.
    broken: Option<String>,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    log: Log,
    resume: Resume,
    config: EngineConfig,
) -> Result<mpsc::Sender<Msg>, OpenError> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = Writer {
        shared,
        log,
        applied: resume.applied,
        next_seq: resume.next_seq,
        clock: Hlc::resume(resume.last_hlc, config.max_drift.as_millis() as u64),
        fsync: config.fsync,
        last_sync: Instant::now(),
        last_checkpoint: Instant::now(),
        broken: None,
    };
    let span = tracing::info_span!("writer", dc = %config.dc);
    std::thread::Builder::new()
        .name(format!("writer-{}", config.dc))
        .spawn(move || span.in_scope(|| writer.run(rx)))
        .map_err(OpenError::Thread)?;
    Ok(tx)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let mut shutdown = None;
            let first = match self.fsync {
                // Wake up to sync even when no writes come.
                Fsync::Every(period) if self.pending_sync() => {
                    match recv_timeout(&mut rx, period.saturating_sub(self.last_sync.elapsed())) {
                        Ok(msg) => msg,
                        Err(Timeout) => {
                            self.sync();
                            continue;
                        }
                    }
                }
                _ => rx.blocking_recv(),
            };
            let Some(first) = first else { break };
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Write(request) => batch.push(request),
                    Msg::Shutdown(done) => shutdown = Some(done),
                }
                if batch.len() < MAX_BATCH && shutdown.is_none() {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(std::mem::take(&mut batch));
            }
            self.maintain();
            if let Some(done) = shutdown {
                self.finish();
                // Release the store before saying so: whoever waits may reopen it at once.
                drop(self);
                let _ = done.send(());
                return;
            }
        }
        self.finish();
    }

    fn pending_sync(&self) -> bool {
        self.log.is_dirty()
    }

    /// Runs the batch's commands, logs their changes, commits them, replies.
    fn commit_batch(&mut self, batch: Vec<Request>) {
        if let Some(why) = &self.broken {
            let reply = Reply::error(format!(
                "ERR writes are stopped until the proxy restarts: {why}"
            ));
            batch
                .into_iter()
                .for_each(|r| drop(r.reply.send(reply.clone())));
            return;
        }
        let snapshot = match self.shared.store.snapshot() {
            Ok(s) => s,
            Err(e) => {
                batch
                    .into_iter()
                    .for_each(|r| drop(r.reply.send(store_error(&e))));
                return;
            }
        };
        let first_seq = self.next_seq;
        let mut overlay = HashMap::new();
        let mut changes = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let now = wall_ms();
        for request in batch {
            let mut ks = BatchKeyspace {
                snapshot: &snapshot,
                overlay: &overlay,
                puts: Vec::new(),
                now_ms: now,
            };
            let outcome = (request.f)(&mut ks, &request.args);
            let puts = std::mem::take(&mut ks.puts);
            if let (Ok(_), false) = (&outcome, puts.is_empty()) {
                let ops = dedupe(puts);
                for op in &ops {
                    overlay.insert(op.key.clone(), op.value.clone());
                }
                let hlc = self.clock.now(now).as_u64();
                changes.push(Change {
                    origin: self.shared.dc.clone(),
                    seq: self.next_seq,
                    hlc,
                    user: request.user.to_vec(),
                    ops,
                });
                self.next_seq += 1;
            }
            replies.push((request.reply, outcome.unwrap_or_else(|e| e)));
        }
        drop(snapshot);
        if let Err(reply) = self.persist(&changes) {
            self.next_seq = first_seq;
            replies
                .into_iter()
                .for_each(|(tx, _)| drop(tx.send(reply.clone())));
            return;
        }
        replies
            .into_iter()
            .for_each(|(tx, reply)| drop(tx.send(reply)));
    }

    /// Appends `changes` to the log, then commits them to the store.
    fn persist(&mut self, changes: &[Change]) -> Result<(), Reply> {
        let Some(last) = changes.last() else {
            return Ok(());
        };
        let encoded: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| {
                let mut buf = Vec::new();
                c.encode(&mut buf);
                buf
            })
            .collect();
        let log_error = |e: &dyn std::fmt::Display| {
            Reply::error(format!(
                "ERR could not write the replication log; nothing was written: {e}"
            ))
        };
        self.log
            .append(encoded.iter().map(Vec::as_slice))
            .map_err(|e| log_error(&e))?;
        if self.fsync == Fsync::Always {
            self.log.sync().map_err(|e| log_error(&e))?;
            self.last_sync = Instant::now();
        }
        let stats = &self.shared.stats;
        stats.log_bytes.fetch_add(
            encoded.iter().map(|e| e.len() as u64 + 8).sum(),
            Ordering::Relaxed,
        );
        stats
            .changes
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        self.applied.advance(&self.shared.dc, last.seq);
        let checkpoint = self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if let Err(e) = self.shared.store.commit(changes, &self.applied, checkpoint) {
            let why = format!(
                "the embedded store failed after the log took the write ({e}); it will be applied when the proxy restarts"
            );
            tracing::error!("{why}");
            self.broken = Some(why.clone());
            return Err(Reply::error(format!("ERR {why}")));
        }
        if checkpoint {
            self.last_checkpoint = Instant::now();
        }
        Ok(())
    }

    /// Periodic work between batches: the timed log sync.
    fn maintain(&mut self) {
        if let Fsync::Every(period) = self.fsync {
            if self.last_sync.elapsed() >= period {
                self.sync();
            }
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.log.sync() {
            tracing::error!(error = %e, "syncing the replication log failed");
        }
        self.last_sync = Instant::now();
    }

    fn finish(&mut self) {
        self.sync();
        if self.broken.is_none() {
            if let Err(e) = self.shared.store.commit(&[], &self.applied, true) {
                tracing::error!(error = %e, "final store checkpoint failed; the log will be replayed at start-up");
            }
        }
    }
}

/// Keeps the last op of each key, in first-touch order.
fn dedupe(puts: Vec<Op>) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::with_capacity(puts.len());
    for op in puts {
        match ops.iter_mut().find(|o| o.key == op.key) {
            Some(existing) => existing.value = op.value,
            None => ops.push(op),
        }
    }
    ops
}

struct Timeout;

fn recv_timeout(rx: &mut mpsc::Receiver<Msg>, timeout: Duration) -> Result<Option<Msg>, Timeout> {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.try_recv() {
            Ok(msg) => return Ok(Some(msg)),
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(None),
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() >= deadline => {
                return Err(Timeout);
            }
            Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// The keyspace a write sees: the snapshot, the batch's earlier effects, its own puts.
struct BatchKeyspace<'a> {
    snapshot: &'a Snapshot,
    overlay: &'a HashMap<Vec<u8>, Option<Value>>,
    puts: Vec<Op>,
    now_ms: u64,
}

impl Keyspace for BatchKeyspace<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Value>, Reply> {
        let value = if let Some(op) = self.puts.iter().rev().find(|op| op.key == key) {
            op.value.clone()
        } else if let Some(value) = self.overlay.get(key) {
            value.clone()
        } else {
            self.snapshot
                .get(key)
                .map_err(|e| store_error(&e))?
                .map(|s| s.value)
        };
        Ok(value.filter(|v| !v.expired(self.now_ms)))
    }

    fn put(&mut self, key: &[u8], value: Option<Value>) {
        self.puts.push(Op {
            key: key.to_vec(),
            value,
        });
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}
