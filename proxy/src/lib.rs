//! The meridian proxy: one per datacenter, in front of that datacenter's database.
//!
//! This crate is where meridian touches the world; decisions live in
//! `meridian-topology` and `meridian-policies`, and this crate carries them out.
//! A [`Proxy`] serves Redis clients (the `resp` parser, the `command` table) from
//! an engine: a single writer turns each write into a logical change, appends it to
//! the durable replication `log`, and a committer moves it into the backend (the
//! embedded store or a Redis server, behind one interface). The `replication`
//! module ships the log to the peers the topology links over QUIC `link`s (one
//! frame codec for all their traffic) and applies theirs in causal order. `server`
//! holds the client listener and the admin endpoint (`/metrics`, `/status`).

mod certs;
mod change;
mod command;
mod control;
mod engine;
mod error;
mod link;
mod log;
mod metrics;
mod replication;
mod resp;
mod server;
mod workers;

pub use certs::{CertsError, generate as generate_certs};
pub use change::CHANGE_FORMAT;
pub use engine::{BackendConfig, DEFAULT_MAX_UNSTORED, DEFAULT_SEGMENT_BYTES, Fsync};
pub use error::{Classify, Origin};
pub use link::{
    ALPN, HANDSHAKE_TIMEOUT, Identity, Link, LinkError, LinkTls, PROTOCOL_VERSION,
    accept as accept_link, connect as connect_link,
};
pub use replication::{ForwardError, ReplicationConfig, homes as user_homes};
pub use server::{Proxy, ProxyConfig, StartError};
