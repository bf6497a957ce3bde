//! Where a user's command runs: the routing decision of the write path.
//!
//! A write of user `u` that arrives at datacenter `me` runs at `u`'s home: here,
//! when `me` is the home; otherwise it is forwarded there, or, when the home cannot
//! be reached from `me`, refused with the home named and how long it has been out
//! of reach (taking over for an unreachable home is failover's business, not this
//! decision's). Reads are served where they arrive. The decision depends only on
//! the homes (pins and rendezvous weights), the user, and what `me` can reach, so
//! every datacenter that sees the same view agrees on which datacenter executes a
//! user's writes.

use crate::rendezvous::Rendezvous;

/// What a datacenter can reach now: a set of datacenter indices (this one
/// included), with when each unreachable one was last reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    reachable: u64,
    lost_at_ms: Vec<Option<u64>>,
}

impl Reach {
    /// Every one of `n` datacenters reachable.
    pub fn all(n: usize) -> Reach {
        Reach {
            reachable: if n >= 64 { u64::MAX } else { (1u64 << n) - 1 },
            lost_at_ms: vec![None; n],
        }
    }

    /// Marks datacenter `dc` unreachable since `since_ms` (wall time).
    pub fn lose(&mut self, dc: usize, since_ms: u64) {
        if dc < 64 {
            self.reachable &= !(1u64 << dc);
        }
        if let Some(slot) = self.lost_at_ms.get_mut(dc) {
            slot.get_or_insert(since_ms);
        }
    }

    /// Marks datacenter `dc` reachable again.
    pub fn regain(&mut self, dc: usize) {
        if dc < 64 {
            self.reachable |= 1u64 << dc;
        }
        if let Some(slot) = self.lost_at_ms.get_mut(dc) {
            *slot = None;
        }
    }

    /// Whether `dc` can be reached.
    pub fn reaches(&self, dc: usize) -> bool {
        dc < 64 && self.reachable & (1u64 << dc) != 0
    }

    /// When `dc` was last reachable, if it is not now.
    pub fn lost_at_ms(&self, dc: usize) -> Option<u64> {
        self.lost_at_ms.get(dc).copied().flatten()
    }
}

/// Where a user's write runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRoute {
    /// This datacenter is the user's home: execute it here.
    Here,
    /// Forward it to the home, datacenter `home`.
    Forward {
        /// The home's index.
        home: usize,
    },
    /// The home cannot be reached from here: refuse at once, naming it.
    HomeUnreachable {
        /// The home's index.
        home: usize,
        /// How long it has been out of reach, in milliseconds (0 when unknown).
        for_ms: u64,
    },
    /// Nobody may write the user's data now (failover under way): wait or refuse.
    Unavailable {
        /// The datacenter concerned: the returning home, the home being taken
        /// over, or this one when it is fenced.
        home: usize,
        /// Why.
        why: Unavailable,
    },
}

/// Why a user's writes cannot run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// This datacenter writes for the user but has not heard from a majority
    /// within its lease: it is fenced until it does.
    Fenced,
    /// This datacenter takes over for a home that is out, once it has applied the
    /// home's changes the others hold and the old home's lease has run out.
    CatchingUp,
    /// The user's writer is returning to service: writes wait until it resumes.
    Handover,
    /// No datacenter of the user's order is in service.
    NoWriter,
}

impl WriteRoute {
    /// The datacenter that executes the write, when it runs anywhere.
    pub fn executor(self, me: usize) -> Option<usize> {
        match self {
            WriteRoute::Here => Some(me),
            WriteRoute::Forward { home } => Some(home),
            WriteRoute::HomeUnreachable { .. } | WriteRoute::Unavailable { .. } => None,
        }
    }
}

/// Where a write of `user` arriving at datacenter `me` runs, given what `me` can
/// reach at `now_ms`.
pub fn route_write(
    homes: &Rendezvous,
    me: usize,
    user: &str,
    reach: &Reach,
    now_ms: u64,
) -> WriteRoute {
    route_to(homes.home_of(user), me, reach, now_ms)
}

/// Where a write arriving at datacenter `me` runs when its user's home is `home`
/// (wherever that came from: the rendezvous order, or a record of its move).
pub fn route_to(home: usize, me: usize, reach: &Reach, now_ms: u64) -> WriteRoute {
    if home == me {
        WriteRoute::Here
    } else if reach.reaches(home) {
        WriteRoute::Forward { home }
    } else {
        let for_ms = reach
            .lost_at_ms(home)
            .map_or(0, |at| now_ms.saturating_sub(at));
        WriteRoute::HomeUnreachable { home, for_ms }
    }
}

#[cfg(test)]
mod tests;
