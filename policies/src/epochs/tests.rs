use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn report(from: usize, unreachable: &[usize]) -> Command {
    report_at(from, unreachable, 0)
}

/// A report that had applied each unreachable datacenter's changes up to `seq`.
fn report_at(from: usize, unreachable: &[usize], seq: u64) -> Command {
    Command::Report {
        from,
        unreachable: unreachable.iter().copied().collect(),
        applied: unreachable.iter().map(|&d| (d, seq)).collect(),
    }
}

#[test]
fn a_home_goes_out_only_when_a_majority_cannot_hear_it() {
    let mut e = Epochs::new(5);
    assert_eq!(e.apply(&report(1, &[0])), Outcome::Noted);
    assert_eq!(e.apply(&report(2, &[0])), Outcome::Noted);
    assert!(e.in_service(0), "two of five are no majority");
    assert_eq!(e.apply(&report(3, &[0])), Outcome::Changed(vec![0]));
    assert_eq!(
        e.service(0),
        Some(&Service::Out {
            since: 1,
            catch_up: 0
        })
    );
    assert_eq!(e.epoch(), 1);
    // Its users' writes go to the next in their order that is in service.
    assert_eq!(e.writer(&[0, 3, 1]), Writer::At(3));
    assert_eq!(e.writer(&[4, 0]), Writer::At(4));
    // A datacenter's report about itself counts for nothing.
    assert_eq!(e.apply(&report(0, &[0, 1])), Outcome::Noted);
    assert!(e.in_service(1));
}

#[test]
fn the_catch_up_target_is_the_most_any_reporter_had_applied() {
    let mut e = Epochs::new(5);
    e.apply(&report_at(1, &[0], 7));
    e.apply(&report_at(2, &[0], 12));
    e.apply(&report_at(3, &[0], 9));
    assert_eq!(
        e.service(0),
        Some(&Service::Out {
            since: 1,
            catch_up: 12
        })
    );
    // A later report of more raises it.
    e.apply(&report_at(4, &[0], 15));
    assert_eq!(
        e.service(0),
        Some(&Service::Out {
            since: 1,
            catch_up: 15
        })
    );
}

#[test]
fn no_majority_anywhere_takes_nobody_out() {
    // Four datacenters split two and two: each side suspects the other.
    let mut e = Epochs::new(4);
    for (from, down) in [(0, [2, 3]), (1, [2, 3]), (2, [0, 1]), (3, [0, 1])] {
        assert_eq!(e.apply(&report(from, &down)), Outcome::Noted);
    }
    assert!((0..4).all(|d| e.in_service(d)));
    assert_eq!(e.epoch(), 0);
}

#[test]
fn a_returning_home_resumes_after_every_datacenter_in_service_released() {
    let mut e = Epochs::new(3);
    e.apply(&report(1, &[0]));
    assert_eq!(e.apply(&report(2, &[0])), Outcome::Changed(vec![0]));
    assert_eq!(e.writer(&[0, 2, 1]), Writer::At(2));
    // The others hear it again, but it has not spoken: still out.
    e.apply(&report(1, &[]));
    e.apply(&report(2, &[]));
    assert_eq!(
        e.service(0),
        Some(&Service::Out {
            since: 1,
            catch_up: 0
        })
    );
    // It reports: returning. Nobody writes for its users meanwhile.
    assert_eq!(e.apply(&report(0, &[])), Outcome::Changed(vec![0]));
    assert_eq!(e.epoch(), 2);
    assert_eq!(e.writer(&[0, 2, 1]), Writer::Handover(0));
    assert_eq!(e.writer(&[1, 0]), Writer::At(1));
    assert!(matches!(
        e.apply(&Command::Resume { dc: 0 }),
        Outcome::Ignored(_)
    ));
    let release = |from, seq| Command::Released {
        from,
        returning: 0,
        seq,
    };
    assert_eq!(e.apply(&release(2, 40)), Outcome::Noted);
    assert!(matches!(
        e.apply(&Command::Resume { dc: 0 }),
        Outcome::Ignored(_)
    ));
    assert_eq!(e.apply(&release(1, 7)), Outcome::Noted);
    assert_eq!(
        e.apply(&Command::Resume { dc: 0 }),
        Outcome::Changed(vec![0])
    );
    assert_eq!(e.writer(&[0, 2, 1]), Writer::At(0));
    assert_eq!(e.epoch(), 3);
}

#[test]
fn a_home_that_spoke_before_the_others_heard_it_returns_when_they_do() {
    let mut e = Epochs::new(3);
    e.apply(&report(1, &[0]));
    e.apply(&report(2, &[0]));
    // It speaks first, while both still suspect it.
    assert_eq!(e.apply(&report(0, &[])), Outcome::Noted);
    // One of the two hears it again: no majority suspects it any more.
    assert_eq!(e.apply(&report(1, &[])), Outcome::Changed(vec![0]));
    assert!(matches!(e.service(0), Some(Service::Returning { .. })));
}

#[test]
fn an_out_home_awaits_its_own_report_to_return() {
    let mut e = Epochs::new(3);
    e.apply(&report(0, &[]));
    e.apply(&report(1, &[0]));
    e.apply(&report(2, &[0]));
    assert!(e.awaits_report(0));
    e.apply(&report(1, &[]));
    e.apply(&report(2, &[]));
    // Its report from before it went out says the same as a new one would: a
    // new one is still needed.
    assert!(e.awaits_report(0));
    assert_eq!(e.apply(&report(0, &[])), Outcome::Changed(vec![0]));
    assert!(!e.awaits_report(0));
}

#[test]
fn a_returning_home_cut_off_again_goes_out_again() {
    let mut e = Epochs::new(3);
    e.apply(&report(1, &[0]));
    e.apply(&report(2, &[0]));
    e.apply(&report(1, &[]));
    e.apply(&report(2, &[]));
    e.apply(&report(0, &[]));
    assert!(matches!(e.service(0), Some(Service::Returning { .. })));
    e.apply(&report(1, &[0]));
    assert_eq!(e.apply(&report(2, &[0])), Outcome::Changed(vec![0]));
    assert_eq!(e.writer(&[0, 1]), Writer::At(1));
}

#[test]
fn commands_about_strangers_are_ignored() {
    let mut e = Epochs::new(3);
    assert!(matches!(e.apply(&report(7, &[0])), Outcome::Ignored(_)));
    assert!(matches!(
        e.apply(&Command::Released {
            from: 1,
            returning: 0,
            seq: 1
        }),
        Outcome::Ignored(_)
    ));
    assert!(matches!(
        e.apply(&Command::Resume { dc: 2 }),
        Outcome::Ignored(_)
    ));
    // Unknown datacenters in a report are dropped.
    e.apply(&report(1, &[9]));
    assert_eq!(e, {
        let mut want = Epochs::new(3);
        want.apply(&report(1, &[]));
        want
    });
}

#[test]
fn reports_replace_earlier_ones() {
    let mut e = Epochs::new(3);
    e.apply(&report(1, &[0, 2]));
    e.apply(&report(1, &[]));
    assert_eq!(e.reports.get(&1), Some(&BTreeSet::new()));
}

fn command(n: usize) -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (0..n, proptest::collection::btree_set(0..n, 0..n), 0..50u64).prop_map(|(from, unreachable, seq)| {
            let applied = unreachable.iter().map(|&d| (d, seq)).collect();
            Command::Report { from, unreachable, applied }
        }),
        1 => (0..n, 0..n, 0..100u64).prop_map(|(from, returning, seq)| Command::Released {
            from,
            returning,
            seq
        }),
        1 => (0..n).prop_map(|dc| Command::Resume { dc }),
    ]
}

proptest! {
    /// Every replica that applies the same log reaches the same state; the epoch
    /// rises exactly when service changes; a datacenter only goes out while a
    /// majority suspects it; a user's writer is never a datacenter out of service.
    #[test]
    fn the_state_is_a_function_of_the_log(
        (n, log) in (3usize..7).prop_flat_map(|n| (Just(n), proptest::collection::vec(command(n), 0..60)))
    ) {
        let mut a = Epochs::new(n);
        let mut b = Epochs::new(n);
        for c in &log {
            let before = a.clone();
            let outcome = a.apply(c);
            prop_assert_eq!(&outcome, &b.apply(c));
            match &outcome {
                Outcome::Changed(dcs) => {
                    prop_assert_eq!(a.epoch(), before.epoch() + 1);
                    for &dc in dcs {
                        prop_assert_ne!(a.service(dc), before.service(dc));
                        let out = matches!(a.service(dc), Some(Service::Out { .. }));
                        prop_assert!(!out || a.suspects(dc) >= a.majority());
                    }
                }
                Outcome::Noted => prop_assert_eq!(a.epoch(), before.epoch()),
                Outcome::Ignored(_) => prop_assert_eq!(&a, &before),
            }
            let everyone: Vec<usize> = (0..n).collect();
            for start in 0..n {
                let mut ranking = everyone.clone();
                ranking.rotate_left(start);
                match a.writer(&ranking) {
                    Writer::At(dc) => prop_assert!(a.in_service(dc)),
                    Writer::Handover(dc) => {
                        let returning = matches!(a.service(dc), Some(Service::Returning { .. }));
                        prop_assert!(returning);
                    }
                    Writer::Nobody => prop_assert!((0..n).all(|d| !a.in_service(d))),
                }
            }
        }
        prop_assert_eq!(a, b);
    }
}
