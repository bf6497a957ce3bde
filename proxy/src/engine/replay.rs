//! Start-up: bring the store level with the log.

use meridian_policies::{Timestamp, VersionVector};

use super::OpenError;
use super::backend::{Backend, Session};
use crate::change::Change;
use crate::log::Log;

/// Changes applied per store transaction while replaying.
const REPLAY_CHUNK: usize = 1024;
/// Records between two log index checkpoints (see `Engine::resume_lsn`).
pub(super) const INDEX_EVERY: u64 = 4096;

/// Where the writer resumes.
#[derive(Debug)]
pub(super) struct Resume {
    pub(super) applied: VersionVector,
    pub(super) next_seq: u64,
    pub(super) last_hlc: Timestamp,
    pub(super) replayed: u64,
    /// Log checkpoints: every record before the LSN is within the vector.
    pub(super) index: Vec<(u64, VersionVector)>,
    /// The newest timestamp logged from each origin.
    pub(super) last_hlc_by_origin: std::collections::HashMap<String, u64>,
}

/// Commits `changes` and `applied`; when the backend refuses them, commits them one
/// at a time from `stored` (the vector it holds), logging and skipping those it
/// refuses, as the committer does while running.
fn commit_skipping_refused(
    target: &mut dyn Session,
    stored: &VersionVector,
    changes: &[Change],
    applied: &VersionVector,
    durable: bool,
) -> Result<(), OpenError> {
    match target.commit(changes, applied, durable) {
        Ok(()) => return Ok(()),
        Err(e) if e.refused() && !changes.is_empty() => {}
        Err(e) => return Err(OpenError::Replay(e)),
    }
    let mut reached = stored.clone();
    for change in changes {
        reached.advance(&change.origin, change.seq);
        match target.commit(std::slice::from_ref(change), &reached, false) {
            Ok(()) => {}
            Err(e) if e.refused() => tracing::error!(
                origin = %change.origin,
                seq = change.seq,
                error = %e,
                "the backend refused a logged change while replaying; its keys keep their previous values there"
            ),
            Err(e) => return Err(OpenError::Replay(e)),
        }
    }
    target
        .commit(&[], applied, durable)
        .map_err(OpenError::Replay)
}

/// Replay's progress through the log.
struct Replay {
    /// What the store will hold once the pending changes are in.
    applied: VersionVector,
    /// What the store holds.
    stored: VersionVector,
    /// Every record read so far reaches this.
    seen: VersionVector,
    index: Vec<(u64, VersionVector)>,
    last_hlc: Timestamp,
    last_hlc_by_origin: std::collections::HashMap<String, u64>,
    pending: Vec<Change>,
    /// The newest state each pending change gave its keys, for rebuilding edits.
    staged: std::collections::HashMap<Vec<u8>, Option<crate::change::Value>>,
    replayed: u64,
}

impl Replay {
    /// Takes the record at `lsn`: indexes it, and keeps it if the store lacks it.
    fn take(
        &mut self,
        lsn: u64,
        mut change: Change,
        target: &mut dyn Session,
    ) -> Result<(), OpenError> {
        self.seen.advance(&change.origin, change.seq);
        if (lsn + 1) % INDEX_EVERY == 0 {
            self.index.push((lsn + 1, self.seen.clone()));
        }
        self.last_hlc_by_origin
            .insert(change.origin.clone(), change.hlc);
        self.last_hlc = self.last_hlc.max(Timestamp::from_u64(change.hlc));
        if change.seq > self.applied.get(&change.origin) {
            self.rebuild(lsn, &mut change, target)?;
            for op in &change.ops {
                self.staged.insert(op.key.clone(), op.value.clone());
            }
            self.applied.advance(&change.origin, change.seq);
            self.pending.push(change);
        }
        Ok(())
    }

    /// Rebuilds the state of each op logged as an edit, from the state the log
    /// left before it (the pending changes', else the store's). An edit the store
    /// cannot take (a state the backend refused earlier is missing) is left out,
    /// its key keeping what the store holds, and reported.
    fn rebuild(
        &mut self,
        lsn: u64,
        change: &mut Change,
        target: &mut dyn Session,
    ) -> Result<(), OpenError> {
        let mut unbuildable = Vec::new();
        for op in change.ops.iter_mut().filter(|op| op.unbuilt()) {
            let before = match self.staged.get(&op.key) {
                Some(state) => state.clone(),
                None => match target
                    .fetch(vec![op.key.clone()], crate::engine::wall_ms())?
                    .remove(&op.key)
                {
                    Some(crate::engine::backend::Fetched::Known(state)) => state,
                    _ => None,
                },
            };
            let rebuilt = before
                .as_ref()
                .zip(op.patch.as_ref())
                .and_then(|(b, p)| p.apply(b));
            match rebuilt {
                Some(value) => op.value = Some(value),
                None => unbuildable.push(op.key.clone()),
            }
        }
        for key in &unbuildable {
            tracing::error!(
                lsn,
                key = %String::from_utf8_lossy(key),
                "a logged edit does not apply to the state the store holds; the key keeps that state"
            );
        }
        change.ops.retain(|op| !unbuildable.contains(&op.key));
        Ok(())
    }

    /// Commits the changes kept so far.
    fn flush(&mut self, target: &mut dyn Session, durable: bool) -> Result<(), OpenError> {
        self.replayed += self.pending.len() as u64;
        commit_skipping_refused(target, &self.stored, &self.pending, &self.applied, durable)?;
        self.stored = self.applied.clone();
        self.pending.clear();
        self.staged.clear();
        Ok(())
    }
}

/// Applies every logged change the store has not applied (those above its applied
/// vector), in log order, and returns where the writer resumes.
pub(super) fn replay(
    backend: &dyn Backend,
    dc: &str,
    log: &Log,
    base: (u64, VersionVector),
) -> Result<Resume, OpenError> {
    let mut target = backend.session();
    let applied = target.applied()?;
    let mut reader = log.reader(base.0);
    let mut state = Replay {
        stored: applied.clone(),
        applied,
        seen: base.1.clone(),
        index: vec![base],
        last_hlc: Timestamp::default(),
        last_hlc_by_origin: std::collections::HashMap::new(),
        pending: Vec::new(),
        staged: std::collections::HashMap::new(),
        replayed: 0,
    };
    while let Some((lsn, bytes)) = reader.next_record()? {
        let change = Change::decode(&bytes).map_err(|e| OpenError::BadRecord {
            lsn,
            message: e.to_string(),
        })?;
        state.take(lsn, change, target.as_mut())?;
        if state.pending.len() >= REPLAY_CHUNK {
            state.flush(target.as_mut(), false)?;
        }
    }
    state.flush(target.as_mut(), true)?;
    if !state.seen.dominates(&state.applied) {
        // The store holds more than the log explains: a snapshot was installed and
        // the log not yet cut. No record before the end describes what is here.
        state.index = vec![(log.next_lsn(), state.applied.clone())];
    }
    if state.replayed > 0 {
        tracing::info!(
            replayed = state.replayed,
            "replayed changes from the replication log into the store"
        );
    }
    Ok(Resume {
        next_seq: state.applied.get(dc) + 1,
        applied: state.applied,
        last_hlc: state.last_hlc,
        replayed: state.replayed,
        index: state.index,
        last_hlc_by_origin: state.last_hlc_by_origin,
    })
}
