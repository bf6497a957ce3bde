//! Recent writes not yet committed to the store.
//!
//! The writer puts each batch's effects here right after the log append and replies;
//! the committer later writes them to the store and removes them. Readers look here
//! first. The rule that keeps reads correct: a reader takes its store snapshot while
//! holding the read lock, and the committer removes entries (under the write lock)
//! only after their commit. So an entry a reader does not find here was either never
//! written, or committed before the reader's snapshot.

use std::sync::{RwLock, RwLockReadGuard};

use crate::change::Value;

/// A key's newest uncommitted state, the batch that wrote it, and the version
/// (timestamp, origin) of the change that wrote it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) value: Option<Value>,
    pub(super) batch: u64,
    pub(super) version: Version,
}

use meridian_policies::Version;

/// A key as the memtable holds it: up to 32 bytes in the table itself. Under
/// pipelined writes the table holds tens of thousands of keys (what the committer
/// has not stored yet), and a key behind a pointer cost a cache miss on every
/// insert that found its key already there: the comparison reached it.
pub(super) type MemKey = smallvec::SmallVec<[u8; 32]>;

#[derive(Debug, Default)]
pub(super) struct Memtable {
    map: RwLock<super::KeyMap<MemKey, Entry>>,
}

/// A read view: hold it while reading both the memtable and a store snapshot.
pub(super) type View<'a> = RwLockReadGuard<'a, super::KeyMap<MemKey, Entry>>;

impl Memtable {
    pub(super) fn view(&self) -> View<'_> {
        self.map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a batch's effects.
    pub(super) fn insert<'k>(
        &self,
        batch: u64,
        ops: impl IntoIterator<Item = (&'k [u8], Option<Value>, Version)>,
    ) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, value, version) in ops {
            map.insert(
                MemKey::from_slice(key),
                Entry {
                    value,
                    batch,
                    version,
                },
            );
        }
    }

    /// Forgets the entries written by batches up to `batch`: the committer calls
    /// this once every batch up to it is durably in the store (it commits them in
    /// order). One pass over the entries, with no hashing, under the write lock:
    /// it was a lookup and a removal per op committed, 8% of a proxy's CPU under
    /// pipelined writes on the embedded store.
    pub(super) fn committed(&self, batch: u64) {
        self.map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|_, e| e.batch > batch);
    }

    /// The newest batch with an entry not yet committed.
    pub(super) fn newest_batch(&self) -> Option<u64> {
        self.view().values().map(|e| e.batch).max()
    }

    pub(super) fn len(&self) -> usize {
        self.view().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policies::Timestamp;

    #[test]
    fn a_commit_forgets_its_batches_entries_and_keeps_newer_ones() {
        let memtable = Memtable::default();
        let version = Version::new(Timestamp::from_u64(1 << 16), "dc1");
        let write = |batch, keys: &[&str]| {
            let ops = keys.iter().map(|k| (k.as_bytes(), None, version.clone()));
            memtable.insert(batch, ops.collect::<Vec<_>>());
        };
        write(1, &["a", "b"]);
        write(2, &["b", "c"]);
        write(3, &["d"]);
        memtable.committed(2);
        let view = memtable.view();
        let mut left: Vec<(&[u8], u64)> = view.iter().map(|(k, e)| (&k[..], e.batch)).collect();
        left.sort();
        assert_eq!(left, [(&b"d"[..], 3)]);
        drop(view);
        write(4, &["a"]);
        memtable.committed(3);
        assert_eq!(memtable.newest_batch(), Some(4));
        assert_eq!(memtable.len(), 1);
    }
}
