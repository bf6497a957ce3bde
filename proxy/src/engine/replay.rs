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

/// Applies every logged change the store has not applied (those above its applied
/// vector), in log order, and returns where the writer resumes.
pub(super) fn replay(
    backend: &dyn Backend,
    dc: &str,
    log: &Log,
    base: (u64, VersionVector),
) -> Result<Resume, OpenError> {
    let mut target = backend.session();
    let mut applied = target.applied()?;
    let mut stored = applied.clone();
    let mut commit = |changes: &[Change], applied: &VersionVector, durable: bool| {
        commit_skipping_refused(target.as_mut(), &stored, changes, applied, durable)?;
        stored = applied.clone();
        Ok::<_, OpenError>(())
    };
    let mut last_hlc = Timestamp::default();
    let mut pending = Vec::new();
    let mut replayed = 0;
    let mut reader = log.reader(base.0);
    let mut seen = base.1.clone();
    let mut index = vec![base];
    let mut last_hlc_by_origin = std::collections::HashMap::new();
    while let Some((lsn, bytes)) = reader.next_record()? {
        let change = Change::decode(&bytes).map_err(|e| OpenError::BadRecord {
            lsn,
            message: e.to_string(),
        })?;
        seen.advance(&change.origin, change.seq);
        if (lsn + 1) % INDEX_EVERY == 0 {
            index.push((lsn + 1, seen.clone()));
        }
        last_hlc_by_origin.insert(change.origin.clone(), change.hlc);
        last_hlc = last_hlc.max(Timestamp::from_u64(change.hlc));
        if change.seq > applied.get(&change.origin) {
            applied.advance(&change.origin, change.seq);
            pending.push(change);
        }
        if pending.len() >= REPLAY_CHUNK {
            replayed += pending.len() as u64;
            commit(&pending, &applied, false)?;
            pending.clear();
        }
    }
    replayed += pending.len() as u64;
    commit(&pending, &applied, true)?;
    if !seen.dominates(&applied) {
        // The store holds more than the log explains: a snapshot was installed and
        // the log not yet cut. No record before the end describes what is here.
        index = vec![(log.next_lsn(), applied.clone())];
    }
    if replayed > 0 {
        tracing::info!(
            replayed,
            "replayed changes from the replication log into the store"
        );
    }
    let next_seq = applied.get(dc) + 1;
    Ok(Resume {
        applied,
        next_seq,
        last_hlc,
        replayed,
        index,
        last_hlc_by_origin,
    })
}
