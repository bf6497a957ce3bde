use super::*;
use proptest::prelude::*;

const RULE: FollowRule = FollowRule {
    share: 0.8,
    min_writes: 20,
    window_ms: 10_000,
    min_interval_ms: 60_000,
};

/// Runs a user's writes (time, sending datacenter) through its home as the
/// proxies do: the home counts them and moves the user when `decide` says so;
/// the new home starts counting afresh. Returns the homes, in order.
fn replay(writes: &[(u64, usize)], n: usize, first_home: usize) -> Vec<usize> {
    let mut homes = vec![first_home];
    let mut traffic = Traffic::new(&RULE, n);
    let mut last_move = None;
    for &(at, from) in writes {
        traffic.record(from, at);
        let home = *homes.last().unwrap();
        if let Some(to) = decide(&RULE, &traffic, home, last_move, at) {
            assert_ne!(to, home, "a move goes somewhere else");
            homes.push(to);
            traffic = Traffic::new(&RULE, n);
            last_move = Some(at);
        }
    }
    homes
}

#[test]
fn a_steady_shift_moves_the_user_once_the_window_has_seen_it() {
    // 10 writes/s from datacenter 0 for a minute, then from datacenter 2.
    let mut writes: Vec<(u64, usize)> = (0..600).map(|i| (i * 100, 0)).collect();
    writes.extend((600..1_800).map(|i| (i * 100, 2)));
    let mut traffic = Traffic::new(&RULE, 3);
    let mut moved_at = None;
    for &(at, from) in &writes {
        traffic.record(from, at);
        if decide(&RULE, &traffic, 0, None, at) == Some(2) {
            moved_at = Some(at);
            break;
        }
    }
    let moved_at = moved_at.expect("the shift moved the user");
    // Not before the older half of the window holds the new traffic, and within a
    // window (and a bucket) of the shift.
    assert!(moved_at >= 60_000 + RULE.window_ms / 2, "{moved_at}");
    assert!(
        moved_at <= 60_000 + RULE.window_ms + RULE.window_ms / BUCKETS,
        "{moved_at}"
    );
}

#[test]
fn too_few_writes_never_move_a_user() {
    // One write every two seconds from elsewhere: 5 in a window, under 20.
    let writes: Vec<(u64, usize)> = (0..300).map(|i| (i * 2_000, 1)).collect();
    assert_eq!(replay(&writes, 3, 0), vec![0]);
}

#[test]
fn a_burst_shorter_than_half_a_window_does_not_move_a_user() {
    let mut writes: Vec<(u64, usize)> = (0..100).map(|i| (i * 100, 0)).collect();
    // 4 s of heavy traffic from datacenter 1 (200 writes), then home again.
    writes.extend((0..200).map(|i| (10_000 + i * 20, 1)));
    writes.extend((0..300).map(|i| (14_000 + i * 100, 0)));
    assert_eq!(replay(&writes, 3, 0), vec![0]);
}

#[test]
fn traffic_leaves_the_window() {
    let mut traffic = Traffic::new(&RULE, 2);
    traffic.record(1, 1_000);
    assert_eq!(traffic.counts(1_000), vec![0, 1]);
    assert!(!traffic.idle(5_000));
    assert_eq!(traffic.counts(20_000), vec![0, 0]);
    assert!(traffic.idle(20_000));
    // A datacenter outside the cluster is not counted.
    traffic.record(7, 20_000);
    assert_eq!(traffic.counts(20_000), vec![0, 0]);
}

proptest! {
    /// Noise: while the home itself sends at least every third write, however
    /// the rest are spread, nobody else has the share, and the user stays.
    #[test]
    fn no_move_while_the_home_sends_a_third(
        others in prop::collection::vec((1usize..4, 1u64..400), 50..2_000),
    ) {
        let mut at = 0;
        let mut writes = Vec::new();
        for (i, (from, gap)) in others.into_iter().enumerate() {
            at += gap;
            writes.push((at, if i % 3 == 0 { 0 } else { from }));
        }
        prop_assert_eq!(replay(&writes, 4, 0), vec![0]);
    }

    /// A sustained shift moves the user, to where the traffic went, within a
    /// window of it once the window holds enough writes.
    #[test]
    fn a_sustained_shift_moves_the_user(
        to in 1usize..4,
        before in 0u64..100_000,
        gap in 10u64..250,
    ) {
        let mut writes: Vec<(u64, usize)> = (0..before / 100).map(|i| (i * 100, 0)).collect();
        let shift = before;
        let until = shift + RULE.window_ms + 2 * RULE.window_ms / BUCKETS;
        writes.extend((0..).map(|i| (shift + i * gap, to)).take_while(|(t, _)| *t <= until));
        let homes = replay(&writes, 4, 0);
        prop_assert_eq!(homes, vec![0, to]);
    }

    /// A user alternating between two regions moves at most once per
    /// `min_interval` (and once more at the start), however fast it alternates.
    #[test]
    fn alternating_users_move_a_bounded_number_of_times(
        period in 200u64..120_000,
        gap in 20u64..500,
        minutes in 1u64..15,
    ) {
        let end = minutes * 60_000;
        let writes: Vec<(u64, usize)> = (0..)
            .map(|i| i * gap)
            .take_while(|t| *t < end)
            .map(|t| (t, ((t / period) % 2) as usize))
            .collect();
        let homes = replay(&writes, 2, 0);
        let moves = homes.len() as u64 - 1;
        prop_assert!(moves <= end / RULE.min_interval_ms + 1, "{moves} moves: {homes:?}");
    }
}
