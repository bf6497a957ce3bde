//! Meridian's decision primitives: pure functions over plain data, no I/O and no clock
//! of their own (time is always a parameter).
//!
//! - [`VersionVector`]: what a datacenter has applied, as the highest dense sequence
//!   number seen per origin datacenter. Merge is a join (commutative, associative,
//!   idempotent); `dominates` is the partial order that causal delivery and session
//!   checks are made of.
//! - [`Hlc`]: a hybrid logical clock. Its [`Timestamp`]s order every write of the
//!   cluster consistently with causality, stay close to wall time, and never go
//!   backwards even when the wall clock does.
//! - [`Rendezvous`]: highest-random-weight hashing of user ids over datacenters, so each
//!   user has one home and a stable order of successors.
//! - [`Version`]: which write a key's state comes from, and [`Version::merge`], the
//!   last-writer-wins rule (by timestamp, origin breaking ties) that settles
//!   concurrent writes the same way in every datacenter.
//! - [`readiness`]: causal delivery, whether a change may be applied given what a
//!   datacenter has applied.
//! - [`route_write`]: where a user's write runs: here at its home, forwarded to
//!   the home, or refused when the home is out of reach.
//! - [`Epochs`]: which datacenters serve as homes, the state a majority agrees on
//!   (by Raft, in the proxy): who is out, who writes for its users meanwhile, and
//!   the handover back.
//! - [`FollowRule`] and [`decide_move`]: when a user's home moves to where the
//!   user's writes come from (homes that follow their users).
//! - [`ReadRule`]: where a session's read is served: here once the datacenter has
//!   applied the session's token, else after a bounded wait, forwarded, or refused.
//! - [`SessionToken`]: a client's write timestamp in a text form that fits in a RESP
//!   bulk string, with its session's [`SessionMark`].
//! - [`SessionFence`]: a home refuses a forwarded write that a later write of its
//!   session has overtaken.

mod causal;
mod epochs;
mod fence;
mod follow;
mod hlc;
mod reads;
mod rendezvous;
mod routing;
mod token;
mod varint;
mod version;
mod vv;

pub use causal::{Readiness, dependencies_met, readiness};
pub use epochs::{Command as EpochCommand, Epochs, Outcome as EpochOutcome, Service, Writer};
pub use fence::{Overtaken, SessionFence};
pub use follow::{FollowRule, Traffic, decide as decide_move};
pub use hlc::{ClockError, Hlc, Timestamp};
pub use reads::{OnStale, ReadDecision, ReadRule, missing};
pub use rendezvous::{Candidate, Rendezvous, RendezvousError};
pub use routing::{Reach, Unavailable, WriteRoute, route_to, route_write};
pub use token::{SessionMark, SessionToken, TokenError};
pub use version::{Resolution, Version, VersionDecodeError};
pub use vv::{DecodeError, MAX_ID_LEN, VersionVector, is_valid_id as is_valid_dc_id};
