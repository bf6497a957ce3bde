use super::*;
use proptest::prelude::*;

const IDS: [&str; 4] = ["ap-northeast", "eu-west", "us-east", "us-west"];

fn version() -> impl Strategy<Value = Version> {
    // Few timestamps, so ties (broken by origin) are common.
    (0u64..6, 0..IDS.len()).prop_map(|(t, i)| Version::new(Timestamp::from_u64(t), IDS[i]))
}

proptest! {
    #[test]
    fn merge_is_commutative(a in version(), b in version()) {
        prop_assert_eq!(a.clone().merge(b.clone()), b.merge(a));
    }

    #[test]
    fn merge_is_associative(a in version(), b in version(), c in version()) {
        prop_assert_eq!(
            a.clone().merge(b.clone()).merge(c.clone()),
            a.merge(b.merge(c))
        );
    }

    #[test]
    fn merge_is_idempotent(a in version(), b in version()) {
        prop_assert_eq!(a.clone().merge(a.clone()), a.clone());
        let ab = a.merge(b.clone());
        prop_assert_eq!(ab.clone().merge(b), ab);
    }

    /// Applying writes one by one with `resolve` ends at the merge of all of them,
    /// whatever the order and however often each arrives: every datacenter
    /// converges, and the conflicts counted are the writes that lost.
    #[test]
    fn resolving_in_any_order_converges(
        writes in proptest::collection::vec(version(), 1..12),
        order in proptest::collection::vec(any::<prop::sample::Index>(), 1..24),
    ) {
        let expected = writes.iter().cloned().reduce(Version::merge);
        let mut current: Option<Version> = None;
        for index in order {
            let incoming = index.get(&writes);
            match incoming.resolve(current.as_ref()) {
                Resolution::Wins => current = Some(incoming.clone()),
                Resolution::Same => prop_assert_eq!(current.as_ref(), Some(incoming)),
                Resolution::Loses => prop_assert!(current.as_ref() > Some(incoming)),
            }
        }
        for incoming in &writes {
            if incoming.resolve(current.as_ref()) == Resolution::Wins {
                current = Some(incoming.clone());
            }
        }
        prop_assert_eq!(current, expected);
    }

    #[test]
    fn encoding_round_trips(t in any::<u64>(), i in 0..IDS.len(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
        let v = Version::new(Timestamp::from_u64(t), IDS[i]);
        let mut bytes = v.to_bytes();
        prop_assert_eq!(Version::decode(&bytes), Ok(v.clone()));
        bytes.extend_from_slice(&tail);
        let mut input = bytes.as_slice();
        prop_assert_eq!(Version::decode_prefix(&mut input), Ok(v));
        prop_assert_eq!(input, tail.as_slice());
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = Version::decode(&bytes);
    }
}

#[test]
fn ties_are_broken_by_origin_and_bad_input_named() {
    let t = Timestamp::from_u64(7);
    let (a, b) = (Version::new(t, "eu-west"), Version::new(t, "us-east"));
    assert_eq!(a.clone().merge(b.clone()), b);
    assert_eq!(a.resolve(Some(&b)), Resolution::Loses);
    assert_eq!(b.resolve(Some(&a)), Resolution::Wins);
    assert_eq!(b.resolve(None), Resolution::Wins);
    assert_eq!(b.resolve(Some(&b.clone())), Resolution::Same);
    assert_eq!(Version::decode(&[]), Err(VersionDecodeError::Truncated));
    assert_eq!(
        Version::decode(b"12/us"),
        Err(VersionDecodeError::UnknownFormat(b'1'))
    );
    let mut bad = a.to_bytes();
    let last = bad.len() - 1;
    bad[last] = b' ';
    assert_eq!(Version::decode(&bad), Err(VersionDecodeError::BadOrigin));
}

#[test]
fn the_sequence_number_round_trips_and_format_1_still_reads() {
    let v = Version::new(Timestamp::from_u64(9), "eu-west").with_seq(41);
    let decoded = Version::decode(&v.to_bytes()).unwrap();
    assert_eq!(decoded.seq, 41);
    assert!(decoded.to_string().ends_with("@eu-west#41"), "{decoded}");
    // Format 1: [1][hlc][len][origin].
    let mut old = vec![1u8];
    old.extend_from_slice(&9u64.to_le_bytes());
    old.push(7);
    old.extend_from_slice(b"eu-west");
    let decoded = Version::decode(&old).unwrap();
    assert_eq!((decoded.seq, &*decoded.origin), (0, "eu-west"));
    // The sequence number takes no part in the order.
    assert_eq!(decoded, v);
}

#[test]
fn a_state_is_unseen_by_a_change_whose_origin_had_not_applied_it() {
    let t = Timestamp::from_u64(5);
    let state = Version::new(t, "b").with_seq(10);
    let deps = |n: u64| {
        let mut d = crate::VersionVector::new();
        d.advance("b", n);
        d
    };
    assert!(state.unseen_by("a", &deps(9)));
    assert!(!state.unseen_by("a", &deps(10)));
    assert!(!state.unseen_by("a", &deps(11)));
    // A change has seen every earlier change of its own origin.
    assert!(!state.unseen_by("b", &deps(0)));
    // A state of unknown number counts as seen.
    assert!(!Version::new(t, "b").unseen_by("a", &deps(0)));
}
