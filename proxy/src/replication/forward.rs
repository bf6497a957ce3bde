//! Forwarding writes to their user's home.
//!
//! A write of a user homed elsewhere travels to the home as a forward frame on a
//! bidirectional QUIC stream of its own (never behind the replication stream), along
//! the topology's path ([`Topology::forward_path`]: straight there where the two may
//! link, else through the hub). The home executes it exactly as a local write (its
//! log, its sequence numbers, origin = the home) and answers with the replies,
//! encoded for the client's protocol, and what the session has now seen of it.
//!
//! At most once: a request carries an id (sender, its process, a number). When the
//! link drops before the reply, the sender sends the same request again on the next
//! connection, and the home, which remembers recent ids ([`window`]), answers with the
//! original reply instead of executing it twice. A home that restarted has forgotten
//! its ids, so a request that reached the old process is not sent again: the client
//! is told its outcome is unknown. A request gives up after [`Forwarding::deadline`],
//! which the home's memory outlasts.

mod serve;
mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_policies::{Candidate, Reach, Rendezvous, VersionVector, WriteRoute, route_to};
use meridian_topology::{DcIdx, Topology, Writes};

use super::Replication;
use crate::engine::wall_ms;
use crate::link::frame::{self, ForwardReply, ForwardRequest, Frame, RequestId};

pub(super) use serve::run as serve;

/// The least time after start during which a link not yet made is waited for.
const START_GRACE: Duration = Duration::from_secs(5);

/// The homes of users: pins, else rendezvous hashing over the datacenters' weights.
pub fn homes(topology: &Topology) -> Result<Rendezvous, meridian_policies::RendezvousError> {
    let candidates = topology
        .datacenters
        .iter()
        .map(|dc| Candidate {
            id: dc.id.clone(),
            weight: dc.weight,
        })
        .collect();
    let pins = topology
        .homes
        .pins
        .iter()
        .map(|(user, dc)| (user.as_str(), topology.dc(*dc).id.as_str()));
    Rendezvous::new(candidates, pins)
}

/// What forwarding counts.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Requests sent toward a home (a group of writes each).
    pub requests: AtomicU64,
    /// Requests waiting for their home's reply now.
    pub in_flight: AtomicU64,
    /// Requests that ended without a reply (outcome unknown to the client).
    pub failed: AtomicU64,
    /// Writes of other datacenters' clients executed here, as their home.
    pub served: AtomicU64,
    /// Requests passed on toward a home elsewhere.
    pub relayed: AtomicU64,
    /// Requests received again and answered from memory, not executed twice.
    pub duplicates: AtomicU64,
    /// Time from sending a request to its reply.
    pub(crate) latency: crate::metrics::Latency,
}

/// Forwarding's state in one proxy.
#[derive(Debug)]
pub(super) struct Forwarding {
    pub(super) homes: Rendezvous,
    writes: Writes,
    /// From here to each datacenter (`None`: no chain of links).
    paths: Vec<Option<Vec<DcIdx>>>,
    /// This process, as the ids of its requests name it.
    incarnation: u64,
    next_id: AtomicU64,
    /// Recent requests executed here, by id.
    window: window::Window,
    /// How long a request may take, resends included.
    deadline: Duration,
    /// How long the home waits to have applied what a request's token names.
    token_wait: Duration,
    /// How long after start writes wait for a link not yet made, rather than
    /// being refused (the peer timeout, at least [`START_GRACE`]).
    start_grace: Duration,
    /// How long a request waits for its link to come back after it dropped (the
    /// peer timeout).
    relink_wait: Duration,
    pub(super) stats: ForwardStats,
}

/// A random number for this process: time, process id and the hasher's random keys.
fn incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// How long a forwarded write's reply waits for its changes to be applied here.
const VISIBLE_WAIT: Duration = Duration::from_millis(10);

impl Forwarding {
    pub(super) fn new(
        topology: &Topology,
        me: DcIdx,
    ) -> Result<Forwarding, meridian_policies::RendezvousError> {
        let n = topology.datacenters.len();
        let paths = (0..n)
            .map(|i| topology.forward_path(me, DcIdx(i as u8)))
            .collect();
        // The link failing (a peer timeout), coming back (two more), and the home's wait.
        let deadline = topology.replication.peer_timeout * 3 + topology.session.read_wait;
        Ok(Forwarding {
            homes: homes(topology)?,
            writes: topology.homes.writes,
            paths,
            incarnation: incarnation(),
            next_id: AtomicU64::new(1),
            window: window::Window::new((deadline * 4).max(window::MIN_KEEP)),
            deadline: deadline + Duration::from_secs(1),
            token_wait: topology.session.read_wait,
            start_grace: topology.replication.peer_timeout.max(START_GRACE),
            relink_wait: topology.replication.peer_timeout,
            stats: ForwardStats::default(),
        })
    }

    pub(super) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Where writes run.
    pub(super) fn writes(&self) -> Writes {
        self.writes
    }
}

/// Why a forwarded request got no reply from its home.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// No chain of links leads to the home.
    #[error("TRYAGAIN no link leads from {from} to {home}, the home of this user")]
    NoPath {
        /// This datacenter.
        from: String,
        /// The home.
        home: String,
    },
    /// The next datacenter toward the home could not be reached before the deadline,
    /// and the request was never sent.
    #[error("TRYAGAIN {home}, the home of this user, cannot be reached from {from}: {why}")]
    Unreachable {
        /// This datacenter.
        from: String,
        /// The home.
        home: String,
        /// Why.
        why: String,
    },
    /// The request was sent, and no reply came: it may or may not have run.
    #[error(
        "ERR the write was sent to {home}, the home of this user, and no reply came ({why}); it may or may not have been applied"
    )]
    Unknown {
        /// The home.
        home: String,
        /// Why.
        why: String,
    },
}

impl Replication {
    /// The home of `user` now: its pin, else the datacenter it moved to (a
    /// placement record applied here), else its rendezvous home.
    pub fn home_of(&self, user: &[u8]) -> usize {
        let name = String::from_utf8_lossy(user);
        self.placed_home(user, &name)
            .unwrap_or_else(|| self.forwarding.homes.home_of(&name))
    }

    /// Where `user` (named `name`) moved to, when it is not pinned and has moved.
    fn placed_home(&self, user: &[u8], name: &str) -> Option<usize> {
        let placement = self.engine.placement(user)?;
        if self.forwarding.homes.is_pinned(name) {
            return None;
        }
        self.topology().index_of(&placement.home).map(DcIdx::get)
    }

    /// The position of the change that moved `user` to its home: a datacenter
    /// takes the user's writes only once it has applied it.
    pub fn placed_since(&self, user: &[u8]) -> Option<(std::sync::Arc<str>, u64)> {
        self.engine.placement(user).map(|p| (p.from, p.seq))
    }

    /// Waits, briefly, until the changes a home's reply names are applied here
    /// too: they travel on the replication stream beside the reply and usually
    /// arrive with it. Answering the client after them lets its next read here
    /// run at once instead of waiting for them. Bounded by [`VISIBLE_WAIT`]: a
    /// change held up by a retransmission is not waited for.
    pub async fn until_visible(&self, token: &bytes::Bytes) {
        let Ok(token) = VersionVector::decode(token) else {
            return;
        };
        if self.engine.covers(&token) {
            return;
        }
        let mut applied = self.engine.watch_applied();
        let covered = applied.wait_for(|a| a.dominates(&token));
        let _ = tokio::time::timeout(VISIBLE_WAIT, covered).await;
    }

    /// Resolves once the agreed epochs say datacenter `dc` is not in service
    /// (never without the home agreement).
    async fn taken_over(&self, dc: usize) {
        let Some(control) = self.control() else {
            return std::future::pending().await;
        };
        let mut epochs = control.epochs();
        let _ = epochs.wait_for(|e| !e.in_service(dc)).await;
    }

    /// `user`'s order: its home first (where it moved to, if it did), then who
    /// takes over, by rendezvous.
    pub(super) fn ranking(&self, user: &[u8]) -> Vec<usize> {
        let name = String::from_utf8_lossy(user);
        match self.placed_home(user, &name) {
            Some(home) => self.forwarding.homes.ranking_from(&name, home),
            None => self.forwarding.homes.ranking(&name),
        }
    }

    /// Whether this datacenter deletes `user`'s expired keys: it writes the
    /// user's data now (with every datacenter writing locally, the user's home
    /// alone does, so one key is not deleted twice).
    pub fn expires_here(&self, user: &[u8]) -> bool {
        if self.forwarding.writes == Writes::Local {
            return self.home_of(user) == self.config.me.get();
        }
        self.route(user) == WriteRoute::Here
    }

    /// Where a write of `user` arriving here runs.
    pub fn route(&self, user: &[u8]) -> WriteRoute {
        let f = &self.forwarding;
        if f.writes == Writes::Local {
            return WriteRoute::Here;
        }
        if let Some(control) = self.control() {
            return self.route_by_epochs(control, user);
        }
        let n = self.topology().datacenters.len();
        let me = self.config.me.get();
        let home = self.home_of(user);
        if home == me {
            return WriteRoute::Here;
        }
        // Only the home's first hop matters to this decision. A link not yet up
        // since this proxy started is still being made: the write waits for it.
        let mut reach = Reach::all(n);
        match self.first_hop(DcIdx(home as u8)) {
            Some(hop) => {
                let status = self.peer_status(self.id(hop));
                let starting = !status.ever_up() && self.started.elapsed() < f.start_grace;
                if let (Some(since), false) = (status.down_since_ms(), starting) {
                    reach.lose(home, since);
                }
            }
            None => reach.lose(home, 0),
        }
        let route = route_to(home, me, &reach, wall_ms());
        if let (WriteRoute::HomeUnreachable { .. }, Some(hop)) =
            (route, self.first_hop(DcIdx(home as u8)))
        {
            let status = self.peer_status(self.id(hop));
            status.home_unreachable.fetch_add(1, Ordering::Relaxed);
        }
        route
    }

    /// What forwarding counts.
    pub fn forward_stats(&self) -> &ForwardStats {
        &self.forwarding.stats
    }

    /// Requests remembered for at-most-once execution, and those forgotten early
    /// because the memory was full.
    pub fn forward_window(&self) -> (usize, u64) {
        let w = &self.forwarding.window;
        (w.len(), w.evicted_early.load(Ordering::Relaxed))
    }

    /// How long a write waits for this datacenter to have applied its session's token.
    pub fn token_wait(&self) -> Duration {
        self.forwarding.token_wait
    }

    /// The first datacenter on the path from here to `home`.
    pub(super) fn first_hop(&self, home: DcIdx) -> Option<DcIdx> {
        self.forwarding
            .paths
            .get(home.get())?
            .as_ref()
            .and_then(|p| p.get(1).copied())
    }

    /// A new request for `home` of `commands`, for a session that has seen `token`,
    /// whose replies are encoded for `protocol`.
    pub fn request(
        &self,
        home: usize,
        protocol: u8,
        token: &VersionVector,
        commands: Vec<Vec<Bytes>>,
        session: Option<meridian_policies::SessionMark>,
    ) -> ForwardRequest {
        let f = &self.forwarding;
        ForwardRequest {
            id: RequestId {
                from: self.dc().to_owned(),
                incarnation: f.incarnation,
                n: f.next_id.fetch_add(1, Ordering::Relaxed),
            },
            home: self.id(DcIdx(home as u8)).to_owned(),
            protocol,
            token: Bytes::from(token.to_bytes()),
            commands,
            session: session.map(|m| (m.id, m.epoch)),
        }
    }

    /// `request` again as a new request (its own id) in its session's epoch `epoch`:
    /// for writes a home refused because a later connection of the session wrote
    /// there, while this client still waits for them.
    pub fn in_epoch(&self, request: &ForwardRequest, epoch: u64) -> ForwardRequest {
        let f = &self.forwarding;
        let mut again = request.clone();
        again.id.n = f.next_id.fetch_add(1, Ordering::Relaxed);
        again.session = request.session.map(|(id, _)| (id, epoch));
        again
    }

    /// Sends `request` toward its home and waits for the reply, sending it again
    /// after a dropped link, for up to the forwarding deadline.
    pub async fn forward(&self, request: &ForwardRequest) -> Result<ForwardReply, ForwardError> {
        let stats = &self.forwarding.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.forward_with_resends(request).await;
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        match &result {
            Ok(_) => stats.latency.record(started.elapsed()),
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, id = request.id.n, "a forwarded request failed");
            }
        }
        result
    }

    async fn forward_with_resends(
        &self,
        request: &ForwardRequest,
    ) -> Result<ForwardReply, ForwardError> {
        let me = self.dc().to_owned();
        let home_id = request.home.clone();
        let Some(home) = self.topology().index_of(&home_id) else {
            return Err(ForwardError::NoPath {
                from: me,
                home: home_id,
            });
        };
        let Some(hop) = self.first_hop(home) else {
            return Err(ForwardError::NoPath {
                from: me,
                home: home_id,
            });
        };
        let hop_id = self.id(hop).to_owned();
        let status = self.peer_status(&hop_id);
        status
            .forwarded
            .fetch_add(request.commands.len() as u64, Ordering::Relaxed);
        let mut encoded = Vec::new();
        Frame::Forward(request.clone()).encode(&mut encoded);
        let deadline = tokio::time::Instant::now() + self.forwarding.deadline;
        let mut changes = status.watch_connection();
        // The hop's process the request reached, once it may have.
        let mut reached: Option<u64> = None;
        let mut why = String::from("the link is down");
        loop {
            changes.borrow_and_update();
            if let Some((connection, incarnation)) = status.connection() {
                if hop == home && reached.is_some_and(|r| r != incarnation) {
                    return Err(ForwardError::Unknown {
                        home: home_id,
                        why: "the home restarted while the request was in flight".into(),
                    });
                }
                let exchange = exchange(&connection, &encoded, &hop_id);
                match tokio::time::timeout_at(deadline, exchange).await {
                    Ok(Ok(reply)) => return Ok(reply),
                    Ok(Err(failure)) => {
                        if failure.sent {
                            reached = Some(incarnation);
                        }
                        why = failure.why;
                        if connection.close_reason().is_none() && failure.sent {
                            // The link is fine and the peer broke the exchange off.
                            return Err(ForwardError::Unknown { home: home_id, why });
                        }
                    }
                    Err(_) => {
                        return Err(ForwardError::Unknown {
                            home: home_id,
                            why: format!(
                                "no reply within {} ms",
                                self.forwarding.deadline.as_millis()
                            ),
                        });
                    }
                }
            }
            // Wait a while for the link to come back (or be replaced), then send
            // again; a home that stays out of reach is not waited for long.
            // A request that may have run waits longer: sent again on the new link,
            // it gets its real reply instead of an unknown outcome.
            let wait = match reached {
                Some(_) => self.forwarding.relink_wait * 2,
                None => self.forwarding.relink_wait,
            };
            let back_by = match status.ever_up() {
                true => deadline.min(tokio::time::Instant::now() + wait),
                // Not linked yet since this proxy started: the link is being made.
                false => deadline,
            };
            // The others agreeing that the home is out also ends the wait: its
            // users' writes go elsewhere now, and this one's outcome stays unknown.
            let taken_over = self.taken_over(home.get());
            let changed = tokio::select! {
                changed = tokio::time::timeout_at(back_by, changes.changed()) => changed.is_ok_and(|r| r.is_ok()),
                () = taken_over => {
                    why = format!("{home_id} was taken out of service while the write was in flight ({why})");
                    false
                }
            };
            if !changed {
                return Err(match reached {
                    Some(_) => ForwardError::Unknown { home: home_id, why },
                    None => ForwardError::Unreachable {
                        from: me,
                        home: home_id,
                        why,
                    },
                });
            }
        }
    }
}

/// Why one exchange failed, and whether the request may have reached the peer.
struct Failure {
    sent: bool,
    why: String,
}

/// Sends one encoded request on a stream of its own and reads the reply.
async fn exchange(
    connection: &quinn::Connection,
    encoded: &[u8],
    peer: &str,
) -> Result<ForwardReply, Failure> {
    let fail = |sent: bool| {
        move |e: &dyn std::fmt::Display| Failure {
            sent,
            why: e.to_string(),
        }
    };
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| fail(false)(&e))?;
    send.write_all(encoded).await.map_err(|e| fail(true)(&e))?;
    let _ = send.finish();
    match frame::read(&mut recv, peer).await {
        Ok(Some(Frame::ForwardReply(reply))) => Ok(reply),
        Ok(Some(other)) => Err(fail(true)(&format!(
            "{peer} answered a forward with a {} frame",
            other.name()
        ))),
        Ok(None) => Err(fail(true)(&format!(
            "{peer} closed the stream without a reply"
        ))),
        Err(e) => Err(fail(true)(&e)),
    }
}
