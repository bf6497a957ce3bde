//! The shipper of one peer: reads this datacenter's log from where the peer stopped
//! and sends what the topology routes to the peer from here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_policies::VersionVector;
use meridian_topology::{DcIdx, DcSet};

use super::status::PeerStatus;
use super::{Replication, frame};
use crate::change::Change;

/// Bytes of frames gathered before a write.
const WRITE_CHUNK: usize = 256 << 10;
/// Longest gap between acknowledgements (applied vectors) while data flows.
const GOSSIP_EVERY: Duration = Duration::from_millis(20);
/// A round of changes at most this large, shipped while following the log's tail,
/// also goes out twice as unreliable QUIC datagrams (see [`echo`]).
const ECHO_MAX: usize = 32 << 10;
/// Delay of the second datagram copy, so it travels in another packet.
const ECHO_GAP: Duration = Duration::from_millis(2);
/// Bytes per second of changes echoed (each sent twice), and the largest burst:
/// echoes are for latency under moderate load; at high rates the stream's batches
/// carry the load and echoes would only compete with it.
const ECHO_RATE: f64 = 1.0e6;
const ECHO_BURST: f64 = 128.0 * 1024.0;

/// Ships to `peer` until the connection fails.
pub(super) async fn run(
    repl: Arc<Replication>,
    peer: DcIdx,
    connection: quinn::Connection,
) -> Result<(), String> {
    let peer_id = repl.id(peer).to_owned();
    let status = repl.peer_status(&peer_id);
    let mut send = connection
        .open_uni()
        .await
        .map_err(|e| format!("cannot open a stream: {e}"))?;
    let mut live_rx = repl.live.subscribe();
    let mut log_rx = repl.engine.watch_log();
    let mut applied_rx = repl.engine.watch_applied();
    let mut last_gossip = Instant::now() - GOSSIP_EVERY;
    let mut gossip_due = true;
    let mut echo_budget = (ECHO_BURST, Instant::now());
    let mut first = true;
    loop {
        // (Re)start from what the peer is known to have applied.
        let live = *live_rx.borrow_and_update();
        let mut sent = repl.acked(&peer_id);
        if first && repl.engine.restoring() {
            // This datacenter lost its data: no log gives a datacenter its own
            // changes back (nobody relays a change to its origin); a snapshot does.
            let mut request = Vec::new();
            frame::push_snapshot_request(&mut request);
            send.write_all(&request)
                .await
                .map_err(|e| format!("asking {peer_id} for a snapshot: {e}"))?;
        }
        first = false;
        let requested = status
            .snapshot_requested
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let from = match repl.engine.resume_lsn(&sent).filter(|_| !requested) {
            Some(lsn) => lsn,
            None => {
                // The log no longer reaches back to what the peer lacks.
                let vector = send_snapshot(&repl, &mut send, &peer_id, &status).await?;
                // Requests that came in meanwhile are answered by this one.
                status
                    .snapshot_requested
                    .store(false, std::sync::atomic::Ordering::Release);
                sent.merge(&vector);
                repl.engine.resume_lsn(&vector).ok_or_else(|| {
                    format!("the log does not reach back to the snapshot sent to {peer_id}")
                })?
            }
        };
        let mut reader = repl.engine.log_reader(from);
        PeerStatus::add(&status.restarts, 1);
        tracing::debug!(from = reader.next_lsn(), "shipping from the log");
        loop {
            let mut buf = Vec::new();
            // Where each change frame in `buf` ends.
            let mut ends = Vec::new();
            let mut at_tail = false;
            while buf.len() < WRITE_CHUNK {
                let record = reader.next_record().map_err(|e| e.to_string())?;
                let Some((lsn, bytes)) = record else {
                    at_tail = true;
                    break;
                };
                let change = Change::decode(&bytes)
                    .map_err(|e| format!("log record {lsn} does not decode: {e}"))?;
                if routes_to(&repl, &change, peer, live, &mut sent) {
                    frame::push_change(&mut buf, &bytes);
                    ends.push(buf.len());
                }
            }
            let count = ends.len() as u64;
            if at_tail && count > 0 && buf.len() <= ECHO_MAX {
                let (budget, last) = &mut echo_budget;
                *budget = (*budget + last.elapsed().as_secs_f64() * ECHO_RATE).min(ECHO_BURST);
                *last = Instant::now();
                if *budget >= buf.len() as f64 {
                    *budget -= buf.len() as f64;
                    echo(&connection, &buf, &ends);
                }
            }
            if gossip_due || last_gossip.elapsed() >= GOSSIP_EVERY {
                frame::push_applied(&mut buf, &repl.known_table());
                last_gossip = Instant::now();
                gossip_due = false;
            }
            if !buf.is_empty() {
                send.write_all(&buf)
                    .await
                    .map_err(|e| format!("shipping to {peer_id}: {e}"))?;
                PeerStatus::add(&status.shipped, count);
                PeerStatus::add(&status.shipped_bytes, buf.len() as u64);
            }
            if count > 0 {
                continue;
            }
            if live_rx.has_changed().unwrap_or(false) {
                break;
            }
            tokio::select! {
                _ = log_rx.changed() => {}
                _ = applied_rx.changed() => gossip_due = true,
                _ = live_rx.changed() => break,
                _ = status.restart_shipper.notified() => break,
                _ = tokio::time::sleep(repl.config.heartbeat) => {
                    let mut beat = Vec::new();
                    frame::push_heartbeat(&mut beat);
                    send.write_all(&beat).await.map_err(|e| format!("heartbeat to {peer_id}: {e}"))?;
                }
            }
        }
        tracing::debug!(live = ?live_rx.borrow().bits(), "routes changed; restarting from the peer's acknowledged position");
    }
}

/// Snapshot entries per frame.
const SNAPSHOT_CHUNK: usize = 1024;

/// Sends this datacenter's store to a peer that lacks changes the log no longer
/// holds; returns the vector the snapshot reaches (shipping resumes there).
async fn send_snapshot(
    repl: &Replication,
    send: &mut quinn::SendStream,
    peer_id: &str,
    status: &PeerStatus,
) -> Result<VersionVector, String> {
    let (vector, entries) = repl.engine.snapshot().await.map_err(|e| {
        let why = format!("{peer_id} needs changes older than this log holds, and {e}");
        status.set_error(&why);
        why
    })?;
    tracing::info!(keys = entries.len(), %vector, "{peer_id} needs changes older than the log: sending a snapshot");
    let mut encoded = Vec::new();
    vector.encode(&mut encoded);
    let mut buf = Vec::new();
    frame::push_snapshot_begin(&mut buf, &encoded);
    for chunk in entries.chunks(SNAPSHOT_CHUNK) {
        frame::push_snapshot_entries(&mut buf, chunk);
        if buf.len() >= WRITE_CHUNK {
            send.write_all(&buf)
                .await
                .map_err(|e| format!("snapshot to {peer_id}: {e}"))?;
            PeerStatus::add(&status.shipped_bytes, buf.len() as u64);
            buf.clear();
        }
    }
    frame::push_snapshot_end(&mut buf);
    send.write_all(&buf)
        .await
        .map_err(|e| format!("snapshot to {peer_id}: {e}"))?;
    PeerStatus::add(&status.shipped_bytes, buf.len() as u64);
    PeerStatus::add(&status.snapshots_sent, 1);
    Ok(vector)
}

/// Sends the change frames of `frames` (ending at `ends`) as QUIC datagrams, as many
/// to a datagram as fit, twice, `ECHO_GAP` apart.
///
/// The stream alone delivers every change, in order, but one lost packet holds back
/// everything behind it for a retransmission (more than a round trip): at 1% loss
/// and a few thousand changes per second the stream is stalled most of the time.
/// Copies that are not retransmitted and not ordered fill the receiver's gaps at the
/// one-way delay; the receiver applies each change once whichever copy arrives first.
/// Only rounds shipped while following the log's tail are echoed, so bulk catch-up
/// costs nothing extra; a datagram the path cannot carry is simply not sent.
fn echo(connection: &quinn::Connection, frames: &[u8], ends: &[usize]) {
    let Some(max) = connection.max_datagram_size() else {
        return;
    };
    let mut datagrams = Vec::new();
    let (mut start, mut at) = (0, 0);
    for &end in ends {
        if end - at > max {
            // Too large for any datagram: flush what is gathered, skip this one.
            if at > start {
                datagrams.push(bytes::Bytes::copy_from_slice(&frames[start..at]));
            }
            (start, at) = (end, end);
            continue;
        }
        if end - start > max {
            datagrams.push(bytes::Bytes::copy_from_slice(&frames[start..at]));
            start = at;
        }
        at = end;
    }
    if at > start {
        datagrams.push(bytes::Bytes::copy_from_slice(&frames[start..at]));
    }
    for d in &datagrams {
        let _ = connection.send_datagram(d.clone());
    }
    let connection = connection.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ECHO_GAP).await;
        for d in datagrams {
            let _ = connection.send_datagram(d);
        }
    });
}

/// Whether `change` goes to `peer` from here, and it has not been sent yet.
fn routes_to(
    repl: &Replication,
    change: &Change,
    peer: DcIdx,
    live: DcSet,
    sent: &mut VersionVector,
) -> bool {
    if change.seq <= sent.get(&change.origin) {
        return false;
    }
    let topology = repl.topology();
    let Some(origin) = topology.index_of(&change.origin) else {
        return false;
    };
    let path = change
        .path
        .iter()
        .filter_map(|dc| topology.index_of(dc))
        .fold(DcSet::EMPTY, DcSet::with);
    if !topology
        .router
        .next_hops(repl.config.me, origin, path, live)
        .contains(peer)
    {
        return false;
    }
    sent.advance(&change.origin, change.seq);
    true
}
