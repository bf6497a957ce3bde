//! A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! A [`Timestamp`] packs milliseconds since the Unix epoch (upper 48 bits) and a
//! logical counter (lower 16 bits) into one `u64`, so timestamps compare as integers
//! and the successor of a timestamp is `+1` (a full counter carries into the next
//! millisecond). The clock takes wall time as an argument: it never reads a clock
//! itself, so tests can skew and step it freely.

use std::fmt;
use std::str::FromStr;

const LOGICAL_BITS: u32 = 16;
/// The largest wall time a timestamp can hold (about the year 10889).
const MAX_PHYSICAL_MS: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// A point in hybrid logical time; totally ordered, comparable across datacenters.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp of wall time `physical_ms` with logical counter `logical`.
    /// Wall times beyond the representable range saturate.
    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Timestamp((physical_ms.min(MAX_PHYSICAL_MS) << LOGICAL_BITS) | u64::from(logical))
    }

    /// Rebuilds a timestamp from [`Timestamp::as_u64`].
    pub fn from_u64(raw: u64) -> Self {
        Timestamp(raw)
    }

    /// The packed form, for storage and the wire.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter within the millisecond.
    pub fn logical(self) -> u16 {
        self.0 as u16
    }

    fn successor(self) -> Self {
        Timestamp(self.0.saturating_add(1))
    }
}

/// `physical_ms.logical`, for logs and the admin endpoint.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = ClockError;

    fn from_str(s: &str) -> Result<Self, ClockError> {
        let malformed = || ClockError::Malformed(s.chars().take(40).collect());
        let (ms, logical) = s.split_once('.').ok_or_else(malformed)?;
        let ms: u64 = ms.parse().map_err(|_| malformed())?;
        let logical: u16 = logical.parse().map_err(|_| malformed())?;
        if ms > MAX_PHYSICAL_MS {
            return Err(malformed());
        }
        Ok(Timestamp::new(ms, logical))
    }
}

/// Problems with timestamps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// A peer sent a timestamp further ahead of our wall clock than the allowed drift.
    /// Accepting it would drag our clock forward; the fix is clock synchronisation
    /// (NTP) on one of the two machines, so retrying does not help.
    #[error(
        "remote timestamp {remote} is {ahead_ms} ms ahead of the local wall clock, more than the \
         allowed drift of {max_drift_ms} ms; check clock synchronisation (NTP) on both datacenters"
    )]
    RemoteTooFarAhead {
        /// The timestamp received.
        remote: Timestamp,
        /// How far it is ahead of local wall time.
        ahead_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
    /// Text that is not `milliseconds.logical`.
    #[error("timestamp {0:?} is not of the form <milliseconds>.<logical>")]
    Malformed(String),
}

/// A hybrid logical clock: monotonic, close to wall time, and consistent with causality
/// (a timestamp observed from a peer is always below the next one we issue).
#[derive(Debug, Clone)]
pub struct Hlc {
    last: Timestamp,
    max_drift_ms: u64,
}

impl Hlc {
    /// A clock that accepts remote timestamps at most `max_drift_ms` ahead of wall time.
    pub fn new(max_drift_ms: u64) -> Self {
        Self::resume(Timestamp::default(), max_drift_ms)
    }

    /// A clock that continues after `last` (for example the newest timestamp found in
    /// the log at start-up), so a restart never reissues an older time.
    pub fn resume(last: Timestamp, max_drift_ms: u64) -> Self {
        Hlc { last, max_drift_ms }
    }

    /// The newest timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// A timestamp for a local event at wall time `wall_ms`: greater than every
    /// timestamp issued or observed before, even if the wall clock went backwards.
    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        self.advance_to(self.last, wall_ms)
    }

    /// Takes in a timestamp received from a peer and returns the time of receipt.
    /// A remote timestamp too far ahead of `wall_ms` is refused and leaves the clock
    /// unchanged.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64) -> Result<Timestamp, ClockError> {
        let ahead_ms = remote.physical_ms().saturating_sub(wall_ms);
        if ahead_ms > self.max_drift_ms {
            return Err(ClockError::RemoteTooFarAhead {
                remote,
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(self.advance_to(self.last.max(remote), wall_ms))
    }

    /// How far the clock runs ahead of wall time, in milliseconds (0 when it is not):
    /// non-zero after the wall clock stepped back or a peer's clock ran ahead.
    pub fn lead_ms(&self, wall_ms: u64) -> u64 {
        self.last.physical_ms().saturating_sub(wall_ms)
    }

    fn advance_to(&mut self, floor: Timestamp, wall_ms: u64) -> Timestamp {
        let wall = Timestamp::new(wall_ms, 0);
        self.last = if wall > floor {
            wall
        } else {
            floor.successor()
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_wall_time_and_counts_within_a_millisecond() {
        let mut clock = Hlc::new(1_000);
        assert_eq!(clock.now(100), Timestamp::new(100, 0));
        assert_eq!(clock.now(100), Timestamp::new(100, 1));
        assert_eq!(clock.now(101), Timestamp::new(101, 0));
    }

    #[test]
    fn survives_the_wall_clock_stepping_back() {
        let mut clock = Hlc::new(1_000);
        let before = clock.now(5_000);
        let after = clock.now(3_000);
        assert!(after > before);
        assert_eq!(after, Timestamp::new(5_000, 1));
        assert_eq!(clock.lead_ms(3_000), 2_000);
    }

    #[test]
    fn a_full_logical_counter_carries_into_the_next_millisecond() {
        let mut clock = Hlc::resume(Timestamp::new(7, u16::MAX), 1_000);
        assert_eq!(clock.now(7), Timestamp::new(8, 0));
    }

    #[test]
    fn observing_a_remote_time_orders_after_it() {
        let mut clock = Hlc::new(1_000);
        clock.now(100);
        let remote = Timestamp::new(600, 4);
        let received = clock.observe(remote, 200).unwrap();
        assert_eq!(received, Timestamp::new(600, 5));
        assert!(clock.now(200) > received);
    }

    #[test]
    fn refuses_a_remote_time_beyond_the_drift_bound() {
        let mut clock = Hlc::new(500);
        let before = clock.now(1_000);
        let err = clock.observe(Timestamp::new(1_501, 0), 1_000).unwrap_err();
        assert_eq!(
            err,
            ClockError::RemoteTooFarAhead {
                remote: Timestamp::new(1_501, 0),
                ahead_ms: 501,
                max_drift_ms: 500
            }
        );
        assert!(err.to_string().contains("501 ms ahead"));
        assert_eq!(
            clock.last(),
            before,
            "a refused timestamp must not move the clock"
        );
        assert!(clock.observe(Timestamp::new(1_500, 0), 1_000).is_ok());
    }

    #[test]
    fn text_form_round_trips_and_rejects_garbage() {
        let t = Timestamp::new(1_732_312_345_678, 3);
        assert_eq!(t.to_string(), "1732312345678.3");
        assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t));
        assert!(matches!(
            "12".parse::<Timestamp>(),
            Err(ClockError::Malformed(_))
        ));
        assert!(matches!(
            "1.70000".parse::<Timestamp>(),
            Err(ClockError::Malformed(_))
        ));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Local {
            wall_ms: u64,
        },
        Remote {
            wall_ms: u64,
            remote_ms: u64,
            logical: u16,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..10_000).prop_map(|wall_ms| Event::Local { wall_ms }),
            (0u64..10_000, 0u64..10_000, any::<u16>()).prop_map(|(wall_ms, remote_ms, logical)| {
                Event::Remote {
                    wall_ms,
                    remote_ms,
                    logical,
                }
            }),
        ]
    }

    proptest! {
        /// Whatever the wall clock does, issued times strictly increase, every accepted
        /// remote time is below the time of its receipt, and the clock never leads
        /// wall time by more than the largest lead it was given.
        #[test]
        fn is_monotonic_and_causal(events in proptest::collection::vec(event(), 1..200)) {
            let mut clock = Hlc::new(2_000);
            let mut prev = Timestamp::default();
            let mut max_source_ms = 0;
            for e in events {
                let t = match e {
                    Event::Local { wall_ms } => {
                        max_source_ms = max_source_ms.max(wall_ms);
                        clock.now(wall_ms)
                    }
                    Event::Remote { wall_ms, remote_ms, logical } => {
                        let remote = Timestamp::new(remote_ms, logical);
                        max_source_ms = max_source_ms.max(wall_ms);
                        match clock.observe(remote, wall_ms) {
                            Ok(t) => {
                                prop_assert!(t > remote);
                                max_source_ms = max_source_ms.max(remote_ms);
                                t
                            }
                            Err(_) => {
                                prop_assert!(remote_ms > wall_ms + 2_000);
                                continue;
                            }
                        }
                    }
                };
                prop_assert!(t > prev);
                // The physical part only runs ahead of the largest input by counter carries.
                prop_assert!(t.physical_ms() <= max_source_ms + 1);
                prev = t;
            }
        }
    }
}
