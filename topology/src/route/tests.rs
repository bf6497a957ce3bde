use super::*;
use proptest::prelude::*;

fn idx(i: usize) -> DcIdx {
    DcIdx(i as u8)
}

/// Which routers are under test for a cluster of `n`: every kind, a shuffled ring,
/// and every hub position for stars.
fn routers(n: usize, ring_seed: u64) -> Vec<Router> {
    let mut order: Vec<DcIdx> = (0..n).map(idx).collect();
    // A deterministic shuffle, so rings are not always in index order.
    let mut state = ring_seed | 1;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut routers = vec![Router::all_to_all(n), Router::ring(order)];
    for hub in 0..n {
        routers.push(Router::star(n, idx(hub), StarFallback::Direct));
        routers.push(Router::star(n, idx(hub), StarFallback::None));
    }
    routers
}

/// Whether the rules promise delivery from `origin` with `live` up. Every case but
/// a star with a dead hub and no fallback can be routed around.
/// A drawn case in a cluster of `n`: this datacenter, the origin, a path and the
/// live set, each cut down to the cluster.
fn case(n: usize, me: usize, origin: usize, path: u64, live: u64) -> (DcIdx, DcIdx, DcSet, DcSet) {
    let all = DcSet::all(n);
    let at = |bits: u64| DcSet::from_bits(bits).intersect(all);
    (idx(me % n), idx(origin % n), at(path), at(live))
}

fn routable(router: &Router, origin: DcIdx, live: DcSet) -> bool {
    match router {
        Router::Star {
            hub,
            fallback: StarFallback::None,
            ..
        } => live.contains(*hub) || origin == *hub || live.len() == 1,
        _ => true,
    }
}

fn max_hops(router: &Router, n: usize, live: DcSet) -> u32 {
    match router {
        Router::AllToAll { .. } => 1,
        Router::Star { .. } => 2,
        Router::Ring { .. } => (live.len().max(1) - 1).min(n - 1) as u32,
    }
}

/// Checks one flood: it terminates, every send is accepted (nobody is ever sent a
/// change it has seen), every live datacenter but the origin receives it exactly
/// once, no dead one receives it, and hop counts stay within the kind's bound.
fn check_flood(router: &Router, origin: DcIdx, live: DcSet) -> Result<(), TestCaseError> {
    let n = router.len();
    let flood = router.flood(origin, live);
    prop_assert!(!flood.truncated, "flood did not terminate: {:?}", flood);
    let mut received = vec![0u32; n];
    for send in &flood.sends {
        prop_assert!(send.accepted, "{:?} sent a change back into its path", send);
        prop_assert!(
            live.contains(send.to),
            "{:?} sent to a dead datacenter",
            send
        );
        prop_assert!(
            send.hops <= max_hops(router, n, live),
            "{:?} took too many hops",
            send
        );
        received[send.to.get()] += 1;
    }
    for dc in (0..n).map(idx) {
        let expected = u32::from(live.contains(dc) && dc != origin);
        prop_assert_eq!(
            received[dc.get()],
            expected,
            "{:?} at {:?}, live {:?}",
            router,
            dc,
            live
        );
    }
    Ok(())
}

#[test]
fn every_small_cluster_delivers_exactly_once_whatever_is_down() {
    // Exhaustive for n <= 6: every kind, every origin, every set of down datacenters.
    for n in 1..=6 {
        for router in routers(n, n as u64) {
            for origin in (0..n).map(idx) {
                for down in 0..(1u64 << n) {
                    let live = DcSet::all(n).minus(DcSet::from_bits(down)).with(origin);
                    if routable(&router, origin, live) {
                        check_flood(&router, origin, live).unwrap();
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn floods_deliver_exactly_once_up_to_twelve(
        n in 1usize..=12, seed: u64, origin in 0usize..12, down: u64,
    ) {
        let origin = idx(origin % n);
        let live = DcSet::all(n).minus(DcSet::from_bits(down)).with(origin);
        for router in routers(n, seed) {
            if routable(&router, origin, live) {
                check_flood(&router, origin, live)?;
            }
        }
    }

    /// A relay never sends a change to a datacenter in its path, whoever asks.
    #[test]
    fn next_hops_never_returns_the_path_or_the_dead(
        n in 1usize..=12, seed: u64, me in 0usize..12, origin in 0usize..12, path: u64, live: u64,
    ) {
        let (me, origin, path, live) = case(n, me, origin, path, live);
        for router in routers(n, seed) {
            let hops = router.next_hops(me, origin, path.with(origin), live);
            prop_assert!(hops.intersect(path.with(me).with(origin)).is_empty());
            prop_assert!(hops.minus(live).is_empty());
        }
    }

    /// A change that has passed more datacenters goes to no more of them: a
    /// shipper that finds a peer left out for a change that has passed its origin
    /// alone skips the change unread.
    #[test]
    fn a_longer_path_never_adds_a_hop(
        n in 1usize..=12, seed: u64, me in 0usize..12, origin in 0usize..12, path: u64, live: u64,
    ) {
        let (me, origin, path, live) = case(n, me, origin, path, live);
        for router in routers(n, seed) {
            let shortest = router.next_hops(me, origin, DcSet::one(origin), live);
            let longer = router.next_hops(me, origin, path.with(origin), live);
            prop_assert!(longer.minus(shortest).is_empty());
        }
    }
}

#[test]
fn hop_counts_match_each_kind_when_all_are_live() {
    let n = 5;
    let all = DcSet::all(n);
    let hops = |r: &Router, origin: usize| -> Vec<u32> {
        let mut h = vec![0; n];
        for s in r.flood(idx(origin), all).sends {
            h[s.to.get()] = s.hops;
        }
        h
    };
    assert_eq!(hops(&Router::all_to_all(n), 2), vec![1, 1, 0, 1, 1]);
    assert_eq!(
        hops(&Router::ring((0..n).map(idx).collect()), 1),
        vec![4, 0, 1, 2, 3]
    );
    let star = Router::star(n, idx(0), StarFallback::Direct);
    assert_eq!(hops(&star, 3), vec![1, 2, 2, 0, 2]);
    assert_eq!(hops(&star, 0), vec![0, 1, 1, 1, 1]);
}

#[test]
fn a_ring_skips_a_dead_successor_and_a_star_falls_back() {
    let ring = Router::ring(vec![idx(0), idx(1), idx(2), idx(3)]);
    let live = DcSet::all(4).without(idx(1));
    assert_eq!(
        ring.next_hops(idx(0), idx(0), DcSet::one(idx(0)), live),
        DcSet::one(idx(2))
    );
    // Back at the origin: stop.
    let path = DcSet::one(idx(0)).with(idx(2)).with(idx(3));
    assert_eq!(ring.next_hops(idx(3), idx(0), path, live), DcSet::EMPTY);

    let live = DcSet::all(4).without(idx(0));
    let direct = Router::star(4, idx(0), StarFallback::Direct);
    let expected = DcSet::one(idx(1)).with(idx(3));
    assert_eq!(
        direct.next_hops(idx(2), idx(2), DcSet::one(idx(2)), live),
        expected
    );
    let held = Router::star(4, idx(0), StarFallback::None);
    assert_eq!(
        held.next_hops(idx(2), idx(2), DcSet::one(idx(2)), live),
        DcSet::EMPTY
    );
}

#[test]
fn a_datacenter_refuses_a_change_that_has_passed_it() {
    assert!(!accepts(idx(2), DcSet::one(idx(2))));
    assert!(accepts(idx(2), DcSet::one(idx(1))));
}

#[test]
fn edges_follow_the_kind() {
    let ring = Router::ring(vec![idx(2), idx(0), idx(1)]);
    assert_eq!(
        ring.edges(),
        vec![(idx(0), idx(1)), (idx(1), idx(2)), (idx(2), idx(0))]
    );
    let star = Router::star(3, idx(1), StarFallback::Direct);
    let expected = vec![
        (idx(0), idx(1)),
        (idx(1), idx(0)),
        (idx(1), idx(2)),
        (idx(2), idx(1)),
    ];
    assert_eq!(star.edges(), expected);
    assert_eq!(Router::all_to_all(3).edges().len(), 6);
}

#[test]
fn links_are_allowed_where_routing_may_use_them() {
    let (a, b, c) = (idx(0), idx(1), idx(2));
    let held = Router::star(3, a, StarFallback::None);
    assert!(held.may_link(a, b) && held.may_link(c, a));
    assert!(
        !held.may_link(b, c),
        "leaves of a star without fallback never talk"
    );
    assert!(Router::star(3, a, StarFallback::Direct).may_link(b, c));
    assert!(Router::ring(vec![a, b, c]).may_link(a, c));
    assert!(!Router::all_to_all(3).may_link(b, b));
}

#[test]
fn all_to_all_passes_on_the_changes_of_an_origin_that_is_down() {
    let r = Router::all_to_all(3);
    let (a, b, c) = (DcIdx(0), DcIdx(1), DcIdx(2));
    let all = DcSet::all(3);
    // a is live: b sends none of a's changes on.
    assert_eq!(r.next_hops(b, a, DcSet::EMPTY.with(a), all), DcSet::EMPTY);
    // a is down from b's view: b passes them to c (never back along the path).
    let live = all.without(a);
    assert_eq!(
        r.next_hops(b, a, DcSet::EMPTY.with(a), live),
        DcSet::EMPTY.with(c)
    );
    assert_eq!(
        r.next_hops(b, a, DcSet::EMPTY.with(a).with(c), live),
        DcSet::EMPTY
    );
}
