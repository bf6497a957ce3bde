//! Element-level changes: a key's new state written as an edit of the state
//! before it, so that adding one member to a big set costs the log and the wire
//! about what it costs on a small one.
//!
//! An edit names the version of the state it edits (its base). A datacenter
//! applies it only to that state; one that holds another state (it took a
//! concurrent write the editor had not seen) cannot rebuild the new state, and
//! asks for a snapshot instead of guessing.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use meridian_policies::Version;
use serde::{Deserialize, Serialize};

use super::{Data, SortedSet, Value};

/// A state as an edit of the one before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patch {
    /// The version of the state it edits.
    #[serde(with = "version_bytes")]
    pub base: Version,
    /// The edit.
    pub edit: Edit,
    /// The expiry of the new state.
    pub expire_at_ms: Option<u64>,
}

impl Eq for Patch {}

/// What changed, by type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Edit {
    /// Fields removed (order kept for the rest), then fields set (a new field goes
    /// last, an existing one keeps its place).
    Hash {
        removed: Vec<Vec<u8>>,
        set: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Members removed and added.
    Set {
        removed: Vec<Vec<u8>>,
        added: Vec<Vec<u8>>,
    },
    /// Members removed, and members added or given a new score.
    Zset {
        removed: Vec<Vec<u8>>,
        set: Vec<(Vec<u8>, f64)>,
    },
    /// `len` items of the old list from `start` kept, with `front` before them
    /// and `back` after: pushes and pops at the ends (a capped list's LPUSH and
    /// LTRIM).
    ListWindow {
        front: Vec<Vec<u8>>,
        start: u64,
        len: u64,
        back: Vec<Vec<u8>>,
    },
    /// The items between the first `prefix` and the last `suffix` replaced by `middle`.
    List {
        prefix: u64,
        suffix: u64,
        middle: Vec<Vec<u8>>,
    },
    /// The bytes between the first `prefix` and the last `suffix` replaced by `middle`.
    String {
        prefix: u64,
        suffix: u64,
        middle: Vec<u8>,
    },
}

/// Values with fewer elements (or string bytes) than this are always written whole.
const MIN_ELEMENTS: usize = 16;
const MIN_STRING_BYTES: usize = 1024;

impl Patch {
    /// `new` as an edit of `old` (whose version is `base`), when the edit is at most
    /// half the size of `new` and rebuilds it exactly; `None` otherwise.
    pub fn between(base: Version, old: &Value, new: &Value) -> Option<Patch> {
        if old.elements() < MIN_ELEMENTS && old.size() < MIN_STRING_BYTES {
            return None;
        }
        let edit = Edit::between(&old.data, &new.data)?;
        if edit.size() * 2 > new.size() {
            return None;
        }
        let patch = Patch {
            base,
            edit,
            expire_at_ms: new.expire_at_ms,
        };
        // Each edit rebuilds its type's state exactly by construction, but a hash's
        // field order only when fields kept their places and new ones came last:
        // an edit that would reorder a hash is not used.
        keeps_hash_order(&patch.edit, &old.data, &new.data).then_some(patch)
    }

    /// The state this edit makes of `old`; `None` when `old` is not of its type.
    pub fn apply(&self, old: &Value) -> Option<Value> {
        Some(Value {
            data: self.edit.apply(&old.data)?,
            expire_at_ms: self.expire_at_ms,
        })
    }
}

/// Whether applying `edit` to the hash `old` lists the fields in `new`'s order:
/// the fields kept, in their places, then the new ones in the edit's order.
fn keeps_hash_order(edit: &Edit, old: &Data, new: &Data) -> bool {
    let (Edit::Hash { removed, set }, Data::Hash(old), Data::Hash(new)) = (edit, old, new) else {
        return true;
    };
    let removed: std::collections::HashSet<&[u8]> = removed.iter().map(Vec::as_slice).collect();
    let kept = old.keys().filter(|f| !removed.contains(f.as_slice()));
    let added = set.iter().map(|(f, _)| f).filter(|f| !old.contains_key(*f));
    kept.chain(added).eq(new.keys())
}

impl Edit {
    fn between(old: &Data, new: &Data) -> Option<Edit> {
        Some(match (old, new) {
            (Data::Hash(old), Data::Hash(new)) => Edit::Hash {
                removed: old
                    .keys()
                    .filter(|k| !new.contains_key(*k))
                    .cloned()
                    .collect(),
                set: new
                    .iter()
                    .filter(|(k, v)| old.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
            (Data::Set(old), Data::Set(new)) => Edit::Set {
                removed: old.difference(new).cloned().collect(),
                added: new.difference(old).cloned().collect(),
            },
            (Data::Zset(old), Data::Zset(new)) => Edit::Zset {
                removed: old
                    .by_member()
                    .filter(|(m, _)| new.score(m).is_none())
                    .map(|(m, _)| m.to_vec())
                    .collect(),
                set: new
                    .by_member()
                    .filter(|(m, s)| old.score(m).is_none_or(|o| o.to_bits() != s.to_bits()))
                    .map(|(m, s)| (m.to_vec(), s))
                    .collect(),
            },
            (Data::List(old), Data::List(new)) => {
                let (prefix, suffix) = common_ends(old.iter(), new.iter(), old.len(), new.len());
                let middle = Edit::List {
                    prefix: prefix as u64,
                    suffix: suffix as u64,
                    middle: new.range(prefix..new.len() - suffix).cloned().collect(),
                };
                match list_window(old, new) {
                    Some(window) if window.size() < middle.size() => window,
                    _ => middle,
                }
            }
            (Data::String(old), Data::String(new)) => {
                let (prefix, suffix) = common_ends(old.iter(), new.iter(), old.len(), new.len());
                Edit::String {
                    prefix: prefix as u64,
                    suffix: suffix as u64,
                    middle: new[prefix..new.len() - suffix].to_vec(),
                }
            }
            _ => return None,
        })
    }

    fn apply(&self, old: &Data) -> Option<Data> {
        Some(match (self, old) {
            (Edit::Hash { removed, set }, Data::Hash(old)) => {
                let mut fields: IndexMap<Vec<u8>, Vec<u8>> = old.clone();
                for field in removed {
                    fields.shift_remove(field);
                }
                for (field, value) in set {
                    fields.insert(field.clone(), value.clone());
                }
                Data::Hash(fields)
            }
            (Edit::Set { removed, added }, Data::Set(old)) => {
                let mut members: BTreeSet<Vec<u8>> = old.clone();
                for m in removed {
                    members.remove(m);
                }
                members.extend(added.iter().cloned());
                Data::Set(members)
            }
            (Edit::Zset { removed, set }, Data::Zset(old)) => {
                let mut members: SortedSet = old.clone();
                for m in removed {
                    members.remove(m);
                }
                for (m, s) in set {
                    members.insert(m.clone(), *s);
                }
                Data::Zset(members)
            }
            (
                Edit::ListWindow {
                    front,
                    start,
                    len,
                    back,
                },
                Data::List(old),
            ) => {
                let (start, len) = (usize::try_from(*start).ok()?, usize::try_from(*len).ok()?);
                if start.checked_add(len)? > old.len() {
                    return None;
                }
                let mut items: std::collections::VecDeque<Vec<u8>> =
                    front.iter().cloned().collect();
                items.extend(old.range(start..start + len).cloned());
                items.extend(back.iter().cloned());
                Data::List(items)
            }
            (
                Edit::List {
                    prefix,
                    suffix,
                    middle,
                },
                Data::List(old),
            ) => {
                let (p, s) = ends(*prefix, *suffix, old.len())?;
                let mut items = old.clone();
                let tail = items.split_off(old.len() - s);
                items.truncate(p);
                items.extend(middle.iter().cloned());
                items.extend(tail);
                Data::List(items)
            }
            (
                Edit::String {
                    prefix,
                    suffix,
                    middle,
                },
                Data::String(old),
            ) => {
                let (p, s) = ends(*prefix, *suffix, old.len())?;
                let mut bytes = old[..p].to_vec();
                bytes.extend_from_slice(middle);
                bytes.extend_from_slice(&old[old.len() - s..]);
                Data::String(bytes)
            }
            _ => return None,
        })
    }

    /// About how many bytes it takes.
    fn size(&self) -> usize {
        const ELEMENT: usize = 2;
        match self {
            Edit::Hash { removed, set } => {
                removed.iter().map(|f| f.len() + ELEMENT).sum::<usize>()
                    + set
                        .iter()
                        .map(|(f, v)| f.len() + v.len() + 2 * ELEMENT)
                        .sum::<usize>()
            }
            Edit::Set { removed, added } => {
                removed.iter().chain(added).map(|m| m.len() + ELEMENT).sum()
            }
            Edit::Zset { removed, set } => {
                removed.iter().map(|m| m.len() + ELEMENT).sum::<usize>()
                    + set
                        .iter()
                        .map(|(m, _)| m.len() + 8 + ELEMENT)
                        .sum::<usize>()
            }
            Edit::List { middle, .. } => {
                middle.iter().map(|i| i.len() + ELEMENT).sum::<usize>() + 20
            }
            Edit::ListWindow { front, back, .. } => {
                front
                    .iter()
                    .chain(back)
                    .map(|i| i.len() + ELEMENT)
                    .sum::<usize>()
                    + 20
            }
            Edit::String { middle, .. } => middle.len() + 20,
        }
    }
}

/// How many leading and trailing elements two sequences share, not overlapping.
fn common_ends<T: PartialEq>(
    old: impl DoubleEndedIterator<Item = T> + Clone,
    new: impl DoubleEndedIterator<Item = T> + Clone,
    old_len: usize,
    new_len: usize,
) -> (usize, usize) {
    let prefix = old
        .clone()
        .zip(new.clone())
        .take_while(|(a, b)| a == b)
        .count();
    let room = old_len.min(new_len) - prefix;
    let suffix = old
        .rev()
        .zip(new.rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    (prefix, suffix)
}

/// How far into either list a window of the old one is looked for.
const WINDOW_SEARCH: usize = 64;

/// `new` as a run of `old` with items pushed at either end: the run starts at one
/// of the first items of `old` (pops at the front) and at one of the first items
/// of `new` (pushes at the front).
fn list_window(
    old: &std::collections::VecDeque<Vec<u8>>,
    new: &std::collections::VecDeque<Vec<u8>>,
) -> Option<Edit> {
    let run = |a: usize, k: usize| {
        old.range(a..)
            .zip(new.range(k..))
            .take_while(|(x, y)| x == y)
            .count()
    };
    // Each run measured costs up to the list's length: a few at most.
    let mut runs_left = 8;
    let mut best = (0, 0, 0);
    for (a, first) in old.iter().take(WINDOW_SEARCH).enumerate() {
        for (k, item) in new.iter().take(WINDOW_SEARCH).enumerate() {
            if first == item && runs_left > 0 {
                runs_left -= 1;
                let len = run(a, k);
                if len > best.2 {
                    best = (a, k, len);
                }
            }
        }
        if best.2 > 0 && a > best.0 {
            break;
        }
    }
    let (start, at, len) = best;
    (len > 0).then(|| Edit::ListWindow {
        front: new.range(..at).cloned().collect(),
        start: start as u64,
        len: len as u64,
        back: new.range(at + len..).cloned().collect(),
    })
}

/// `prefix` and `suffix` checked against a length.
fn ends(prefix: u64, suffix: u64, len: usize) -> Option<(usize, usize)> {
    let (p, s) = (usize::try_from(prefix).ok()?, usize::try_from(suffix).ok()?);
    (p.checked_add(s)? <= len).then_some((p, s))
}

impl Value {
    /// How many elements it has (1 for a string).
    pub fn elements(&self) -> usize {
        match &self.data {
            Data::String(_) => 1,
            Data::Hash(f) => f.len(),
            Data::Set(m) => m.len(),
            Data::List(i) => i.len(),
            Data::Zset(z) => z.len(),
        }
    }
}

/// A version as its binary encoding.
mod version_bytes {
    use meridian_policies::Version;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Version, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&v.to_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        Version::decode(&bytes).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policies::Timestamp;

    /// Whether two values are equal with their elements in the same order.
    fn same_order(a: &Value, b: &Value) -> bool {
        match (&a.data, &b.data) {
            (Data::Hash(x), Data::Hash(y)) => {
                a.expire_at_ms == b.expire_at_ms && x.iter().eq(y.iter())
            }
            _ => a == b,
        }
    }

    fn base() -> Version {
        Version::new(Timestamp::from_u64(7 << 16), "dc0").with_seq(3)
    }

    fn value(data: Data) -> Value {
        Value {
            data,
            expire_at_ms: None,
        }
    }

    /// Each kind of edit rebuilds the new state exactly, is small, and survives
    /// encoding; a small value or a rewrite is written whole.
    #[test]
    fn edits_rebuild_the_new_state_and_stay_small() {
        let big_set: BTreeSet<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut more = big_set.clone();
        more.insert(b"new".to_vec());
        more.remove(7u32.to_be_bytes().as_slice());
        let hash: IndexMap<Vec<u8>, Vec<u8>> = (0..500u32)
            .map(|i| (i.to_be_bytes().to_vec(), b"v".to_vec()))
            .collect();
        let mut hash2 = hash.clone();
        hash2.insert(3u32.to_be_bytes().to_vec(), b"changed".to_vec());
        hash2.shift_remove(&9u32.to_be_bytes().to_vec());
        hash2.insert(b"last".to_vec(), b"x".to_vec());
        let list: std::collections::VecDeque<Vec<u8>> =
            (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut list2 = list.clone();
        list2.push_front(b"head".to_vec());
        list2.pop_back();
        let zset: SortedSet = (0..200u32)
            .map(|i| (i.to_be_bytes().to_vec(), f64::from(i)))
            .collect();
        let mut zset2 = zset.clone();
        zset2.insert(5u32.to_be_bytes().to_vec(), -1.0);
        let text = vec![b'a'; 5000];
        let mut text2 = text.clone();
        text2.extend_from_slice(b"appended");
        for (old, new) in [
            (Data::Set(big_set), Data::Set(more)),
            (Data::Hash(hash), Data::Hash(hash2)),
            (Data::List(list), Data::List(list2)),
            (Data::Zset(zset), Data::Zset(zset2)),
            (Data::String(text), Data::String(text2)),
        ] {
            let (old, new) = (value(old), value(new));
            let patch = Patch::between(base(), &old, &new)
                .unwrap_or_else(|| panic!("no edit for a {}", new.data.type_name()));
            assert!(same_order(&patch.apply(&old).unwrap(), &new));
            let bytes = postcard::to_stdvec(&patch).unwrap();
            assert!(
                bytes.len() < 64,
                "{} bytes for {:?}",
                bytes.len(),
                patch.edit
            );
            assert_eq!(postcard::from_bytes::<Patch>(&bytes).unwrap(), patch);
        }
        let small = value(Data::Set([b"a".to_vec()].into()));
        let small2 = value(Data::Set([b"a".to_vec(), b"b".to_vec()].into()));
        assert_eq!(Patch::between(base(), &small, &small2), None);
        let list = value(Data::List(
            (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect(),
        ));
        let reversed = value(Data::List(
            (0..100u32)
                .rev()
                .map(|i| i.to_be_bytes().to_vec())
                .collect(),
        ));
        assert_eq!(Patch::between(base(), &list, &reversed), None);
        // An edit of another type's state does not apply.
        let patch = Patch::between(
            base(),
            &list,
            &value(Data::List(std::collections::VecDeque::new())),
        );
        assert!(patch.is_none_or(|p| p.apply(&small).is_none()));
    }
}
