//! A sorted set: members with scores, ordered by score and then by member bytes,
//! as Redis orders them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A score. Never NaN (commands refuse a NaN result before it is stored), so the
/// order is total; `-0` and `0` compare equal, as Redis compares them.
#[derive(Debug, Clone, Copy)]
pub struct Score(pub f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal)
    }
}

/// Members and their scores, indexed both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortedSet {
    scores: BTreeMap<Vec<u8>, Score>,
    order: BTreeSet<(Score, Vec<u8>)>,
}

impl SortedSet {
    /// An empty sorted set.
    pub fn new() -> SortedSet {
        SortedSet::default()
    }

    /// How many members it has.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// The score of `member`.
    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).map(|s| s.0)
    }

    /// Sets `member`'s score; returns whether the member is new.
    pub fn insert(&mut self, member: Vec<u8>, score: f64) -> bool {
        let score = Score(score);
        match self.scores.insert(member.clone(), score) {
            Some(old) => {
                self.order.remove(&(old, member.clone()));
                self.order.insert((score, member));
                false
            }
            None => {
                self.order.insert((score, member));
                true
            }
        }
    }

    /// Removes `member`; returns whether it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(score) => {
                self.order.remove(&(score, member.to_vec()));
                true
            }
            None => false,
        }
    }

    /// Members and scores in order: by score, then by member.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], f64)> + ExactSizeIterator {
        self.order.iter().map(|(s, m)| (m.as_slice(), s.0))
    }

    /// Members and scores in member byte order.
    pub fn by_member(&self) -> impl Iterator<Item = (&[u8], f64)> {
        self.scores.iter().map(|(m, s)| (m.as_slice(), s.0))
    }

    /// The position of `member` in order, from the lowest score.
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        let score = *self.scores.get(member)?;
        Some(self.order.range(..(score, member.to_vec())).count())
    }

    /// Bytes of data it holds (members, and eight per score).
    pub fn size(&self) -> usize {
        self.scores.keys().map(|m| m.len() + 8).sum()
    }
}

impl FromIterator<(Vec<u8>, f64)> for SortedSet {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, f64)>>(iter: I) -> SortedSet {
        let mut set = SortedSet::new();
        for (member, score) in iter {
            set.insert(member, score);
        }
        set
    }
}

/// In the log and on the wire: a sequence of `(member, score)` pairs in order.
impl Serialize for SortedSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.order.iter().map(|(score, m)| (m, score.0)))
    }
}

impl<'de> Deserialize<'de> for SortedSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SortedSet, D::Error> {
        let pairs = Vec::<(Vec<u8>, f64)>::deserialize(d)?;
        if pairs.iter().any(|(_, score)| score.is_nan()) {
            return Err(serde::de::Error::custom(
                "a sorted set member has a NaN score",
            ));
        }
        Ok(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_score_then_member_and_reindexes_on_update() {
        let mut z = SortedSet::new();
        assert!(z.insert(b"b".to_vec(), 2.0));
        assert!(z.insert(b"a".to_vec(), 2.0));
        assert!(z.insert(b"c".to_vec(), -1.0));
        assert!(!z.insert(b"c".to_vec(), 5.0));
        let order: Vec<&[u8]> = z.iter().map(|(m, _)| m).collect();
        assert_eq!(order, [b"a", b"b", b"c"]);
        assert_eq!(z.rank(b"c"), Some(2));
        assert_eq!(z.score(b"c"), Some(5.0));
        assert!(z.remove(b"a"));
        assert!(!z.remove(b"a"));
        assert_eq!((z.len(), z.rank(b"b")), (2, Some(0)));
        let bytes = postcard::to_stdvec(&z).unwrap();
        assert_eq!(postcard::from_bytes::<SortedSet>(&bytes).unwrap(), z);
    }
}
