//! Passing a change on as soon as it arrives. A datacenter that carries changes
//! between others (a star's hub, a ring's middle) ships them from its log, so
//! each waited, at every hop, for the receiver to apply it, the writer to log it
//! and the shipper to wake. The relay sends a datagram copy of each new change to
//! its next hops the moment it arrives, with this datacenter added to its path as
//! its apply will add it. Best effort, like the shipper's echoes (rate-limited,
//! lost copies are not resent): the stream from the log still carries every
//! change, in order, and the next hop applies whichever copy comes first once its
//! dependencies are met.

use std::sync::Arc;

use bytes::Bytes;
use meridian_topology::{DcIdx, DcSet};

use super::Replication;
use super::shipper::{Bucket, pack};
use crate::change::Change;
use crate::link::frame;

/// Bytes per second of one incoming link's relayed copies, over all its next
/// hops, and the largest burst: as much as the shipper echoes to one peer.
const RELAY_RATE: f64 = 2.0e6;
const RELAY_BURST: f64 = 128.0 * 1024.0;

/// The relayed copies of one receiver's changes, gathered until the receiver
/// applies what it has (then they go, one send per datagram).
pub(super) struct Relay {
    repl: Arc<Replication>,
    /// Per next hop: change frames to send, and where each ends.
    out: Vec<(DcIdx, Vec<u8>, Vec<usize>)>,
    /// Bytes of frames in `out`.
    queued: usize,
    budget: Bucket,
}

impl Relay {
    pub(super) fn new(repl: Arc<Replication>) -> Relay {
        Relay {
            repl,
            out: Vec::new(),
            queued: 0,
            budget: Bucket::new(RELAY_RATE, RELAY_BURST),
        }
    }

    /// Queues a copy of `change`, just arrived, for each datacenter it goes to
    /// next from here (none: it ends here).
    pub(super) fn add(&mut self, change: &Change) {
        let hops = next_hops(&self.repl, change);
        // Past what the rate limit lets go now (a burst, a catch-up), copies are
        // not worth making: the stream carries those changes in bulk.
        if hops.is_empty() || self.queued >= self.budget.available() {
            return;
        }
        let mut relayed = change.clone();
        relayed.path.push(self.repl.dc().to_owned());
        let mut bytes = Vec::new();
        relayed.encode(&mut bytes);
        for hop in hops.iter() {
            let at = match self.out.iter().position(|(dc, _, _)| *dc == hop) {
                Some(at) => at,
                None => {
                    self.out.push((hop, Vec::new(), Vec::new()));
                    self.out.len() - 1
                }
            };
            let (_, frames, ends) = &mut self.out[at];
            let before = frames.len();
            frame::push_change(frames, &bytes);
            ends.push(frames.len());
            self.queued += frames.len() - before;
        }
    }

    /// Sends the queued copies, as many whole frames to a datagram as the path to
    /// each hop carries, while the rate limit allows; a hop not linked now goes
    /// without (its stream brings the changes).
    pub(super) fn flush(&mut self) {
        self.queued = 0;
        for (hop, frames, ends) in self.out.drain(..) {
            let status = self.repl.peer_status(self.repl.id(hop));
            let Some((connection, _)) = status.connection() else {
                continue;
            };
            let Some(max) = connection.max_datagram_size() else {
                continue;
            };
            let mut sent = 0;
            for datagram in pack(&frames, &ends, max) {
                if !self.budget.take(datagram.len()) {
                    break;
                }
                if connection
                    .send_datagram(Bytes::copy_from_slice(datagram))
                    .is_ok()
                {
                    sent += 1;
                }
            }
            super::PeerStatus::add(&status.relayed, sent);
        }
    }
}

/// Where `change`, arriving here, goes next: the hops the route from here gives
/// for the path it has passed, this datacenter included.
fn next_hops(repl: &Replication, change: &Change) -> DcSet {
    let topology = repl.topology();
    let me = repl.config.me;
    let Some(origin) = topology.index_of(&change.origin) else {
        return DcSet::EMPTY;
    };
    let path = (change.path.iter())
        .filter_map(|dc| topology.index_of(dc))
        .fold(DcSet::one(me), DcSet::with);
    topology.router.next_hops(me, origin, path, repl.live())
}
