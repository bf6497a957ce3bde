use super::*;
use proptest::prelude::*;

const IDS: [&str; 3] = ["a", "b", "c"];

/// A causal history: each step, one datacenter makes a change after what it has
/// applied; sometimes it first applies what another has made (a message).
fn history() -> impl Strategy<Value = Vec<(usize, u64, VersionVector)>> {
    proptest::collection::vec((0..IDS.len(), proptest::option::of(0..IDS.len())), 1..30).prop_map(
        |steps| {
            let mut seen = vec![VersionVector::new(); IDS.len()];
            let mut changes = Vec::new();
            for (dc, learn) in steps {
                if let Some(from) = learn {
                    let other = seen[from].clone();
                    seen[dc].merge(&other);
                }
                let seq = seen[dc].get(IDS[dc]) + 1;
                let mut deps = seen[dc].clone();
                deps.advance(IDS[dc], 0);
                // Deps name other origins only (the origin's own order is `seq`).
                let deps = deps.iter().filter(|(o, _)| *o != IDS[dc]).fold(
                    VersionVector::new(),
                    |mut v, (o, s)| {
                        v.advance(o, s);
                        v
                    },
                );
                seen[dc].advance(IDS[dc], seq);
                changes.push((dc, seq, deps));
            }
            changes
        },
    )
}

proptest! {
    /// Delivered in any order, with duplicates, and applied only when `readiness`
    /// says so (held ones offered again after each apply): every change is applied
    /// exactly once, and never before a change it depends on.
    #[test]
    fn any_delivery_order_applies_all_in_causal_order(
        changes in history(),
        order in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
    ) {
        let mut deliveries: Vec<usize> = order.iter().map(|i| i.index(changes.len())).collect();
        deliveries.extend(0..changes.len());
        let mut applied = VersionVector::new();
        let mut held: Vec<usize> = Vec::new();
        let mut applied_count = 0;
        for i in deliveries {
            held.push(i);
            let mut progress = true;
            while progress {
                progress = false;
                held.retain(|&j| {
                    let (dc, seq, deps) = &changes[j];
                    match readiness(&applied, IDS[*dc], *seq, deps) {
                        Readiness::Applied => false,
                        Readiness::Ready => {
                            assert!(applied.dominates(deps));
                            applied.advance(IDS[*dc], *seq);
                            applied_count += 1;
                            progress = true;
                            false
                        }
                        Readiness::AwaitsPredecessor | Readiness::AwaitsDependencies => true,
                    }
                });
            }
        }
        prop_assert!(held.is_empty());
        prop_assert_eq!(applied_count, changes.len());
    }
}

#[test]
fn each_case_is_named() {
    let applied: VersionVector = "a:3,b:1".parse().unwrap();
    let none = VersionVector::new();
    let needs_b2: VersionVector = "b:2".parse().unwrap();
    assert_eq!(readiness(&applied, "a", 2, &none), Readiness::Applied);
    assert_eq!(readiness(&applied, "a", 4, &none), Readiness::Ready);
    assert_eq!(
        readiness(&applied, "a", 5, &none),
        Readiness::AwaitsPredecessor
    );
    assert_eq!(
        readiness(&applied, "a", 4, &needs_b2),
        Readiness::AwaitsDependencies
    );
    assert_eq!(
        readiness(&applied, "c", 1, &needs_b2),
        Readiness::AwaitsDependencies
    );
    assert!(!dependencies_met(&applied, &needs_b2));
}
