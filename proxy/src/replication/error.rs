//! Why a link's shipper or receiver stopped.

use crate::change::ChangeDecodeError;
use crate::engine::{ApplyError, BackendError};
use crate::error::{Classify, Origin};
use crate::link::frame::FrameError;
use crate::log::LogError;

/// Why shipping to a peer, or receiving from it, stopped. The link is closed with
/// this reason and dialled again; shipping resumes from what the peer has.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer opened no replication stream.
    #[error("{peer} opened no stream: {source}")]
    Accept {
        /// The peer.
        peer: String,
        /// QUIC's reason.
        source: quinn::ConnectionError,
    },
    /// No stream could be opened to the peer.
    #[error("cannot open a stream to {peer}: {source}")]
    Open {
        /// The peer.
        peer: String,
        /// QUIC's reason.
        source: quinn::ConnectionError,
    },
    /// Writing to the peer's stream failed.
    #[error("{what} to {peer}: {source}")]
    Send {
        /// The peer.
        peer: String,
        /// What was being sent.
        what: &'static str,
        /// QUIC's reason.
        source: quinn::WriteError,
    },
    /// The peer's stream broke or carried a frame that does not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer sent something the protocol does not allow there.
    #[error("{peer} {what}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What it did.
        what: String,
    },
    /// This datacenter's log could not be read for the peer.
    #[error("reading the replication log for {peer}: {source}")]
    LogRead {
        /// The peer.
        peer: String,
        /// The log's error.
        source: LogError,
    },
    /// A log record that does not decode as a change.
    #[error("log record {lsn} does not decode: {source}")]
    LogRecord {
        /// Its position.
        lsn: u64,
        /// Why.
        source: ChangeDecodeError,
    },
    /// Retention removed the log right after the snapshot it follows was read.
    #[error("the log does not reach back to the snapshot sent to {peer}")]
    LogBehindSnapshot {
        /// The peer.
        peer: String,
    },
    /// The peer needs a snapshot, and the store could not be read for it.
    #[error(
        "{peer} needs changes older than this log holds, and the store could not be read for a snapshot: {source}"
    )]
    Snapshot {
        /// The peer.
        peer: String,
        /// The backend's error.
        source: BackendError,
    },
    /// What the peer sent could not be applied here.
    #[error("applying what {peer} sent: {source}")]
    Apply {
        /// The peer.
        peer: String,
        /// Why.
        source: ApplyError,
    },
}

impl Classify for StreamError {
    fn origin(&self) -> Origin {
        match self {
            StreamError::Accept { .. }
            | StreamError::Open { .. }
            | StreamError::Send { .. }
            | StreamError::Protocol { .. } => Origin::Peer,
            StreamError::Frame(e) => e.origin(),
            StreamError::LogRead { .. }
            | StreamError::LogRecord { .. }
            | StreamError::LogBehindSnapshot { .. } => Origin::Log,
            StreamError::Snapshot { .. } => Origin::Backend,
            StreamError::Apply { source, .. } => source.origin(),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            StreamError::Accept { .. }
            | StreamError::Open { .. }
            | StreamError::Send { .. }
            | StreamError::LogBehindSnapshot { .. } => true,
            StreamError::Frame(e) => e.retryable(),
            StreamError::Protocol { .. } | StreamError::LogRecord { .. } => false,
            StreamError::LogRead { source, .. } => source.retryable(),
            StreamError::Snapshot { source, .. } => source.retryable(),
            StreamError::Apply { source, .. } => source.retryable(),
        }
    }
}
