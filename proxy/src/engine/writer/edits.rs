//! Writing a big value's new state as an edit of its previous one (see
//! [`crate::change::Patch`]), and rebuilding the state from such an edit.
//!
//! The writer writes an edit only when the state it edits was written here: in
//! steady state a user's keys are written at its home alone, so every other
//! datacenter holds that same state. A datacenter that holds another one (it
//! took a write the editor had not seen) cannot rebuild the new state and asks
//! the peer for a snapshot instead.

use std::collections::HashMap;

use meridian_policies::Version;

use super::Writer;
use crate::change::{Change, Patch, Value};
use crate::engine::memtable::View;

/// Whether a new state is big enough that an edit of the old one might pay
/// (cheap: counts elements first, sizes only small values).
pub(super) fn may_pay(new: &Value) -> bool {
    new.elements() >= 8 || new.size() >= 512
}

/// Whether `new` might be written as an edit of `old`: both of one type, `old`
/// live and big enough for an edit to pay.
pub(super) fn worth_trying(old: &Value, new: &Value, now_ms: u64) -> bool {
    old.data.type_name() == new.data.type_name()
        && !old.expired(now_ms)
        && (old.elements() >= 16 || old.size() >= 1024)
}

impl Writer {
    /// Gives the candidate ops (change index, op index, state before) an edit
    /// where one is much smaller than the new state and the state before was
    /// written here.
    pub(super) fn write_as_edits(
        &mut self,
        changes: &mut [Change],
        candidates: Vec<(usize, usize, Value)>,
        view: &View<'_>,
    ) {
        // The version each candidate edits: an earlier change of the batch, the
        // memtable's, or the store's.
        let mut bases: Vec<Option<Version>> = Vec::with_capacity(candidates.len());
        let mut missing = Vec::new();
        for &(ci, oi, _) in &candidates {
            let key = &changes[ci].ops[oi].key;
            let earlier = changes[..ci]
                .iter()
                .rev()
                .find(|c| c.ops.iter().any(|op| &op.key == key))
                .map(Change::version);
            let base = earlier.or_else(|| view.get(key.as_slice()).map(|e| e.version.clone()));
            if base.is_none() {
                missing.push(key.clone());
            }
            bases.push(base);
        }
        if !missing.is_empty() {
            let Ok(found) = self.session.versions(&missing) else {
                return;
            };
            let found: HashMap<Vec<u8>, Option<Version>> = missing.into_iter().zip(found).collect();
            for (base, &(ci, oi, _)) in bases.iter_mut().zip(&candidates) {
                if base.is_none() {
                    *base = found.get(&changes[ci].ops[oi].key).cloned().flatten();
                }
            }
        }
        for (base, (ci, oi, old)) in bases.into_iter().zip(candidates) {
            let Some(base) = base.filter(|b| *b.origin == *self.dc) else {
                continue;
            };
            let op = &mut changes[ci].ops[oi];
            if let Some(new) = &op.value {
                op.patch = Patch::between(base, &old, new);
                if op.patch.is_some() {
                    self.shared
                        .stats
                        .edits_written
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

/// The state an edit makes of the state it edits; `None` when `current` is not
/// that state (another version, or none).
pub(super) fn rebuild(
    patch: &Patch,
    current_version: Option<&Version>,
    current: Option<&Value>,
) -> Option<Value> {
    if current_version != Some(&patch.base) {
        return None;
    }
    patch.apply(current?)
}
