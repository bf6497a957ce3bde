//! Homes that follow their users: when a user's home should move, and where.
//!
//! A user's home sees where each of the user's writes comes from (the datacenter
//! whose client sent it). [`Traffic`] keeps those counts over a sliding window, in
//! a few buckets; [`decide`] moves the user to another datacenter once that one
//! sent a clear share of the window's writes in both halves of the window (a
//! sustained shift, not a burst), the window holds enough writes to judge, and
//! the last move is long enough ago that a user who commutes between two regions
//! does not make its home thrash. Pure: time is a parameter.

use std::collections::VecDeque;

/// When a home follows its user (`[homes] follow`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FollowRule {
    /// The share of the window's writes (in each half of it) one other
    /// datacenter must have sent, in (0.5, 1].
    pub share: f64,
    /// The fewest writes the window must hold to move the user.
    pub min_writes: u32,
    /// How far back traffic counts, in milliseconds.
    pub window_ms: u64,
    /// The least time between two moves of one user, in milliseconds.
    pub min_interval_ms: u64,
}

impl Default for FollowRule {
    fn default() -> Self {
        FollowRule {
            share: 0.8,
            min_writes: 20,
            window_ms: 10_000,
            min_interval_ms: 60_000,
        }
    }
}

/// Buckets a window is cut into.
const BUCKETS: u64 = 8;

/// One user's recent writes at its home, by the datacenter that sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    bucket_ms: u64,
    /// Oldest first: (bucket number, writes per datacenter).
    buckets: VecDeque<(u64, Vec<u32>)>,
    /// Datacenters.
    n: usize,
}

impl Traffic {
    /// No traffic yet, among `n` datacenters, for `rule`'s window.
    pub fn new(rule: &FollowRule, n: usize) -> Traffic {
        Traffic {
            bucket_ms: (rule.window_ms / BUCKETS).max(1),
            buckets: VecDeque::with_capacity(BUCKETS as usize + 1),
            n,
        }
    }

    /// Counts one write sent from datacenter `from` at `now_ms`. A datacenter
    /// outside the cluster is ignored.
    pub fn record(&mut self, from: usize, now_ms: u64) {
        if from >= self.n {
            return;
        }
        let bucket = now_ms / self.bucket_ms;
        self.prune(now_ms);
        match self.buckets.back_mut() {
            Some((b, counts)) if *b == bucket => counts[from] = counts[from].saturating_add(1),
            // A clock that went back counts in the newest bucket.
            Some((b, counts)) if *b > bucket => counts[from] = counts[from].saturating_add(1),
            _ => {
                let mut counts = vec![0; self.n];
                counts[from] = 1;
                self.buckets.push_back((bucket, counts));
            }
        }
    }

    /// Drops the buckets that have left the window at `now_ms`.
    fn prune(&mut self, now_ms: u64) {
        let first = (now_ms / self.bucket_ms).saturating_sub(BUCKETS - 1);
        while self.buckets.front().is_some_and(|(b, _)| *b < first) {
            self.buckets.pop_front();
        }
    }

    /// Whether no write is within the window at `now_ms` (the entry may go).
    pub fn idle(&self, now_ms: u64) -> bool {
        let first = (now_ms / self.bucket_ms).saturating_sub(BUCKETS - 1);
        self.buckets.back().is_none_or(|(b, _)| *b < first)
    }

    /// Writes per datacenter in the window's older half and its newer half.
    fn halves(&self, now_ms: u64) -> (Vec<u64>, Vec<u64>) {
        let newest = now_ms / self.bucket_ms;
        let first = newest.saturating_sub(BUCKETS - 1);
        let middle = first + BUCKETS / 2;
        let (mut old, mut new) = (vec![0u64; self.n], vec![0u64; self.n]);
        for (b, counts) in &self.buckets {
            if *b < first {
                continue;
            }
            let half = if *b < middle { &mut old } else { &mut new };
            for (sum, c) in half.iter_mut().zip(counts) {
                *sum += u64::from(*c);
            }
        }
        (old, new)
    }

    /// Writes per datacenter within the window at `now_ms`.
    pub fn counts(&self, now_ms: u64) -> Vec<u64> {
        let (old, new) = self.halves(now_ms);
        old.iter().zip(&new).map(|(a, b)| a + b).collect()
    }
}

/// Where `user`'s home should move now, if anywhere: `home` is where it is, and
/// `last_move_ms` when it last moved (`None`: never).
pub fn decide(
    rule: &FollowRule,
    traffic: &Traffic,
    home: usize,
    last_move_ms: Option<u64>,
    now_ms: u64,
) -> Option<usize> {
    if last_move_ms.is_some_and(|at| now_ms.saturating_sub(at) < rule.min_interval_ms) {
        return None;
    }
    let (old, new) = traffic.halves(now_ms);
    let total: u64 = old.iter().chain(&new).sum();
    if total < u64::from(rule.min_writes) {
        return None;
    }
    let (old_total, new_total) = (old.iter().sum::<u64>(), new.iter().sum::<u64>());
    let clear = |count: u64, of: u64| of > 0 && count as f64 >= rule.share * of as f64;
    (0..traffic.n).find(|&dc| {
        dc != home
            && clear(old[dc], old_total)
            && clear(new[dc], new_total)
            // A quarter of the evidence in each half, so neither is a lone write.
            && old[dc] * 4 >= u64::from(rule.min_writes)
            && new[dc] * 4 >= u64::from(rule.min_writes)
    })
}

#[cfg(test)]
mod tests;
