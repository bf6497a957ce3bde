//! Frames on a replication stream: `[length u32 LE][kind u8][body]`, where the length
//! counts the kind byte and the body.
//!
//! - kind 1, a change: the change exactly as the sender's log holds it;
//! - kind 2, applied vectors: what the sender knows each datacenter has applied
//!   (its own included), as `[(datacenter, vector bytes)]` in postcard;
//! - kind 3, a heartbeat, with an empty body;
//! - kind 4, a snapshot begins: the version vector the sender's store reaches;
//! - kind 5, snapshot entries: `[(key, stored record)]` in postcard;
//! - kind 6, the snapshot ends; changes follow from the vector of kind 4 on;
//! - kind 7, a snapshot request: the sender lost its data (its peers hold changes
//!   of its own that it lacks) and asks for the receiver's store.
//!
//! Change frames also travel, packed several to a datagram, as QUIC datagrams.
//!
//! A frame of another kind, or longer than the log's largest record, ends the link
//! with an error naming the peer: it is a newer protocol or a damaged stream.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::log::MAX_RECORD;

const CHANGE: u8 = 1;
const APPLIED: u8 = 2;
const HEARTBEAT: u8 = 3;
const SNAPSHOT_BEGIN: u8 = 4;
const SNAPSHOT_ENTRIES: u8 = 5;
const SNAPSHOT_END: u8 = 6;
const SNAPSHOT_REQUEST: u8 = 7;
/// The longest frame accepted: a change as large as the log accepts, plus its kind.
pub(super) const MAX_FRAME: usize = MAX_RECORD + 1;

/// One frame, as read.
#[derive(Debug)]
pub(super) enum Frame {
    /// An encoded change.
    Change(Vec<u8>),
    /// Applied vectors by datacenter.
    Applied(Vec<(String, Vec<u8>)>),
    /// Nothing but liveness.
    Heartbeat,
    /// A snapshot of the sender's store begins; the encoded vector it reaches.
    SnapshotBegin(Vec<u8>),
    /// Keys of the snapshot.
    SnapshotEntries(crate::store::Entries),
    /// The snapshot is complete.
    SnapshotEnd,
    /// The sender asks for a snapshot.
    SnapshotRequest,
}

/// A stream that broke the framing.
#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    /// The stream failed or ended.
    #[error("replication stream from {peer} ended: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// Why.
        source: std::io::Error,
    },
    /// A frame longer than [`MAX_FRAME`].
    #[error(
        "replication stream from {peer}: a frame of {len} bytes is over the limit of {MAX_FRAME}"
    )]
    Oversized {
        /// The peer.
        peer: String,
        /// The announced length.
        len: usize,
    },
    /// A frame this build cannot read.
    #[error("replication stream from {peer}: {what}")]
    Malformed {
        /// The peer.
        peer: String,
        /// What is wrong.
        what: String,
    },
}

/// Appends a change frame around an encoded change.
pub(super) fn push_change(out: &mut Vec<u8>, change: &[u8]) {
    push_frame(out, CHANGE, change);
}

/// Appends an applied-vectors frame.
pub(super) fn push_applied(out: &mut Vec<u8>, table: &[(String, Vec<u8>)]) {
    #[derive(Serialize)]
    struct Table<'a>(&'a [(String, Vec<u8>)]);
    let body = postcard::to_stdvec(&Table(table)).unwrap_or_default();
    push_frame(out, APPLIED, &body);
}

/// Appends a heartbeat frame.
pub(super) fn push_heartbeat(out: &mut Vec<u8>) {
    push_frame(out, HEARTBEAT, &[]);
}

fn push_frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32 + 1).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

/// Appends the frame that begins a snapshot reaching `vector` (encoded).
pub(super) fn push_snapshot_begin(out: &mut Vec<u8>, vector: &[u8]) {
    push_frame(out, SNAPSHOT_BEGIN, vector);
}

/// Appends a frame of snapshot entries.
pub(super) fn push_snapshot_entries(
    out: &mut Vec<u8>,
    entries: &[(Vec<u8>, crate::store::Stored)],
) {
    let body = postcard::to_stdvec(entries).unwrap_or_default();
    push_frame(out, SNAPSHOT_ENTRIES, &body);
}

/// Appends a snapshot request.
pub(super) fn push_snapshot_request(out: &mut Vec<u8>) {
    push_frame(out, SNAPSHOT_REQUEST, &[]);
}

/// Appends the frame that ends a snapshot.
pub(super) fn push_snapshot_end(out: &mut Vec<u8>) {
    push_frame(out, SNAPSHOT_END, &[]);
}

/// Reads the next frame; `Ok(None)` when the stream ended cleanly between frames.
pub(super) async fn read<R: AsyncRead + Unpin>(
    stream: &mut R,
    peer: &str,
) -> Result<Option<Frame>, FrameError> {
    let io = |source| FrameError::Io {
        peer: peer.to_owned(),
        source,
    };
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Oversized {
            peer: peer.to_owned(),
            len,
        });
    }
    let malformed = |what: String| FrameError::Malformed {
        peer: peer.to_owned(),
        what,
    };
    if len == 0 {
        return Err(malformed("an empty frame".into()));
    }
    let mut kind = [0u8; 1];
    stream.read_exact(&mut kind).await.map_err(io)?;
    let mut body = vec![0u8; len - 1];
    stream.read_exact(&mut body).await.map_err(io)?;
    match kind[0] {
        CHANGE => Ok(Some(Frame::Change(body))),
        APPLIED => {
            #[derive(Deserialize)]
            struct Table(Vec<(String, Vec<u8>)>);
            postcard::from_bytes::<Table>(&body)
                .map(|t| Some(Frame::Applied(t.0)))
                .map_err(|e| malformed(format!("an applied-vectors frame does not decode: {e}")))
        }
        HEARTBEAT => Ok(Some(Frame::Heartbeat)),
        SNAPSHOT_BEGIN => Ok(Some(Frame::SnapshotBegin(body))),
        SNAPSHOT_ENTRIES => postcard::from_bytes(&body)
            .map(|e| Some(Frame::SnapshotEntries(e)))
            .map_err(|e| malformed(format!("a snapshot frame does not decode: {e}"))),
        SNAPSHOT_END => Ok(Some(Frame::SnapshotEnd)),
        SNAPSHOT_REQUEST => Ok(Some(Frame::SnapshotRequest)),
        other => Err(malformed(format!(
            "frame kind {other} is unknown to this build (a newer protocol?)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_named() {
        let mut out = Vec::new();
        push_change(&mut out, b"abc");
        push_applied(&mut out, &[("us-east".into(), vec![1, 2])]);
        push_heartbeat(&mut out);
        let mut input = out.as_slice();
        assert!(
            matches!(read(&mut input, "p").await.unwrap(), Some(Frame::Change(b)) if b == b"abc")
        );
        assert!(
            matches!(read(&mut input, "p").await.unwrap(), Some(Frame::Applied(t)) if t[0].0 == "us-east")
        );
        assert!(matches!(
            read(&mut input, "p").await.unwrap(),
            Some(Frame::Heartbeat)
        ));
        assert!(read(&mut input, "p").await.unwrap().is_none());

        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let err = read(&mut huge.as_slice(), "eu-west").await.unwrap_err();
        assert!(
            err.to_string().contains("eu-west") && err.to_string().contains("over the limit"),
            "{err}"
        );
        let unknown = [1u8, 0, 0, 0, 9];
        let err = read(&mut unknown.as_slice(), "eu-west").await.unwrap_err();
        assert!(err.to_string().contains("kind 9"), "{err}");
        let cut = [5u8, 0, 0, 0, 1, b'a'];
        assert!(read(&mut cut.as_slice(), "eu-west").await.is_err());
    }
}
