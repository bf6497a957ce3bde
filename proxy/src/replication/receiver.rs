//! The receiver of one peer's stream: skips what is applied, buffers what must wait
//! for its origin's earlier changes or its dependencies, and applies the rest in
//! batches, in causal order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meridian_policies::{VersionVector, is_valid_dc_id};
use meridian_topology::DcIdx;

use tokio::sync::mpsc;

use super::Replication;
use super::frame::{self, Frame};
use super::status::PeerStatus;
use crate::change::Change;

/// Changes held per stream before reading stops (the sender then waits on flow control).
const MAX_BUFFERED: usize = 16_384;
/// Most changes handed to the writer at once.
const APPLY_BATCH: usize = 4096;

/// Receives from `peer` until its stream ends or breaks.
pub(super) async fn run(
    repl: Arc<Replication>,
    peer: DcIdx,
    connection: quinn::Connection,
) -> Result<(), String> {
    let peer_id = repl.id(peer).to_owned();
    let status = repl.peer_status(&peer_id);
    let recv = connection
        .accept_uni()
        .await
        .map_err(|e| format!("{peer_id} opened no stream: {e}"))?;
    let mut recv = tokio::io::BufReader::with_capacity(256 << 10, recv);
    // Frames are read by a task of their own: a frame read is not cancel-safe, and
    // the loop below also waits for the applied vector to move. When the loop stops
    // taking frames, the task stops reading and QUIC flow control holds the peer.
    let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
    let echo_tx = frames_tx.clone();
    let reader = {
        let peer_id = peer_id.clone();
        tokio::spawn(async move {
            loop {
                let frame = frame::read(&mut recv, &peer_id).await;
                let last = !matches!(frame, Ok(Some(_)));
                if frames_tx.send((false, frame)).await.is_err() || last {
                    return;
                }
            }
        })
    };
    let _reader = AbortOnDrop(reader);
    // Datagram copies of changes (see the shipper's echo): best effort, in any order.
    let echoes = {
        let (frames_tx, peer_id, connection) = (echo_tx, peer_id.clone(), connection.clone());
        tokio::spawn(async move {
            while let Ok(datagram) = connection.read_datagram().await {
                let mut rest = &datagram[..];
                while let Ok(Some(frame)) = frame::read(&mut rest, &peer_id).await {
                    // Dropped when the loop is behind: the stream has them too.
                    if matches!(frame, Frame::Change(_))
                        && let Err(mpsc::error::TrySendError::Closed(_)) =
                            frames_tx.try_send((true, Ok(Some(frame))))
                    {
                        return;
                    }
                }
            }
        })
    };
    let _echoes = AbortOnDrop(echoes);
    let mut applied_rx = repl.engine.watch_applied();
    let mut pending: BTreeMap<(String, u64), Change> = BTreeMap::new();
    // A snapshot being received: the vector it reaches and its entries so far.
    let mut snapshot: Option<(VersionVector, crate::store::Entries)> = None;
    let result = loop {
        let next = if pending.len() < MAX_BUFFERED {
            tokio::select! {
                f = frames.recv() => Some(f.unwrap_or((false, Ok(None)))),
                _ = applied_rx.changed() => None,
            }
        } else {
            // Full: wait for other streams to fill the gaps.
            if applied_rx.changed().await.is_err() {
                break Ok(());
            }
            None
        };
        match next {
            // Echoes fill at most half the buffer, so they never crowd out the
            // stream's changes that close the gaps.
            Some((true, _)) if pending.len() >= MAX_BUFFERED / 2 => {}
            Some((_, Ok(Some(Frame::Change(bytes))))) => {
                if let Err(e) = accept_change(&repl, &status, &peer_id, &bytes, &mut pending) {
                    break Err(e);
                }
                // Take what else has arrived before applying, to apply in batches.
                if !frames.is_empty() && pending.len() < APPLY_BATCH {
                    continue;
                }
            }
            Some((_, Ok(Some(Frame::Applied(table))))) => {
                for (dc, bytes) in table {
                    match VersionVector::decode(&bytes) {
                        Ok(vv) if dc == peer_id => repl.acknowledged(&dc, &vv),
                        Ok(vv) if repl.topology().index_of(&dc).is_some() => repl.learn(&dc, &vv),
                        _ => {
                            tracing::warn!(peer = %peer_id, dc = %dc, "ignoring a malformed applied vector")
                        }
                    }
                }
            }
            Some((_, Ok(Some(Frame::SnapshotBegin(bytes))))) => match VersionVector::decode(&bytes)
            {
                Ok(vector) => {
                    tracing::info!(%vector, "receiving a snapshot from {peer_id}");
                    pending.clear();
                    snapshot = Some((vector, Vec::new()));
                }
                Err(e) => break Err(format!("{peer_id} began a snapshot with a bad vector: {e}")),
            },
            Some((_, Ok(Some(Frame::SnapshotEntries(entries))))) => match snapshot.as_mut() {
                Some((_, all)) => all.extend(entries),
                None => {
                    break Err(format!(
                        "{peer_id} sent snapshot entries outside a snapshot"
                    ));
                }
            },
            Some((_, Ok(Some(Frame::SnapshotEnd)))) => {
                let Some((vector, entries)) = snapshot.take() else {
                    break Err(format!("{peer_id} ended a snapshot it did not begin"));
                };
                let keys = entries.len();
                match repl.engine.install_snapshot(vector, entries).await {
                    Ok(changed) => {
                        PeerStatus::add(&status.snapshots_installed, 1);
                        tracing::info!(keys, changed, "installed the snapshot from {peer_id}");
                    }
                    Err(e) => break Err(format!("installing the snapshot from {peer_id}: {e}")),
                }
            }
            Some((_, Ok(Some(Frame::SnapshotRequest)))) => {
                tracing::info!("{peer_id} lost its data and asks for a snapshot");
                status.snapshot_requested.store(true, Ordering::Release);
                status.restart_shipper.notify_one();
            }
            Some((_, Ok(Some(Frame::Heartbeat)))) | None => {}
            Some((_, Ok(None))) => break Ok(()),
            Some((_, Err(e))) => break Err(e.to_string()),
        }
        if let Err(e) = drain(&repl, &status, &mut pending).await {
            break Err(e);
        }
    };
    status.buffered.store(0, Ordering::Relaxed);
    result
}

/// Decodes and checks a change from the peer; keeps it unless already applied.
fn accept_change(
    repl: &Replication,
    status: &PeerStatus,
    peer: &str,
    bytes: &[u8],
    pending: &mut BTreeMap<(String, u64), Change>,
) -> Result<(), String> {
    let change = Change::decode(bytes).map_err(|e| format!("{peer} sent a change that {e}"))?;
    if !is_valid_dc_id(&change.origin) || repl.topology().index_of(&change.origin).is_none() {
        return Err(format!(
            "{peer} sent a change from {:?}, which is not a datacenter of this cluster",
            change.origin
        ));
    }
    if change.seq == 0 || change.deps.iter().any(|(dc, _)| !is_valid_dc_id(dc)) {
        return Err(format!(
            "{peer} sent a malformed change ({} #{})",
            change.origin, change.seq
        ));
    }
    if change.origin == repl.dc() || change.path.iter().any(|dc| dc == repl.dc()) {
        // Loop prevention: it has been here.
        repl.engine
            .stats()
            .duplicates
            .fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    if change.seq <= repl.engine.applied().get(&change.origin) {
        repl.engine
            .stats()
            .duplicates
            .fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let applied = repl.engine.applied();
    if change.deps.iter().any(|(dc, s)| applied.get(dc) < *s) {
        PeerStatus::add(&status.held_for_deps, 1);
    }
    pending.insert((change.origin.clone(), change.seq), change);
    Ok(())
}

/// Frames read ahead of the apply loop.
const FRAME_QUEUE: usize = 1024;

/// Stops the frame reader when the link's receiver ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies every buffered change that is ready, in causal order.
async fn drain(
    repl: &Replication,
    status: &PeerStatus,
    pending: &mut BTreeMap<(String, u64), Change>,
) -> Result<(), String> {
    loop {
        let mut reached = repl.engine.applied();
        pending.retain(|(origin, seq), _| *seq > reached.get(origin));
        let mut batch = Vec::new();
        let mut progress = true;
        while progress && batch.len() < APPLY_BATCH {
            progress = false;
            let mut origins: Vec<String> = pending.keys().map(|(o, _)| o.clone()).collect();
            origins.dedup();
            for origin in origins {
                // Take this origin's changes in sequence while their dependencies hold.
                while batch.len() < APPLY_BATCH {
                    let key = (origin.clone(), reached.get(&origin) + 1);
                    let ready = pending
                        .get(&key)
                        .is_some_and(|c| c.deps.iter().all(|(dc, s)| reached.get(dc) >= *s));
                    let Some(change) = ready.then(|| pending.remove(&key)).flatten() else {
                        break;
                    };
                    reached.advance(&change.origin, change.seq);
                    batch.push(change);
                    progress = true;
                }
            }
        }
        status
            .buffered
            .store(pending.len() as u64, Ordering::Relaxed);
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len() as u64;
        let waiting = repl.engine.apply(batch).await?;
        PeerStatus::add(&status.received, count - waiting.len() as u64);
        let stuck = !waiting.is_empty();
        for change in waiting {
            pending.insert((change.origin.clone(), change.seq), change);
        }
        if stuck {
            return Ok(());
        }
    }
}
