//! Installing a peer's snapshot: this datacenter lacked changes the peer's log no
//! longer holds, so the peer sent its whole store, tied to the vector it reaches.

use meridian_policies::{Resolution, VersionVector};

use super::Writer;
use crate::change::{Change, Op};
use crate::engine::ApplyError;
use crate::engine::backend::{Entries, Stored};
use crate::engine::committer::Logged;

impl Writer {
    /// Merges `entries` (a peer's store at `vector`) key by key, last writer wins,
    /// and raises the applied vector to include `vector`. When `vector` covers all
    /// this datacenter has applied, the snapshot replaces its data instead: keys it
    /// lacks were deleted there (the store keeps no tombstones, so a merge would
    /// keep them). The result goes to the
    /// store in a durable checkpoint; this datacenter's log then restarts at the
    /// current position with the merged vector as its base, since the records before
    /// it no longer describe what it holds (peers that lack more bootstrap from here
    /// in turn). A crash before the checkpoint leaves the old state, and the peer
    /// sends its snapshot again.
    pub(super) fn install_snapshot(
        &mut self,
        vector: VersionVector,
        entries: Entries,
    ) -> Result<u64, ApplyError> {
        if let Some(why) = self.shared.broken() {
            return Err(ApplyError::Stopped(why));
        }
        if self.applied.dominates(&vector) {
            // Nothing in it is new here (a second peer answered the same request,
            // say); merging it could only bring back keys deleted since.
            tracing::info!(%vector, "ignored a snapshot this datacenter is already past");
            return Ok(0);
        }
        let winners = self.snapshot_winners(&vector, entries)?;
        // The snapshot's data carries no changes to mark users by: their reads
        // fall back to the origins' whole positions.
        self.shared.marks.clear();
        self.applied.merge(&vector);
        // Changes of this datacenter the peer has (from before it lost its data)
        // keep their numbers: new ones follow them.
        self.next_seq = self.next_seq.max(self.applied.get(&self.shared.dc) + 1);
        self.log.roll()?;
        let lsn = self.log.next_lsn();
        *self.shared.index.lock().unwrap_or_else(|p| p.into_inner()) =
            vec![(lsn, self.applied.clone())];
        let installed = winners.len() as u64;
        self.store_snapshot(winners, lsn)?;
        tracing::info!(
            keys = installed,
            vector = %self.applied,
            "installed a snapshot from a peer; the log restarts at record {lsn}"
        );
        Ok(installed)
    }

    /// The snapshot's entries that win last-writer-wins here, and, when the
    /// snapshot replaces this datacenter's data, deletions of the keys it lacks;
    /// each as a change carrying the entry's own version.
    fn snapshot_winners(
        &mut self,
        vector: &VersionVector,
        entries: Entries,
    ) -> Result<Vec<Change>, ApplyError> {
        let keys = entries.iter().map(|(key, _)| key.as_slice()).collect();
        let current = self.versions(keys)?;
        let gone = if vector.dominates(&self.applied) {
            self.keys_not_in(&entries)?
        } else {
            Vec::new()
        };
        let mut winners = Vec::new();
        let mut newest = 0;
        for (key, Stored { value, version }) in entries {
            newest = newest.max(version.hlc.as_u64());
            let have = current.get(&key).and_then(Option::as_ref);
            if version.resolve(have) != Resolution::Wins {
                continue;
            }
            let op = Op::new(key, Some(value));
            let (origin, hlc) = (version.origin.to_string(), version.hlc.as_u64());
            winners.push(entry_change(origin, hlc, op));
        }
        if newest > 0 {
            self.observe(newest);
        }
        let dc = self.shared.dc.to_string();
        for key in gone {
            winners.push(entry_change(dc.clone(), 0, Op::new(key, None)));
        }
        Ok(winners)
    }

    /// Makes the snapshot's winners visible and has the committer store them in a
    /// durable checkpoint with the merged vector.
    fn store_snapshot(&mut self, winners: Vec<Change>, lsn: u64) -> Result<(), ApplyError> {
        self.index_expiry(&winners);
        self.observe_placements(&winners);
        self.next_batch();
        let ops = winners.iter().flat_map(|c| {
            let version = c.version();
            c.ops
                .iter()
                .map(move |op| (op.key.as_slice(), op.value.clone(), version.clone()))
        });
        self.shared.memtable.insert(self.batch_no, ops);
        self.shared.applied.send_replace(self.applied.clone());
        let logged = Logged {
            batch: self.batch_no,
            changes: winners,
            applied: self.applied.clone(),
            end_lsn: lsn,
            durable: true,
            bytes: 0,
        };
        match &self.committer {
            Some((committer, _)) => committer
                .send(logged)
                .map_err(|()| ApplyError::CommitterStopped),
            None => Err(ApplyError::CommitterStopped),
        }
    }
}

impl Writer {
    /// Keys this datacenter holds (memtable and embedded store) that `entries` lacks.
    fn keys_not_in(&mut self, entries: &Entries) -> Result<Vec<Vec<u8>>, ApplyError> {
        let incoming: std::collections::HashSet<&[u8]> =
            entries.iter().map(|(k, _)| k.as_slice()).collect();
        let shared = self.shared.clone();
        let view = shared.memtable.view();
        let mut held: std::collections::BTreeSet<Vec<u8>> = view
            .iter()
            .filter(|(_, e)| e.value.is_some())
            .map(|(k, _)| k.to_vec())
            .collect();
        let stored = self.session.keys()?;
        for key in stored {
            if !matches!(view.get(key.as_slice()), Some(e) if e.value.is_none()) {
                held.insert(key);
            }
        }
        Ok(held
            .into_iter()
            .filter(|k| !incoming.contains(k.as_slice()))
            .collect())
    }
}

/// One snapshot entry as a change the committer stores with its own version (it is
/// never logged: `seq` 0 belongs to no origin's sequence).
fn entry_change(origin: String, hlc: u64, op: Op) -> Change {
    Change {
        origin,
        seq: 0,
        hlc,
        user: Vec::new(),
        ops: vec![op],
        deps: VersionVector::new(),
        path: Vec::new(),
    }
}
