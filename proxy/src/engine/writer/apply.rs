//! Applying changes of other datacenters: in order per origin, after their causal
//! dependencies, once each, and last-writer-wins per key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meridian_policies::{Timestamp, VersionVector};

use super::{Version, Writer, wall_ms};
use crate::change::Change;
use crate::engine::backend::Backend;

impl Writer {
    /// Applies what it can of `changes` (in order), skipping those already applied,
    /// and hands back those that must wait: a gap in their origin's sequence or
    /// dependencies not yet applied.
    pub(super) fn apply_remote(&mut self, changes: Vec<Change>) -> Result<Vec<Change>, String> {
        if let Some(why) = self.shared.broken() {
            return Err(why);
        }
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let mut reached = self.applied.clone();
        let mut ready = Vec::with_capacity(changes.len());
        let mut waiting = Vec::new();
        for change in changes {
            let have = reached.get(&change.origin);
            if change.origin == *self.dc || change.seq <= have {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            } else if change.seq == have + 1 && deps_met(&reached, &change.deps) {
                reached.advance(&change.origin, change.seq);
                ready.push(change);
            } else {
                waiting.push(change);
            }
        }
        if ready.is_empty() {
            return Ok(waiting);
        }
        let keys = ready
            .iter()
            .flat_map(|c| c.ops.iter().map(|op| op.key.as_slice()));
        let mut versions = self.versions(keys)?;
        for change in &mut ready {
            self.observe(change.hlc);
            let version: Version = (change.hlc, Arc::from(change.origin.as_str()));
            change.ops.retain(|op| match versions.get(&op.key) {
                Some(Some(current)) if *current > version => {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        key = %String::from_utf8_lossy(&op.key),
                        origin = %change.origin,
                        seq = change.seq,
                        "a remote write lost last-writer-wins to a newer write"
                    );
                    false
                }
                _ => {
                    versions.insert(op.key.clone(), Some(version.clone()));
                    true
                }
            });
            change.path.push(self.shared.dc.clone());
        }
        self.publish(ready, false)
            .map_err(|reply| format!("{reply:?}"))?;
        Ok(waiting)
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

    /// The current version of every key the changes touch: the memtable's, else the
    /// backend's.
    pub(super) fn versions<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<HashMap<Vec<u8>, Option<Version>>, String> {
        let shared = self.shared.clone();
        let view = shared.memtable.view();
        let mut versions: HashMap<Vec<u8>, Option<Version>> = HashMap::new();
        let mut missing = Vec::new();
        for key in keys {
            if versions.contains_key(key) {
                continue;
            }
            match view.get(key) {
                Some(entry) => drop(versions.insert(key.to_vec(), Some(entry.version.clone()))),
                None => {
                    versions.insert(key.to_vec(), None);
                    missing.push(key.to_vec());
                }
            }
        }
        match &shared.backend {
            Backend::Embedded(store) => {
                let snapshot = store.snapshot().map_err(|e| e.to_string())?;
                for key in missing {
                    if let Some((hlc, origin)) =
                        snapshot.version(&key).map_err(|e| e.to_string())?
                    {
                        versions.insert(key, Some((hlc, Arc::from(origin))));
                    }
                }
            }
            Backend::Redis(_) => {
                let conn = self
                    .redis
                    .as_mut()
                    .ok_or("internal error: no redis connection")?;
                let found = conn.versions(&missing).map_err(|e| e.to_string())?;
                for (key, version) in missing.into_iter().zip(found) {
                    versions.insert(key, version.map(|(hlc, origin)| (hlc, Arc::from(origin))));
                }
            }
        }
        Ok(versions)
    }
}

/// Whether everything in `deps` is applied.
fn deps_met(applied: &VersionVector, deps: &[(String, u64)]) -> bool {
    deps.iter().all(|(origin, seq)| applied.get(origin) >= *seq)
}
