//! The parsed topology: plain data, every setting already checked and typed.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::route::{DcIdx, Router, StarFallback};

/// A whole cluster as the topology file describes it.
#[derive(Debug, Clone)]
pub struct Topology {
    /// `cluster.name`: peers refuse links to a proxy of another cluster.
    pub cluster_name: String,
    /// `cluster.topology`: the shape of replication.
    pub kind: TopologyKind,
    /// `cluster.star_fallback`: what star leaves do while the hub is down (default `direct`).
    pub star_fallback: StarFallback,
    /// The datacenters, in file order; a [`DcIdx`] is a position in this list.
    pub datacenters: Vec<Datacenter>,
    /// `[homes]`: which datacenter each user's writes go to.
    pub homes: Homes,
    /// `[session]`: how reads honour session tokens.
    pub session: SessionSettings,
    /// `[clients]`: bounds on what one client connection may take.
    pub clients: ClientSettings,
    /// `[replication]`: durability and retention of the replication log.
    pub replication: ReplicationSettings,
    /// `[tls]`: the cluster's certificate authority.
    pub tls: TlsSettings,
    /// `[auth]`: users and passwords clients must AUTH with (empty: no authentication).
    pub users: Vec<(String, String)>,
    /// `[links]`: one-way delays between datacenters, for the WAN emulator and `check`.
    pub links: Vec<Link>,
    /// Routing over `kind`, ready to answer `next_hops`.
    pub router: Router,
}

/// The shape of replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyKind {
    /// Every datacenter sends its changes to every other.
    AllToAll,
    /// Changes travel around the ring, in this order.
    Ring(Vec<DcIdx>),
    /// Changes pass through the hub.
    Star {
        /// The hub.
        hub: DcIdx,
    },
}

impl fmt::Display for TopologyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopologyKind::AllToAll => "all-to-all",
            TopologyKind::Ring(_) => "ring",
            TopologyKind::Star { .. } => "star",
        })
    }
}

/// One datacenter and its proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Datacenter {
    /// Its id: 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub id: String,
    /// Redis protocol listener, for applications.
    pub client: Endpoint,
    /// QUIC listener, for the other datacenters.
    pub peer: Endpoint,
    /// HTTP listener: `/metrics` and `/status`.
    pub admin: Endpoint,
    /// Where the replication log and the embedded store live (resolved against the
    /// topology file's directory).
    pub data_dir: PathBuf,
    /// The database behind the proxy (default: embedded).
    pub backend: Backend,
    /// Relative share of users homed here by rendezvous hashing (default 1.0).
    pub weight: f64,
    /// Certificate of this datacenter (default `<dir of tls.ca>/<id>.pem`).
    pub cert: PathBuf,
    /// Private key of this datacenter (default `<dir of tls.ca>/<id>-key.pem`).
    pub key: PathBuf,
}

/// A `host:port` to listen on or dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// An IP address or a DNS name (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The database behind a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store in `data_dir`.
    Embedded,
    /// A Redis server.
    Redis {
        /// The primary, `redis://host:port/db` (or `rediss://` for TLS).
        url: String,
        /// Read replicas, same form.
        replicas: Vec<String>,
    },
}

/// How keys name users and users get homes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Homes {
    /// How a key names its user (default hash-tag).
    pub user: UserKey,
    /// Users pinned to a datacenter, in file order.
    pub pins: Vec<(String, DcIdx)>,
    /// What happens to writes while a user's home is unreachable (default reject).
    pub on_home_down: OnHomeDown,
    /// Where writes run (default at the user's home).
    pub writes: Writes,
    /// When a user's home moves to where its writes come from (`None`: never,
    /// the default).
    pub follow: Option<Follow>,
    /// Where a user without a placement record lives (default rendezvous).
    pub default: DefaultHome,
}

/// `[homes] default`: the home of a user nobody has placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultHome {
    /// The winner of rendezvous hashing over the datacenters' weights.
    #[default]
    Rendezvous,
    /// The datacenter that sends the user's first write: the rendezvous home
    /// runs it and places the user there (it alone places a new user, so two
    /// first writes at once cannot give it two homes).
    FirstWrite,
}

/// `[homes] follow`: when a user's home moves to where the user writes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follow {
    /// The share of the window's writes (in each half of it) one other
    /// datacenter must send, in thousandths (default 800: 0.8).
    pub share_milli: u32,
    /// The fewest writes in the window to move a user (default 20).
    pub min_writes: u32,
    /// How far back writes count (default 10 s).
    pub window: Duration,
    /// The least time between two moves of one user (default 60 s).
    pub min_interval: Duration,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            share_milli: 800,
            min_writes: 20,
            window: Duration::from_secs(10),
            min_interval: Duration::from_secs(60),
        }
    }
}

/// Where a datacenter runs the writes its clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// At the user's home: one writer per user, forwarded there from elsewhere.
    Home,
    /// Where they arrive: every datacenter writes every user, and concurrent writes
    /// of a key settle by last-writer-wins (each loss counted). The multi-leader
    /// design home leaders replace, kept for comparison and for tests of replication.
    Local,
}

/// How a key names its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey {
    /// The text inside the first `{...}`: `{u42}:cart` belongs to `u42`.
    HashTag,
    /// The text before the first `:`: `u42:cart` belongs to `u42`.
    Prefix,
}

/// The write policy while a user's home is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHomeDown {
    /// Refuse the write with a clear error; nothing diverges.
    Reject,
    /// The next datacenter in the user's rendezvous order takes the writes, once a
    /// majority agrees the home is down.
    NextInLine,
}

/// Bounds on one client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// The most reply bytes a connection may have waiting to be sent; past it the
    /// connection is closed, as Redis's `client-output-buffer-limit` does (default
    /// 512 MiB).
    pub output_buffer_limit: u64,
    /// Whether FLUSHDB and FLUSHALL may run in a cluster of more than one
    /// datacenter, where they delete every user's keys in every datacenter
    /// (default: refused; a one-datacenter cluster always runs them).
    pub flush: FlushPolicy,
}

/// Whether FLUSHDB and FLUSHALL run in a cluster of several datacenters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// Refused with an error naming the setting.
    #[default]
    Refuse,
    /// Run: every key this datacenter holds is deleted everywhere.
    Allow,
}

/// How reads honour session tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// How long a read may wait for this datacenter to catch up (default 100 ms).
    pub read_wait: Duration,
    /// What a read does when the wait runs out (default forward).
    pub on_stale: OnStale,
    /// Where a session's token lives (default the connection).
    pub scope: SessionScope,
    /// How long a user's token is kept after its last use, in user scope
    /// (default an hour).
    pub ttl: Duration,
    /// Most users whose tokens are kept, in user scope (default 1,000,000).
    pub max_users: u64,
}

/// Where a session's token lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionScope {
    /// In the client connection; `MERIDIAN SESSION` hands it to another.
    Connection,
    /// Also in the proxy, per user: every connection serving a user shares its
    /// guarantees (pools), without the application passing tokens.
    User,
}

/// What a read that this datacenter cannot serve yet does after `read_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Forward it to a datacenter that satisfies the token.
    Forward,
    /// Keep waiting.
    Wait,
    /// Answer with a stale-read error.
    Error,
}

/// Durability and retention of the replication log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// When appends reach the disk (default every 10 ms).
    pub fsync: FsyncPolicy,
    /// The most log kept for peers that have not acknowledged it, in bytes (default 1 GiB).
    pub log_retention_bytes: u64,
    /// How often an idle link sends a heartbeat (and QUIC a keep-alive) (default 500 ms).
    pub heartbeat: Duration,
    /// How long a link may stay silent before the peer is taken as down (default 3 s).
    pub peer_timeout: Duration,
}

/// When log appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every acknowledgement.
    Always,
    /// In groups, at most this long after the append ("every-10ms").
    Every(Duration),
    /// Left to the operating system.
    Never,
}

/// The cluster's certificate authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The CA certificate every datacenter's certificate is signed by.
    pub ca: PathBuf,
}

/// The network between two datacenters, one way, as the WAN emulator reproduces it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One end.
    pub a: DcIdx,
    /// The other end.
    pub b: DcIdx,
    /// One-way delay.
    pub delay: Duration,
    /// Random extra delay, up to this much.
    pub jitter: Duration,
    /// Fraction of packets lost, 0 to 1.
    pub loss: f64,
}

impl Topology {
    /// The datacenter called `id`.
    pub fn index_of(&self, id: &str) -> Option<DcIdx> {
        self.datacenters
            .iter()
            .position(|dc| dc.id == id)
            .map(|i| DcIdx(i as u8))
    }

    /// The datacenter at `idx`.
    pub fn dc(&self, idx: DcIdx) -> &Datacenter {
        &self.datacenters[idx.get()]
    }

    /// The `[links]` entry between `a` and `b`, either way round.
    pub fn link(&self, a: DcIdx, b: DcIdx) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| (l.a, l.b) == (a, b) || (l.a, l.b) == (b, a))
    }

    /// The datacenters a request from `from` to `to` passes, both ends included:
    /// straight there where the topology lets the two link, else through the fewest
    /// datacenters (a star's hub), the shortest by `[links]` delay among those.
    /// `None` when no chain of links joins them.
    pub fn forward_path(&self, from: DcIdx, to: DcIdx) -> Option<Vec<DcIdx>> {
        let n = self.datacenters.len();
        if from.get() >= n || to.get() >= n {
            return None;
        }
        // Breadth first; among paths of one length, the least total delay.
        let delay = |a, b| self.link(a, b).map_or(Duration::ZERO, |l| l.delay);
        let mut best: Vec<Option<(u32, Duration, DcIdx)>> = vec![None; n];
        best[from.get()] = Some((0, Duration::ZERO, from));
        let mut frontier = vec![from];
        let mut hops = 0;
        while !frontier.is_empty() && best[to.get()].is_none() {
            hops += 1;
            let mut next = Vec::new();
            for &at in &frontier {
                let (_, so_far, _) = best[at.get()].unwrap_or((0, Duration::ZERO, at));
                for (i, slot) in best.iter_mut().enumerate() {
                    let b = DcIdx(i as u8);
                    if !self.router.may_link(at, b) {
                        continue;
                    }
                    let arrive = so_far + delay(at, b);
                    match *slot {
                        Some((h, _, _)) if h < hops => {}
                        Some((_, d, _)) if d <= arrive => {}
                        _ => {
                            if slot.is_none() {
                                next.push(b);
                            }
                            *slot = Some((hops, arrive, at));
                        }
                    }
                }
            }
            frontier = next;
        }
        best[to.get()]?;
        let mut path = vec![to];
        let mut at = to;
        while at != from {
            at = best[at.get()]?.2;
            path.push(at);
        }
        path.reverse();
        Some(path)
    }

    /// The one-way delay along `path` by `[links]`, if every link on it has one.
    pub fn path_delay(&self, path: &[DcIdx]) -> Option<Duration> {
        path.windows(2)
            .map(|w| self.link(w[0], w[1]).map(|l| l.delay))
            .sum()
    }

    /// The datacenters `me` sends a change to; see [`Router::next_hops`].
    pub fn next_hops(
        &self,
        me: DcIdx,
        origin: DcIdx,
        path: crate::DcSet,
        live: crate::DcSet,
    ) -> crate::DcSet {
        self.router.next_hops(me, origin, path, live)
    }
}
