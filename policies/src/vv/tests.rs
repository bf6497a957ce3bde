use super::*;
use proptest::prelude::*;

const IDS: [&str; 5] = ["ap-northeast", "eu-west", "sa-east", "us-east", "us-west"];

fn vector() -> impl Strategy<Value = VersionVector> {
    proptest::collection::vec((0..IDS.len(), 0u64..20), 0..6).prop_map(|entries| {
        let mut vv = VersionVector::new();
        for (i, seq) in entries {
            vv.advance(IDS[i], seq);
        }
        vv
    })
}

fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut m = a.clone();
    m.merge(b);
    m
}

/// The naive oracle: pointwise comparison over every id either vector could name.
fn naive_dominates(a: &VersionVector, b: &VersionVector) -> bool {
    IDS.iter().all(|id| a.get(id) >= b.get(id))
}

proptest! {
    #[test]
    fn merge_is_commutative(a in vector(), b in vector()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in vector(), b in vector(), c in vector()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in vector(), b in vector()) {
        prop_assert_eq!(merged(&a, &a), a.clone());
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &b), ab);
    }

    #[test]
    fn merge_is_the_least_upper_bound(a in vector(), b in vector(), c in vector()) {
        let ab = merged(&a, &b);
        prop_assert!(ab.dominates(&a) && ab.dominates(&b));
        if c.dominates(&a) && c.dominates(&b) {
            prop_assert!(c.dominates(&ab));
        }
    }

    #[test]
    fn dominates_matches_the_naive_oracle(a in vector(), b in vector()) {
        prop_assert_eq!(a.dominates(&b), naive_dominates(&a, &b));
        prop_assert_eq!(a.concurrent(&b), !naive_dominates(&a, &b) && !naive_dominates(&b, &a));
    }

    #[test]
    fn dominates_is_a_partial_order(a in vector(), b in vector(), c in vector()) {
        prop_assert!(a.dominates(&a));
        if a.dominates(&b) && b.dominates(&a) {
            prop_assert_eq!(&a, &b);
        }
        if a.dominates(&b) && b.dominates(&c) {
            prop_assert!(a.dominates(&c));
        }
    }

    #[test]
    fn binary_form_round_trips(a in vector()) {
        prop_assert_eq!(VersionVector::decode(&a.to_bytes()), Ok(a));
    }

    #[test]
    fn text_form_round_trips(a in vector()) {
        prop_assert_eq!(a.to_string().parse::<VersionVector>(), Ok(a));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(vv) = VersionVector::decode(&bytes) {
            // Whatever decodes is canonical, so it re-encodes to the same bytes.
            prop_assert_eq!(vv.to_bytes(), bytes);
        }
    }
}

#[test]
fn absent_entries_are_zero_and_advance_never_lowers() {
    let mut vv = VersionVector::new();
    assert_eq!(vv.get("us-east"), 0);
    vv.advance("us-east", 7);
    vv.advance("us-east", 3);
    vv.advance("eu-west", 0);
    assert_eq!(vv.get("us-east"), 7);
    assert_eq!(vv.len(), 1);
    assert_eq!(vv.to_string(), "us-east:7");
}

#[test]
fn malformed_inputs_name_the_problem() {
    let text = |s: &str| s.parse::<VersionVector>();
    assert_eq!(text("us-east"), Err(DecodeError::BadTextEntry { index: 0 }));
    assert_eq!(text("a:1,a:2"), Err(DecodeError::NotCanonical { index: 1 }));
    assert_eq!(text("a:1,b c:2"), Err(DecodeError::BadId { index: 1 }));
    assert_eq!(text("a:0"), Err(DecodeError::ZeroSequence { index: 0 }));
    // Two entries out of order: "b" before "a".
    let bytes = [2, 1, b'b', 1, 1, b'a', 1];
    assert_eq!(
        VersionVector::decode(&bytes),
        Err(DecodeError::NotCanonical { index: 1 })
    );
    assert_eq!(
        VersionVector::decode(&[1, 1, b'a']),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        VersionVector::decode(&[0, 0]),
        Err(DecodeError::TrailingBytes(1))
    );
    assert_eq!(
        VersionVector::decode(&[0xff, 0x7f]),
        Err(DecodeError::TooManyEntries(16383))
    );
}
