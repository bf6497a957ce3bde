//! Placement records: which datacenter is a user's home since which change, when
//! the home has moved from its default (homes that follow their users).
//!
//! A record is a key of meridian's own, `__meridian:home:<user>`, written by the
//! change that moves the user (made by the home the user leaves) and replicated
//! and stored like any other key: it reaches every datacenter on the replication
//! stream, is applied in causal order, survives restarts in the store with the
//! applied vector, and travels in snapshots. Clients can neither read nor write
//! it. The engine keeps every record in memory too, for routing: a write needs
//! its user's home before it is queued anywhere.
//!
//! The record's value names the new home and the move's own position (the old
//! home and its sequence number): the new home takes the user's writes once it
//! has applied that change, so it has applied every write the old home made
//! before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::change::{Data, Value};

/// The prefix of placement keys.
pub const PREFIX: &[u8] = b"__meridian:home:";

/// The prefix of every key meridian keeps for itself in the keyspace.
pub const OWN_PREFIX: &[u8] = b"__meridian:";

/// Whether `key` is one of meridian's own (clients may not touch it).
pub fn is_own_key(key: &[u8]) -> bool {
    key.starts_with(OWN_PREFIX)
}

/// The placement key of `user`.
pub fn key(user: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(PREFIX.len() + user.len());
    key.extend_from_slice(PREFIX);
    key.extend_from_slice(user);
    key
}

/// Where a user lives now, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The datacenter that takes the user's writes.
    pub home: Arc<str>,
    /// The datacenter the user moved from: the move is its change `seq`.
    pub from: Arc<str>,
    /// The move's sequence number at `from`.
    pub seq: u64,
    /// When the move was made (wall milliseconds at `from`).
    pub at_ms: u64,
    /// Why: `follow` (its traffic moved) or `operator` (`MERIDIAN HOME`).
    pub why: Arc<str>,
}

impl Placement {
    /// The record as stored: `<home> <from>:<seq> <at_ms> <why>`.
    pub fn to_value(&self) -> Value {
        let text = format!(
            "{} {}:{} {} {}",
            self.home, self.from, self.seq, self.at_ms, self.why
        );
        Value {
            data: Data::String(text.into_bytes()),
            expire_at_ms: None,
        }
    }

    /// Reads a stored record; `None` for anything else.
    pub fn from_value(value: &Value) -> Option<Placement> {
        let Data::String(bytes) = &value.data else {
            return None;
        };
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.split(' ');
        let home = Arc::from(words.next()?);
        let (from, seq) = words.next()?.rsplit_once(':')?;
        let at_ms = words.next()?.parse().ok()?;
        let why = Arc::from(words.next().unwrap_or("follow"));
        Some(Placement {
            home,
            from: Arc::from(from),
            seq: seq.parse().ok()?,
            at_ms,
            why,
        })
    }
}

/// Every placement record this datacenter has applied, by user.
#[derive(Debug, Default)]
pub struct Placements {
    map: RwLock<HashMap<Vec<u8>, Placement>>,
    /// Records held (read without the lock: most clusters have none).
    len: AtomicUsize,
}

impl Placements {
    /// `user`'s record, if its home has moved.
    pub fn get(&self, user: &[u8]) -> Option<Placement> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(user).cloned()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Takes in the new state of `key`, when it is a placement key.
    pub fn observe(&self, key: &[u8], value: Option<&Value>) {
        let Some(user) = key.strip_prefix(PREFIX) else {
            return;
        };
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match value.and_then(Placement::from_value) {
            Some(placement) => {
                map.insert(user.to_vec(), placement);
            }
            None => {
                map.remove(user);
            }
        }
        self.len.store(map.len(), Ordering::Release);
    }

    /// When `me` moved `user` away and is no longer its home: where to. A write
    /// of the user that `me` routed here before the move must not run after it.
    pub fn moved_away(&self, user: &[u8], me: &str) -> Option<Arc<str>> {
        let placement = self.get(user)?;
        (&*placement.from == me && &*placement.home != me).then_some(placement.home)
    }

    /// Users homed by a record at each datacenter.
    pub fn homed(&self) -> HashMap<String, u64> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut out = HashMap::new();
        for placement in map.values() {
            *out.entry(placement.home.to_string()).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_anything_else_is_no_record() {
        let placement = Placement {
            home: "eu-west".into(),
            from: "us-east".into(),
            seq: 42,
            at_ms: 1_700_000_000_000,
            why: "operator".into(),
        };
        assert_eq!(
            Placement::from_value(&placement.to_value()),
            Some(placement.clone())
        );
        let junk = Value {
            data: Data::String(b"eu-west".to_vec()),
            expire_at_ms: None,
        };
        assert_eq!(Placement::from_value(&junk), None);
        let placements = Placements::default();
        assert_eq!(placements.get(b"u1"), None);
        placements.observe(&key(b"u1"), Some(&placement.to_value()));
        placements.observe(b"u2:cart", Some(&placement.to_value()));
        assert_eq!(placements.len(), 1);
        assert_eq!(placements.get(b"u1"), Some(placement));
        assert_eq!(
            placements.moved_away(b"u1", "us-east").as_deref(),
            Some("eu-west")
        );
        assert_eq!(placements.moved_away(b"u1", "eu-west"), None);
        placements.observe(&key(b"u1"), None);
        assert_eq!(placements.get(b"u1"), None);
    }
}
