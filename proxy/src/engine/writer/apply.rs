//! Applying changes of other datacenters: in order per origin, after their causal
//! dependencies, once each, and last-writer-wins per key (the rules are
//! `meridian_policies::readiness` and `Version::resolve`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meridian_policies::{Readiness, Resolution, Timestamp, Version, readiness};

use super::{Writer, wall_ms};
use crate::change::{Change, Value};
use crate::engine::backend::Fetched;
use crate::engine::conflicts::Conflict;
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
        let current = match self.edited_states(&ready) {
            Ok(current) => current,
            Err(e) => {
                ready.append(&mut waiting);
                return Err(Unapplied {
                    error: e.into(),
                    changes: ready,
                });
            }
        };
        let mut staged = HashMap::new();
        let mut found = Vec::new();
        let mut held = None;
        for (i, change) in ready.iter_mut().enumerate() {
            if let Err(e) = rebuild_edits(change, &versions, &staged, &current) {
                held = Some((i, e));
                break;
            }
            self.observe(change.hlc);
            self.resolve(change, &mut versions, &mut staged, &mut found);
            change.path.push(self.shared.dc.clone());
        }
        // A change whose edit cannot be rebuilt waits, with every change after
        // it, for the snapshot its error asks for.
        let held = held.map(|(i, e)| (ready.split_off(i), e));
        if !found.is_empty() {
            self.record_conflicts(found);
        }
        self.publish(ready, false)
            .map_err(|e| Unapplied::from(ApplyError::Log(e.0)))?;
        match held {
            None => Ok(waiting),
            Some((mut changes, error)) => {
                self.shared
                    .stats
                    .edits_unbuildable
                    .fetch_add(1, Ordering::Relaxed);
                changes.append(&mut waiting);
                Err(Unapplied { error, changes })
            }
        }
    }

    /// The states (memtable's, else the backend's, expired or not) of the keys
    /// that `changes` write as edits.
    fn edited_states(
        &mut self,
        changes: &[Change],
    ) -> Result<HashMap<Vec<u8>, Option<Value>>, crate::engine::BackendError> {
        let mut states = HashMap::new();
        if !changes.iter().flat_map(|c| &c.ops).any(|op| op.unbuilt()) {
            return Ok(states);
        }
        let mut missing = Vec::new();
        {
            let view = self.shared.memtable.view();
            for op in changes
                .iter()
                .flat_map(|c| &c.ops)
                .filter(|op| op.unbuilt())
            {
                match view.get(op.key.as_slice()) {
                    Some(entry) => drop(states.insert(op.key.clone(), entry.value.clone())),
                    None => missing.push(op.key.clone()),
                }
            }
        }
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            for (key, fetched) in self.session.fetch(missing, wall_ms())? {
                let value = match fetched {
                    Fetched::Known(value) => value,
                    Fetched::Foreign(_) => None,
                };
                states.insert(key, value);
            }
        }
        Ok(states)
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
    /// versions (and records their new versions and values in `versions` and
    /// `staged`). Notes in `found` each concurrent pair: an op that replaces a
    /// state its change had not seen, and every op that loses (causal apply means
    /// the state that beats it had not seen it).
    fn resolve(
        &self,
        change: &mut Change,
        versions: &mut HashMap<Vec<u8>, Option<Version>>,
        staged: &mut HashMap<Vec<u8>, Option<Value>>,
        found: &mut Vec<Found>,
    ) {
        let version = change.version();
        let (origin, deps) = (&change.origin, &change.deps);
        change.ops.retain(|op| {
            let current = versions.get(&op.key).and_then(Option::as_ref);
            let current_value = || staged.get(&op.key).cloned();
            match (version.resolve(current), current) {
                (Resolution::Wins, current) => {
                    if let Some(current) = current.filter(|c| c.unseen_by(origin, deps)) {
                        found.push(Found {
                            key: op.key.clone(),
                            kept: (version.clone(), Some(op.value.clone())),
                            lost: (current.clone(), current_value()),
                        });
                    }
                    versions.insert(op.key.clone(), Some(version.clone()));
                    staged.insert(op.key.clone(), op.value.clone());
                    true
                }
                // The same write again: harmless to store once more.
                (Resolution::Same, _) => true,
                (Resolution::Loses, Some(current)) => {
                    found.push(Found {
                        key: op.key.clone(),
                        kept: (current.clone(), current_value()),
                        lost: (version.clone(), Some(op.value.clone())),
                    });
                    false
                }
                (Resolution::Loses, None) => false,
            }
        });
    }

    /// Counts the conflicts and logs them with both values, reading those of
    /// states from before this batch (the memtable's, else the backend's).
    fn record_conflicts(&mut self, found: Vec<Found>) {
        let shared = self.shared.clone();
        shared
            .stats
            .conflicts
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        let mut before: HashMap<Vec<u8>, Option<Value>> = HashMap::new();
        let mut missing = Vec::new();
        {
            let view = shared.memtable.view();
            for f in &found {
                for side in [&f.kept, &f.lost] {
                    if side.1.is_none() {
                        match view.get(f.key.as_slice()) {
                            Some(entry) => drop(before.insert(f.key.clone(), entry.value.clone())),
                            None => missing.push(f.key.clone()),
                        }
                    }
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        match self.session.fetch(missing, wall_ms()) {
            Ok(fetched) => before.extend(fetched.into_iter().map(|(key, f)| match f {
                Fetched::Known(value) => (key, value),
                Fetched::Foreign(_) => (key, None),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the values of conflicting writes for the conflict log")
            }
        }
        let at_ms = wall_ms();
        for f in found {
            let value = |side: Option<Option<Value>>| {
                side.unwrap_or_else(|| before.get(&f.key).cloned().flatten())
            };
            shared.conflicts.push(Conflict {
                at_ms,
                kept: (f.kept.0, value(f.kept.1)),
                lost: (f.lost.0, value(f.lost.1)),
                key: f.key,
            });
        }
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

/// Rebuilds the new state of each op of `change` written as an edit that wins
/// (or is already applied), from the state before it: the batch's (`staged`),
/// else `current`. An op that loses is left for [`Writer::resolve`] to drop.
fn rebuild_edits(
    change: &mut Change,
    versions: &HashMap<Vec<u8>, Option<Version>>,
    staged: &HashMap<Vec<u8>, Option<Value>>,
    current: &HashMap<Vec<u8>, Option<Value>>,
) -> Result<(), ApplyError> {
    let version = change.version();
    for op in change.ops.iter_mut().filter(|op| op.unbuilt()) {
        let have = versions.get(&op.key).and_then(Option::as_ref);
        let state = staged
            .get(&op.key)
            .or_else(|| current.get(&op.key))
            .and_then(Option::as_ref);
        let rebuilt = match version.resolve(have) {
            Resolution::Loses => continue,
            Resolution::Same => state.cloned(),
            Resolution::Wins => op
                .patch
                .as_ref()
                .and_then(|p| super::edits::rebuild(p, have, state)),
        };
        match rebuilt {
            Some(value) => op.value = Some(value),
            None => {
                return Err(ApplyError::EditBase {
                    origin: change.origin.clone(),
                    seq: change.seq,
                    key: String::from_utf8_lossy(&op.key).into_owned(),
                });
            }
        }
    }
    Ok(())
}

/// A concurrent pair found while applying: the write that stays and the one that
/// is gone, each with its value when known here (`None`: the state from before
/// the batch, to be read).
pub(super) struct Found {
    key: Vec<u8>,
    kept: (Version, Option<Option<Value>>),
    lost: (Version, Option<Option<Value>>),
}

/// The version of a key's state as the memtable holds it: shares this
/// datacenter's id among its own writes instead of allocating one per key.
pub(super) fn shared_version(dc: &Arc<str>, change: &Change) -> Version {
    let origin = if change.origin == **dc {
        dc.clone()
    } else {
        Arc::from(change.origin.as_str())
    };
    Version::new(Timestamp::from_u64(change.hlc), origin).with_seq(change.seq)
}
