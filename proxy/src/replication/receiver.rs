//! The receiver of one peer's stream: skips what is applied, buffers what must wait
//! for its origin's earlier changes or its dependencies, and applies the rest in
//! batches, in causal order (`meridian_policies::readiness` decides).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meridian_policies::{Readiness, VersionVector, dependencies_met, is_valid_dc_id, readiness};
use meridian_topology::{DcIdx, DcSet};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::relay::Relay;
use super::status::PeerStatus;
use super::{Replication, StreamError};
use crate::change::Change;
use crate::engine::{Entries, Unapplied};
use crate::error::Classify;
use crate::link::frame::{self, Frame, FrameError};
use crate::workers::State;
use std::time::Duration;

/// Changes held per stream before reading stops (the sender then waits on flow control).
const MAX_BUFFERED: usize = 16_384;
/// Most changes handed to the writer at once.
const APPLY_BATCH: usize = 4096;
/// Frames read ahead of the apply loop (a few MB): reading on while a batch is
/// applied returns flow-control credit to the sender at once, so a stall of the
/// apply does not stall the link, and QUIC holds little in-order data.
const FRAME_QUEUE: usize = 16_384;
/// First and longest wait before applying again after the backend refused for now.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_LONGEST: Duration = Duration::from_secs(2);

/// What the readers hand the apply loop.
enum Incoming {
    /// A frame of the ordered stream.
    Stream(Frame),
    /// A change frame copied in a datagram (see the shipper's echo).
    Echo(Frame),
    /// The stream ended cleanly.
    Ended,
    /// The stream broke or sent a frame that does not decode.
    Failed(FrameError),
}

/// Buffered changes, by origin and sequence.
type Pending = BTreeMap<(String, u64), Change>;

/// One peer's receiving side.
struct Receiver {
    repl: Arc<Replication>,
    status: Arc<PeerStatus>,
    peer: String,
    pending: Pending,
    /// A snapshot being received: the vector it reaches and its entries so far.
    snapshot: Option<(VersionVector, Entries)>,
    /// The wait before applying again after the backend refused for now (zero:
    /// the last apply succeeded).
    retry_backoff: Duration,
    /// Copies of the changes this datacenter passes on, sent as they arrive.
    relay: Relay,
}

/// Receives from `peer` until its stream ends or breaks.
pub(super) async fn run(
    repl: Arc<Replication>,
    peer: DcIdx,
    connection: quinn::Connection,
) -> Result<(), StreamError> {
    let peer_id = repl.id(peer).to_owned();
    let recv = connection
        .accept_uni()
        .await
        .map_err(|source| StreamError::Accept {
            peer: peer_id.clone(),
            source,
        })?;
    let (tx, mut incoming) = mpsc::channel(FRAME_QUEUE);
    // Both end with the link's receiver (aborted on drop), in the link's span.
    let stream = read_stream(recv, peer_id.clone(), tx.clone()).in_current_span();
    let status = repl.peer_status(&peer_id);
    let echoes = read_echoes(connection, peer_id.clone(), status, tx).in_current_span();
    let _stream = AbortOnDrop(tokio::spawn(stream));
    let _echoes = AbortOnDrop(tokio::spawn(echoes));
    let mut receiver = Receiver {
        status: repl.peer_status(&peer_id),
        relay: Relay::new(repl.clone()),
        repl,
        peer: peer_id,
        pending: BTreeMap::new(),
        snapshot: None,
        retry_backoff: Duration::ZERO,
    };
    let result = receiver.run(&mut incoming).await;
    receiver.status.buffered.store(0, Ordering::Relaxed);
    result
}

/// Reads the ordered stream's frames, in a task of its own: a frame read is not
/// cancel-safe, and the apply loop also waits for the applied vector to move. When
/// the loop stops taking frames, this stops reading and QUIC flow control holds
/// the peer.
async fn read_stream(recv: quinn::RecvStream, peer: String, tx: mpsc::Sender<Incoming>) {
    let mut recv = tokio::io::BufReader::with_capacity(256 << 10, recv);
    loop {
        let (item, last) = match frame::read(&mut recv, &peer).await {
            Ok(Some(frame)) => (Incoming::Stream(frame), false),
            Ok(None) => (Incoming::Ended, true),
            Err(e) => (Incoming::Failed(e), true),
        };
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

/// Reads datagram copies of changes: best effort, in any order; dropped when the
/// apply loop is behind (the stream carries them too). Beats go to the peer's
/// status (the home lease).
async fn read_echoes(
    connection: quinn::Connection,
    peer: String,
    status: Arc<super::PeerStatus>,
    tx: mpsc::Sender<Incoming>,
) {
    while let Ok(datagram) = connection.read_datagram().await {
        let Ok(frames) = frame::decode_all(&datagram, &peer) else {
            continue;
        };
        for frame in &frames {
            if let Frame::Beat { sent, echo, epoch } = frame {
                status.beat(*sent, *echo, *epoch);
            }
        }
        for frame in frames.into_iter().filter(|f| matches!(f, Frame::Change(_))) {
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Incoming::Echo(frame)) {
                return;
            }
        }
    }
}

impl Receiver {
    async fn run(&mut self, incoming: &mut mpsc::Receiver<Incoming>) -> Result<(), StreamError> {
        let mut applied_rx = self.repl.engine.watch_applied();
        loop {
            let next = if self.pending.len() < MAX_BUFFERED {
                tokio::select! {
                    item = incoming.recv() => Some(item.unwrap_or(Incoming::Ended)),
                    _ = applied_rx.changed() => None,
                }
            } else {
                // Full: wait for other streams to fill the gaps.
                if applied_rx.changed().await.is_err() {
                    return Ok(());
                }
                None
            };
            match next {
                // Echoes fill at most half the buffer, so they never crowd out the
                // stream's changes that close the gaps.
                Some(Incoming::Echo(_)) if self.pending.len() >= MAX_BUFFERED / 2 => {}
                Some(Incoming::Stream(frame) | Incoming::Echo(frame)) => {
                    let batching = matches!(frame, Frame::Change(_));
                    self.on_frame(frame).await?;
                    // Take what else has arrived before applying, to apply in batches.
                    if batching && !incoming.is_empty() && self.pending.len() < APPLY_BATCH {
                        continue;
                    }
                }
                Some(Incoming::Ended) => return Ok(()),
                Some(Incoming::Failed(e)) => return Err(e.into()),
                None => {}
            }
            self.relay.flush();
            self.drain().await?;
        }
    }

    fn protocol(&self, what: impl Into<String>) -> StreamError {
        StreamError::Protocol {
            peer: self.peer.clone(),
            what: what.into(),
        }
    }

    fn apply_error(&self, source: crate::engine::ApplyError) -> StreamError {
        StreamError::Apply {
            peer: self.peer.clone(),
            source,
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), StreamError> {
        match frame {
            Frame::Change(bytes) => self.accept_change(&bytes),
            Frame::Applied(table) => {
                self.on_applied(table);
                Ok(())
            }
            Frame::SnapshotBegin(vector) => {
                tracing::info!(%vector, "receiving a snapshot from {}", self.peer);
                self.pending.clear();
                self.snapshot = Some((vector, Vec::new()));
                Ok(())
            }
            Frame::SnapshotEntries(entries) => match self.snapshot.as_mut() {
                Some((_, all)) => {
                    all.extend(entries);
                    Ok(())
                }
                None => Err(self.protocol("sent snapshot entries outside a snapshot")),
            },
            Frame::SnapshotEnd => self.install_snapshot().await,
            Frame::SnapshotRequest => {
                tracing::info!("{} lost its data and asks for a snapshot", self.peer);
                self.status
                    .snapshot_requested
                    .store(true, Ordering::Release);
                self.status.restart_shipper.notify_one();
                Ok(())
            }
            Frame::Heartbeat => Ok(()),
            Frame::Hello(_)
            | Frame::Refused(_)
            | Frame::Forward(_)
            | Frame::ForwardReply(_)
            | Frame::Agreement(_)
            | Frame::AgreementReply(_)
            | Frame::Beat { .. } => Err(self.protocol(format!(
                "sent a {} frame on its replication stream",
                frame.name()
            ))),
        }
    }

    /// Records what the peer knows each datacenter has applied: the peer's own
    /// entry is its acknowledgement, the others are gossip.
    fn on_applied(&self, table: Vec<(String, VersionVector)>) {
        for (dc, vector) in table {
            if dc == self.peer {
                let before = self.repl.acked(&dc);
                self.repl.acknowledged(&dc, &vector);
                self.pass_on_acks(&before, &vector);
            } else if self.repl.topology().index_of(&dc).is_some() {
                self.repl.learn(&dc, &vector);
            } else {
                tracing::warn!(peer = %self.peer, dc = %dc, "ignoring the applied vector of a datacenter not in this cluster");
            }
        }
    }

    /// The peer applied more (`before` → `now`). Of the changes this datacenter
    /// relays to it (a star's hub relays every leaf's), the origin hears of that only
    /// through here: its shipper is woken to pass the news on with its next gossip,
    /// at most 20 ms later, for the origin's `WAIT`s. (At once, every leaf's
    /// acknowledgement was a packet of its own: the five-region star's proxies used
    /// 15-16% of a core instead of 14%.) Where origins reach the peer directly,
    /// nothing is owed.
    fn pass_on_acks(&self, before: &VersionVector, now: &VersionVector) {
        let Some(peer) = self.repl.topology().index_of(&self.peer) else {
            return;
        };
        let (me, live) = (self.repl.config.me, self.repl.live());
        for origin in live.without(me).without(peer).iter() {
            let id = self.repl.id(origin);
            if now.get(id) > before.get(id)
                && (self.repl.topology().router)
                    .next_hops(me, origin, DcSet::one(origin).with(me), live)
                    .contains(peer)
            {
                self.repl.peer_status(id).ack_owed.notify_one();
            }
        }
    }

    async fn install_snapshot(&mut self) -> Result<(), StreamError> {
        let Some((vector, entries)) = self.snapshot.take() else {
            return Err(self.protocol("ended a snapshot it did not begin"));
        };
        let keys = entries.len();
        let changed = self
            .repl
            .engine
            .install_snapshot(vector, entries)
            .await
            .map_err(|source| self.apply_error(source))?;
        PeerStatus::add(&self.status.snapshots_installed, 1);
        self.status.ask_snapshot.store(false, Ordering::Release);
        tracing::info!(keys, changed, "installed the snapshot from {}", self.peer);
        Ok(())
    }

    /// Decodes and checks a change from the peer; keeps it unless already applied
    /// or already here (loop prevention).
    fn accept_change(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        let change = Change::decode(bytes)
            .map_err(|e| self.protocol(format!("sent a change that does not decode: {e}")))?;
        let repl = &self.repl;
        let Some(origin) = repl
            .topology()
            .index_of(&change.origin)
            .filter(|_| is_valid_dc_id(&change.origin))
        else {
            return Err(self.protocol(format!(
                "sent a change from {:?}, which is not a datacenter of this cluster",
                change.origin
            )));
        };
        if change.seq == 0 {
            return Err(self.protocol(format!(
                "sent a malformed change ({} #{})",
                change.origin, change.seq
            )));
        }
        let looped = change.origin == repl.dc() || change.path.iter().any(|dc| dc == repl.dc());
        let applied = repl.engine.applied();
        let state = readiness(&applied, &change.origin, change.seq, &change.deps);
        if looped || state == Readiness::Applied {
            repl.engine
                .stats()
                .duplicates
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if !dependencies_met(&applied, &change.deps) {
            PeerStatus::add(&self.status.held_for_deps, 1);
        }
        self.status
            .origins_from
            .fetch_or(DcSet::one(origin).bits(), Ordering::Relaxed);
        let key = (change.origin.clone(), change.seq);
        if !self.pending.contains_key(&key) {
            let now = repl.engine.clock_ms();
            self.status
                .arrival_lag
                .record(super::shipper::since(now, change.hlc));
            self.relay.add(&change);
        }
        self.pending.insert(key, change);
        Ok(())
    }

    /// Applies every buffered change that is ready, in causal order.
    /// Changes the backend could not take for now (it is loading its data or
    /// restarting) go back to the buffer, and the receiver waits a little before
    /// trying again, holding the peer through flow control meanwhile, instead of
    /// dropping the link. Anything else ends the link.
    async fn wait_out(&mut self, unapplied: Unapplied) -> Result<(), StreamError> {
        let Unapplied { error, changes } = unapplied;
        if !error.retryable() || changes.is_empty() {
            return Err(self.apply_error(error));
        }
        if let crate::engine::ApplyError::EditBase { .. } = &error
            && !self.status.ask_snapshot.swap(true, Ordering::AcqRel)
        {
            // Our shipper to the peer carries the request; the snapshot that
            // comes back makes the held changes ones already applied.
            tracing::warn!(error = %error, "asking {} for a snapshot", self.peer);
            self.status.restart_shipper.notify_one();
        }
        self.status.receiver.set(State::Throttled);
        self.status.receiver.error(&error);
        if self.retry_backoff == Duration::ZERO {
            tracing::warn!(error = %error, "the backend cannot take changes from {} for now; retrying", self.peer);
        }
        for change in changes {
            self.pending
                .insert((change.origin.clone(), change.seq), change);
        }
        self.retry_backoff = (self.retry_backoff * 2).clamp(RETRY_FIRST, RETRY_LONGEST);
        tokio::time::sleep(self.retry_backoff).await;
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), StreamError> {
        loop {
            let batch = take_ready(&mut self.pending, self.repl.engine.applied());
            self.status
                .buffered
                .store(self.pending.len() as u64, Ordering::Relaxed);
            if batch.is_empty() {
                return Ok(());
            }
            let count = batch.len() as u64;
            let stamps: Vec<(String, u64, u64)> = (batch.iter())
                .map(|c| (c.origin.clone(), c.seq, c.hlc))
                .collect();
            self.status.receiver.set(State::Busy);
            let applied = self.repl.engine.apply(batch).await;
            self.status.receiver.set(State::Idle);
            let waiting = match applied {
                Ok(waiting) => waiting,
                Err(unapplied) => return self.wait_out(unapplied).await,
            };
            let now = self.repl.engine.clock_ms();
            for (origin, seq, hlc) in stamps {
                if !waiting.iter().any(|c| c.seq == seq && c.origin == origin) {
                    self.status
                        .applied_lag
                        .record(super::shipper::since(now, hlc));
                }
            }
            PeerStatus::add(&self.status.received, count - waiting.len() as u64);
            let stuck = !waiting.is_empty();
            for change in waiting {
                self.pending
                    .insert((change.origin.clone(), change.seq), change);
            }
            self.retry_backoff = Duration::ZERO;
            if stuck {
                return Ok(());
            }
        }
    }
}

/// Takes from `pending` the changes that may be applied after `reached`, in an
/// order that applies each after its predecessor and dependencies (at most
/// [`APPLY_BATCH`]); drops those already applied.
///
/// It runs after every frame, and `pending` may hold thousands of changes waiting
/// for another origin's: the work is per origin (a few lookups each) plus what it
/// takes or drops, never a pass over everything held. (A pass per frame made five
/// regions writing at once apply a few hundred changes a second per link.)
fn take_ready(pending: &mut Pending, mut reached: VersionVector) -> Vec<Change> {
    let origins = origins_of(pending);
    for origin in &origins {
        // What is already applied is the start of the origin's run of keys.
        let applied = reached.get(origin);
        let stale: Vec<(String, u64)> = pending
            .range((origin.clone(), 0)..=(origin.clone(), applied))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            pending.remove(&key);
        }
    }
    let mut batch = Vec::new();
    let mut progress = true;
    while progress && batch.len() < APPLY_BATCH {
        progress = false;
        for origin in &origins {
            // Take this origin's changes in sequence while they are ready.
            while batch.len() < APPLY_BATCH {
                let key = (origin.clone(), reached.get(origin) + 1);
                let ready = pending.get(&key).is_some_and(|c| {
                    readiness(&reached, &c.origin, c.seq, &c.deps) == Readiness::Ready
                });
                let Some(change) = ready.then(|| pending.remove(&key)).flatten() else {
                    break;
                };
                reached.advance(&change.origin, change.seq);
                batch.push(change);
                progress = true;
            }
        }
    }
    batch
}

/// The origins `pending` holds changes of, each found by a lookup past the last.
fn origins_of(pending: &Pending) -> Vec<String> {
    use std::ops::Bound::{Excluded, Unbounded};
    let mut origins = Vec::new();
    let mut next = pending.keys().next().map(|(origin, _)| origin.clone());
    while let Some(origin) = next {
        next = pending
            .range((Excluded((origin.clone(), u64::MAX)), Unbounded))
            .next()
            .map(|((o, _), _)| o.clone());
        origins.push(origin);
    }
    origins
}

/// Stops a reader task when the link's receiver ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(origin: &str, seq: u64, deps: &str) -> Change {
        Change {
            origin: origin.into(),
            seq,
            hlc: seq,
            user: b"u".to_vec(),
            ops: Vec::new(),
            deps: deps.parse().unwrap(),
            path: vec![origin.into()],
        }
    }

    fn held(changes: impl IntoIterator<Item = Change>) -> Pending {
        changes
            .into_iter()
            .map(|c| ((c.origin.clone(), c.seq), c))
            .collect()
    }

    fn ids(batch: &[Change]) -> Vec<(String, u64)> {
        batch.iter().map(|c| (c.origin.clone(), c.seq)).collect()
    }

    #[test]
    fn takes_each_change_after_its_predecessor_and_dependencies() {
        let mut pending = held([
            change("a", 3, ""),
            change("a", 4, "b:2"),
            change("b", 1, ""),
            change("b", 2, ""),
            change("c", 2, ""),
            change("a", 1, ""),
        ]);
        // a:1 and a:2 are applied already (a:1 is dropped); c:1 never came.
        let batch = take_ready(&mut pending, "a:2".parse().unwrap());
        assert_eq!(
            ids(&batch),
            [("a", 3), ("b", 1), ("b", 2), ("a", 4)].map(|(o, s)| (o.to_owned(), s))
        );
        assert_eq!(
            pending.keys().cloned().collect::<Vec<_>>(),
            [("c".to_owned(), 2)]
        );
    }

    #[test]
    fn changes_waiting_for_another_origin_stay_until_it_arrives() {
        let waiting = (1..=5000).map(|seq| change("a", seq, "b:1"));
        let mut pending = held(waiting);
        assert!(take_ready(&mut pending, VersionVector::new()).is_empty());
        assert_eq!(pending.len(), 5000);
        pending.insert(("b".into(), 1), change("b", 1, ""));
        let batch = take_ready(&mut pending, VersionVector::new());
        assert_eq!(batch.len(), APPLY_BATCH);
        assert_eq!(ids(&batch[..2]), [("b".to_owned(), 1), ("a".to_owned(), 1)]);
        assert_eq!(pending.len(), 5001 - APPLY_BATCH);
        assert_eq!(origins_of(&pending), ["a"]);
    }
}
