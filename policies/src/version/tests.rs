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
