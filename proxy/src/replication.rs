//! Replication between datacenters.
//!
//! Every pair of datacenters the topology may link holds one QUIC connection (the
//! datacenter listed first dials; see [`crate::link`] for TLS and the handshake). On
//! it each side opens one stream toward the other, on which it ships changes read
//! from its own durable log, and applied vectors (acknowledgements).
//!
//! - The shipper ([`shipper`]) reads the log from where the peer stopped and sends
//!   each change the topology routes to that peer from here
//!   ([`Router::next_hops`](meridian_topology::Router::next_hops) over the change's
//!   path and the datacenters that are live). Nothing is queued in memory for a peer:
//!   a slow peer only falls behind in the log and catches up.
//! - The receiver ([`receiver`]) skips changes already applied, holds a change until
//!   its origin's earlier changes and its dependencies are applied (in a bounded
//!   buffer; a full buffer stops reading, which stops the sender through QUIC flow
//!   control), and applies ready changes in batches through the engine's writer,
//!   which logs them (so they are relayed and survive a crash) and stores them with
//!   the applied vector.
//! - Applied vectors spread by gossip: each side sends what it knows of every
//!   datacenter's applied vector. They drive WAIT, where a shipper resumes after a
//!   reconnect, and the lag figures.
//! - A peer is live while its connection is; a datacenter that loses a peer
//!   recomputes its routes (ring and star route around it) and every shipper
//!   restarts from what its peer has acknowledged, so nothing falls between routes.

mod agreement;
mod error;
mod failover;
mod forward;
mod homes;
mod lease;
mod links;
mod reads;
mod receiver;
mod relay;
mod shipper;
mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_policies::VersionVector;
use meridian_topology::{DcIdx, DcSet, Topology};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::link::LinkTls;

pub use error::StreamError;
pub use failover::FailoverStats;
pub use forward::{ForwardError, ForwardStats, homes};
pub use homes::HomeStats;
pub use reads::{ReadPlace, ReadStats};
pub use status::{OriginLag, PeerStatus};

/// How a proxy replicates.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// The cluster.
    pub topology: Arc<Topology>,
    /// This datacenter.
    pub me: DcIdx,
    /// Certificates and transport settings.
    pub tls: LinkTls,
    /// Where to listen for peers (the topology's `peer` address; port 0 picks one).
    pub listen: SocketAddr,
    /// Where to reach each peer, where it differs from its topology address (the
    /// testbed puts its WAN emulator there).
    pub dial: HashMap<String, SocketAddr>,
    /// Heartbeat and keep-alive period (default 1 s).
    pub heartbeat: Duration,
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The peer listener or TLS setup failed.
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    /// Users cannot be given homes (the datacenters' weights).
    #[error("cannot assign users to homes: {0}")]
    Homes(#[from] meridian_policies::RendezvousError),
}

/// The replication state of one proxy; shared by its links and its clients.
#[derive(Debug)]
pub struct Replication {
    engine: Engine,
    config: ReplicationConfig,
    endpoint: quinn::Endpoint,
    /// The datacenters believed live (this one included).
    live: watch::Sender<DcSet>,
    /// What each datacenter is known to have applied (gossip).
    known: watch::Sender<HashMap<String, VersionVector>>,
    /// What each linked peer itself last said it has applied.
    acked: Mutex<HashMap<String, VersionVector>>,
    peers: Mutex<HashMap<String, Arc<PeerStatus>>>,
    /// Connections made, to tell a replaced connection from the current one.
    next_conn: AtomicU64,
    /// Writes forwarded to their homes, and those forwarded here.
    forwarding: forward::Forwarding,
    /// When replication started.
    started: std::time::Instant,
    /// Where session reads were served.
    read_stats: reads::ReadStats,
    /// Each user's token, in user scope.
    user_tokens: Option<moka::sync::Cache<bytes::Bytes, VersionVector>>,
    /// The home agreement, under `on_home_down = "next-in-line"`.
    control: std::sync::OnceLock<Arc<crate::control::Control>>,
    /// Takeovers seen here, and when.
    seen: failover::Seen,
    /// Traffic at the homes here, and the moves it asks for.
    following: homes::Following,
}

/// Keeps the engine's log retention told what the peers still need, at most once a
/// second, as their acknowledgements arrive.
async fn track_needs(repl: Arc<Replication>, mut stopped: watch::Receiver<bool>) {
    let mut known = repl.known.subscribe();
    loop {
        repl.engine.set_peers_need(repl.oldest_need());
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
        tokio::select! {
            r = known.changed() => if r.is_err() { return },
            _ = stopped.changed() => return,
        }
    }
}

impl Replication {
    /// Binds the peer listener and starts linking with every peer the topology allows.
    pub fn start(
        engine: Engine,
        config: ReplicationConfig,
        stopped: watch::Receiver<bool>,
    ) -> Result<Arc<Replication>, ReplicationError> {
        let endpoint = config.tls.endpoint(config.listen)?;
        let mut known = HashMap::new();
        known.insert(engine.dc().to_owned(), engine.applied());
        let forwarding = forward::Forwarding::new(&config.topology, config.me)?;
        let repl = Arc::new(Replication {
            forwarding,
            started: std::time::Instant::now(),
            read_stats: reads::ReadStats::default(),
            user_tokens: reads::user_tokens(&config.topology.session),
            control: std::sync::OnceLock::new(),
            seen: failover::Seen::default(),
            following: homes::Following::new(&config.topology),
            live: watch::Sender::new(DcSet::one(config.me)),
            known: watch::Sender::new(known),
            acked: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            engine,
            endpoint,
            config,
        });
        links::spawn(repl.clone(), stopped.clone());
        homes::spawn_mover(&repl);
        let needs = repl.clone();
        repl.engine.workers().spawn("peer-needs", None, |worker| {
            worker.set(crate::workers::State::Idle);
            track_needs(needs, stopped)
        });
        Ok(repl)
    }

    /// The oldest log position a linked peer still needs, from what it has
    /// acknowledged; `u64::MAX` when none needs anything the log can give (a peer
    /// the log no longer reaches back for bootstraps from a snapshot instead).
    fn oldest_need(&self) -> u64 {
        let topology = self.topology();
        (0..topology.datacenters.len())
            .map(|i| DcIdx(i as u8))
            .filter(|&peer| {
                peer != self.config.me && topology.router.may_link(self.config.me, peer)
            })
            .filter_map(|peer| self.engine.resume_lsn(&self.acked(self.id(peer))))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The address peers reach this proxy at.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// This datacenter's id.
    pub fn dc(&self) -> &str {
        self.engine.dc()
    }

    fn topology(&self) -> &Topology {
        &self.config.topology
    }

    fn id(&self, dc: DcIdx) -> &str {
        &self.topology().dc(dc).id
    }

    /// This datacenter's number.
    pub fn me(&self) -> usize {
        self.config.me.get()
    }

    /// The number of the datacenter called `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.topology().index_of(id).map(DcIdx::get)
    }

    /// Every datacenter's id, in topology order.
    pub fn datacenter_ids(&self) -> Vec<String> {
        self.topology()
            .datacenters
            .iter()
            .map(|d| d.id.clone())
            .collect()
    }

    /// The id of datacenter number `dc`.
    pub fn dc_id(&self, dc: usize) -> &str {
        self.id(DcIdx(dc as u8))
    }

    /// The datacenters believed live, this one included.
    pub fn live(&self) -> DcSet {
        *self.live.borrow()
    }

    fn set_live(&self, dc: DcIdx, up: bool) {
        self.live.send_if_modified(|live| {
            let next = if up { live.with(dc) } else { live.without(dc) };
            let changed = next != *live;
            *live = next;
            changed
        });
    }

    /// Records what `peer` itself says it has applied: in its handshake and in its
    /// own entry of its acknowledgements. Unlike gossip this replaces what was
    /// known, so a peer that lost its data (a new datacenter under an old name) is
    /// served again from what it really has. Shippers resume from this.
    fn acknowledged(&self, peer: &str, applied: &VersionVector) {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.to_owned(), applied.clone());
        self.learn(peer, applied);
    }

    /// What `peer` last said it has applied.
    pub fn acked(&self, peer: &str) -> VersionVector {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
            .unwrap_or_default()
    }

    /// Records what `dc` is known to have applied (a pointwise maximum).
    fn learn(&self, dc: &str, applied: &VersionVector) {
        self.known
            .send_if_modified(|known| match known.get_mut(dc) {
                Some(current) if current.dominates(applied) => false,
                Some(current) => {
                    current.merge(applied);
                    true
                }
                None => {
                    known.insert(dc.to_owned(), applied.clone());
                    true
                }
            });
    }

    /// What every datacenter is known to have applied, this one's own vector fresh.
    fn known_table(&self) -> Vec<(String, VersionVector)> {
        self.learn(self.engine.dc(), &self.engine.applied());
        self.known
            .borrow()
            .iter()
            .map(|(dc, vv)| (dc.clone(), vv.clone()))
            .collect()
    }

    /// What `dc` is known to have applied.
    pub fn known(&self, dc: &str) -> VersionVector {
        self.known.borrow().get(dc).cloned().unwrap_or_default()
    }

    /// Waits until `n` other datacenters have applied `token` (a session's writes),
    /// or `timeout` passes (`None`: no limit). Returns how many have.
    pub async fn wait_for(
        &self,
        token: &VersionVector,
        n: usize,
        timeout: Option<Duration>,
    ) -> usize {
        let me = self.engine.dc().to_owned();
        let count = |known: &HashMap<String, VersionVector>| {
            known
                .iter()
                .filter(|(dc, vv)| **dc != me && vv.dominates(token))
                .count()
        };
        let mut rx = self.known.subscribe();
        let wait = rx.wait_for(|known| count(known) >= n);
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, wait).await;
            }
            None => {
                let _ = wait.await;
            }
        }
        count(&self.known.borrow())
    }

    fn peer_status(&self, dc: &str) -> Arc<PeerStatus> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(dc.to_owned())
            .or_insert_with(|| Arc::new(PeerStatus::new(dc, self.engine.workers())))
            .clone()
    }

    /// Closes every link.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}
