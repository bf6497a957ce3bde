//! Session fences: a home refuses a forwarded write that a later write of its own
//! session has overtaken.
//!
//! A forwarded write can still be on its way to the home after its client has given
//! it up: the proxy that forwarded it died, or the link failed, and the client was
//! told its outcome is unknown. The client then goes on, often through another
//! datacenter, with the token it holds. If the old write reached the home after the
//! session's next write, it would land after it: the session's writes would apply
//! out of order (monotonic writes).
//!
//! Each connection that takes up a session's token writes in a later epoch of the
//! session than the connection it came from ([`crate::SessionMark`]). The home
//! remembers, per session, the latest epoch it has run a write of. A forwarded write
//! of an earlier epoch is refused: a later connection of its session has written
//! here, so the client had given this one up. Writes made at the home itself are
//! never refused (they are not in flight once their client has gone), but they
//! raise the epoch like the others.
//!
//! A connection still in use in an old epoch (the token was also handed to a second
//! device) gets one refusal for a forwarded write, learns the newer epoch from it
//! ([`Overtaken::from_error`]), and writes in it from then on.
//!
//! Sessions are remembered for at least `keep` and at most twice that: past it, a
//! write may be as late as it likes. The proxy keeps them longer than a forwarded
//! request is resent.

use std::collections::HashMap;
use std::fmt;

use crate::SessionMark;

/// The latest epoch each recent session has written in, here.
#[derive(Debug)]
pub struct SessionFence {
    keep_ms: u64,
    /// Sessions that wrote since `rotated_ms`.
    current: HashMap<u64, u64>,
    /// Sessions that wrote in the period before.
    previous: HashMap<u64, u64>,
    rotated_ms: u64,
}

/// A forwarded write refused: its session has since written here in `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overtaken {
    /// The epoch the refused write was sent in.
    pub sent_in: u64,
    /// The session's latest epoch here.
    pub epoch: u64,
}

const OVERTAKEN: &str = "ERR overtaken: ";
const EPOCH_IS: &str = "the session is in epoch ";

impl fmt::Display for Overtaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{OVERTAKEN}a later connection of this session wrote here first, so its client had given this write up; {EPOCH_IS}{}, this write was sent in {}, and it did not run",
            self.epoch, self.sent_in
        )
    }
}

impl Overtaken {
    /// The session's epoch named by an error that [`Overtaken`] wrote, to write in
    /// from now on; `None` for any other error.
    pub fn from_error(error: &str) -> Option<u64> {
        let rest = error.strip_prefix(OVERTAKEN)?;
        let (_, after) = rest.split_once(EPOCH_IS)?;
        let digits = after.split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    }
}

impl SessionFence {
    /// A fence that remembers a session for at least `keep_ms` after its last write.
    pub fn new(keep_ms: u64) -> Self {
        SessionFence {
            keep_ms: keep_ms.max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
            rotated_ms: 0,
        }
    }

    /// Whether a write of session `mark` runs now (`now_ms`), and records it when it
    /// does. `forwarded`: it came from a client of another datacenter.
    pub fn admit(
        &mut self,
        mark: SessionMark,
        forwarded: bool,
        now_ms: u64,
    ) -> Result<(), Overtaken> {
        self.rotate(now_ms);
        let known = (self.current.get(&mark.id))
            .or_else(|| self.previous.get(&mark.id))
            .copied();
        match known {
            Some(epoch) if forwarded && epoch > mark.epoch => Err(Overtaken {
                sent_in: mark.epoch,
                epoch,
            }),
            _ => {
                let epoch = known.map_or(mark.epoch, |k| k.max(mark.epoch));
                self.current.insert(mark.id, epoch);
                Ok(())
            }
        }
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.current.len()
            + (self.previous.keys())
                .filter(|id| !self.current.contains_key(id))
                .count()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.previous.is_empty()
    }

    fn rotate(&mut self, now_ms: u64) {
        let age = now_ms.saturating_sub(self.rotated_ms);
        if age < self.keep_ms {
            return;
        }
        self.previous = match age < 2 * self.keep_ms {
            true => std::mem::take(&mut self.current),
            false => {
                self.current.clear();
                HashMap::new()
            }
        };
        self.rotated_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mark(id: u64, epoch: u64) -> SessionMark {
        SessionMark { id, epoch }
    }

    #[test]
    fn a_forwarded_write_of_an_older_epoch_is_refused_once_a_newer_one_ran() {
        let mut fence = SessionFence::new(60_000);
        assert_eq!(fence.admit(mark(7, 0), true, 1), Ok(()));
        // The session's next connection writes at the home itself.
        assert_eq!(fence.admit(mark(7, 1), false, 2), Ok(()));
        // The first connection's write, still on its way, arrives.
        let refused = fence.admit(mark(7, 0), true, 3).unwrap_err();
        assert_eq!(
            refused,
            Overtaken {
                sent_in: 0,
                epoch: 1
            }
        );
        assert_eq!(Overtaken::from_error(&refused.to_string()), Some(1));
        // Other sessions, and the same epoch, are not concerned.
        assert_eq!(fence.admit(mark(8, 0), true, 4), Ok(()));
        assert_eq!(fence.admit(mark(7, 1), true, 5), Ok(()));
    }

    #[test]
    fn writes_at_the_home_are_never_refused_and_never_lower_the_epoch() {
        let mut fence = SessionFence::new(60_000);
        assert_eq!(fence.admit(mark(7, 3), true, 1), Ok(()));
        assert_eq!(fence.admit(mark(7, 1), false, 2), Ok(()));
        assert!(fence.admit(mark(7, 2), true, 3).is_err());
    }

    #[test]
    fn sessions_are_kept_at_least_keep_and_forgotten_after_twice_that() {
        let mut fence = SessionFence::new(1_000);
        assert_eq!(fence.admit(mark(7, 1), false, 10), Ok(()));
        assert!(fence.admit(mark(7, 0), true, 1_009).is_err());
        assert!(fence.admit(mark(7, 0), true, 1_500).is_err());
        assert_eq!(fence.len(), 1);
        // Nothing of session 7 since 10: gone after two periods.
        assert_eq!(fence.admit(mark(8, 0), false, 2_600), Ok(()));
        assert_eq!(fence.admit(mark(8, 0), false, 3_700), Ok(()));
        assert_eq!(fence.admit(mark(7, 0), true, 3_701), Ok(()));
    }

    #[test]
    fn other_errors_name_no_epoch() {
        assert_eq!(Overtaken::from_error("ERR wrong number of arguments"), None);
        assert_eq!(Overtaken::from_error("ERR overtaken: garbled"), None);
    }

    proptest! {
        /// However writes of one session interleave, once a write of epoch `e` has
        /// run, no forwarded write of an earlier epoch runs; and every write of the
        /// latest epoch yet seen runs.
        #[test]
        fn no_forwarded_write_runs_after_a_later_epoch(
            writes in proptest::collection::vec((0u64..6, any::<bool>()), 1..60),
        ) {
            let mut fence = SessionFence::new(60_000);
            let mut highest_run: Option<u64> = None;
            let mut highest_sent = 0;
            for (i, (epoch, forwarded)) in writes.into_iter().enumerate() {
                highest_sent = highest_sent.max(epoch);
                let ran = fence.admit(mark(1, epoch), forwarded, i as u64).is_ok();
                if forwarded && highest_run.is_some_and(|h| h > epoch) {
                    prop_assert!(!ran);
                }
                if !forwarded || epoch == highest_sent {
                    prop_assert!(ran);
                }
                if ran {
                    highest_run = Some(highest_run.map_or(epoch, |h| h.max(epoch)));
                }
            }
        }
    }
}
