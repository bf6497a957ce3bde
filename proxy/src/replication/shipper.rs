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
    loop {
        // (Re)start from what the peer is known to have applied.
        let live = *live_rx.borrow_and_update();
        let mut sent = repl.known(&peer_id);
        let mut reader = repl.engine.log_reader(repl.engine.resume_lsn(&sent));
        PeerStatus::add(&status.restarts, 1);
        tracing::debug!(from = reader.next_lsn(), "shipping from the log");
        loop {
            let mut buf = Vec::new();
            let mut count = 0;
            while buf.len() < WRITE_CHUNK {
                let record = reader.next_record().map_err(|e| e.to_string())?;
                let Some((lsn, bytes)) = record else { break };
                let change = Change::decode(&bytes)
                    .map_err(|e| format!("log record {lsn} does not decode: {e}"))?;
                if routes_to(&repl, &change, peer, live, &mut sent) {
                    frame::push_change(&mut buf, &bytes);
                    count += 1;
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
