//! What replication shows: per peer (link state, RTT, bytes, losses, buffered
//! changes) and per origin (changes and seconds behind).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meridian_policies::Timestamp;

use super::Replication;
use crate::engine::wall_ms;
use crate::workers::{Worker, Workers};

/// One peer's link, as metrics and INFO show it.
#[derive(Debug)]
pub struct PeerStatus {
    /// The peer's datacenter id.
    pub dc: String,
    /// The current connection: its number here, the connection, and the peer's
    /// incarnation (its process).
    conn: Mutex<Option<(u64, quinn::Connection, u64)>>,
    /// Bumped whenever the current connection changes; forwards wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// Wall time the link went down (or this proxy started, before the first link);
    /// 0 while it is up.
    down_since_ms: AtomicU64,
    /// Whether the link has ever been up.
    ever_up: std::sync::atomic::AtomicBool,
    /// Writes forwarded to the peer as their user's home.
    pub forwarded: AtomicU64,
    /// Writes refused at once because the peer, their home, could not be reached.
    pub home_unreachable: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Changes shipped to the peer.
    pub shipped: AtomicU64,
    /// Bytes of frames shipped to the peer.
    pub shipped_bytes: AtomicU64,
    /// Datagrams of other datacenters' changes passed on to the peer as they
    /// arrived here, before they were applied (see `relay`).
    pub relayed: AtomicU64,
    /// Changes received from the peer and applied here.
    pub received: AtomicU64,
    /// The origins (bits by topology index) whose changes the peer has sent here:
    /// the shipper to the peer acknowledges those at once when they are applied.
    pub(super) origins_from: AtomicU64,
    /// Changes from the peer waiting for their dependencies or predecessors.
    pub buffered: AtomicU64,
    /// Changes from the peer that arrived before their dependencies and were held.
    pub held_for_deps: AtomicU64,
    /// Snapshots sent to the peer.
    pub snapshots_sent: AtomicU64,
    /// The peer asked for a snapshot; the shipper sends one when it restarts.
    pub(super) snapshot_requested: std::sync::atomic::AtomicBool,
    /// This datacenter needs a snapshot from the peer (it holds a change it cannot
    /// apply): the shipper to the peer asks for one when it next starts.
    pub(super) ask_snapshot: std::sync::atomic::AtomicBool,
    /// How long after they were made this datacenter's changes were shipped to
    /// the peer (those shipped as they were logged, not in a catch-up).
    pub(crate) ship_lag: crate::metrics::Latency,
    /// How long after they were made the peer's changes arrived here (by the
    /// stream or an echo, whichever came first; the two clocks' difference
    /// included).
    pub(crate) arrival_lag: crate::metrics::Latency,
    /// How long after they were made the peer's changes were applied here.
    pub(crate) applied_lag: crate::metrics::Latency,
    /// Wakes the shipper to restart (a snapshot was requested).
    pub(super) restart_shipper: tokio::sync::Notify,
    /// Wakes the shipper to pass on, with its next gossip (at most 20 ms later),
    /// what this datacenter learnt of the peer's changes applied further along
    /// (see the receiver's `pass_on_acks`).
    pub(super) ack_owed: tokio::sync::Notify,
    /// Snapshots received from the peer and installed.
    pub snapshots_installed: AtomicU64,
    /// Times the shipper restarted from the peer's acknowledged position.
    pub restarts: AtomicU64,
    /// The latest beat's clock the peer sent (its clock), to echo back.
    beat_seen: AtomicU64,
    /// The latest of this proxy's beats the peer echoed (this proxy's clock): the
    /// peer had heard from here by then.
    echoed: AtomicU64,
    /// The newest home epoch the peer said it has applied.
    epoch: AtomicU64,
    /// When the latest beat from the peer arrived (this proxy's clock).
    heard: Mutex<Option<std::time::Instant>>,
    /// The link to the peer, as `/status` shows it: dialling, up, or waiting.
    pub(super) link: Arc<Worker>,
    /// The shipper's state while the link is up.
    pub(super) shipper: Arc<Worker>,
    /// The receiver's state while the link is up.
    pub(super) receiver: Arc<Worker>,
    /// What answers the peer's forwarded writes while the link is up.
    pub(super) forward: Arc<Worker>,
}

impl PeerStatus {
    pub(super) fn new(dc: &str, workers: &Workers) -> PeerStatus {
        PeerStatus {
            link: workers.register("link", Some(dc)),
            shipper: workers.register("shipper", Some(dc)),
            receiver: workers.register("receiver", Some(dc)),
            forward: workers.register("forward", Some(dc)),
            dc: dc.to_owned(),
            conn: Mutex::new(None),
            changed: tokio::sync::watch::Sender::new(0),
            down_since_ms: AtomicU64::new(wall_ms()),
            ever_up: std::sync::atomic::AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            home_unreachable: AtomicU64::new(0),
            last_error: Mutex::new(None),
            shipped: AtomicU64::new(0),
            shipped_bytes: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            origins_from: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            held_for_deps: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
            snapshot_requested: std::sync::atomic::AtomicBool::new(false),
            ask_snapshot: std::sync::atomic::AtomicBool::new(false),
            ship_lag: crate::metrics::Latency::default(),
            arrival_lag: crate::metrics::Latency::default(),
            applied_lag: crate::metrics::Latency::default(),
            restart_shipper: tokio::sync::Notify::new(),
            ack_owed: tokio::sync::Notify::new(),
            snapshots_installed: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            beat_seen: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            heard: Mutex::new(None),
        }
    }

    /// Records a beat from the peer: its clock, the beat of ours it echoes, and
    /// the home epoch it has applied.
    pub(super) fn beat(&self, sent: u64, echo: u64, epoch: u64) {
        self.beat_seen.fetch_max(sent, Ordering::Relaxed);
        self.echoed.fetch_max(echo, Ordering::Relaxed);
        self.epoch.fetch_max(epoch, Ordering::Relaxed);
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    /// When the latest beat from the peer arrived, if one has.
    pub(super) fn last_heard(&self) -> Option<std::time::Instant> {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest home epoch the peer said it has applied.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// The peer's latest beat clock, to echo in ours.
    pub(super) fn beat_seen(&self) -> u64 {
        self.beat_seen.load(Ordering::Relaxed)
    }

    /// The latest beat of ours (this proxy's clock, ms) the peer is known to have
    /// received; 0 for none.
    pub(super) fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Makes `conn` (to the peer's process `incarnation`) the current connection;
    /// returns the one it replaces.
    pub(super) fn replace_connection(
        &self,
        id: u64,
        conn: quinn::Connection,
        incarnation: u64,
    ) -> Option<quinn::Connection> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let old = slot.replace((id, conn, incarnation)).map(|(_, c, _)| c);
        self.down_since_ms.store(0, Ordering::Release);
        self.ever_up.store(true, Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
        old
    }

    /// Forgets connection `id` if it is still the current one (true if it was).
    pub(super) fn clear_connection(&self, id: u64) -> bool {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|(current, _, _)| *current == id) {
            *slot = None;
            self.down_since_ms.store(wall_ms(), Ordering::Release);
            self.changed.send_modify(|n| *n += 1);
            true
        } else {
            false
        }
    }

    /// The current connection and the peer's incarnation, while the link is up.
    pub(super) fn connection(&self) -> Option<(quinn::Connection, u64)> {
        let slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|(_, c, i)| (c.clone(), *i))
    }

    /// Watches the current connection change.
    pub(super) fn watch_connection(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the link has been up at least once since this proxy started.
    pub fn ever_up(&self) -> bool {
        self.ever_up.load(Ordering::Acquire)
    }

    /// Since when (wall time, ms) the link has been down; `None` while it is up.
    pub fn down_since_ms(&self) -> Option<u64> {
        match self.down_since_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(at),
        }
    }

    pub(super) fn set_error(&self, why: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
    }

    /// Whether the link is up.
    pub fn connected(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Why the link last failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The link's round-trip time and lost packets, while it is up.
    pub fn path(&self) -> Option<(std::time::Duration, u64)> {
        let slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|(_, c, _)| {
            let stats = c.stats();
            (stats.path.rtt, stats.path.lost_packets)
        })
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// How far this datacenter is behind one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginLag {
    /// The origin datacenter.
    pub origin: String,
    /// Its newest change applied here.
    pub applied: u64,
    /// Its newest change known anywhere (from gossip).
    pub known: u64,
    /// Seconds since the newest change applied here was made, while behind; else 0.
    pub seconds_behind: f64,
}

impl Replication {
    /// Every peer's link status, in topology order.
    pub fn peers(&self) -> Vec<std::sync::Arc<PeerStatus>> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = peers.values().cloned().collect();
        out.sort_by_key(|p| self.topology().index_of(&p.dc));
        out
    }

    /// How far behind each other origin this datacenter is.
    pub fn lag(&self) -> Vec<OriginLag> {
        let applied = self.engine.applied();
        let last = self.engine.last_hlc();
        let known = self.known.borrow();
        let now = wall_ms();
        self.topology()
            .datacenters
            .iter()
            .filter(|d| d.id != self.dc())
            .map(|d| {
                let newest = known.values().map(|vv| vv.get(&d.id)).max().unwrap_or(0);
                let have = applied.get(&d.id);
                let seconds_behind = match last.get(&d.id) {
                    Some(hlc) if newest > have => {
                        now.saturating_sub(Timestamp::from_u64(*hlc).physical_ms()) as f64 / 1000.0
                    }
                    _ => 0.0,
                };
                OriginLag {
                    origin: d.id.clone(),
                    applied: have,
                    known: newest.max(have),
                    seconds_behind,
                }
            })
            .collect()
    }
}
