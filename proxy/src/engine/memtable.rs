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

#[derive(Debug, Default)]
pub(super) struct Memtable {
    map: RwLock<super::KeyMap<Vec<u8>, Entry>>,
}

/// A read view: hold it while reading both the memtable and a store snapshot.
pub(super) type View<'a> = RwLockReadGuard<'a, super::KeyMap<Vec<u8>, Entry>>;

impl Memtable {
    pub(super) fn view(&self) -> View<'_> {
        self.map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a batch's effects.
    pub(super) fn insert(
        &self,
        batch: u64,
        ops: impl IntoIterator<Item = (Vec<u8>, Option<Value>, Version)>,
    ) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, value, version) in ops {
            map.insert(
                key,
                Entry {
                    value,
                    batch,
                    version,
                },
            );
        }
    }

    /// Forgets entries written by batches up to `batch`, now in the store. Entries
    /// rewritten by a later batch stay.
    pub(super) fn committed(&self, batch: u64, keys: impl IntoIterator<Item = Vec<u8>>) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for key in keys {
            if map.get(&key).is_some_and(|e| e.batch <= batch) {
                map.remove(&key);
            }
        }
    }

    /// The newest batch with an entry not yet committed.
    pub(super) fn newest_batch(&self) -> Option<u64> {
        self.view().values().map(|e| e.batch).max()
    }

    pub(super) fn len(&self) -> usize {
        self.view().len()
    }
}
