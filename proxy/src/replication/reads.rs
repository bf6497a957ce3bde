//! The read side of the session guarantees: where a session's reads are served,
//! and what a read tells the session it has seen.
//!
//! A read is served here once this datacenter has applied the session's token
//! (everything the session wrote or read). Until then it waits, woken by apply, up
//! to `[session] read_wait_ms`; then `on_stale` decides: forward it to a datacenter
//! known to cover the token (the nearest),
//! keep waiting up to [`HARD_BOUND`], or refuse it naming what is missing. When
//! gossip has not yet said who has the token, the origin of a missing change is
//! asked: it made the change, so it has it. The decision is `policies::ReadRule`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_policies::{OnStale, ReadDecision, ReadRule, VersionVector};
use meridian_topology::{DcIdx, Writes};

use super::Replication;

/// The longest a read waits in all under `on_stale = "wait"`.
pub const HARD_BOUND: Duration = Duration::from_secs(10);

/// Where a session's read runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlace {
    /// Here: this datacenter has applied the session's token.
    Here,
    /// At datacenter number `dc`, which has.
    At(usize),
    /// Nowhere: the reply is this error.
    Refused(String),
}

/// What the read path counts.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Reads served here at once.
    pub local: AtomicU64,
    /// Reads served here after waiting for this datacenter to catch up.
    pub waited: AtomicU64,
    /// Reads forwarded to a datacenter that had caught up.
    pub forwarded: AtomicU64,
    /// Reads refused as stale.
    pub refused: AtomicU64,
    /// Time reads waited for this datacenter to catch up.
    pub(crate) waits: crate::metrics::Latency,
    /// Entries of the session tokens reads checked, summed (with `tokens`, the mean).
    pub token_entries: AtomicU64,
    /// Session tokens reads checked.
    pub tokens: AtomicU64,
}

impl Replication {
    /// The read rule of this cluster.
    fn read_rule(&self) -> ReadRule {
        let session = &self.topology().session;
        ReadRule {
            wait_ms: session.read_wait.as_millis() as u64,
            on_stale: match session.on_stale {
                meridian_topology::OnStale::Forward => OnStale::Forward,
                meridian_topology::OnStale::Wait => OnStale::Wait,
                meridian_topology::OnStale::Error => OnStale::Error,
            },
            hard_bound_ms: HARD_BOUND.as_millis() as u64,
        }
    }

    /// Where reads run for a session that has seen `token`: here, once this
    /// datacenter has caught up (waiting for it by the rule), elsewhere, or nowhere.
    pub async fn place_reads(&self, token: &VersionVector) -> ReadPlace {
        let stats = &self.read_stats;
        stats
            .token_entries
            .fetch_add(token.iter().count() as u64, Ordering::Relaxed);
        stats.tokens.fetch_add(1, Ordering::Relaxed);
        if self.engine.covers(token) {
            stats.local.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%token, "a read is served here");
            return ReadPlace::Here;
        }
        let rule = self.read_rule();
        let started = Instant::now();
        let mut applied = self.engine.watch_applied();
        loop {
            let waited = started.elapsed();
            let covering = self.covering(token);
            let home = self.missing_origin(token);
            let decision = rule.decide(
                &applied.borrow_and_update(),
                token,
                waited.as_millis() as u64,
                &covering,
                home,
            );
            match decision {
                ReadDecision::Serve => {
                    let counter = match waited.is_zero() {
                        true => &stats.local,
                        false => {
                            stats.waits.record(waited);
                            &stats.waited
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return ReadPlace::Here;
                }
                ReadDecision::Wait { for_ms } => {
                    let more = Duration::from_millis(for_ms.max(1));
                    let caught = applied.wait_for(|a| a.dominates(token));
                    let _ = tokio::time::timeout(more, caught).await;
                }
                ReadDecision::Forward { to } => {
                    tracing::debug!(to = self.dc_id(to), %token, waited_ms = waited.as_millis() as u64, "a read goes to another datacenter");
                    stats.waits.record(waited);
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    return ReadPlace::At(to);
                }
                ReadDecision::Refuse { missing } => {
                    stats.waits.record(waited);
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    return ReadPlace::Refused(self.stale_error(token, missing, waited));
                }
            }
        }
    }

    /// The datacenters other than this one known (by gossip) to have applied
    /// `token` and reachable now, nearest first.
    fn covering(&self, token: &VersionVector) -> Vec<usize> {
        let me = self.config.me.get();
        let mut found: Vec<(Duration, usize)> = (0..self.topology().datacenters.len())
            .filter(|&dc| dc != me)
            .filter(|&dc| self.known(self.dc_id(dc)).dominates(token))
            .filter_map(|dc| {
                let hop = self.first_hop(DcIdx(dc as u8))?;
                let status = self.peer_status(self.id(hop));
                let (rtt, _) = status.path()?;
                Some((rtt, dc))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, dc)| dc).collect()
    }

    /// A datacenter whose own changes `token` names and this one lacks, reachable
    /// now: it has applied them (it made them), whatever gossip has said yet.
    fn missing_origin(&self, token: &VersionVector) -> Option<usize> {
        let me = self.config.me.get();
        token
            .iter()
            .filter(|&(origin, seq)| self.engine.applied_of(origin) < seq)
            .filter_map(|(origin, _)| self.topology().index_of(origin))
            .map(DcIdx::get)
            .filter(|&dc| dc != me)
            .find(|&dc| {
                self.first_hop(DcIdx(dc as u8))
                    .is_some_and(|hop| self.peer_status(self.id(hop)).connected())
            })
    }

    fn stale_error(&self, token: &VersionVector, missing: u64, waited: Duration) -> String {
        let have = self.engine.applied();
        let behind: Vec<String> = token
            .iter()
            .filter(|(dc, seq)| have.get(dc) < *seq)
            .map(|(dc, seq)| format!("{dc} up to #{seq} (have #{})", have.get(dc)))
            .collect();
        format!(
            "TRYAGAIN {} has not yet applied what this session has seen, {missing} changes behind: {} (waited {} ms)",
            self.dc(),
            behind.join(", "),
            waited.as_millis()
        )
    }

    /// What a session has seen by reading `users`' keys here: each user's newest
    /// change applied here, per origin (marked before it became visible, so at
    /// least what the reads returned, and nothing of other users). For a user
    /// without a mark, its home's position in the applied vector, read after the
    /// reads (every change of a user runs at its home). With writes where they
    /// arrive, any origin may have written a key, and a keyless read may see
    /// every user's keys: then the whole applied vector.
    pub fn observed(&self, users: &[Bytes]) -> VersionVector {
        if self.forwarding.writes() == Writes::Local || users.iter().any(|u| u.is_empty()) {
            return self.engine.applied();
        }
        let mut seen = VersionVector::new();
        for user in users {
            match self.engine.user_mark(user) {
                Some(mark) => {
                    for (origin, seq) in mark {
                        seen.advance(&origin, seq);
                    }
                }
                None => {
                    let home = self.dc_id(self.home_of(user));
                    seen.advance(home, self.engine.applied_of(home));
                }
            }
        }
        seen
    }

    /// What the read path counts.
    pub fn read_stats(&self) -> &ReadStats {
        &self.read_stats
    }

    /// What `user`'s sessions have seen here, in user scope (`None` in connection
    /// scope, or for a user not seen lately).
    pub fn user_token(&self, user: &[u8]) -> Option<VersionVector> {
        self.user_tokens.as_ref()?.get(user)
    }

    /// Records, in user scope, that `user`'s session has now seen `seen`.
    pub fn remember(&self, user: &Bytes, seen: &VersionVector) {
        if let Some(cache) = &self.user_tokens {
            cache.entry(user.clone()).and_upsert_with(|known| {
                let mut token = known.map(|e| e.into_value()).unwrap_or_default();
                token.merge(seen);
                token
            });
        }
    }
}

/// The per-user tokens of user scope: bounded, each forgotten after `ttl` unused.
pub(super) fn user_tokens(
    session: &meridian_topology::SessionSettings,
) -> Option<moka::sync::Cache<Bytes, VersionVector>> {
    (session.scope == meridian_topology::SessionScope::User).then(|| {
        moka::sync::Cache::builder()
            .max_capacity(session.max_users)
            .time_to_idle(session.ttl)
            .build()
    })
}
