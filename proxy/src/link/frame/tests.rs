use super::*;
use crate::change::{Data, Value};
use meridian_policies::{Timestamp, Version};
use proptest::prelude::*;

fn samples() -> Vec<Frame> {
    let vector: VersionVector = "eu-west:3,us-east:9".parse().unwrap();
    let stored = Stored {
        value: Value {
            data: Data::String(b"v".to_vec()),
            expire_at_ms: Some(5),
        },
        version: Version::new(Timestamp::from_u64(77), "us-east"),
    };
    vec![
        Frame::Change(b"abc".to_vec()),
        Frame::Applied(vec![("us-east".into(), vector.clone())]),
        Frame::Heartbeat,
        Frame::SnapshotBegin(vector.clone()),
        Frame::SnapshotEntries(vec![(b"{u1}:k".to_vec(), stored)]),
        Frame::SnapshotEnd,
        Frame::SnapshotRequest,
        Frame::Hello(Hello {
            version: 2,
            cluster: "c".into(),
            dc: "us-east".into(),
            applied: vector,
            incarnation: 7,
        }),
        Frame::Refused("no".into()),
        Frame::Forward(ForwardRequest {
            id: RequestId {
                from: "eu-west".into(),
                incarnation: 9,
                n: 3,
            },
            home: "us-east".into(),
            protocol: 3,
            token: bytes::Bytes::from_static(b"\x01"),
            commands: vec![vec![
                bytes::Bytes::from_static(b"INCR"),
                bytes::Bytes::from_static(b"{u}:n"),
            ]],
            session: Some((11, 2)),
        }),
        Frame::ForwardReply(ForwardReply {
            replies: vec![bytes::Bytes::from_static(b":1\r\n")],
            token: bytes::Bytes::new(),
        }),
        Frame::Agreement(AgreementRequest {
            to: "eu-west".into(),
            body: b"{}".to_vec(),
        }),
        Frame::AgreementReply(b"{\"Vote\":1}".to_vec()),
        Frame::Beat {
            sent: 5,
            echo: 3,
            epoch: 2,
        },
    ]
}

fn encoded(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    out
}

#[tokio::test]
async fn every_type_round_trips_on_a_stream_and_in_a_datagram() {
    let frames = samples();
    assert_eq!(frames.len(), TYPES.len(), "a sample of every type");
    let bytes = encoded(&frames);
    let mut input = bytes.as_slice();
    for frame in &frames {
        assert_eq!(read(&mut input, "p").await.unwrap().as_ref(), Some(frame));
    }
    assert!(read(&mut input, "p").await.unwrap().is_none());
    assert_eq!(decode_all(&bytes, "p").unwrap(), frames);
    let mut change = Vec::new();
    push_change(&mut change, b"abc");
    assert_eq!(change, encoded(&[Frame::Change(b"abc".to_vec())]));
}

#[test]
fn a_padded_datagram_decodes_to_its_frames() {
    let frames = vec![Frame::Change(b"abc".to_vec()), Frame::Change(vec![0; 300])];
    let mut datagram = encoded(&frames);
    let len = datagram.len();
    pad(&mut datagram, 1200);
    assert_eq!(datagram.len(), 1200);
    assert_eq!(decode_all(&datagram, "p").unwrap(), frames);
    // Padding never shortens, and a datagram of padding alone holds no frame.
    pad(&mut datagram, 10);
    assert_eq!(datagram.len(), 1200);
    assert_eq!(decode_all(&[0; 64], "p").unwrap(), vec![]);
    // Anything but zeros after the frames is still refused.
    datagram[len + 7] = 1;
    assert!(decode_all(&datagram, "p").is_err());
}

#[tokio::test]
async fn bad_frames_are_named_with_the_peer_and_the_reason() {
    let err = |e: FrameError| e.to_string();
    // A length over the type's limit, refused before any body is read.
    let huge = [0xff, 0xff, 0xff, 0x7f, 1];
    let e = err(read(&mut huge.as_slice(), "eu-west").await.unwrap_err());
    assert!(
        e.contains("eu-west") && e.contains("change frame") && e.contains("over the limit"),
        "{e}"
    );
    // A heartbeat may not carry a body.
    let fat = [2, 0, 0, 0, 3, 0];
    let e = err(read(&mut fat.as_slice(), "eu-west").await.unwrap_err());
    assert!(e.contains("heartbeat frame of 2 bytes"), "{e}");
    let unknown = [1, 0, 0, 0, 15];
    let e = err(read(&mut unknown.as_slice(), "eu-west").await.unwrap_err());
    assert!(e.contains("type 15"), "{e}");
    let bad_forward = [3, 0, 0, 0, 10, 0xff, 0xff];
    let e = err(read(&mut bad_forward.as_slice(), "eu-west")
        .await
        .unwrap_err());
    assert!(e.contains("malformed forward frame"), "{e}");
    let cut = [5, 0, 0, 0, 1, b'a'];
    assert!(read(&mut cut.as_slice(), "eu-west").await.is_err());
    assert!(decode_all(&cut, "eu-west").is_err());
    let bad_vector = [3, 0, 0, 0, 4, 0xff, 0xff];
    let e = err(read(&mut bad_vector.as_slice(), "eu-west")
        .await
        .unwrap_err());
    assert!(e.contains("malformed snapshot-begin frame"), "{e}");
    let empty = [0, 0, 0, 0, 1];
    assert!(read(&mut empty.as_slice(), "eu-west").await.is_err());
}

fn decode_stream(bytes: &[u8]) -> Vec<Result<Option<Frame>, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut input = bytes;
        let mut out = Vec::new();
        loop {
            match read(&mut input, "fuzz").await {
                Ok(Some(frame)) => out.push(Ok(Some(frame))),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never panic the decoder; whatever decodes re-encodes to bytes
    /// that decode to the same frames.
    #[test]
    fn random_bytes_are_refused_or_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(frames) = decode_all(&bytes, "fuzz") {
            prop_assert_eq!(decode_all(&encoded(&frames), "fuzz").unwrap(), frames);
        }
        let _ = decode_stream(&bytes);
    }

    /// Valid streams with bytes flipped, cut or inserted: refused with an error or
    /// decoded, never a panic, and the stream decoder and the datagram decoder agree.
    #[test]
    fn mutated_frames_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(&samples());
        for (at, byte, how) in edits {
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => drop(bytes.remove(i)),
            }
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let streamed = decode_stream(&bytes);
        let complete: Vec<Frame> = streamed.iter().filter_map(|r| r.clone().ok().flatten()).collect();
        match decode_all(&bytes, "fuzz") {
            Ok(frames) => prop_assert_eq!(frames, complete),
            Err(_) => prop_assert!(streamed.last().is_some_and(Result::is_err)),
        }
    }
}
