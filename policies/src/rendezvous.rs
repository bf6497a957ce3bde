//! Home assignment by rendezvous (highest-random-weight) hashing
//! (Thaler and Ravishankar, 1998), with pins and weights.
//!
//! Every (user, datacenter) pair gets a pseudo-random score; the user's home is the
//! datacenter with the highest score, and the rest, by falling score, are its
//! successors for failover. Adding a datacenter moves only the users whose new
//! highest score is the newcomer's (about 1/(n+1) of them); removing one moves only its
//! own users. Weights use the logarithmic method (Schindelhauer and Schomaker, 2005):
//! `score = -weight / ln(u)` with `u` uniform in (0, 1), so a datacenter's expected
//! share is proportional to its weight.
//!
//! The hash is XXH3-64, seeded per datacenter with the XXH3 of its id: stable across
//! platforms, builds and versions, which a home assignment must be.

use std::collections::HashMap;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One datacenter a user may live in.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The datacenter id.
    pub id: String,
    /// Relative share of users; 1.0 for an even spread.
    pub weight: f64,
}

impl Candidate {
    /// A candidate of weight 1.
    pub fn new(id: impl Into<String>) -> Self {
        Candidate {
            id: id.into(),
            weight: 1.0,
        }
    }
}

/// Why a [`Rendezvous`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RendezvousError {
    /// No datacenters to choose from.
    #[error("no datacenters to assign users to")]
    NoCandidates,
    /// The same id twice.
    #[error("datacenter {0:?} is listed twice")]
    DuplicateId(String),
    /// A weight that is not a positive, finite number.
    #[error("datacenter {id:?} has weight {weight}, but weights must be positive and finite")]
    BadWeight {
        /// The datacenter.
        id: String,
        /// Its weight.
        weight: f64,
    },
    /// A pin to a datacenter that is not a candidate.
    #[error("user {user:?} is pinned to {id:?}, which is not a datacenter")]
    UnknownPin {
        /// The pinned user.
        user: String,
        /// The datacenter it names.
        id: String,
    },
}

/// The home of every user: pins first, rendezvous hashing for everyone else.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    ids: Vec<String>,
    seeds: Vec<u64>,
    weights: Vec<f64>,
    pins: HashMap<String, usize>,
}

impl Rendezvous {
    /// Builds the assignment over `candidates` (indices below refer to this order),
    /// with `pins` mapping user ids to datacenter ids.
    pub fn new<'a>(
        candidates: Vec<Candidate>,
        pins: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, RendezvousError> {
        if candidates.is_empty() {
            return Err(RendezvousError::NoCandidates);
        }
        let mut index = HashMap::with_capacity(candidates.len());
        for (i, c) in candidates.iter().enumerate() {
            if index.insert(c.id.clone(), i).is_some() {
                return Err(RendezvousError::DuplicateId(c.id.clone()));
            }
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(RendezvousError::BadWeight {
                    id: c.id.clone(),
                    weight: c.weight,
                });
            }
        }
        let pins = pins
            .into_iter()
            .map(|(user, id)| match index.get(id) {
                Some(&i) => Ok((user.to_owned(), i)),
                None => Err(RendezvousError::UnknownPin {
                    user: user.into(),
                    id: id.into(),
                }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Rendezvous {
            seeds: candidates
                .iter()
                .map(|c| xxh3_64(c.id.as_bytes()))
                .collect(),
            weights: candidates.iter().map(|c| c.weight).collect(),
            ids: candidates.into_iter().map(|c| c.id).collect(),
            pins,
        })
    }

    /// The datacenter ids, in candidate order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Index of `user`'s home datacenter.
    pub fn home_of(&self, user: &str) -> usize {
        if let Some(&pinned) = self.pins.get(user) {
            return pinned;
        }
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for i in 0..self.ids.len() {
            let score = self.score(user, i);
            if score > best_score {
                (best, best_score) = (i, score);
            }
        }
        best
    }

    /// Id of `user`'s home datacenter.
    pub fn home_id(&self, user: &str) -> &str {
        &self.ids[self.home_of(user)]
    }

    /// Every datacenter in `user`'s order of preference: the home first (the pin, if
    /// any), then the others by falling score. Failover walks this order.
    pub fn ranking(&self, user: &str) -> Vec<usize> {
        let mut order: Vec<(usize, f64)> = (0..self.ids.len())
            .map(|i| (i, self.score(user, i)))
            .collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut ranking: Vec<usize> = order.into_iter().map(|(i, _)| i).collect();
        if let Some(&pinned) = self.pins.get(user) {
            ranking.retain(|&i| i != pinned);
            ranking.insert(0, pinned);
        }
        ranking
    }

    /// Whether `user` is pinned to a datacenter (its home never moves).
    pub fn is_pinned(&self, user: &str) -> bool {
        self.pins.contains_key(user)
    }

    /// `user`'s order with `first` (where its home moved to) at the front: the
    /// pin still comes first for a pinned user.
    pub fn ranking_from(&self, user: &str, first: usize) -> Vec<usize> {
        let mut ranking = self.ranking(user);
        if first < self.ids.len() && !self.is_pinned(user) {
            ranking.retain(|&i| i != first);
            ranking.insert(0, first);
        }
        ranking
    }

    /// The first datacenter in `user`'s ranking for which `usable` holds.
    pub fn first_usable(&self, user: &str, usable: impl Fn(usize) -> bool) -> Option<usize> {
        self.ranking(user).into_iter().find(|&i| usable(i))
    }

    fn score(&self, user: &str, i: usize) -> f64 {
        let hash = xxh3_64_with_seed(user.as_bytes(), self.seeds[i]);
        // 53 random bits mapped into the open interval (0, 1).
        let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -self.weights[i] / unit.ln()
    }
}

#[cfg(test)]
mod tests;
