use super::*;
use proptest::prelude::*;

fn dcs(n: usize) -> Vec<Candidate> {
    (0..n).map(|i| Candidate::new(format!("dc-{i}"))).collect()
}

fn even(n: usize) -> Rendezvous {
    Rendezvous::new(dcs(n), []).unwrap()
}

fn users(salt: u32, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("user-{salt}-{i}")).collect()
}

const USERS: usize = 10_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Adding a datacenter moves only the users the newcomer wins, about 1/(n+1) of them.
    #[test]
    fn adding_a_datacenter_moves_only_its_winners(n in 1usize..12, salt: u32) {
        let before = even(n);
        let after = even(n + 1);
        let mut moved = 0;
        for user in users(salt, USERS) {
            let (old, new) = (before.home_of(&user), after.home_of(&user));
            if old != new {
                prop_assert_eq!(new, n, "user {} moved between two old datacenters", user);
                moved += 1;
            }
        }
        let share = moved as f64 / USERS as f64;
        let expected = 1.0 / (n + 1) as f64;
        prop_assert!((share - expected).abs() < 0.03, "moved {share}, expected about {expected}");
    }

    /// Removing a datacenter moves only its own users.
    #[test]
    fn removing_a_datacenter_moves_only_its_users(n in 2usize..12, gone in 0usize..12, salt: u32) {
        let gone = gone % n;
        let full = even(n);
        let mut rest = dcs(n);
        rest.remove(gone);
        let fewer = Rendezvous::new(rest, []).unwrap();
        for user in users(salt, 2_000) {
            let old = full.home_id(&user);
            if old != format!("dc-{gone}") {
                prop_assert_eq!(fewer.home_id(&user), old);
            }
        }
    }

    /// The home is the head of the ranking, and the ranking is a permutation.
    #[test]
    fn ranking_starts_at_the_home(n in 1usize..12, user in "[a-z0-9]{1,12}") {
        let r = even(n);
        let ranking = r.ranking(&user);
        prop_assert_eq!(ranking[0], r.home_of(&user));
        let mut sorted = ranking.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    }
}

#[test]
fn spreads_users_evenly_and_by_weight() {
    let r = even(4);
    let mut counts = [0usize; 4];
    for user in users(7, USERS) {
        counts[r.home_of(&user)] += 1;
    }
    for c in counts {
        assert!((2_200..2_800).contains(&c), "uneven spread {counts:?}");
    }

    let mut weighted = dcs(2);
    weighted[1].weight = 3.0;
    let r = Rendezvous::new(weighted, []).unwrap();
    let heavy = users(7, USERS).iter().filter(|u| r.home_of(u) == 1).count();
    assert!(
        (7_200..7_800).contains(&heavy),
        "weight 3 of 4 got {heavy} of {USERS}"
    );
}

#[test]
fn pins_win_and_lead_the_ranking() {
    let r = Rendezvous::new(dcs(3), [("alice", "dc-2"), ("bob", "dc-0")]).unwrap();
    assert_eq!(r.home_id("alice"), "dc-2");
    assert_eq!(r.home_id("bob"), "dc-0");
    assert_eq!(r.ranking("alice")[0], 2);
    assert_eq!(r.ranking("alice").len(), 3);
    let next = r.first_usable("alice", |i| i != 2).unwrap();
    assert_eq!(next, r.ranking("alice")[1]);
}

#[test]
fn the_assignment_is_stable_across_builds() {
    // Homes must never change with a compiler, platform or crate version: these
    // values pin the hash function and the score formula.
    let r = even(3);
    let homes: Vec<usize> = ["u1", "u2", "u3", "u42", "alice"]
        .iter()
        .map(|u| r.home_of(u))
        .collect();
    assert_eq!(homes, STABLE_HOMES);
}

const STABLE_HOMES: [usize; 5] = [0, 1, 2, 0, 2];

#[test]
fn bad_input_is_refused_with_the_reason() {
    assert_eq!(
        Rendezvous::new(vec![], []).unwrap_err(),
        RendezvousError::NoCandidates
    );
    let twice = vec![Candidate::new("a"), Candidate::new("a")];
    assert_eq!(
        Rendezvous::new(twice, []).unwrap_err(),
        RendezvousError::DuplicateId("a".into())
    );
    let zero = vec![Candidate {
        id: "a".into(),
        weight: 0.0,
    }];
    assert!(matches!(
        Rendezvous::new(zero, []),
        Err(RendezvousError::BadWeight { .. })
    ));
    let err = Rendezvous::new(dcs(2), [("alice", "mars")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"alice\" is pinned to \"mars\", which is not a datacenter"
    );
}
