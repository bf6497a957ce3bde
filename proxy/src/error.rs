//! Where an error came from and whether retrying can help.
//!
//! Every error type of the data path is an enum of its own, one per operation
//! (opening the engine, applying remote changes, a link's stream, a backend call,
//! the log), and each implements [`Classify`]: callers decide what to do (answer
//! the client, retry later, reconnect the peer, stop writes) from these two
//! answers, never from an error's wording.

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client's request.
    Client,
    /// The database behind the proxy.
    Backend,
    /// A peer datacenter or the network to it.
    Peer,
    /// The replication log on this machine's disk.
    Log,
    /// This proxy itself (shutting down, a thread that could not start).
    Proxy,
}

/// What every data-path error says about itself.
pub trait Classify {
    /// Where it came from.
    fn origin(&self) -> Origin;
    /// Whether trying the same thing again later can succeed.
    fn retryable(&self) -> bool;
}

impl Classify for crate::log::LogError {
    fn origin(&self) -> Origin {
        Origin::Log
    }

    fn retryable(&self) -> bool {
        // A full or failing disk may recover, and a reader behind retention
        // starts again from a snapshot; a damaged log or a record over the limit
        // will not recover.
        matches!(
            self,
            crate::log::LogError::Io { .. } | crate::log::LogError::Removed { .. }
        )
    }
}

impl Classify for crate::engine::BackendError {
    fn origin(&self) -> Origin {
        Origin::Backend
    }

    fn retryable(&self) -> bool {
        crate::engine::BackendError::retryable(self)
    }
}

impl Classify for crate::link::frame::FrameError {
    fn origin(&self) -> Origin {
        Origin::Peer
    }

    fn retryable(&self) -> bool {
        // A broken stream is worth linking again; a peer that sent garbage is not
        // going to send anything else on a new link.
        matches!(self, crate::link::frame::FrameError::Io { .. })
    }
}
