use super::*;
use proptest::prelude::*;

fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Feeds `input` to a parser in the given chunk sizes; returns every request parsed,
/// or the first error.
fn feed(input: &[u8], chunks: &[usize], limits: Limits) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
    let mut parser = RequestParser::new(limits);
    crate::resp::feed_in_chunks(input, chunks, |buf| parser.next(buf))
}

fn args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6)
}

proptest! {
    #[test]
    fn pipelined_requests_survive_any_split(
        reqs in proptest::collection::vec(args(), 1..5),
        chunks in proptest::collection::vec(1usize..20, 1..8),
    ) {
        let input: Vec<u8> = reqs.iter().flat_map(|r| multibulk(r)).collect();
        let parsed = feed(&input, &chunks, Limits::default()).unwrap();
        let expected: Vec<Vec<Bytes>> =
            reqs.iter().map(|r| r.iter().map(|a| Bytes::from(a.clone())).collect()).collect();
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..200), chunk in 1usize..50) {
        let _ = feed(&input, &[chunk], Limits::default());
    }

    #[test]
    fn mutated_requests_never_panic(
        req in args(), at in any::<prop::sample::Index>(), byte: u8, chunk in 1usize..16,
    ) {
        let mut input = multibulk(&req);
        let i = at.index(input.len());
        input[i] = byte;
        let _ = feed(&input, &[chunk], Limits::default());
    }
}

#[test]
fn every_split_point_of_a_request_parses() {
    let input = multibulk(&[b"SET".to_vec(), b"{u1}:k".to_vec(), b"v\r\nx".to_vec()]);
    for split in 1..=input.len() {
        let got = feed(&input, &[split, input.len()], Limits::default()).unwrap();
        let want = vec![vec![
            Bytes::from("SET"),
            Bytes::from("{u1}:k"),
            Bytes::from("v\r\nx"),
        ]];
        assert_eq!(got, want, "split at {split}");
    }
}

#[test]
fn inline_commands_split_on_whitespace_and_honour_quotes() {
    let got = feed(
        b"set k \"a b\\x41\\n\" 'it\\'s'\r\nPING\n\r\n",
        &[100],
        Limits::default(),
    )
    .unwrap();
    let first = vec![
        Bytes::from("set"),
        Bytes::from("k"),
        Bytes::from("a bA\n"),
        Bytes::from("it's"),
    ];
    assert_eq!(got[0], first);
    assert_eq!(got[1], vec![Bytes::from("PING")]);
    assert!(got[2].is_empty(), "a blank line is an empty request");
    let unbalanced = Err(ProtocolError::UnbalancedQuotes);
    assert_eq!(
        feed(b"set k \"open\r\n", &[100], Limits::default()),
        unbalanced
    );
    assert_eq!(
        feed(b"set k \"a\"b\r\n", &[100], Limits::default()),
        unbalanced
    );
}

#[test]
fn malformed_frames_get_redis_errors() {
    let check = |input: &[u8], err: ProtocolError| {
        assert_eq!(
            feed(input, &[64], Limits::default()),
            Err(err),
            "{:?}",
            String::from_utf8_lossy(input)
        )
    };
    check(b"*x\r\n", ProtocolError::BadArrayLength);
    check(b"*1\r\n$x\r\n", ProtocolError::BadBulkLength);
    check(b"*1\r\n$-1\r\n", ProtocolError::BadBulkLength);
    check(b"*1\r\n+OK\r\n", ProtocolError::ExpectedBulk('+'));
    check(b"*1\r\n$2\r\nabcd\r\n", ProtocolError::MissingCrlf);
    check(
        b"*1\r\n$99999999999999999999999999999999999999\r\n",
        ProtocolError::HeaderTooLong,
    );
    assert_eq!(
        ProtocolError::BadBulkLength.to_string(),
        "Protocol error: invalid bulk length"
    );
}

#[test]
fn limits_refuse_oversized_frames_before_buffering_them() {
    let limits = Limits {
        max_bulk: 1024,
        max_args: 4,
        max_inline: 32,
        max_request: 1500,
    };
    // A bulk length over the limit is refused from its header alone.
    assert_eq!(
        feed(b"*1\r\n$1025\r\n", &[64], limits),
        Err(ProtocolError::BadBulkLength)
    );
    assert_eq!(
        feed(b"*5\r\n", &[64], limits),
        Err(ProtocolError::BadArrayLength)
    );
    let long_line = vec![b'a'; 40];
    assert_eq!(
        feed(&long_line, &[64], limits),
        Err(ProtocolError::InlineTooLong)
    );
    let two = multibulk(&[vec![b'x'; 1000], vec![b'y'; 1000]]);
    assert_eq!(
        feed(&two, &[64], limits),
        Err(ProtocolError::RequestTooBig(1500))
    );

    // A declared bulk that never arrives reserves a bounded amount of memory.
    let mut parser = RequestParser::new(Limits::default());
    let mut buf = BytesMut::from(&b"*1\r\n$60000000\r\nabc"[..]);
    assert_eq!(parser.next(&mut buf), Ok(None));
    assert!(
        buf.capacity() < 2 << 20,
        "reserved {} bytes on a header's word",
        buf.capacity()
    );
}

#[test]
fn empty_and_null_arrays_are_empty_requests() {
    let got = feed(b"*0\r\n*-1\r\n", &[64], Limits::default()).unwrap();
    assert_eq!(got, vec![Vec::<Bytes>::new(), vec![]]);
}
