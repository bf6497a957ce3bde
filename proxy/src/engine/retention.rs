//! Log retention: the log keeps every record some peer still needs, bounded by
//! `log_retention`, and never a record the store does not yet hold durably.
//!
//! After each durable checkpoint of the store, the committer asks what may go:
//! whole segments before `min(durable, oldest need of a linked peer)`; if the log is
//! still larger than `log_retention`, also older segments a peer still needs (never
//! past the durable point): that peer then bootstraps from a snapshot. The log's new
//! start and the version vector its removed records reached go to its base file, so
//! start-up and `resume_lsn` know where the log begins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_policies::VersionVector;

use super::{OpenError, Shared};
use crate::change::Change;
use crate::log;
use crate::workers::{State, Worker};

/// Why the vector a truncated log's base records could not be computed.
#[derive(Debug, thiserror::Error)]
pub(super) enum BaseError {
    /// The index has no checkpoint that early.
    #[error("no log checkpoint at or before record {0}")]
    NoCheckpoint(u64),
    /// The log is shorter than the position asked for.
    #[error("the log ends before record {0}")]
    LogEnds(u64),
    /// The log could not be read.
    #[error(transparent)]
    Read(#[from] log::LogError),
    /// A record that does not decode.
    #[error("log record {lsn} does not decode: {source}")]
    Record {
        /// Its position.
        lsn: u64,
        /// Why.
        source: crate::change::ChangeDecodeError,
    },
}

/// What retention may remove.
#[derive(Debug)]
pub(super) struct Retention {
    /// `log_retention`, in bytes.
    bytes: u64,
    /// Every record before this LSN is in the store durably.
    pub(super) durable: AtomicU64,
    /// The oldest LSN a linked peer still needs (`u64::MAX`: none does).
    pub(super) peers_need: AtomicU64,
    /// Where the log starts.
    pub(super) start: AtomicU64,
    /// Segments removed so far.
    pub(super) removed: AtomicU64,
    /// How retention shows in `/status`.
    worker: Arc<Worker>,
}

impl Retention {
    /// The first LSN to keep for the log to fit `log_retention` (0: it fits).
    fn size_cut(&self, segments: &[(u64, u64)]) -> u64 {
        let mut remaining: u64 = segments.iter().map(|(_, len)| len).sum();
        let mut cut = 0;
        for pair in segments.windows(2) {
            if remaining <= self.bytes {
                break;
            }
            remaining -= pair[0].1;
            cut = pair[1].0;
        }
        cut
    }

    pub(super) fn new(bytes: u64, start: u64, worker: Arc<Worker>) -> Retention {
        worker.set(State::Idle);
        Retention {
            bytes,
            durable: AtomicU64::new(0),
            peers_need: AtomicU64::new(u64::MAX),
            start: AtomicU64::new(start),
            removed: AtomicU64::new(0),
            worker,
        }
    }
}

/// The log's base as the engine reads it: its first LSN and the vector the
/// records before it reached.
pub(super) fn decode_base(base: &(u64, Vec<u8>)) -> Result<(u64, VersionVector), OpenError> {
    if base.1.is_empty() {
        return Ok((base.0, VersionVector::new()));
    }
    VersionVector::decode(&base.1)
        .map(|v| (base.0, v))
        .map_err(|e| OpenError::BadRecord {
            lsn: base.0,
            message: format!("the log's base file does not decode: {e}"),
        })
}

impl Shared {
    /// Removes the log segments nobody needs any more (see the module's text).
    pub(super) fn retain(&self) {
        let worker = &self.retention.worker;
        worker.set(State::Busy);
        self.remove_segments();
        worker.set(State::Idle);
    }

    fn remove_segments(&self) {
        let r = &self.retention;
        let need = r.peers_need.load(Ordering::Acquire);
        let segments = match log::segments(&self.log_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "log retention: cannot list the segments");
                r.worker.error(&e);
                return;
            }
        };
        let keep_from = r
            .durable
            .load(Ordering::Acquire)
            .min(need.max(r.size_cut(&segments)));
        if keep_from <= r.start.load(Ordering::Acquire) {
            return;
        }
        let mut base = None;
        let describe = |start: u64| {
            let vector = self.vector_at(start)?;
            let mut out = Vec::new();
            vector.encode(&mut out);
            base = Some(vector);
            Ok::<_, BaseError>(out)
        };
        match log::truncate_before(&self.log_dir, keep_from, describe) {
            Ok(Some(start)) => self.removed_before(start, base, need, &segments),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "log retention failed");
                r.worker.error(&e);
            }
        }
    }

    /// After the segments before `start` went: the index and the counters follow.
    fn removed_before(
        &self,
        start: u64,
        base: Option<VersionVector>,
        need: u64,
        segments: &[(u64, u64)],
    ) {
        let r = &self.retention;
        if let Some(vector) = base {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index.retain(|(at, _)| *at > start);
            index.insert(0, (start, vector));
        }
        if start > need {
            tracing::warn!(
                start,
                need,
                limit = r.bytes,
                "the log outgrew log_retention: a peer that has not acknowledged \
                 the removed changes will bootstrap from a snapshot"
            );
        }
        let removed = segments.iter().filter(|(first, _)| *first < start).count();
        r.removed.fetch_add(removed as u64, Ordering::Relaxed);
        r.start.store(start, Ordering::Release);
        tracing::debug!(start, removed, "log retention removed segments");
    }

    /// The vector every record before `lsn` reaches, from the nearest checkpoint at
    /// or before it.
    fn vector_at(&self, lsn: u64) -> Result<VersionVector, BaseError> {
        let (from, mut vector) = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .iter()
                .rev()
                .find(|(at, _)| *at <= lsn)
                .cloned()
                .ok_or(BaseError::NoCheckpoint(lsn))?
        };
        let mut reader = log::LogReader::open(&self.log_dir, from);
        while reader.next_lsn() < lsn {
            let Some((at, bytes)) = reader.next_record()? else {
                return Err(BaseError::LogEnds(lsn));
            };
            let change =
                Change::decode(&bytes).map_err(|source| BaseError::Record { lsn: at, source })?;
            vector.advance(&change.origin, change.seq);
        }
        Ok(vector)
    }
}
