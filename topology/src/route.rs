//! Routing of changes over the replication topology.
//!
//! A change starts at its origin with the path `{origin}`. Each datacenter that
//! accepts it adds itself to the path and asks [`Router::next_hops`] whom to send it
//! to, so the path is the set of datacenters the change has passed (the
//! loop-prevention tags). A datacenter never
//! accepts a change whose path already holds it ([`accepts`]).
//!
//! - all-to-all: the origin sends to every live peer; nobody relays.
//! - ring: each datacenter relays to its live successor in ring order, unless that
//!   successor is already in the path; down datacenters are skipped.
//! - star: leaves send to the hub; the hub relays to every live leaf not in the path.
//!   When the hub is down, a leaf origin sends to every live leaf directly
//!   ([`StarFallback::Direct`]) or to nobody ([`StarFallback::None`]).

use std::fmt;

/// The most datacenters a cluster may have; sets of them are one `u64`.
pub const MAX_DATACENTERS: usize = 64;

/// A datacenter's position in the topology file's `[[datacenter]]` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DcIdx(pub u8);

impl DcIdx {
    /// The position as a `usize`, for indexing.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// A set of datacenters (a path, or the datacenters believed live).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DcSet(u64);

impl DcSet {
    /// The empty set.
    pub const EMPTY: DcSet = DcSet(0);

    /// Every datacenter of a cluster of `n`.
    pub fn all(n: usize) -> DcSet {
        debug_assert!(n <= MAX_DATACENTERS);
        DcSet(if n >= 64 { u64::MAX } else { (1u64 << n) - 1 })
    }

    /// The set holding just `dc`.
    pub fn one(dc: DcIdx) -> DcSet {
        DcSet(1 << dc.0)
    }

    /// Rebuilds a set from [`DcSet::bits`].
    pub fn from_bits(bits: u64) -> DcSet {
        DcSet(bits)
    }

    /// Bit `i` set means datacenter `i` is in the set.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Whether `dc` is in the set.
    pub fn contains(self, dc: DcIdx) -> bool {
        self.0 & (1 << dc.0) != 0
    }

    /// The set with `dc` added.
    #[must_use]
    pub fn with(self, dc: DcIdx) -> DcSet {
        DcSet(self.0 | (1 << dc.0))
    }

    /// The set with `dc` removed.
    #[must_use]
    pub fn without(self, dc: DcIdx) -> DcSet {
        DcSet(self.0 & !(1 << dc.0))
    }

    /// Members of both sets.
    #[must_use]
    pub fn intersect(self, other: DcSet) -> DcSet {
        DcSet(self.0 & other.0)
    }

    /// Members of `self` that are not in `other`.
    #[must_use]
    pub fn minus(self, other: DcSet) -> DcSet {
        DcSet(self.0 & !other.0)
    }

    /// Number of members.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set has no members.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in index order.
    pub fn iter(self) -> impl Iterator<Item = DcIdx> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let i = bits.trailing_zeros();
                bits &= bits - 1;
                DcIdx(i as u8)
            })
        })
    }
}

impl fmt::Debug for DcSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|d| d.0)).finish()
    }
}

/// What a leaf of a star does while the hub is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StarFallback {
    /// Send each change to every live leaf directly (default).
    Direct,
    /// Hold changes until the hub is back; they ship from the log then.
    None,
}

/// The shape of replication and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Router {
    /// Every datacenter sends its own changes to every other.
    AllToAll {
        /// Number of datacenters.
        n: usize,
    },
    /// Changes travel around a ring.
    Ring {
        /// The ring order: every datacenter exactly once.
        order: Vec<DcIdx>,
        /// `position[i]`: where datacenter `i` stands in `order`.
        position: Vec<usize>,
    },
    /// Changes pass through a hub.
    Star {
        /// Number of datacenters.
        n: usize,
        /// The hub.
        hub: DcIdx,
        /// What leaves do while the hub is down.
        fallback: StarFallback,
    },
}

/// Whether `me` may accept a change that has passed `path`: never twice, never back
/// to where it has been.
pub fn accepts(me: DcIdx, path: DcSet) -> bool {
    !path.contains(me)
}

impl Router {
    /// All-to-all over `n` datacenters.
    pub fn all_to_all(n: usize) -> Router {
        Router::AllToAll { n }
    }

    /// A ring in the given order, which must name each datacenter `0..order.len()` once.
    pub fn ring(order: Vec<DcIdx>) -> Router {
        let mut position = vec![usize::MAX; order.len()];
        for (pos, dc) in order.iter().enumerate() {
            position[dc.get()] = pos;
        }
        debug_assert!(
            position.iter().all(|&p| p != usize::MAX),
            "ring must name every datacenter"
        );
        Router::Ring { order, position }
    }

    /// A star of `n` datacenters around `hub`.
    pub fn star(n: usize, hub: DcIdx, fallback: StarFallback) -> Router {
        Router::Star { n, hub, fallback }
    }

    /// Number of datacenters.
    pub fn len(&self) -> usize {
        match self {
            Router::AllToAll { n } | Router::Star { n, .. } => *n,
            Router::Ring { order, .. } => order.len(),
        }
    }

    /// Whether the cluster has no datacenters (never true for a parsed topology).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The datacenters `me` sends a change to, given the change's `origin`, the
    /// `path` it has passed (including `me`) and the datacenters believed `live`.
    /// Never returns `me`, a member of `path`, or a datacenter that is not live.
    pub fn next_hops(&self, me: DcIdx, origin: DcIdx, path: DcSet, live: DcSet) -> DcSet {
        let path = path.with(me);
        let candidates = live.minus(path);
        match self {
            // The origin sends to everyone. While it is down (or cut off from
            // here), those that have its changes pass them on, so the others
            // can still catch up with everything it wrote (a takeover waits for
            // that); path tags and applied vectors stop the copies.
            Router::AllToAll { n } => {
                if me == origin || !live.contains(origin) {
                    candidates.intersect(DcSet::all(*n))
                } else {
                    DcSet::EMPTY
                }
            }
            Router::Ring { order, position } => {
                let n = order.len();
                let start = position[me.get()];
                (1..n)
                    .map(|k| order[(start + k) % n])
                    .find(|&dc| live.contains(dc))
                    .filter(|&next| !path.contains(next))
                    .map_or(DcSet::EMPTY, DcSet::one)
            }
            Router::Star { n, hub, fallback } => {
                let leaves = candidates.intersect(DcSet::all(*n));
                if me == *hub {
                    leaves
                } else if me != origin {
                    DcSet::EMPTY
                } else if live.contains(*hub) {
                    candidates.intersect(DcSet::one(*hub))
                } else {
                    match fallback {
                        StarFallback::Direct => leaves,
                        StarFallback::None => DcSet::EMPTY,
                    }
                }
            }
        }
    }

    /// Whether `a` and `b` may hold a link. Every pair may in all-to-all, in a ring
    /// (routing around down datacenters can make any two neighbours) and in a star
    /// with direct fallback; a star without fallback links only the hub to leaves.
    pub fn may_link(&self, a: DcIdx, b: DcIdx) -> bool {
        match self {
            _ if a == b => false,
            Router::Star {
                hub,
                fallback: StarFallback::None,
                ..
            } => a == *hub || b == *hub,
            _ => true,
        }
    }

    /// The directed edges changes travel when every datacenter is live.
    pub fn edges(&self) -> Vec<(DcIdx, DcIdx)> {
        let n = self.len();
        let all = DcSet::all(n);
        let mut edges: Vec<(DcIdx, DcIdx)> = (0..n as u8)
            .map(DcIdx)
            .flat_map(|from| {
                // An edge carries a change from `from` when some origin's flood uses it.
                (0..n as u8).map(DcIdx).flat_map(move |origin| {
                    self.flood(origin, all)
                        .sends
                        .into_iter()
                        .filter(move |s| s.from == from)
                })
            })
            .map(|s| (s.from, s.to))
            .collect();
        edges.sort_unstable();
        edges.dedup();
        edges
    }

    /// Simulates the delivery of one change from `origin` when exactly `live` are up:
    /// every send the rules make, in breadth-first order, whether or not the receiver
    /// accepts it. Stops after `n * n` sends, which no correct rule set reaches.
    pub fn flood(&self, origin: DcIdx, live: DcSet) -> Flood {
        let n = self.len();
        let mut flood = Flood {
            sends: Vec::new(),
            truncated: false,
        };
        let mut queue = std::collections::VecDeque::from([(origin, DcSet::one(origin), 0u32)]);
        while let Some((at, path, hops)) = queue.pop_front() {
            for to in self.next_hops(at, origin, path, live).iter() {
                if flood.sends.len() >= n * n {
                    flood.truncated = true;
                    return flood;
                }
                let accepted = accepts(to, path);
                flood.sends.push(Send {
                    from: at,
                    to,
                    hops: hops + 1,
                    accepted,
                });
                if accepted {
                    queue.push_back((to, path.with(to), hops + 1));
                }
            }
        }
        flood
    }
}

/// The sends of one simulated change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    /// Every send, in the order a breadth-first delivery makes them.
    pub sends: Vec<Send>,
    /// Whether the simulation stopped at its bound instead of running out of sends.
    pub truncated: bool,
}

/// One datacenter sending a change to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    /// The sender.
    pub from: DcIdx,
    /// The receiver.
    pub to: DcIdx,
    /// Hops from the origin to the receiver.
    pub hops: u32,
    /// Whether the receiver accepted it (its path did not hold the receiver).
    pub accepted: bool,
}

#[cfg(test)]
mod tests;
