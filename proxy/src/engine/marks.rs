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

use std::sync::Mutex;

/// Users whose newest change is remembered before the table starts over.
const MAX_USERS: usize = 1 << 20;

/// A user's newest change per origin (almost always one origin: its home).
type Mark = Vec<(Box<str>, u64)>;

#[derive(Debug, Default)]
pub(super) struct Marks {
    users: Mutex<super::KeyMap<Vec<u8>, Mark>>,
}

impl Marks {
    /// Records that `user`'s change `seq` of `origin` is about to become visible.
    pub(super) fn record<'a>(&self, changes: impl IntoIterator<Item = (&'a [u8], &'a str, u64)>) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for (user, origin, seq) in changes {
            if users.len() >= MAX_USERS && !users.contains_key(user) {
                users.clear();
            }
            // A user already marked (the common case) costs no allocation.
            let Some(mark) = users.get_mut(user) else {
                users.insert(user.to_vec(), vec![(origin.into(), seq)]);
                continue;
            };
            match mark.iter_mut().find(|(o, _)| &**o == origin) {
                Some((_, newest)) => *newest = (*newest).max(seq),
                None => mark.push((origin.into(), seq)),
            }
        }
    }

    /// `user`'s newest change per origin, when known.
    pub(super) fn of(&self, user: &[u8]) -> Option<Mark> {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.get(user).cloned()
    }

    /// Forgets every mark (a snapshot replaced data without changes to mark).
    pub(super) fn clear(&self) {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
