//! The conflict log: every write that last-writer-wins discarded without its
//! writer having seen the write that beat it.
//!
//! Two writes of one key are concurrent when neither's origin had applied the
//! other when it wrote (`Version::unseen_by`, from the incoming change's
//! dependencies). Applying a remote change finds such a pair in two ways: the
//! change wins and replaces a state it had not seen, or the change loses to a
//! state already here (causal apply means that state cannot have seen it). Either
//! way one value is gone from every datacenter: it is counted and kept here with
//! both values, so a loss is visible (`MERIDIAN CONFLICTS`, `/status`,
//! `/metrics`) and never silent. Each datacenter records the pairs it meets
//! itself; the log keeps the newest [`KEEP`] of them.

use std::collections::VecDeque;
use std::sync::Mutex;

use meridian_policies::Version;

use crate::change::Value;

/// Conflicts kept, newest last.
pub const KEEP: usize = 1_024;

/// One write lost to a concurrent one.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// When it was found here, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The write that stays, and its value (`None`: a delete).
    pub kept: (Version, Option<Value>),
    /// The write that is gone, and its value.
    pub lost: (Version, Option<Value>),
}

#[derive(Debug, Default)]
pub(super) struct ConflictLog {
    entries: Mutex<VecDeque<Conflict>>,
}

impl ConflictLog {
    pub(super) fn push(&self, conflict: Conflict) {
        tracing::warn!(
            key = %String::from_utf8_lossy(&conflict.key),
            kept = %conflict.kept.0,
            lost = %conflict.lost.0,
            "concurrent writes of one key: last-writer-wins kept one and discarded the other (see MERIDIAN CONFLICTS)"
        );
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == KEEP {
            entries.pop_front();
        }
        entries.push_back(conflict);
    }

    /// The newest `count` conflicts, newest first.
    pub(super) fn newest(&self, count: usize) -> Vec<Conflict> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().rev().take(count).cloned().collect()
    }
}
