//! The meridian proxy: one per datacenter, in front of that datacenter's database.
//!
//! This crate is where meridian touches the world: client sockets speaking the Redis
//! protocol ([`resp`]), and, as the proxy grows, the replication log, the backends and
//! the links to other datacenters. Decisions live in `meridian-topology` and
//! `meridian-policies`; this crate carries them out.

pub mod certs;
pub mod change;
pub mod command;
pub mod engine;
pub mod link;
pub mod log;
pub mod metrics;
pub mod replication;
pub mod resp;
pub mod server;
