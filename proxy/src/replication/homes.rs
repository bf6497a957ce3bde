//! Homes that follow their users, and moves by hand (`MERIDIAN HOME`).
//!
//! A user's home counts where each of the user's writes it executes comes from
//! (the datacenter of the client). Under `[homes] follow`, once
//! [`meridian_policies::decide_move`] says the traffic has moved, the home moves
//! the user there. A move, by the rule or by hand, is a change of the home that
//! writes a placement record (see [`crate::engine::placement`]): its writer takes
//! no write of the user after it, and the new home takes the user's writes once
//! it has applied it, so no two datacenters write the user at once. Writes that
//! reach the old home afterwards, from datacenters that have not applied the move
//! yet, are passed on to the new home with the move's position, so it runs them
//! once it knows it is the home (one extra hop while the move spreads).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use meridian_policies::{FollowRule, Traffic, WriteRoute, decide_move};
use meridian_topology::{DcIdx, Writes};
use tokio::sync::mpsc;

use super::Replication;
use crate::engine::wall_ms;
use crate::resp::Reply;

/// Users whose traffic is counted at once; past it, new users wait for idle
/// ones to leave.
const MAX_TRACKED: usize = 200_000;

/// Moves waiting for the mover.
const MOVE_QUEUE: usize = 1_024;

/// What following counts here.
#[derive(Debug, Default)]
pub struct HomeStats {
    /// Writes executed here, as their user's home, for a client here.
    pub writes_local: AtomicU64,
    /// Writes executed here, as their user's home, for a client elsewhere.
    pub writes_forwarded: AtomicU64,
    /// Users this datacenter moved away (by the rule or by hand).
    pub moves: AtomicU64,
    /// Moves the rule wanted and that could not be made.
    pub moves_failed: AtomicU64,
    /// Writes passed on to a user's new home after it moved from here.
    pub passed_on: AtomicU64,
}

/// Traffic at the homes and the moves the rule asks for.
#[derive(Debug)]
pub(super) struct Following {
    rule: Option<FollowRule>,
    /// `[homes] default = "first-write"`: a user nobody placed is placed where
    /// its first write came from.
    first_write: bool,
    datacenters: usize,
    traffic: Mutex<HashMap<Bytes, Traffic>>,
    /// When idle users last left `traffic` (wall ms).
    pruned_ms: AtomicU64,
    /// Users with a move queued or under way.
    moving: Mutex<HashSet<Bytes>>,
    moves: Mutex<Option<mpsc::Sender<(Bytes, usize)>>>,
    pub(super) stats: HomeStats,
}

impl Following {
    pub(super) fn new(topology: &meridian_topology::Topology) -> Following {
        let rule = topology
            .homes
            .follow
            .filter(|_| topology.homes.writes == Writes::Home)
            .map(|f| FollowRule {
                share: f64::from(f.share_milli) / 1000.0,
                min_writes: f.min_writes,
                window_ms: f.window.as_millis() as u64,
                min_interval_ms: f.min_interval.as_millis() as u64,
            });
        let first_write = topology.homes.default == meridian_topology::DefaultHome::FirstWrite
            && topology.homes.writes == Writes::Home;
        Following {
            rule,
            first_write,
            datacenters: topology.datacenters.len(),
            traffic: Mutex::new(HashMap::new()),
            pruned_ms: AtomicU64::new(0),
            moving: Mutex::new(HashSet::new()),
            moves: Mutex::new(None),
            stats: HomeStats::default(),
        }
    }
}

/// Starts the task that makes the moves the rule asks for.
pub(super) fn spawn_mover(repl: &Arc<Replication>) {
    if repl.following.rule.is_none() && !repl.following.first_write {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<(Bytes, usize)>(MOVE_QUEUE);
    *repl
        .following
        .moves
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(tx);
    let weak = Arc::downgrade(repl);
    repl.engine.workers().spawn("home-mover", None, |worker| async move {
        worker.set(crate::workers::State::Idle);
        while let Some((user, to)) = rx.recv().await {
            let Some(repl) = weak.upgrade() else {
                return;
            };
            worker.set(crate::workers::State::Busy);
            let outcome = match repl.engine.placement(&user) {
                None if repl.following.first_write => repl.place_user(&user, to).await,
                _ => repl.move_user(&user, to, "follow").await,
            };
            let name = String::from_utf8_lossy(&user);
            match outcome {
                Ok(text) => tracing::info!(user = %name, to = repl.dc_id(to), "{text}"),
                Err(why) => {
                    repl.following
                        .stats
                        .moves_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(user = %name, to = repl.dc_id(to), %why, "a home did not follow its user");
                }
            }
            let mut moving = repl.following.moving.lock().unwrap_or_else(|p| p.into_inner());
            moving.remove(&user);
            worker.set(crate::workers::State::Idle);
        }
    });
}

impl Replication {
    /// Counts a write of `user` executed here as its home, sent by a client of
    /// datacenter `from`; under `[homes] follow` it may start a move.
    pub fn note_home_write(&self, user: &Bytes, from: usize) {
        let f = &self.following;
        let me = self.config.me.get();
        let counter = match from == me {
            true => &f.stats.writes_local,
            false => &f.stats.writes_forwarded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if (f.rule.is_none() && !f.first_write)
            || user.is_empty()
            || self
                .forwarding
                .homes
                .is_pinned(&String::from_utf8_lossy(user))
        {
            return;
        }
        if f.first_write && self.engine.placement(user).is_none() {
            // Its first write: place the user where it came from.
            return self.queue_move(user, from);
        }
        let Some(rule) = &f.rule else {
            return;
        };
        let now = wall_ms();
        let target = {
            let mut traffic = f.traffic.lock().unwrap_or_else(|p| p.into_inner());
            if traffic.len() >= MAX_TRACKED && !traffic.contains_key(user) {
                // Idle users leave, looked for at most once a second (a full
                // table of active users is not scanned on every write).
                let pruned = f.pruned_ms.load(Ordering::Relaxed);
                if now.saturating_sub(pruned) >= 1_000 {
                    f.pruned_ms.store(now, Ordering::Relaxed);
                    traffic.retain(|_, t| !t.idle(now));
                }
                if traffic.len() >= MAX_TRACKED {
                    return;
                }
            }
            let entry = traffic
                .entry(user.clone())
                .or_insert_with(|| Traffic::new(rule, f.datacenters));
            entry.record(from, now);
            let last_move = self.engine.placement(user).map(|p| p.at_ms);
            decide_move(rule, entry, me, last_move, now)
        };
        if let Some(to) = target {
            self.queue_move(user, to);
        }
    }

    /// Hands a move of `user` to `to` to the mover, unless one is under way.
    fn queue_move(&self, user: &Bytes, to: usize) {
        let f = &self.following;
        if !f
            .moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.clone())
        {
            return;
        }
        let sent = f
            .moves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.try_send((user.clone(), to)).is_ok());
        if !sent {
            f.moving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(user);
        }
    }

    /// Whether datacenter `to` is this one, or its link from here is up.
    fn reaches(&self, to: usize) -> bool {
        if to == self.config.me.get() {
            return true;
        }
        self.first_hop(DcIdx(to as u8)).is_some_and(|hop| {
            let status = self.peer_status(self.id(hop));
            status.ever_up() && status.down_since_ms().is_none()
        })
    }

    /// Places `user`, whom nobody placed yet, at datacenter `to`, where its
    /// first write came from (`default = "first-write"`): this datacenter, its
    /// rendezvous home, writes the record, so nobody else can place the user.
    async fn place_user(&self, user: &Bytes, to: usize) -> Result<String, String> {
        let name = String::from_utf8_lossy(user).into_owned();
        if self.route(user) != WriteRoute::Here {
            return Err(format!(
                "TRYAGAIN {} does not write user '{name}' now",
                self.dc()
            ));
        }
        let to_id = self.dc_id(to).to_owned();
        if !self.reaches(to) {
            return Err(format!(
                "TRYAGAIN {to_id} cannot be reached from {}: user '{name}' is not placed there yet",
                self.dc()
            ));
        }
        self.write_move(user, &to_id, "first-write").await?;
        if to != self.config.me.get() {
            self.following.stats.moves.fetch_add(1, Ordering::Relaxed);
        }
        Ok(format!(
            "user '{name}' placed at {to_id} by its first write"
        ))
    }

    /// Has the writer record `user`'s move to `to_id`; the change's number, or
    /// the error saying why not.
    async fn write_move(&self, user: &Bytes, to_id: &str, why: &str) -> Result<u64, String> {
        let written = (self
            .engine
            .move_home(user.clone(), to_id.to_owned(), why)
            .await)
            .await
            .map_err(|_| "ERR the move was abandoned by a stopping proxy".to_owned())?;
        match written.reply {
            Reply::Error(e) => Err(e),
            _ => Ok(written.seq),
        }
    }

    /// Moves `user`'s home from here to datacenter `to`: refused for a pinned
    /// user, a datacenter out of service or out of reach, or when this
    /// datacenter does not write the user now. Says what was done.
    pub async fn move_user(&self, user: &Bytes, to: usize, why: &str) -> Result<String, String> {
        let name = String::from_utf8_lossy(user).into_owned();
        let to_id = self.dc_id(to).to_owned();
        if self.forwarding.writes() == Writes::Local {
            return Err(format!(
                "ERR homes do not move with writes = \"local\": every datacenter writes user '{name}'"
            ));
        }
        if self.forwarding.homes.is_pinned(&name) {
            return Err(format!(
                "ERR user '{name}' is pinned to {} in the topology file; pinned users never move",
                self.forwarding.homes.home_id(&name)
            ));
        }
        let home = self.home_of(user);
        if home == to {
            return Ok(format!("user '{name}' already lives at {to_id}"));
        }
        if let Some(control) = self.control()
            && !control.epochs().borrow().in_service(to)
        {
            return Err(format!(
                "TRYAGAIN {to_id} is out of service (home agreement): user '{name}' is not moved there"
            ));
        }
        if !self.reaches(to) {
            return Err(format!(
                "TRYAGAIN {to_id} cannot be reached from {}: user '{name}' is not moved there",
                self.dc()
            ));
        }
        if self.route(user) != WriteRoute::Here {
            return Err(format!(
                "TRYAGAIN {} does not write user '{name}' now; its home is {}",
                self.dc(),
                self.dc_id(home)
            ));
        }
        let seq = self.write_move(user, &to_id, why).await?;
        self.following.stats.moves.fetch_add(1, Ordering::Relaxed);
        (self.following.traffic.lock())
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        Ok(format!(
            "user '{name}' moved from {} to {to_id} (change #{seq})",
            self.dc()
        ))
    }

    /// What following counts here.
    pub fn home_stats(&self) -> &HomeStats {
        &self.following.stats
    }

    /// Whether homes follow their users in this cluster.
    pub fn follows(&self) -> bool {
        self.following.rule.is_some()
    }

    /// `MERIDIAN HOME <user>`: where the user's home is and why, as a flat map.
    pub fn describe_home(&self, user: &[u8]) -> Reply {
        let name = String::from_utf8_lossy(user).into_owned();
        let home = self.dc_id(self.home_of(user)).to_owned();
        let mut fields = vec![
            ("user", Reply::bulk(name.clone())),
            ("home", Reply::bulk(home)),
        ];
        let why = if self.forwarding.homes.is_pinned(&name) {
            "pinned in the topology file".to_owned()
        } else if let Some(p) = self.engine.placement(user) {
            fields.push(("moved_from", Reply::bulk(p.from.to_string())));
            fields.push(("move", Reply::bulk(format!("{}#{}", p.from, p.seq))));
            fields.push(("moved_at_ms", Reply::Integer(p.at_ms as i64)));
            match &*p.why {
                "operator" => "moved by an operator (MERIDIAN HOME)".to_owned(),
                "first-write" => "placed where its first write came from".to_owned(),
                _ => "followed its user's writes".to_owned(),
            }
        } else {
            "rendezvous hashing over the datacenters' weights".to_owned()
        };
        fields.insert(2, ("why", Reply::bulk(why)));
        let writer = match self.route(user) {
            WriteRoute::Here => self.dc().to_owned(),
            WriteRoute::Forward { home } => self.dc_id(home).to_owned(),
            WriteRoute::HomeUnreachable { .. } | WriteRoute::Unavailable { .. } => String::new(),
        };
        fields.push(("writes_run_at", Reply::bulk(writer)));
        Reply::Array(
            fields
                .into_iter()
                .flat_map(|(k, v)| [Reply::bulk(k), v])
                .collect(),
        )
    }
}
