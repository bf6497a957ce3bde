use super::*;

fn write(session: u32, op: u64, key: &str) -> Op {
    Op {
        session,
        op,
        dc: 0,
        key: key.into(),
        kind: Kind::Write,
    }
}

fn read(session: u32, op: u64, key: &str, got: Option<(u32, u64)>) -> Op {
    Op {
        session,
        op,
        dc: 1,
        key: key.into(),
        kind: Kind::Read(got.map(|(session, op)| Value { session, op })),
    }
}

fn found(history: &[Op]) -> Vec<Guarantee> {
    check(history).into_iter().map(|v| v.guarantee).collect()
}

#[test]
fn a_clean_history_has_no_violation() {
    let history = [
        write(1, 1, "a"),
        write(1, 2, "b"),
        read(2, 1, "b", Some((1, 2))),
        read(2, 2, "a", Some((1, 1))),
        write(2, 3, "c"),
        read(3, 1, "c", Some((2, 3))),
        read(3, 2, "b", Some((1, 2))),
        read(3, 3, "x", None),
        read(1, 3, "a", Some((1, 1))),
    ];
    assert_eq!(check(&history), vec![]);
}

#[test]
fn a_missed_own_write_is_read_your_writes() {
    let history = [write(1, 1, "a"), read(1, 2, "a", None)];
    assert_eq!(found(&history), [Guarantee::ReadYourWrites]);
    let history = [
        write(1, 1, "a"),
        write(1, 2, "a"),
        read(1, 3, "a", Some((1, 1))),
    ];
    assert_eq!(found(&history), [Guarantee::ReadYourWrites]);
}

#[test]
fn reading_an_older_value_after_a_newer_one_is_monotonic_reads() {
    let history = [
        write(1, 1, "a"),
        write(1, 2, "a"),
        read(2, 1, "a", Some((1, 2))),
        read(2, 2, "a", Some((1, 1))),
    ];
    assert_eq!(found(&history), [Guarantee::MonotonicReads]);
}

#[test]
fn a_later_write_seen_before_an_earlier_one_is_monotonic_writes() {
    let history = [
        write(1, 1, "a"),
        write(1, 2, "b"),
        read(2, 1, "b", Some((1, 2))),
        read(2, 2, "a", None),
    ];
    assert_eq!(found(&history), [Guarantee::MonotonicWrites]);
}

#[test]
fn a_write_seen_without_what_its_writer_read_is_writes_follow_reads() {
    let history = [
        write(1, 1, "a"),
        read(2, 1, "a", Some((1, 1))),
        write(2, 2, "b"),
        read(3, 1, "b", Some((2, 2))),
        read(3, 2, "a", None),
    ];
    let violations = check(&history);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].guarantee, Guarantee::WritesFollowReads);
    let text = violations[0].to_string();
    assert!(
        text.contains("session 3 op 2") && text.contains("expected s1-1"),
        "{text}"
    );
}

#[test]
fn a_value_never_written_is_impossible() {
    let history = [write(1, 1, "a"), read(2, 1, "a", Some((1, 7)))];
    assert_eq!(found(&history), [Guarantee::Impossible]);
    assert_eq!(Value::parse("s3-14"), Some(Value { session: 3, op: 14 }));
    assert_eq!(
        Value::parse(&Value { session: 3, op: 14 }.text()),
        Some(Value { session: 3, op: 14 })
    );
    assert_eq!(Value::parse("x"), None);
}

#[test]
fn a_write_of_unknown_outcome_may_be_read_and_need_not_be() {
    let maybe = Op {
        kind: Kind::MaybeWrite,
        ..write(1, 2, "a")
    };
    let history = [
        write(1, 1, "a"),
        maybe.clone(),
        read(1, 3, "a", Some((1, 1))),
        read(2, 1, "a", Some((1, 2))),
        read(2, 2, "a", Some((1, 2))),
    ];
    assert_eq!(check(&history), vec![]);
    // Once read, it is seen: going back before it is a violation.
    let history = [
        write(1, 1, "a"),
        maybe,
        read(2, 1, "a", Some((1, 2))),
        read(2, 2, "a", Some((1, 1))),
    ];
    assert_eq!(found(&history), [Guarantee::MonotonicReads]);
}
