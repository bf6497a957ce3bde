//! The topology of a meridian cluster: which datacenters exist, how to reach their
//! proxies, and how changes travel between them. Pure: no files, sockets or clocks.
//!
//! [`Topology::parse`] turns the text of a topology file into a checked [`Topology`],
//! or into [`ConfigErrors`] listing every problem with its line and column. The
//! [`Router`] answers the one routing question a proxy asks of every change:
//! [`Router::next_hops`], given the change's origin, the datacenters it has passed (its
//! path) and the datacenters believed live. [`Plan`] explains a topology to a person:
//! delivery trees, hop counts and, where delays are known, arrival times.

mod error;
mod model;
mod parse;
mod plan;
mod route;

pub use error::{ConfigErrors, Location, Problem};
pub use model::{
    Backend, ClientSettings, Datacenter, DefaultHome, Endpoint, FlushPolicy, Follow, FsyncPolicy,
    Homes, Link, OnHomeDown, OnStale, ReplicationSettings, SessionScope, SessionSettings,
    TlsSettings, Topology, TopologyKind, UserKey, Writes,
};
pub use plan::{Arrival, Plan};
pub use route::{DcIdx, DcSet, Flood, MAX_DATACENTERS, Router, Send, StarFallback, accepts};
