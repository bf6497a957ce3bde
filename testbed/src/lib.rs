//! The testbed: several meridian datacenters on one machine, with the wide-area
//! network between them emulated in userspace (the kernel's netem is not available
//! on the machines we test on).
//!
//! [`Relay`] is one emulated link: a UDP relay that delays each datagram by the
//! link's one-way delay plus random jitter (so datagrams reorder, as on a real path),
//! drops datagrams at the link's loss rate, optionally caps bandwidth, and can be cut
//! and healed while running. [`presets`] holds measured inter-region delays.
//! [`Cluster`] starts N proxies, each its own process, wired through relays, from a
//! typed [`ClusterSpec`] (a [`DcSpec`] per datacenter). [`TopologyFile`] builds
//! topology files, and [`free_ports`] is the one allocator of loopback ports, for
//! the cluster, the proxy's tests and the benchmarks alike. [`visibility`] measures
//! replication lag end to end through a running cluster.

mod cluster;
pub mod history;
mod ports;
mod presets;
mod relay;
mod rng;
mod topology_file;
pub mod visibility;

pub use cluster::{
    Cluster, ClusterSpec, DcSpec, HarnessError, Lateness, Shape, connect_to, process_cpu_time,
};
pub use ports::{PortError, free_port, free_ports};
pub use presets::{Preset, Region, floor_one_way_ms, one_way_ms};
pub use relay::{Direction, LinkShape, Relay, RelayError, RelayStats};
pub use rng::Rng;
pub use topology_file::{
    BackendEntry, ClientsSection, ClusterSection, DatacenterEntry, FollowSection, HomesSection,
    ReplicationSection, SessionSection, TlsSection, TopologyFile,
};
