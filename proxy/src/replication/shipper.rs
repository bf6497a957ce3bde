//! The shipper of one peer: reads this datacenter's log from where the peer stopped
//! and sends what the topology routes to the peer from here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meridian_policies::VersionVector;
use meridian_topology::{DcIdx, DcSet};

use super::status::PeerStatus;
use super::{Replication, StreamError};
use crate::change::Change;
use crate::link::frame::{self, Frame};
use crate::workers::State;
use tracing::Instrument;

/// Bytes of frames gathered before a write.
const WRITE_CHUNK: usize = 256 << 10;
/// Longest gap between acknowledgements (applied vectors) while data flows.
const GOSSIP_EVERY: Duration = Duration::from_millis(20);
/// A round of changes at most this large, shipped while following the log's tail,
/// also goes out twice as unreliable QUIC datagrams (see [`echo`]).
const ECHO_MAX: usize = 32 << 10;
/// Delay of the second datagram copy, so that a burst of losses seldom takes both
/// (it may still share a packet with the first; see [`echo`]).
const ECHO_GAP: Duration = Duration::from_millis(2);
/// Bytes per second of echoes (each round sent twice and repeated once, see
/// [`echo`]), and the largest burst: echoes are for latency under moderate load; at
/// high rates the stream's batches carry the load and echoes would only compete
/// with it. 2,000 changes per second in rounds of one or two take 1 MB/s.
const ECHO_RATE: f64 = 2.0e6;
const ECHO_BURST: f64 = 128.0 * 1024.0;
/// Bytes per second of padding of the first copies (see [`echo`]), and the largest
/// burst: about 200 small rounds per second. Past that, rounds come often enough
/// that the copies go unpadded, as cheap as the changes they carry: a padded copy
/// takes a packet of its own, and at 2,000 rounds per second over one link the
/// extra packets cost more visibility than they saved.
const PAD_RATE: f64 = 256.0 * 1024.0;
const PAD_BURST: f64 = 32.0 * 1024.0;

/// One peer's shipping side.
struct Shipper {
    repl: Arc<Replication>,
    peer: DcIdx,
    peer_id: String,
    status: Arc<PeerStatus>,
    connection: quinn::Connection,
    send: quinn::SendStream,
    last_gossip: Instant,
    /// An acknowledgement is owed now (the peer's changes were applied here), or
    /// fresher knowledge may go with the next gossip (see [`Shipper::on_applied`]).
    gossip_due: bool,
    gossip_soon: bool,
    /// This datacenter's applied vector as the last gossip carried it.
    gossiped: VersionVector,
    /// Bytes of echoes that may go now, and of padding.
    echo_budget: Bucket,
    pad_budget: Bucket,
    /// The change frames of the last round echoed, and where each ends, when they
    /// fit one datagram: the next round's echo carries them again (see [`echo`]).
    last_round: (Vec<u8>, Vec<usize>),
}

/// A rate limit: a budget topped up at a steady rate up to a burst.
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    budget: f64,
    topped: Instant,
}

impl Bucket {
    pub(super) fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            rate,
            burst,
            budget: burst,
            topped: Instant::now(),
        }
    }

    /// Whether `amount` fits the limit now (and takes it from the budget).
    pub(super) fn take(&mut self, amount: usize) -> bool {
        if self.available() < amount {
            return false;
        }
        self.budget -= amount as f64;
        true
    }

    /// What may go now.
    pub(super) fn available(&mut self) -> usize {
        let now = Instant::now();
        let elapsed = now.duration_since(self.topped).as_secs_f64();
        self.budget = (self.budget + elapsed * self.rate).min(self.burst);
        self.topped = now;
        self.budget as usize
    }
}

/// What stopped a round of shipping from one log position.
enum Stop {
    /// The routes changed or a snapshot was requested: restart from what the peer
    /// has acknowledged.
    Restart,
}

/// One write's worth of frames read from the log.
struct Chunk {
    buf: Vec<u8>,
    /// Where each change frame in `buf` ends.
    ends: Vec<usize>,
    /// The log had nothing more.
    at_tail: bool,
    /// The timestamps of this datacenter's own changes in it.
    own: Vec<u64>,
}

/// How long before `now_ms` (this datacenter's clock) a change stamped `hlc` was made.
pub(super) fn since(now_ms: u64, hlc: u64) -> std::time::Duration {
    let made = meridian_policies::Timestamp::from_u64(hlc).physical_ms();
    std::time::Duration::from_millis(now_ms.saturating_sub(made))
}

/// Ships to `peer` until the connection fails.
pub(super) async fn run(
    repl: Arc<Replication>,
    peer: DcIdx,
    connection: quinn::Connection,
) -> Result<(), StreamError> {
    let peer_id = repl.id(peer).to_owned();
    let send = connection
        .open_uni()
        .await
        .map_err(|source| StreamError::Open {
            peer: peer_id.clone(),
            source,
        })?;
    let mut shipper = Shipper {
        status: repl.peer_status(&peer_id),
        repl,
        peer,
        peer_id,
        connection,
        send,
        last_gossip: Instant::now() - GOSSIP_EVERY,
        gossip_due: true,
        gossip_soon: false,
        gossiped: VersionVector::default(),
        echo_budget: Bucket::new(ECHO_RATE, ECHO_BURST),
        pad_budget: Bucket::new(PAD_RATE, PAD_BURST),
        last_round: (Vec::new(), Vec::new()),
    };
    if shipper.repl.engine.restoring() {
        // This datacenter lost its data: no log gives a datacenter its own changes
        // back (nobody relays a change to its origin); a snapshot does.
        shipper
            .write(&[Frame::SnapshotRequest], "asking for a snapshot")
            .await?;
    }
    let mut live_rx = shipper.repl.live.subscribe();
    loop {
        let live = *live_rx.borrow_and_update();
        let (from, sent) = shipper.start().await?;
        let Stop::Restart = shipper.follow(from, sent, live, &mut live_rx).await?;
        tracing::debug!(live = ?live_rx.borrow().bits(), "routes changed; restarting from the peer's acknowledged position");
    }
}

impl Shipper {
    /// Where shipping (re)starts: from what the peer is known to have applied, or,
    /// when the log no longer reaches back that far or the peer asked, after a
    /// snapshot. Returns the log position and what the peer has.
    async fn start(&mut self) -> Result<(u64, VersionVector), StreamError> {
        if self.status.ask_snapshot.load(Ordering::Acquire) {
            self.write(&[Frame::SnapshotRequest], "asking for a snapshot")
                .await?;
        }
        let mut sent = self.repl.acked(&self.peer_id);
        let requested = self.status.snapshot_requested.swap(false, Ordering::AcqRel);
        if let Some(lsn) = self.repl.engine.resume_lsn(&sent).filter(|_| !requested) {
            return Ok((lsn, sent));
        }
        let vector = send_snapshot(&self.repl, &mut self.send, &self.peer_id, &self.status).await?;
        // Requests that came in meanwhile are answered by this one.
        self.status
            .snapshot_requested
            .store(false, Ordering::Release);
        sent.merge(&vector);
        let lsn =
            self.repl
                .engine
                .resume_lsn(&vector)
                .ok_or_else(|| StreamError::LogBehindSnapshot {
                    peer: self.peer_id.clone(),
                })?;
        Ok((lsn, sent))
    }

    /// Ships what the log holds from `from` on, then follows its tail, until the
    /// routes change or a restart is asked for.
    async fn follow(
        &mut self,
        from: u64,
        mut sent: VersionVector,
        live: DcSet,
        live_rx: &mut tokio::sync::watch::Receiver<DcSet>,
    ) -> Result<Stop, StreamError> {
        let mut reader = self.repl.engine.log_reader(from);
        self.last_round = (Vec::new(), Vec::new());
        PeerStatus::add(&self.status.restarts, 1);
        tracing::debug!(from = reader.next_lsn(), "shipping from the log");
        let mut log_rx = self.repl.engine.watch_log();
        let mut applied_rx = self.repl.engine.watch_applied();
        loop {
            let end = *log_rx.borrow_and_update();
            let chunk = match self.read_chunk(&mut reader, end, live, &mut sent) {
                // Retention removed what the peer needs next (it fell behind while
                // linked): start again, from a snapshot.
                Err(StreamError::LogRead {
                    source: crate::log::LogError::Removed { lsn, start },
                    ..
                }) => {
                    tracing::info!(lsn, start, "{} fell behind the retained log", self.peer_id);
                    return Ok(Stop::Restart);
                }
                other => other?,
            };
            let count = chunk.ends.len() as u64;
            self.status.shipper.set(State::Busy);
            self.ship(chunk).await?;
            if count > 0 {
                continue;
            }
            self.status.shipper.set(State::Idle);
            if live_rx.has_changed().unwrap_or(false) {
                return Ok(Stop::Restart);
            }
            let next_gossip = self.last_gossip + GOSSIP_EVERY;
            tokio::select! {
                _ = log_rx.changed() => {}
                _ = applied_rx.changed() => self.on_applied(),
                _ = tokio::time::sleep_until(next_gossip.into()), if self.gossip_soon => {
                    self.gossip_due = true;
                }
                _ = live_rx.changed() => return Ok(Stop::Restart),
                _ = self.status.restart_shipper.notified() => return Ok(Stop::Restart),
                _ = self.status.ack_owed.notified() => self.gossip_soon = true,
                _ = tokio::time::sleep(self.repl.config.heartbeat) => {
                    self.write(&[Frame::Heartbeat], "heartbeat").await?;
                }
            }
        }
    }

    /// Reads up to a write's worth of the changes routed to the peer, of the
    /// records before `end` (the log's end as last announced: those are all
    /// written, so the reader never has to look past them for more).
    fn read_chunk(
        &self,
        reader: &mut crate::log::LogReader,
        end: u64,
        live: DcSet,
        sent: &mut VersionVector,
    ) -> Result<Chunk, StreamError> {
        let mut chunk = Chunk {
            buf: Vec::new(),
            ends: Vec::new(),
            at_tail: false,
            own: Vec::new(),
        };
        while chunk.buf.len() < WRITE_CHUNK {
            if reader.next_lsn() >= end {
                chunk.at_tail = true;
                break;
            }
            let record = reader
                .next_record()
                .map_err(|source| StreamError::LogRead {
                    peer: self.peer_id.clone(),
                    source,
                })?;
            let Some((lsn, bytes)) = record else {
                chunk.at_tail = true;
                break;
            };
            if Change::peek(&bytes).is_some_and(|(origin, seq)| {
                !may_route(&self.repl, origin, seq, self.peer, live, sent)
            }) {
                continue;
            }
            let change =
                Change::decode(&bytes).map_err(|source| StreamError::LogRecord { lsn, source })?;
            if routes_to(&self.repl, &change, self.peer, live, sent) {
                frame::push_change(&mut chunk.buf, &bytes);
                chunk.ends.push(chunk.buf.len());
                if change.origin == self.repl.dc() {
                    chunk.own.push(change.hlc);
                }
            }
        }
        Ok(chunk)
    }

    /// Sends a chunk (echoed as datagrams when it was read at the log's tail), with
    /// an acknowledgement when one is due.
    async fn ship(&mut self, mut chunk: Chunk) -> Result<(), StreamError> {
        let count = chunk.ends.len() as u64;
        let len = chunk.buf.len();
        // A round that is not echoed ends the chain of repeats.
        let (last, last_ends) = match count {
            0 => Default::default(),
            _ => std::mem::take(&mut self.last_round),
        };
        // The largest datagram the path carries (none: the peer takes no datagrams).
        let max = self.connection.max_datagram_size().unwrap_or(0);
        if chunk.at_tail
            && count > 0
            && max > 0
            && len <= ECHO_MAX
            && self.echo_budget.take(last.len() + 2 * len)
        {
            let (mut frames, mut ends) = (last, last_ends);
            let (repeated, this_round) = (ends.len(), frames.len());
            frames.extend_from_slice(&chunk.buf);
            ends.extend(chunk.ends.iter().map(|end| this_round + end));
            let pad = self
                .pad_budget
                .take(frames.len().next_multiple_of(max) - frames.len());
            echo(&self.connection, max, &frames, &ends, repeated, pad);
            if len <= max {
                self.last_round = (chunk.buf.clone(), chunk.ends.clone());
            }
        }
        if self.gossip_due || self.last_gossip.elapsed() >= GOSSIP_EVERY {
            let table = self.repl.known_table();
            if let Some((_, applied)) = table.iter().find(|(dc, _)| dc == self.repl.dc()) {
                self.gossiped = applied.clone();
            }
            Frame::Applied(table).encode(&mut chunk.buf);
            self.last_gossip = Instant::now();
            (self.gossip_due, self.gossip_soon) = (false, false);
        }
        if chunk.buf.is_empty() {
            return Ok(());
        }
        self.send
            .write_all(&chunk.buf)
            .await
            .map_err(|source| StreamError::Send {
                peer: self.peer_id.clone(),
                what: "shipping",
                source,
            })?;
        PeerStatus::add(&self.status.shipped, count);
        PeerStatus::add(&self.status.shipped_bytes, chunk.buf.len() as u64);
        if chunk.at_tail {
            let now = self.repl.engine.clock_ms();
            for hlc in chunk.own {
                self.status.ship_lag.record(since(now, hlc));
            }
        }
        Ok(())
    }

    /// This datacenter applied more. When that includes changes the peer sent
    /// here, the peer is owed an acknowledgement at once (its `WAIT`s and its
    /// log's retention count on it); otherwise the news goes with the next gossip,
    /// at most `GOSSIP_EVERY` later. Gossiping every apply to every peer cost a
    /// packet per change per peer.
    fn on_applied(&mut self) {
        let applied = self.repl.engine.applied();
        let from_peer = DcSet::from_bits(self.status.origins_from.load(Ordering::Relaxed));
        let owed = from_peer.iter().any(|origin| {
            let origin = self.repl.id(origin);
            applied.get(origin) > self.gossiped.get(origin)
        });
        if owed {
            self.gossip_due = true;
        } else {
            self.gossip_soon = true;
        }
    }

    async fn write(&mut self, frames: &[Frame], what: &'static str) -> Result<(), StreamError> {
        let mut buf = Vec::new();
        for frame in frames {
            frame.encode(&mut buf);
        }
        self.send
            .write_all(&buf)
            .await
            .map_err(|source| StreamError::Send {
                peer: self.peer_id.clone(),
                what,
                source,
            })
    }
}

/// Most snapshot entries per frame, and the bytes of keys and values past which a
/// frame is closed (one entry larger than that travels alone).
const SNAPSHOT_CHUNK: (usize, usize) = (1024, 1 << 20);

/// `entries` cut into frames' worth.
fn snapshot_chunks(
    entries: &[(Vec<u8>, crate::engine::Stored)],
) -> Vec<&[(Vec<u8>, crate::engine::Stored)]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, stored)) in entries.iter().enumerate() {
        if i > start && (i - start >= SNAPSHOT_CHUNK.0 || bytes >= SNAPSHOT_CHUNK.1) {
            chunks.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += key.len() + stored.value.size();
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
}

/// Sends this datacenter's store to a peer that lacks changes the log no longer
/// holds; returns the vector the snapshot reaches (shipping resumes there).
async fn send_snapshot(
    repl: &Replication,
    send: &mut quinn::SendStream,
    peer_id: &str,
    status: &PeerStatus,
) -> Result<VersionVector, StreamError> {
    let (vector, entries) = repl.engine.snapshot().await.map_err(|source| {
        let e = StreamError::Snapshot {
            peer: peer_id.to_owned(),
            source,
        };
        status.set_error(&e.to_string());
        e
    })?;
    let send_err = |source| StreamError::Send {
        peer: peer_id.to_owned(),
        what: "a snapshot",
        source,
    };
    tracing::info!(keys = entries.len(), %vector, "{peer_id} needs changes older than the log: sending a snapshot");
    let mut buf = Vec::new();
    Frame::SnapshotBegin(vector.clone()).encode(&mut buf);
    for chunk in snapshot_chunks(&entries) {
        frame::push_snapshot_entries(&mut buf, chunk);
        if buf.len() >= WRITE_CHUNK {
            send.write_all(&buf).await.map_err(send_err)?;
            PeerStatus::add(&status.shipped_bytes, buf.len() as u64);
            buf.clear();
        }
    }
    Frame::SnapshotEnd.encode(&mut buf);
    send.write_all(&buf).await.map_err(send_err)?;
    PeerStatus::add(&status.shipped_bytes, buf.len() as u64);
    PeerStatus::add(&status.snapshots_sent, 1);
    Ok(vector)
}

/// Sends a round of change frames as QUIC datagrams of at most `max` bytes (the
/// largest the path carries), as many frames to a datagram as fit, twice: at once,
/// each padded to `max` when `pad`, and `ECHO_GAP` later, as they are. `frames`
/// (each ending at its `ends`) begin with the previous round's `repeated` frames,
/// which only the first copy carries.
///
/// The stream alone delivers every change, in order, but one lost packet holds back
/// everything behind it for a retransmission (more than a round trip): at 1% loss
/// and a few thousand changes per second the stream is stalled most of the time.
/// Copies that are not retransmitted and not ordered fill the receiver's gaps at the
/// one-way delay; the receiver applies each change once whichever copy arrives first.
///
/// A round whose copies are all lost stalls its peer for a round trip, and every
/// later change waits behind it (causal order). Two things make that rare:
/// - A copy helps only in a packet of its own. QUIC packs queued datagrams ahead of
///   stream data into one packet, and copies sent 2 ms apart still shared one when
///   the connection had not sent in between (pacing, a busy core): in the
///   five-region demo at 0.1% loss, the few changes that stalled for a round trip
///   were each lost with the stream's packet and both copies. The padded copy
///   fills a packet alone, so it is lost only on its own. Padding is rationed:
///   it is for sparse rounds, where no next round comes soon.
/// - The first copy carries the previous round again (the shipper's
///   `last_round`), so a round lost whole is recovered by the next one. Over one
///   link at 1% loss and 2,000 changes per second, one round in about 5,000 lost
///   its stream packet and both copies: a stall of a round trip every few
///   seconds, and the visibility p99 at one-way + 65 ms in most runs.
///
/// Only rounds shipped while following the log's tail are echoed, so bulk catch-up
/// costs nothing extra; a frame larger than `max` is simply not sent.
fn echo(
    connection: &quinn::Connection,
    max: usize,
    frames: &[u8],
    ends: &[usize],
    repeated: usize,
    pad: bool,
) {
    let (first, later) = copies(frames, ends, repeated, max);
    for d in first {
        let mut first = Vec::with_capacity(if pad { max } else { d.len() });
        first.extend_from_slice(d);
        if pad {
            frame::pad(&mut first, max);
        }
        let _ = connection.send_datagram(first.into());
    }
    let later: Vec<bytes::Bytes> = later
        .into_iter()
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let connection = connection.clone();
    let later = async move {
        tokio::time::sleep(ECHO_GAP).await;
        for d in later {
            let _ = connection.send_datagram(d);
        }
    };
    tokio::spawn(later.in_current_span());
}

/// The datagrams of a round's two copies: the first with the previous round's
/// `repeated` frames ahead of this round's, the later one with this round's alone.
fn copies<'a>(
    frames: &'a [u8],
    ends: &[usize],
    repeated: usize,
    max: usize,
) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
    let skip = repeated.checked_sub(1).map_or(0, |last| ends[last]);
    let round: Vec<usize> = ends[repeated..].iter().map(|end| end - skip).collect();
    (pack(frames, ends, max), pack(&frames[skip..], &round, max))
}

/// Splits change frames (`frames`, each ending at its `ends`) into datagrams of at
/// most `max` bytes, whole frames each, in order; a frame larger than `max` is left
/// out.
pub(super) fn pack<'a>(frames: &'a [u8], ends: &[usize], max: usize) -> Vec<&'a [u8]> {
    let mut datagrams = Vec::new();
    let (mut start, mut at) = (0, 0);
    for &end in ends {
        if end - at > max {
            // Too large for any datagram: flush what is gathered, skip this one.
            if at > start {
                datagrams.push(&frames[start..at]);
            }
            (start, at) = (end, end);
            continue;
        }
        if end - start > max {
            datagrams.push(&frames[start..at]);
            start = at;
        }
        at = end;
    }
    if at > start {
        datagrams.push(&frames[start..at]);
    }
    datagrams
}

/// Whether a change from `origin` numbered `seq` may go to `peer`, from those two
/// alone: not when `peer` has it already, nor when the route from here leaves
/// `peer` out even for a change that has passed its origin alone (a longer path
/// only leaves out more). Most of a log is changes a given peer must not get (in
/// all-to-all, every change from elsewhere), and this spares decoding them.
fn may_route(
    repl: &Replication,
    origin: &str,
    seq: u64,
    peer: DcIdx,
    live: DcSet,
    sent: &VersionVector,
) -> bool {
    if seq <= sent.get(origin) {
        return false;
    }
    let topology = repl.topology();
    topology.index_of(origin).is_none_or(|origin| {
        topology
            .router
            .next_hops(repl.config.me, origin, DcSet::one(origin), live)
            .contains(peer)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Change frames around bodies of the given lengths, and where each ends.
    fn round(lens: &[usize], tag: u8) -> (Vec<u8>, Vec<usize>) {
        let (mut frames, mut ends) = (Vec::new(), Vec::new());
        for &len in lens {
            frame::push_change(&mut frames, &vec![tag; len]);
            ends.push(frames.len());
        }
        (frames, ends)
    }

    fn decoded(datagrams: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        for d in datagrams {
            for f in frame::decode_all(d, "peer").unwrap() {
                let Frame::Change(body) = f else {
                    panic!("not a change: {f:?}")
                };
                bodies.push(body);
            }
        }
        bodies
    }

    #[test]
    fn the_first_copy_repeats_the_previous_round_and_the_later_one_does_not() {
        let (mut frames, mut ends) = round(&[10, 20], b'p');
        let repeated = ends.len();
        let (this, this_ends) = round(&[30], b't');
        let base = frames.len();
        frames.extend_from_slice(&this);
        ends.extend(this_ends.iter().map(|e| base + e));
        let (first, later) = copies(&frames, &ends, repeated, 1200);
        assert_eq!(first.len(), 1, "one datagram holds both rounds");
        assert_eq!(
            decoded(&first),
            vec![vec![b'p'; 10], vec![b'p'; 20], vec![b't'; 30]]
        );
        assert_eq!(decoded(&later), vec![vec![b't'; 30]]);
        // Nothing repeated: both copies are the round.
        let (first, later) = copies(&this, &this_ends, 0, 1200);
        assert_eq!(decoded(&first), decoded(&later));
    }

    #[test]
    fn rounds_are_packed_in_order_into_datagrams_of_whole_frames() {
        // Frames of 105, 205, 305 and 2005 bytes, and 55: the fourth fits no datagram.
        let (frames, ends) = round(&[100, 200, 300, 2000, 50], b'x');
        let datagrams = pack(&frames, &ends, 400);
        let lens: Vec<usize> = datagrams.iter().map(|d| d.len()).collect();
        assert_eq!(lens, vec![310, 305, 55]);
        assert_eq!(
            decoded(&datagrams).iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 200, 300, 50]
        );
    }
}
