//! Why the engine could not apply what a peer sent.

use super::BackendError;
use crate::error::{Classify, Origin};
use crate::log::LogError;

/// Remote changes that were not applied, handed back with the reason, so that a
/// failure retrying can fix (a backend loading its data) is waited out without
/// dropping the link they came on.
#[derive(Debug)]
pub struct Unapplied {
    /// Why.
    pub error: ApplyError,
    /// The changes, unchanged (empty when they cannot be offered again as they are).
    pub changes: Vec<crate::change::Change>,
}

impl From<ApplyError> for Unapplied {
    fn from(error: ApplyError) -> Unapplied {
        Unapplied {
            error,
            changes: Vec::new(),
        }
    }
}

/// Why remote changes or a peer's snapshot could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Writes are stopped until the proxy restarts (the backend failed for good).
    #[error("writes are stopped until the proxy restarts: {0}")]
    Stopped(String),
    /// The proxy is shutting down.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// The backend could not be read.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The changes could not be appended to the log (nothing was applied).
    #[error("could not write the replication log; nothing was applied: {0}")]
    Log(#[from] LogError),
    /// The committer stopped, so the snapshot cannot be stored.
    #[error("the committer stopped; the snapshot is not stored")]
    CommitterStopped,
    /// A change writes a key as an edit of a state this datacenter does not hold
    /// (it took a write the editor had not seen): only a snapshot from the peer
    /// can bring the key's new state.
    #[error(
        "change {origin}#{seq} edits a state of key '{key}' this datacenter does not hold; a snapshot is needed"
    )]
    EditBase {
        /// The change's origin.
        origin: String,
        /// Its sequence number.
        seq: u64,
        /// The key, as text.
        key: String,
    },
}

impl Classify for ApplyError {
    fn origin(&self) -> Origin {
        match self {
            ApplyError::Stopped(_) | ApplyError::Backend(_) => Origin::Backend,
            ApplyError::ShuttingDown | ApplyError::CommitterStopped => Origin::Proxy,
            ApplyError::EditBase { .. } => Origin::Peer,
            ApplyError::Log(_) => Origin::Log,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            ApplyError::Backend(e) => e.retryable(),
            ApplyError::Log(e) => e.retryable(),
            // Once the snapshot it asks for is in, the change is no longer needed.
            ApplyError::EditBase { .. } => true,
            ApplyError::Stopped(_) | ApplyError::ShuttingDown | ApplyError::CommitterStopped => {
                false
            }
        }
    }
}
