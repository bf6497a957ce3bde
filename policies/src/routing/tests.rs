use super::*;
use crate::rendezvous::Candidate;
use proptest::prelude::*;

const IDS: [&str; 6] = [
    "us-east",
    "us-west",
    "eu-west",
    "ap-northeast",
    "ap-southeast",
    "sa-east",
];

fn homes(n: usize, weights: &[f64], pins: &[(String, usize)]) -> Rendezvous {
    let candidates: Vec<Candidate> = (0..n)
        .map(|i| Candidate {
            id: IDS[i].to_owned(),
            weight: weights[i],
        })
        .collect();
    let pins: Vec<(&str, &str)> = pins
        .iter()
        .map(|(user, dc)| (user.as_str(), IDS[*dc % n]))
        .collect();
    Rendezvous::new(candidates, pins).expect("valid homes")
}

proptest! {
    /// Every datacenter with the home in reach agrees on who executes a user's
    /// write: the home itself, executing here or through a forward.
    #[test]
    fn every_datacenter_sends_a_users_writes_to_the_same_home(
        n in 1usize..=6,
        weights in proptest::collection::vec(0.25f64..4.0, 6),
        pins in proptest::collection::vec(("u[0-9]{1,2}", 0usize..6), 0..4),
        users in proptest::collection::vec("u[0-9]{1,3}", 1..20),
    ) {
        let homes = homes(n, &weights, &pins);
        let reach = Reach::all(n);
        for user in &users {
            let home = homes.home_of(user);
            for me in 0..n {
                let route = route_write(&homes, me, user, &reach, 0);
                prop_assert_eq!(route.executor(me), Some(home));
                prop_assert_eq!(route == WriteRoute::Here, me == home);
            }
            // Pins win over hashing.
            if let Some((_, dc)) = pins.iter().rev().find(|(u, _)| u == user) {
                prop_assert_eq!(home, dc % n);
            }
        }
    }

    /// A home out of reach is refused, never replaced by another datacenter: no
    /// two datacenters execute one user's writes whatever each can reach.
    #[test]
    fn an_unreachable_home_is_refused_not_replaced(
        n in 2usize..=6,
        lost in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 6), 6),
        users in proptest::collection::vec("u[0-9]{1,3}", 1..20),
    ) {
        let homes = homes(n, &[1.0; 6], &[]);
        for user in &users {
            let home = homes.home_of(user);
            let mut executors = std::collections::BTreeSet::new();
            for (me, lost) in lost.iter().enumerate().take(n) {
                let mut reach = Reach::all(n);
                for (dc, gone) in lost.iter().enumerate().take(n) {
                    if *gone && dc != me {
                        reach.lose(dc, 1_000);
                    }
                }
                let route = route_write(&homes, me, user, &reach, 4_000);
                if let Some(executor) = route.executor(me) {
                    executors.insert(executor);
                } else {
                    prop_assert_eq!(route, WriteRoute::HomeUnreachable { home, for_ms: 3_000 });
                }
            }
            prop_assert!(executors.len() <= 1 && executors.iter().all(|&e| e == home));
        }
    }
}

#[test]
fn reach_remembers_when_a_datacenter_was_lost() {
    let mut reach = Reach::all(3);
    assert!(reach.reaches(2));
    reach.lose(2, 100);
    reach.lose(2, 500);
    assert!(!reach.reaches(2));
    assert_eq!(reach.lost_at_ms(2), Some(100), "the first loss counts");
    reach.regain(2);
    assert!(reach.reaches(2));
    assert_eq!(reach.lost_at_ms(2), None);
}
