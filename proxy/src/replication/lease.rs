//! The home lease: under `next-in-line`, a datacenter writes as a home (its own
//! users', or those of a home that is out) only while a majority of datacenters,
//! itself included, has heard from it within the lease.
//!
//! Every linked pair exchanges beats (datagrams) several times per lease; each
//! carries the sender's clock and echoes the latest clock it had from the other
//! side. An echo of this datacenter's time `t` proves the peer heard from it at
//! `t` or later, on this datacenter's own clock: no synchronised clocks, and a
//! one-way cut (this side hears the peer, the peer does not hear this side) ends
//! the lease too.
//!
//! Beats also carry the home epoch the sender has applied; a peer that knows a
//! newer one does not count toward the lease. A home coming back from a cut has
//! its lease back as soon as beats flow, before the agreement's log reaches it:
//! without this it would write for users the others gave to the next in line.
//!
//! Why it fences: a peer reports a datacenter unreachable only after hearing
//! nothing from it for the peer timeout, twice the lease (clock rates may differ
//! by up to that factor). The echoes a reporting peer gave the old home are of
//! beats it received before that silence, so they stopped counting for the old
//! home's lease before the report was made. A takeover needs reports from a
//! majority; the old home's lease needs echoes from a majority less itself, all
//! from linked peers; so at least one of those is a reporter, and the old home
//! has lost its lease before the agreement can take it out.

use std::sync::Arc;
use std::time::Duration;

use meridian_topology::DcIdx;

use crate::link::frame::Frame;
use crate::replication::Replication;

/// How many beats a lease spans.
const BEATS_PER_LEASE: u32 = 5;

impl Replication {
    /// This proxy's clock for beats: milliseconds since replication started, from 1.
    fn beat_clock(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// How long a peer's echo keeps this datacenter's lease: half the peer timeout.
    pub fn lease_period(&self) -> Duration {
        self.topology().replication.peer_timeout / 2
    }

    /// Sends beats to `peer` on `connection` until it closes (only under
    /// `next-in-line`, where the home agreement runs).
    pub(super) async fn beats(self: Arc<Self>, peer: DcIdx, connection: quinn::Connection) {
        if self.on_home_down() != meridian_topology::OnHomeDown::NextInLine {
            return std::future::pending().await;
        }
        let status = self.peer_status(self.id(peer));
        let every = (self.lease_period() / BEATS_PER_LEASE).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut out = Vec::with_capacity(21);
            Frame::Beat {
                sent: self.beat_clock(),
                echo: status.beat_seen(),
                epoch: self.agreed_epoch(),
            }
            .encode(&mut out);
            if connection.send_datagram(out.into()).is_err() && connection.close_reason().is_some()
            {
                return;
            }
        }
    }

    /// [`Replication::lease`], counting a refusal as a fenced write: what the
    /// writer asks before it runs local writes (see `Engine::set_write_fence`).
    pub fn fence_write(&self) -> Result<(), String> {
        self.lease().inspect_err(|_| {
            (self.failover_stats().fenced).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
    }

    /// The home epoch this datacenter has applied (0 without the agreement).
    fn agreed_epoch(&self) -> u64 {
        self.control().map_or(0, |c| c.epochs().borrow().epoch())
    }

    /// Whether this datacenter may write as a home now: a majority, itself
    /// included, has heard from it within the lease, and none of those knows a
    /// newer home epoch than this datacenter has applied (one coming back from a
    /// cut may have been taken out meanwhile: it learns that before it writes).
    /// The error says how many count.
    pub fn lease(&self) -> Result<(), String> {
        let n = self.topology().datacenters.len();
        let majority = n / 2 + 1;
        let now = self.beat_clock();
        let lease = self.lease_period().as_millis() as u64;
        let me = self.config.me.get();
        let epoch = self.agreed_epoch();
        let heard = (0..n)
            .filter(|&dc| dc != me)
            .filter(|&dc| {
                let status = self.peer_status(self.dc_id(dc));
                let echoed = status.echoed();
                echoed > 0 && now.saturating_sub(echoed) < lease && status.epoch() <= epoch
            })
            .count();
        match heard + 1 >= majority {
            true => Ok(()),
            false => Err(format!(
                "{} has heard from {heard} of the other {} datacenters within its home lease ({lease} ms) with no newer home epoch than its own ({epoch}), and writes as a home only while a majority ({majority} of {n}, itself included) has",
                self.dc(),
                n - 1
            )),
        }
    }
}
