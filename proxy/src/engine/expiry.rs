//! Active expiry. Reads hide a key whose TTL has passed at once (lazily), as Redis
//! does; this deletes it, so DBSIZE, INFO and the store stop counting it. The
//! deletion is an ordinary change made by the datacenter that writes the key's
//! user (its home): replicated like any delete, a tombstone everywhere, and never
//! two datacenters deleting one key each on their own.
//!
//! The writer keeps every key with a TTL in [`Expiring`], ordered by expiry, from
//! every change it logs or applies and from a scan of the store at start-up;
//! it wakes when the earliest falls due.

use std::collections::{BTreeSet, HashMap};

/// Keys with a TTL, by when they expire (milliseconds since the Unix epoch).
#[derive(Debug, Default)]
pub(super) struct Expiring {
    by_time: BTreeSet<(u64, Vec<u8>)>,
    at: HashMap<Vec<u8>, u64>,
    /// The sum of every expiry, for the average TTL.
    sum: u128,
}

impl Expiring {
    /// Records `key`'s expiry now (`None`: no TTL, or deleted).
    pub(super) fn set(&mut self, key: &[u8], expire_at: Option<u64>) {
        if self.at.get(key).copied() == expire_at {
            return;
        }
        if let Some(old) = self.at.remove(key) {
            self.by_time.remove(&(old, key.to_vec()));
            self.sum -= u128::from(old);
        }
        if let Some(at) = expire_at {
            self.at.insert(key.to_vec(), at);
            self.by_time.insert((at, key.to_vec()));
            self.sum += u128::from(at);
        }
    }

    /// Takes out up to `max` keys whose expiry is at or before `now`, earliest first.
    pub(super) fn take_due(&mut self, now: u64, max: usize) -> Vec<Vec<u8>> {
        let mut due = Vec::new();
        while due.len() < max {
            let Some((at, _)) = self.by_time.first() else {
                break;
            };
            if *at > now {
                break;
            }
            let Some((at, key)) = self.by_time.pop_first() else {
                break;
            };
            self.at.remove(&key);
            self.sum -= u128::from(at);
            due.push(key);
        }
        due
    }

    /// When the earliest key expires.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// How many keys have a TTL.
    pub(super) fn len(&self) -> usize {
        self.at.len()
    }

    /// The keys' average expiry (0 with none).
    pub(super) fn average_at(&self) -> u64 {
        match self.at.len() {
            0 => 0,
            n => (self.sum / n as u128) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fall_due_in_order_and_follow_their_latest_expiry() {
        let mut e = Expiring::default();
        e.set(b"a", Some(30));
        e.set(b"b", Some(10));
        e.set(b"c", Some(20));
        e.set(b"c", Some(50)); // a new TTL replaces the old one
        e.set(b"d", Some(5));
        e.set(b"d", None); // PERSIST, or deleted
        assert_eq!((e.len(), e.next_due()), (3, Some(10)));
        assert_eq!(e.average_at(), 30);
        assert_eq!(e.take_due(30, 10), vec![b"b".to_vec(), b"a".to_vec()]);
        assert_eq!(e.take_due(30, 10), Vec::<Vec<u8>>::new());
        assert_eq!((e.len(), e.next_due(), e.average_at()), (1, Some(50), 50));
        e.set(b"x", Some(1));
        e.set(b"y", Some(2));
        assert_eq!(e.take_due(100, 1), vec![b"x".to_vec()]);
        assert_eq!(e.len(), 2);
    }
}
