//! SCAN of the embedded store: keys in byte order, the memtable's newer state
//! over the store's, resumed strictly after the last key a page looked at. The
//! resume key stays in the proxy, behind a cursor number, since Redis clients
//! carry cursors as integers.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redb::ReadableTable;

use super::{Snapshot, damaged, engine};
use crate::change::Value;
use crate::command::glob;
use crate::engine::backend::embedded::StoreError;
use crate::engine::backend::{ScanArgs, ScanPage, Stored};
use crate::engine::memtable::View;

/// How long a cursor is kept unused before it is forgotten.
const CURSOR_IDLE: Duration = Duration::from_secs(600);
/// How many cursors are kept at most (the least recently used go first).
const MAX_CURSORS: u64 = 100_000;
/// Cursor numbers stay below 2^53, so clients that read them as a JavaScript
/// number read them exactly.
const CURSOR_SPACE: u64 = 1 << 53;

/// Cursors handed out, each naming the key its next page starts after.
#[derive(Debug)]
pub(in crate::engine) struct Cursors {
    next: AtomicU64,
    resume: moka::sync::Cache<u64, std::sync::Arc<Vec<u8>>>,
}

impl Cursors {
    pub(in crate::engine) fn new() -> Cursors {
        // Numbers start somewhere different at each start, so a cursor from before
        // a restart is unknown rather than someone else's.
        let seed = crate::engine::wall_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Cursors {
            next: AtomicU64::new(seed % CURSOR_SPACE),
            resume: moka::sync::Cache::builder()
                .max_capacity(MAX_CURSORS)
                .time_to_idle(CURSOR_IDLE)
                .build(),
        }
    }

    /// The key a page for `cursor` starts after: `None` for cursor 0 (the start).
    pub(in crate::engine) fn resume_after(
        &self,
        cursor: u64,
    ) -> Result<Option<std::sync::Arc<Vec<u8>>>, String> {
        if cursor == 0 {
            return Ok(None);
        }
        self.resume.get(&cursor).map(Some).ok_or_else(|| {
            "ERR invalid cursor: this proxy did not hand it out, or it went unused for 10 minutes; start again from 0"
                .to_owned()
        })
    }

    /// A new cursor resuming after `key`.
    pub(in crate::engine) fn issue(&self, key: Vec<u8>) -> u64 {
        let cursor = loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed) % CURSOR_SPACE;
            if n != 0 {
                break n;
            }
        };
        self.resume.insert(cursor, std::sync::Arc::new(key));
        cursor
    }
}

/// A page's keys, and the key the next page starts after (`None`: no more).
pub(super) type Page = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// One page: up to `args.count` live keys looked at after `after` (deleted and
/// expired ones are passed over without counting), those of them the pattern
/// and type ask for, and the last key looked at when more may follow.
pub(super) fn page(
    view: &View<'_>,
    snapshot: &Snapshot,
    after: Option<&[u8]>,
    args: &ScanArgs<'_>,
    now_ms: u64,
) -> Result<Page, StoreError> {
    let count = args.count.max(1);
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    // The memtable's newer state, in key order, over the store's.
    let newer: BTreeMap<&[u8], Option<&Value>> = view
        .iter()
        .filter(|(key, _)| after.is_none_or(|a| key.as_slice() > a))
        .map(|(key, entry)| (key.as_slice(), entry.value.as_ref()))
        .collect();
    let mut newer = newer.into_iter().peekable();
    let mut stored = try_engine!(
        "scan",
        snapshot.table.range::<&[u8]>((start, Bound::Unbounded))
    );
    let mut next_stored = || -> Result<Option<(Vec<u8>, Value)>, StoreError> {
        let Some(entry) = stored.next() else {
            return Ok(None);
        };
        let (k, v) = try_engine!("scan", entry);
        let key = k.value().to_vec();
        let record = Stored::decode(v.value()).map_err(|e| damaged(&key, e.to_string()))?;
        Ok(Some((key, record.value)))
    };
    let mut from_store = next_stored()?;
    let (mut keys, mut looked) = (Vec::new(), 0);
    loop {
        // The smaller of the two next keys; the memtable's state wins a tie.
        let take_newer = match (newer.peek(), &from_store) {
            (None, None) => return Ok((keys, None)),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((n, _)), Some((s, _))) => *n <= s.as_slice(),
        };
        let (key, value) = if take_newer {
            let Some((key, value)) = newer.next() else {
                continue;
            };
            if from_store
                .as_ref()
                .is_some_and(|(s, _)| s.as_slice() == key)
            {
                from_store = next_stored()?;
            }
            (key.to_vec(), value.cloned())
        } else {
            let Some((key, value)) = from_store.take() else {
                continue;
            };
            from_store = next_stored()?;
            (key, Some(value))
        };
        let Some(value) = value.filter(|v| !v.expired(now_ms)) else {
            continue;
        };
        looked += 1;
        if wanted(&key, &value, args) {
            keys.push(key.clone());
        }
        if looked == count {
            let more = newer.peek().is_some() || from_store.is_some();
            return Ok((keys, more.then_some(key)));
        }
    }
}

/// Whether a live key looked at goes in the page: of the pattern and type asked.
fn wanted(key: &[u8], value: &Value, args: &ScanArgs<'_>) -> bool {
    !crate::engine::placement::is_own_key(key)
        && args.pattern.is_none_or(|p| glob::matches(p, key))
        && args
            .type_name
            .is_none_or(|t| t.eq_ignore_ascii_case(value.data.type_name().as_bytes()))
}

/// A page as SCAN answers it, its resume key behind a new cursor.
pub(super) fn answer(cursors: &Cursors, keys: Vec<Vec<u8>>, resume: Option<Vec<u8>>) -> ScanPage {
    ScanPage {
        cursor: resume.map_or(0, |key| cursors.issue(key)),
        keys,
    }
}

/// A point of the key space between the store's first and last keys, spread as
/// their first eight bytes are: where RANDOMKEY starts looking.
pub(super) fn random_point(snapshot: &Snapshot, seed: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let first = try_engine!("scan", snapshot.table.first()).map(|(k, _)| k.value().to_vec());
    let last = try_engine!("scan", snapshot.table.last()).map(|(k, _)| k.value().to_vec());
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(None);
    };
    let prefix = |key: &[u8]| {
        let mut bytes = [0u8; 8];
        let n = key.len().min(8);
        bytes[..n].copy_from_slice(&key[..n]);
        u64::from_be_bytes(bytes)
    };
    let (lo, hi) = (prefix(&first), prefix(&last));
    let point = lo + seed % (hi - lo).saturating_add(1).max(1);
    Ok(Some(point.to_be_bytes().to_vec()))
}
