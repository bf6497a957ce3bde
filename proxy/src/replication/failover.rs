//! Failover under `on_home_down = "next-in-line"`: who writes a user's data while
//! its home is out, and the handover back.
//!
//! The agreed [`Epochs`] say who is out, returning or in service; this module
//! turns them into each write's route and drives the handover:
//!
//! - A user's writer is the first datacenter of its rendezvous order that is in
//!   service. Writing as that datacenter needs the home lease ([`super::lease`]).
//!   Taking over for a home that is out needs two more things: this datacenter has
//!   applied the old home's changes up to the agreed catch-up target (the most any
//!   reporting survivor had). The old home's lease has run out by then: a majority
//!   reported it unreachable only after hearing nothing from it for twice the
//!   lease ([`super::lease`]).
//! - When a home that was out comes back, it is returning: every datacenter in
//!   service stops writing for its users and says up to which of its own changes
//!   it wrote (a release); once the returning home has applied all of them, it
//!   resumes. Writes for its users wait meanwhile (bounded).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_policies::{EpochCommand, Epochs, Service, Unavailable, WriteRoute, Writer};
use meridian_topology::DcIdx;
use tokio::sync::watch;

use crate::control::Control;
use crate::replication::Replication;

/// What this datacenter has seen of takeovers and failbacks.
#[derive(Debug, Default)]
pub(super) struct Seen {
    last: Mutex<Option<Epochs>>,
    stats: FailoverStats,
}

/// What failover counts here.
#[derive(Debug, Default)]
pub struct FailoverStats {
    /// Writes refused because this datacenter had no home lease.
    pub fenced: AtomicU64,
    /// Datacenters seen taken out of service.
    pub takeovers: AtomicU64,
    /// Datacenters seen resuming service after an outage.
    pub failbacks: AtomicU64,
}

/// The home agreement as this datacenter sees it.
#[derive(Debug, Clone)]
pub struct AgreementStatus {
    /// The agreed epoch applied here.
    pub epoch: u64,
    /// The agreement's leader (topology index), if known.
    pub leader: Option<usize>,
    /// Each datacenter and its service: "in service", "out" or "returning".
    pub service: Vec<(String, &'static str)>,
}

impl Seen {
    fn update(&self, epochs: &Epochs) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for dc in 0..epochs.len() {
            let before = last.as_ref().and_then(|l| l.service(dc).cloned());
            match (before, epochs.service(dc)) {
                (
                    Some(Service::InService | Service::Returning { .. }),
                    Some(Service::Out { .. }),
                ) => {
                    self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                }
                // Seen from out, when the watch skipped the returning state.
                (
                    Some(Service::Out { .. } | Service::Returning { .. }),
                    Some(Service::InService),
                ) => {
                    self.stats.failbacks.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        *last = Some(epochs.clone());
    }
}

impl Replication {
    /// Where a write of `user` runs, by the agreed epochs.
    pub(super) fn route_by_epochs(&self, control: &Control, user: &[u8]) -> WriteRoute {
        let me = self.config.me.get();
        let ranking = self.ranking(user);
        let epochs = control.epochs();
        let epochs = epochs.borrow();
        match epochs.writer(&ranking) {
            Writer::At(w) if w == me => {
                for &home in ranking.iter().take_while(|&&d| d != me) {
                    if !self.may_take_over(&epochs, home) {
                        return WriteRoute::Unavailable {
                            home,
                            why: Unavailable::CatchingUp,
                        };
                    }
                }
                match self.lease() {
                    Ok(()) => WriteRoute::Here,
                    Err(_) => WriteRoute::Unavailable {
                        home: me,
                        why: Unavailable::Fenced,
                    },
                }
            }
            Writer::At(w) => self.reach_route(w),
            Writer::Handover(home) => WriteRoute::Unavailable {
                home,
                why: Unavailable::Handover,
            },
            Writer::Nobody => WriteRoute::Unavailable {
                home: ranking.first().copied().unwrap_or(0),
                why: Unavailable::NoWriter,
            },
        }
    }

    /// Whether this datacenter may write for the users of `home`, which is out: it
    /// has applied `home`'s changes up to the catch-up target.
    fn may_take_over(&self, epochs: &Epochs, home: usize) -> bool {
        let Some(Service::Out { catch_up, .. }) = epochs.service(home) else {
            return false;
        };
        self.engine.applied_of(self.dc_id(home)) >= *catch_up
    }

    /// Forward to `writer`, unless its first hop is down.
    fn reach_route(&self, writer: usize) -> WriteRoute {
        match self.first_hop(DcIdx(writer as u8)) {
            Some(hop) => match self.peer_status(self.id(hop)).down_since_ms() {
                Some(since) => WriteRoute::HomeUnreachable {
                    home: writer,
                    for_ms: crate::engine::wall_ms().saturating_sub(since),
                },
                None => WriteRoute::Forward { home: writer },
            },
            None => WriteRoute::HomeUnreachable {
                home: writer,
                for_ms: 0,
            },
        }
    }

    /// [`Replication::route`], waiting (up to the peer timeout) while failover is
    /// under way: a takeover catching up, a handover back, a lease being renewed.
    pub async fn route_waiting(&self, user: &[u8]) -> WriteRoute {
        let deadline = tokio::time::Instant::now() + self.topology().replication.peer_timeout;
        let mut epochs = self.control().map(|c| c.epochs());
        loop {
            let route = self.route(user);
            let WriteRoute::Unavailable { why, .. } = route else {
                return route;
            };
            if why == Unavailable::NoWriter || tokio::time::Instant::now() >= deadline {
                return route;
            }
            let tick = tokio::time::sleep(Duration::from_millis(20));
            match epochs.as_mut() {
                Some(rx) => tokio::select! {
                    _ = rx.changed() => {}
                    _ = tick => {}
                },
                None => tick.await,
            }
        }
    }

    /// The error for a write that cannot run now.
    pub fn unavailable_message(&self, user: &[u8], home: usize, why: Unavailable) -> String {
        let user = String::from_utf8_lossy(user);
        let home = self.dc_id(home);
        if why == Unavailable::Fenced {
            self.seen.stats.fenced.fetch_add(1, Ordering::Relaxed);
        }
        match why {
            Unavailable::Fenced => format!(
                "TRYAGAIN {} writes for user '{user}' but is fenced: {}",
                self.dc(),
                self.lease().err().unwrap_or_default()
            ),
            Unavailable::CatchingUp => format!(
                "TRYAGAIN {home}, the home of user '{user}', is out; {} takes over once it has applied {home}'s changes the others hold",
                self.dc()
            ),
            Unavailable::Handover => format!(
                "TRYAGAIN {home} is taking user '{user}' back after an outage and has not yet applied what was written meanwhile"
            ),
            Unavailable::NoWriter => format!(
                "TRYAGAIN no datacenter of user '{user}''s order is in service (on_home_down = \"next-in-line\")"
            ),
        }
    }

    /// What failover counts here.
    pub fn failover_stats(&self) -> &FailoverStats {
        &self.seen.stats
    }

    /// The agreed epoch, the agreement's leader, and each datacenter's service, as
    /// applied here (`None` without the home agreement).
    pub fn agreement_status(&self) -> Option<AgreementStatus> {
        let control = self.control()?;
        let epochs = control.epochs();
        let epochs = epochs.borrow();
        let service = (0..epochs.len())
            .map(|dc| {
                let state = match epochs.service(dc) {
                    Some(Service::InService) => "in service",
                    Some(Service::Out { .. }) => "out",
                    Some(Service::Returning { .. }) => "returning",
                    None => "unknown",
                };
                (self.dc_id(dc).to_owned(), state)
            })
            .collect();
        Some(AgreementStatus {
            epoch: epochs.epoch(),
            leader: control.leader(),
            service,
        })
    }

    /// Follows the agreed epochs: notes takeovers, releases the users of a
    /// returning home, and resumes this datacenter when it returns.
    pub(super) async fn follow_epochs(
        self: Arc<Self>,
        control: Arc<Control>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut epochs = control.epochs();
        let mut applied = self.engine.watch_applied();
        loop {
            let now = epochs.borrow_and_update().clone();
            self.seen.update(&now);
            if let Some(mut command) = self.handover_step(&now) {
                // A release names this datacenter's last change once every write
                // it had taken is logged: an empty apply queued behind them.
                if let EpochCommand::Released { seq, .. } = &mut command {
                    let _ = self.engine.apply(Vec::new()).await;
                    *seq = self.engine.applied_of(self.dc());
                }
                if let Err(e) = control.propose(command.clone()).await {
                    tracing::debug!(error = %e, ?command, "handover step not agreed yet");
                }
            }
            tokio::select! {
                _ = epochs.changed() => {}
                _ = applied.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// The next handover command this datacenter should propose, if any.
    fn handover_step(&self, epochs: &Epochs) -> Option<EpochCommand> {
        let me = self.config.me.get();
        for dc in 0..epochs.len() {
            let Some(Service::Returning { released, .. }) = epochs.service(dc) else {
                continue;
            };
            if dc != me && epochs.in_service(me) && !released.contains_key(&me) {
                // Writes for its users stopped when this datacenter saw it
                // returning (they route to the handover now); the caller fills in
                // the last change once the writes already taken are logged.
                return Some(EpochCommand::Released {
                    from: me,
                    returning: dc,
                    seq: 0,
                });
            }
            if dc == me {
                let everyone = (0..epochs.len())
                    .filter(|&d| d != me && epochs.in_service(d))
                    .all(|d| {
                        released
                            .get(&d)
                            .is_some_and(|&seq| self.engine.applied_of(self.dc_id(d)) >= seq)
                    });
                if everyone {
                    return Some(EpochCommand::Resume { dc: me });
                }
            }
        }
        None
    }
}
