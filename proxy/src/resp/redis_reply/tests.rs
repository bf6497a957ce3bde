use super::*;
use crate::resp::Protocol;
use bytes::BytesMut;
use proptest::prelude::*;

fn encoded(reply: &Reply) -> Vec<u8> {
    let mut out = BytesMut::new();
    reply.encode(Protocol::Resp2, &mut out);
    out.to_vec()
}

/// Feeds `input` to a scanner in the given chunk sizes, taking each whole reply
/// off the buffer as it is found; returns the replies, or the first error.
fn feed(input: &[u8], chunks: &[usize]) -> Result<Vec<Vec<u8>>, MalformedReply> {
    let mut scanner = ReplyScanner::default();
    crate::resp::feed_in_chunks(input, chunks, |buf| {
        Ok(scanner.next(buf)?.map(|len| buf.split_to(len).to_vec()))
    })
}

/// Replies of the kinds Redis sends on a RESP2 connection.
fn reply() -> impl Strategy<Value = Reply> {
    let leaf = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..30).prop_map(|b| Reply::Bulk(b.into())),
        any::<i64>().prop_map(Reply::Integer),
        Just(Reply::Null),
        "[a-z ]{0,10}x".prop_map(Reply::Status),
        "ERR [a-z ]{0,10}".prop_map(Reply::Error),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(Reply::Array)
    })
}

proptest! {
    #[test]
    fn replies_are_found_whole_and_read_back_whatever_the_split(
        replies in proptest::collection::vec(reply(), 1..6),
        chunks in proptest::collection::vec(1usize..24, 1..8),
    ) {
        let each: Vec<Vec<u8>> = replies.iter().map(encoded).collect();
        let found = feed(&each.concat(), &chunks).unwrap();
        prop_assert_eq!(&found, &each);
        for (raw, reply) in found.into_iter().zip(&replies) {
            prop_assert_eq!(&decode_reply(&Bytes::from(raw), false), reply);
        }
    }

    #[test]
    fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..200), chunk in 1usize..50) {
        if let Ok(found) = feed(&input, &[chunk]) {
            for raw in found {
                let _ = decode_reply(&Bytes::from(raw), true);
            }
        }
    }
}

#[test]
fn a_reply_is_not_whole_until_its_last_byte() {
    let raw = b"*2\r\n$3\r\nabc\r\n*1\r\n:7\r\n";
    for cut in 0..raw.len() {
        let mut scanner = ReplyScanner::default();
        // Resumed over growing prefixes, as the reads deliver them.
        for end in 0..=cut {
            assert_eq!(scanner.next(&raw[..end]), Ok(None), "cut at {end}");
        }
    }
    let mut scanner = ReplyScanner::default();
    assert_eq!(scanner.next(raw), Ok(Some(raw.len())));
}

#[test]
fn nulls_and_empty_arrays_are_whole_replies() {
    let raw = b"$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n";
    assert_eq!(
        feed(raw, &[64]).unwrap(),
        [&b"$-1\r\n"[..], b"*-1\r\n", b"*0\r\n", b"$0\r\n\r\n"]
    );
    assert_eq!(
        decode_reply(&Bytes::from_static(b"*-1\r\n"), false),
        Reply::Null
    );
    assert_eq!(
        decode_reply(&Bytes::from_static(b"*0\r\n"), false),
        Reply::Array(vec![])
    );
}

#[test]
fn what_is_not_a_reply_is_named_with_its_place() {
    let cases: [(&[u8], &str, usize); 5] = [
        (b"?x\r\n", "a RESP2 type byte", 0),
        (b"*2\r\n:1\r\n$x\r\n", "a length", 8),
        (b"$3\r\nabcde\r\n", "a bulk string ending in CRLF", 0),
        (b"*1\r\n$-2\r\n", "a length", 4),
        (b"$+3\r\nabc\r\n", "a length", 0),
    ];
    for (raw, what, at) in cases {
        let mut scanner = ReplyScanner::default();
        assert_eq!(
            scanner.next(raw),
            Err(MalformedReply { what, at }),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
    let mut scanner = ReplyScanner::default();
    assert!(scanner.next(&deep).is_err());
}

#[test]
fn a_reply_reads_as_the_client_reply_it_stands_for() {
    let decode = |raw: &'static [u8], pairs| decode_reply(&Bytes::from_static(raw), pairs);
    assert_eq!(decode(b"+OK\r\n", false), Reply::OK);
    assert_eq!(decode(b"+PONG\r\n", false), Reply::Status("PONG".into()));
    assert_eq!(
        decode(b"-WRONGTYPE Operation against a key\r\n", false),
        Reply::Error("WRONGTYPE Operation against a key".into())
    );
    assert_eq!(
        decode(b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n", true),
        Reply::Map(vec![
            (Reply::bulk("a"), Reply::bulk("1")),
            (Reply::bulk("b"), Reply::bulk("2"))
        ])
    );
    assert!(decode(b":12x\r\n", false).is_error());
}
