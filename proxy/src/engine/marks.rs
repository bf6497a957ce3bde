//! Each user's newest change: what a session that read the user's keys has seen.
//!
//! Every change names its user and carries a sequence number of its origin. A
//! session that read some of user `u`'s keys here saw at most what `u`'s changes
//! applied here wrote, so its token needs only `u`'s newest change per origin, not
//! everything this datacenter has applied: a datacenter serving the session next
//! then waits for `u`'s changes only, never for unrelated ones.
//!
//! The writer records a change here before the change becomes visible to reads,
//! so a mark is never behind what a read returned. The table is bounded: past
//! [`MAX_USERS`] it starts over, and a user without a mark is answered with the
//! home's whole position, which covers everything (only less precisely).

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;

/// Users whose newest change is remembered before the table starts over.
const MAX_USERS: usize = 1 << 20;

/// A user's newest change per origin (almost always one origin: its home), the
/// origin as its index in [`Table::origins`].
#[derive(Debug, Clone)]
enum Mark {
    One((u32, u64)),
    Many(Vec<(u32, u64)>),
}

impl Mark {
    fn advance(&mut self, origin: u32, seq: u64) {
        match self {
            Mark::One((o, newest)) if *o == origin => *newest = (*newest).max(seq),
            Mark::One(first) => *self = Mark::Many(vec![*first, (origin, seq)]),
            Mark::Many(all) => match all.iter_mut().find(|(o, _)| *o == origin) {
                Some((_, newest)) => *newest = (*newest).max(seq),
                None => all.push((origin, seq)),
            },
        }
    }

    fn each(&self) -> &[(u32, u64)] {
        match self {
            Mark::One(first) => std::slice::from_ref(first),
            Mark::Many(all) => all,
        }
    }
}

/// Users are keyed by a 64-bit hash of their name, not the name: the table holds
/// no copy of it and a lookup compares no bytes. Two users whose names collide
/// share a mark, the newer of their changes: a session then waits for a change
/// it did not need, never misses one it did.
#[derive(Debug, Default)]
struct Table {
    users: std::collections::HashMap<u64, Mark, BuildHasherDefault<Hashed>>,
    origins: Vec<Box<str>>,
}

/// The identity on keys that are already hashes.
#[derive(Debug, Default)]
struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Default)]
pub(super) struct Marks {
    table: Mutex<Table>,
    hasher: foldhash::fast::RandomState,
}

impl Marks {
    /// Records that `user`'s change `seq` of `origin` is about to become visible.
    pub(super) fn record<'a>(&self, changes: impl IntoIterator<Item = (&'a [u8], &'a str, u64)>) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Table { users, origins } = &mut *table;
        let mut last: Option<(&str, u32)> = None;
        for (user, origin, seq) in changes {
            let origin = match last {
                Some((name, index)) if name == origin => index,
                _ => {
                    let index = match origins.iter().position(|o| &**o == origin) {
                        Some(index) => index as u32,
                        None => {
                            origins.push(origin.into());
                            (origins.len() - 1) as u32
                        }
                    };
                    last = Some((origin, index));
                    index
                }
            };
            let user = self.hasher.hash_one(user);
            if users.len() >= MAX_USERS && !users.contains_key(&user) {
                users.clear();
            }
            users
                .entry(user)
                .and_modify(|mark| mark.advance(origin, seq))
                .or_insert(Mark::One((origin, seq)));
        }
    }

    /// `user`'s newest change per origin, when known.
    pub(super) fn of(&self, user: &[u8]) -> Option<Vec<(Box<str>, u64)>> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mark = table.users.get(&self.hasher.hash_one(user))?;
        Some(
            (mark.each().iter())
                .map(|&(o, seq)| (table.origins[o as usize].clone(), seq))
                .collect(),
        )
    }

    /// Forgets every mark (a snapshot replaced data without changes to mark).
    pub(super) fn clear(&self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.users.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_users_newest_change_per_origin() {
        let marks = Marks::default();
        marks.record([
            (&b"alice"[..], "a", 3),
            (b"bob", "a", 4),
            (b"alice", "a", 2),
        ]);
        marks.record([(&b"alice"[..], "b", 9)]);
        assert_eq!(
            marks.of(b"alice"),
            Some(vec![("a".into(), 3), ("b".into(), 9)])
        );
        assert_eq!(marks.of(b"bob"), Some(vec![("a".into(), 4)]));
        assert_eq!(marks.of(b"carol"), None);
        marks.clear();
        assert_eq!(marks.of(b"alice"), None);
    }
}
