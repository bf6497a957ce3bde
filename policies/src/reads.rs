//! Where a session's read is served: the read rule of the session guarantees.
//!
//! A read at a datacenter for a session whose token is `T` is served locally when
//! the datacenter's applied vector covers `T`: everything the session wrote or saw
//! is there, so the read cannot go back in time. Otherwise it waits for the
//! replicator up to the read wait; then the stale policy decides: forward it to a
//! datacenter known to cover `T`, keep waiting up to a hard bound, or refuse it,
//! naming how far behind this datacenter is.

use crate::vv::VersionVector;

/// What a datacenter that has not caught up with a session does with its read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Send it to a datacenter that covers the token.
    Forward,
    /// Keep waiting, up to the hard bound.
    Wait,
    /// Refuse it with an error naming what is missing.
    Error,
}

/// The read rule's answer at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadDecision {
    /// Serve it here now.
    Serve,
    /// Wait for the replicator (woken by apply), up to `for_ms` more.
    Wait {
        /// How much longer the read may wait, in milliseconds.
        for_ms: u64,
    },
    /// Send it to datacenter `to`, which covers the token.
    Forward {
        /// The datacenter's index.
        to: usize,
    },
    /// Refuse it: this datacenter lacks `missing` changes the session has seen.
    Refuse {
        /// Changes named by the token and not applied here.
        missing: u64,
    },
}

/// The read settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRule {
    /// How long a read waits for this datacenter to catch up before the stale
    /// policy applies, in milliseconds.
    pub wait_ms: u64,
    /// What happens after that.
    pub on_stale: OnStale,
    /// The longest `OnStale::Wait` waits in all, in milliseconds.
    pub hard_bound_ms: u64,
}

/// Changes `token` names that `applied` lacks.
pub fn missing(applied: &VersionVector, token: &VersionVector) -> u64 {
    token
        .iter()
        .map(|(dc, seq)| seq.saturating_sub(applied.get(dc)))
        .sum()
}

impl ReadRule {
    /// Where a read runs, given what this datacenter has applied, the session's
    /// token, how long the read has waited, and which datacenters are known to
    /// cover the token (`covering`, nearest first; `fallback`, the origin of a
    /// change the token names, is tried when none is known).
    pub fn decide(
        &self,
        applied: &VersionVector,
        token: &VersionVector,
        waited_ms: u64,
        covering: &[usize],
        fallback: Option<usize>,
    ) -> ReadDecision {
        if applied.dominates(token) {
            return ReadDecision::Serve;
        }
        if waited_ms < self.wait_ms {
            return ReadDecision::Wait {
                for_ms: self.wait_ms - waited_ms,
            };
        }
        let refuse = ReadDecision::Refuse {
            missing: missing(applied, token),
        };
        match self.on_stale {
            OnStale::Forward => covering
                .first()
                .copied()
                .or(fallback)
                .map_or(refuse, |to| ReadDecision::Forward { to }),
            OnStale::Wait if waited_ms < self.hard_bound_ms => ReadDecision::Wait {
                for_ms: self.hard_bound_ms - waited_ms,
            },
            OnStale::Wait | OnStale::Error => refuse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (dc, seq) in entries {
            v.advance(dc, *seq);
        }
        v
    }

    const RULE: ReadRule = ReadRule {
        wait_ms: 100,
        on_stale: OnStale::Forward,
        hard_bound_ms: 10_000,
    };

    #[test]
    fn a_covered_token_is_served_at_once_and_a_stale_one_waits_then_goes_where_it_is_covered() {
        let applied = vv(&[("a", 5), ("b", 3)]);
        assert_eq!(
            RULE.decide(&applied, &vv(&[("a", 5)]), 0, &[], None),
            ReadDecision::Serve
        );
        let token = vv(&[("a", 7), ("b", 3)]);
        assert_eq!(
            RULE.decide(&applied, &token, 30, &[2], Some(1)),
            ReadDecision::Wait { for_ms: 70 }
        );
        assert_eq!(
            RULE.decide(&applied, &token, 100, &[2], Some(1)),
            ReadDecision::Forward { to: 2 }
        );
        assert_eq!(
            RULE.decide(&applied, &token, 100, &[], Some(1)),
            ReadDecision::Forward { to: 1 }
        );
        let error = ReadRule {
            on_stale: OnStale::Error,
            ..RULE
        };
        assert_eq!(
            error.decide(&applied, &token, 100, &[2], Some(1)),
            ReadDecision::Refuse { missing: 2 }
        );
        let wait = ReadRule {
            on_stale: OnStale::Wait,
            ..RULE
        };
        assert_eq!(
            wait.decide(&applied, &token, 100, &[2], Some(1)),
            ReadDecision::Wait { for_ms: 9_900 }
        );
        assert_eq!(
            wait.decide(&applied, &token, 10_000, &[2], Some(1)),
            ReadDecision::Refuse { missing: 2 }
        );
    }

    proptest! {
        /// A read is served here only when nothing the session has seen is missing,
        /// and is never left waiting past the bounds.
        #[test]
        fn reads_are_served_only_where_the_token_is_covered(
            applied in proptest::collection::vec(0u64..6, 3),
            token in proptest::collection::vec(0u64..6, 3),
            waited in 0u64..20_000,
            policy in 0usize..3,
        ) {
            let ids = ["a", "b", "c"];
            let applied = vv(&ids.iter().copied().zip(applied).collect::<Vec<_>>());
            let token = vv(&ids.iter().copied().zip(token).collect::<Vec<_>>());
            let rule = ReadRule {
                on_stale: [OnStale::Forward, OnStale::Wait, OnStale::Error][policy],
                ..RULE
            };
            match rule.decide(&applied, &token, waited, &[], None) {
                ReadDecision::Serve => prop_assert!(applied.dominates(&token)),
                ReadDecision::Wait { for_ms } => {
                    prop_assert!(!applied.dominates(&token));
                    prop_assert!(waited + for_ms <= rule.wait_ms.max(rule.hard_bound_ms));
                }
                ReadDecision::Refuse { missing: m } => {
                    prop_assert!(m > 0);
                    prop_assert_eq!(m, missing(&applied, &token));
                }
                ReadDecision::Forward { .. } => prop_assert!(false, "no datacenter to forward to"),
            }
        }
    }
}
