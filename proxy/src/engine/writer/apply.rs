//! Applying changes of other datacenters: in order per origin, after their causal
//! dependencies, once each, and last-writer-wins per key (the rules are
//! `meridian_policies::readiness` and `Version::resolve`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meridian_policies::{Readiness, Resolution, Timestamp, Version, readiness};

use super::{Writer, wall_ms};
use crate::change::Change;
use crate::engine::{ApplyError, Unapplied};

impl Writer {
    /// Applies what it can of `changes` (in order), skipping those already applied,
    /// and hands back those that must wait: a gap in their origin's sequence or
    /// dependencies not yet applied. (Receivers offer only changes that were ready
    /// when they looked, so what comes back is what another receiver applied first.)
    pub(super) fn apply_remote(&mut self, changes: Vec<Change>) -> Result<Vec<Change>, Unapplied> {
        if let Some(why) = self.shared.broken() {
            return Err(Unapplied {
                error: ApplyError::Stopped(why),
                changes,
            });
        }
        let (mut ready, mut waiting) = self.ready(changes);
        if ready.is_empty() {
            return Ok(waiting);
        }
        let keys: Vec<&[u8]> = ready
            .iter()
            .flat_map(|c| c.ops.iter().map(|op| op.key.as_slice()))
            .collect();
        let mut versions = match self.versions(keys) {
            Ok(versions) => versions,
            Err(e) => {
                // Nothing is changed yet: hand every change back as it came.
                ready.append(&mut waiting);
                return Err(Unapplied {
                    error: e.into(),
                    changes: ready,
                });
            }
        };
        for change in &mut ready {
            self.observe(change.hlc);
            self.resolve(change, &mut versions);
            change.path.push(self.shared.dc.clone());
        }
        self.publish(ready, false)
            .map_err(|e| Unapplied::from(ApplyError::Log(e.0)))?;
        Ok(waiting)
    }

    /// Splits `changes` into those that may be applied now, in order, and those
    /// that must wait; those already applied are counted and dropped.
    fn ready(&self, changes: Vec<Change>) -> (Vec<Change>, Vec<Change>) {
        let mut reached = self.applied.clone();
        let mut ready = Vec::with_capacity(changes.len());
        let mut waiting = Vec::new();
        for change in changes {
            let own = change.origin == *self.dc;
            match readiness(&reached, &change.origin, change.seq, &change.deps) {
                _ if own => self.duplicate(),
                Readiness::Applied => self.duplicate(),
                Readiness::Ready => {
                    reached.advance(&change.origin, change.seq);
                    ready.push(change);
                }
                Readiness::AwaitsPredecessor | Readiness::AwaitsDependencies => {
                    waiting.push(change);
                }
            }
        }
        (ready, waiting)
    }

    fn duplicate(&self) {
        self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the change's ops that win last-writer-wins against the keys' current
    /// versions (and records their new versions); counts and logs those that lose.
    fn resolve(&self, change: &mut Change, versions: &mut HashMap<Vec<u8>, Option<Version>>) {
        let version = change.version();
        let stats = &self.shared.stats;
        change.ops.retain(|op| {
            let current = versions.get(&op.key).and_then(Option::as_ref);
            match version.resolve(current) {
                Resolution::Wins => {
                    versions.insert(op.key.clone(), Some(version.clone()));
                    true
                }
                // The same write again: harmless to store once more.
                Resolution::Same => true,
                Resolution::Loses => {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        key = %String::from_utf8_lossy(&op.key),
                        origin = %change.origin,
                        seq = change.seq,
                        "a remote write lost last-writer-wins to a newer write"
                    );
                    false
                }
            }
        });
    }

    /// Moves the clock past a remote timestamp, so later local writes order after it.
    pub(super) fn observe(&mut self, hlc: u64) {
        if let Err(e) = self
            .clock
            .observe(Timestamp::from_u64(hlc), self.clock_ms(wall_ms()))
        {
            self.shared
                .stats
                .clock_drift_refusals
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "a remote timestamp is far ahead of this clock");
        }
    }

    /// The current version of every key in `keys`: the memtable's, else the backend's.
    pub(super) fn versions(
        &mut self,
        keys: Vec<&[u8]>,
    ) -> Result<HashMap<Vec<u8>, Option<Version>>, crate::engine::BackendError> {
        let shared = self.shared.clone();
        let view = shared.memtable.view();
        let mut versions: HashMap<Vec<u8>, Option<Version>> = HashMap::new();
        let mut missing = Vec::new();
        for key in keys {
            if versions.contains_key(key) {
                continue;
            }
            let version = view.get(key).map(|entry| entry.version.clone());
            if version.is_none() {
                missing.push(key.to_vec());
            }
            versions.insert(key.to_vec(), version);
        }
        let found = self.session.versions(&missing)?;
        versions.extend(missing.into_iter().zip(found));
        Ok(versions)
    }
}

/// The version of a key's state as the memtable holds it: shares this
/// datacenter's id among its own writes instead of allocating one per key.
pub(super) fn shared_version(dc: &Arc<str>, change: &Change) -> Version {
    let origin = if change.origin == **dc {
        dc.clone()
    } else {
        Arc::from(change.origin.as_str())
    };
    Version {
        hlc: Timestamp::from_u64(change.hlc),
        origin,
    }
}
