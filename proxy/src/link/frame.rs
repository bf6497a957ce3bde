//! The one frame codec of every link: the handshake, replication, snapshots.
//!
//! A frame is `[length u32 LE][type u8][body]`, the length counting the type byte
//! and the body. Every integer of the framing is little-endian. The link protocol
//! version is [`super::PROTOCOL_VERSION`] (in the hello and the ALPN id); a type
//! this build does not know ends the link with an error naming the peer.
//!
//! | type | frame | body | limit |
//! |---|---|---|---|
//! | 1 | change | the change exactly as the sender's log holds it | [`MAX_RECORD`] + 1 |
//! | 2 | applied | what the sender knows each datacenter has applied: `[(dc, vector)]`, postcard, vectors in their binary form | 1 MiB |
//! | 3 | heartbeat | empty | 1 |
//! | 4 | snapshot begins | the vector the sender's store reaches (binary form) | 64 KiB |
//! | 5 | snapshot entries | `[(key, record)]`, postcard, records as the embedded store writes them | [`MAX_RECORD`] + 64 KiB |
//! | 6 | snapshot ends | empty; changes follow from the vector of type 4 on | 1 |
//! | 7 | snapshot request | empty: the sender lost its data and asks for the receiver's store | 1 |
//! | 8 | hello | `(version, cluster, dc, applied vector)`, postcard | 64 KiB |
//! | 9 | refused | the reason, postcard | 64 KiB |
//! | 10 | forward | writes sent to a user's home ([`ForwardRequest`]), postcard | [`MAX_FORWARD`] |
//! | 11 | forward reply | the home's replies and token ([`ForwardReply`]), postcard | [`MAX_FORWARD`] |
//! | 12 | agreement | a request of the home agreement for a datacenter ([`AgreementRequest`]), postcard | [`MAX_AGREEMENT`] |
//! | 13 | agreement reply | its reply (JSON, see `control`) | [`MAX_AGREEMENT`] |
//! | 14 | beat | `[sent u64][echo u64][epoch u64]`: the sender's clock (ms), the latest beat it had from the receiver, echoed, and the home epoch it has applied (a datagram; the home lease) | 25 |
//!
//! A forward and its reply, and an agreement request and its reply, travel alone on a bidirectional stream of their own,
//! never behind the replication stream. The length is checked against the type's limit before the body is
//! read, and the body's buffer grows only as bytes arrive, so a peer cannot make
//! the proxy allocate more than it has sent. Change frames also travel, several to
//! a datagram, as QUIC datagrams ([`decode_all`]); a datagram may end in zero
//! bytes of padding ([`pad`]).

use meridian_policies::VersionVector;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::engine::{Entries, Stored};
use crate::log::MAX_RECORD;

/// A frame type's number on the wire and its body's limit in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameType {
    /// The type byte.
    pub code: u8,
    /// Its name, for errors.
    pub name: &'static str,
    /// The longest frame of this type (type byte included).
    pub limit: usize,
}

const fn ty(code: u8, name: &'static str, limit: usize) -> FrameType {
    FrameType { code, name, limit }
}

/// The longest forward or forward reply: one command of the largest value a log
/// record holds, and the rest of its group.
pub const MAX_FORWARD: usize = MAX_RECORD + (64 << 20);

/// The longest agreement request or reply (Raft messages of a small state).
pub const MAX_AGREEMENT: usize = 4 << 20;

/// Every frame type this build reads, by code.
pub const TYPES: [FrameType; 14] = [
    ty(1, "change", MAX_RECORD + 1),
    ty(2, "applied", 1 << 20),
    ty(3, "heartbeat", 1),
    ty(4, "snapshot-begin", 64 << 10),
    ty(5, "snapshot-entries", MAX_RECORD + (64 << 10)),
    ty(6, "snapshot-end", 1),
    ty(7, "snapshot-request", 1),
    ty(8, "hello", 64 << 10),
    ty(9, "refused", 64 << 10),
    ty(10, "forward", MAX_FORWARD),
    ty(11, "forward-reply", MAX_FORWARD),
    ty(12, "agreement", MAX_AGREEMENT),
    ty(13, "agreement-reply", MAX_AGREEMENT),
    ty(14, "beat", 25),
];

/// The first bytes of the body read before the buffer grows with what arrives.
const FIRST_READ: usize = 64 << 10;

/// A frame as decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// An encoded change (decoded by its receiver, which knows the log's format).
    Change(Vec<u8>),
    /// Applied vectors by datacenter.
    Applied(Vec<(String, VersionVector)>),
    /// Nothing but liveness.
    Heartbeat,
    /// A snapshot of the sender's store begins, reaching this vector.
    SnapshotBegin(VersionVector),
    /// Keys of the snapshot.
    SnapshotEntries(Entries),
    /// The snapshot is complete.
    SnapshotEnd,
    /// The sender asks for a snapshot.
    SnapshotRequest,
    /// The handshake: who the sender is.
    Hello(Hello),
    /// The handshake was refused, and why.
    Refused(String),
    /// Writes forwarded to a user's home.
    Forward(ForwardRequest),
    /// The home's answer to a forward.
    ForwardReply(ForwardReply),
    /// A request of the home agreement.
    Agreement(AgreementRequest),
    /// The reply to an agreement request.
    AgreementReply(Vec<u8>),
    /// Liveness for the home lease: the sender's clock, the latest `sent` it had
    /// from the receiver (0: none), which proves the receiver's beat arrived, and
    /// the home epoch the sender has applied.
    Beat {
        /// The sender's clock, in milliseconds since it started.
        sent: u64,
        /// The receiver's `sent` of the latest beat the sender had from it.
        echo: u64,
        /// The home agreement's epoch as the sender has applied it.
        epoch: u64,
    },
}

/// A request of the home agreement for datacenter `to` (passed on along the
/// forwarding path where there is no direct link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementRequest {
    /// The datacenter it is for.
    pub to: String,
    /// The request, as the agreement encodes it.
    pub body: Vec<u8>,
}

/// Who sent a forwarded request, and which one it is: a resend carries the same id,
/// so the home executes it once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The datacenter whose client sent the writes.
    pub from: String,
    /// That proxy's process (random at start), so a restarted sender never reuses an id.
    pub incarnation: u64,
    /// The request's number at that process.
    pub n: u64,
}

/// Consecutive writes of one client connection for one home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// The request's identity.
    pub id: RequestId,
    /// The datacenter that executes the writes (relays pass the request on).
    pub home: String,
    /// The client's protocol (2 or 3): replies come back encoded for it.
    pub protocol: u8,
    /// The session's token (a version vector's binary form): the home executes the
    /// writes once it has applied this.
    pub token: bytes::Bytes,
    /// The commands, each its arguments.
    pub commands: Vec<Vec<bytes::Bytes>>,
    /// The session that sent it, as `(id, epoch)` (see `SessionMark`): the home
    /// refuses writes of an epoch its session has since left (`SessionFence`).
    pub session: Option<(u64, u64)>,
}

/// What the home answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardReply {
    /// One encoded reply per command, in order, exactly as the home wrote them.
    pub replies: Vec<bytes::Bytes>,
    /// What the session has now seen of the home (a version vector's binary form).
    pub token: bytes::Bytes,
}

/// What a proxy says of itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The link protocol version it speaks.
    pub version: u16,
    /// Its cluster.
    pub cluster: String,
    /// Its datacenter.
    pub dc: String,
    /// What it has applied.
    pub applied: VersionVector,
    /// Its process: random at each start, so a peer can tell a restart.
    pub incarnation: u64,
}

/// A frame that could not be read: the link is closed with this reason.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended inside a frame.
    #[error("link stream from {peer} failed: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// Why.
        source: std::io::Error,
    },
    /// A frame type this build does not know.
    #[error("{peer} sent a frame of type {code}, unknown to this build (a newer protocol?)")]
    UnknownType {
        /// The peer.
        peer: String,
        /// The type byte.
        code: u8,
    },
    /// A frame longer than its type allows.
    #[error("{peer} sent a {name} frame of {len} bytes, over the limit of {limit}")]
    Oversized {
        /// The peer.
        peer: String,
        /// The frame type.
        name: &'static str,
        /// The announced length.
        len: usize,
        /// The type's limit.
        limit: usize,
    },
    /// A frame whose body does not decode.
    #[error("{peer} sent a malformed {name} frame: {what}")]
    Malformed {
        /// The peer.
        peer: String,
        /// The frame type.
        name: &'static str,
        /// What is wrong.
        what: String,
    },
}

impl FrameError {
    fn malformed(peer: &str, name: &'static str, what: impl ToString) -> FrameError {
        FrameError::Malformed {
            peer: peer.to_owned(),
            name,
            what: what.to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct HelloBody {
    version: u16,
    cluster: String,
    dc: String,
    applied: Vec<u8>,
    incarnation: u64,
}

impl Frame {
    /// The frame type's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        TYPES
            .iter()
            .find(|t| t.code == self.code())
            .map_or("unknown", |t| t.name)
    }

    fn code(&self) -> u8 {
        match self {
            Frame::Change(_) => 1,
            Frame::Applied(_) => 2,
            Frame::Heartbeat => 3,
            Frame::SnapshotBegin(_) => 4,
            Frame::SnapshotEntries(_) => 5,
            Frame::SnapshotEnd => 6,
            Frame::SnapshotRequest => 7,
            Frame::Hello(_) => 8,
            Frame::Refused(_) => 9,
            Frame::Forward(_) => 10,
            Frame::ForwardReply(_) => 11,
            Frame::Agreement(_) => 12,
            Frame::AgreementReply(_) => 13,
            Frame::Beat { .. } => 14,
        }
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(self.code());
        match self {
            Frame::Change(bytes) => out.extend_from_slice(bytes),
            Frame::Applied(table) => {
                let table: Vec<(&str, Vec<u8>)> = table
                    .iter()
                    .map(|(dc, v)| (dc.as_str(), v.to_bytes()))
                    .collect();
                append_postcard(out, &table);
            }
            Frame::SnapshotBegin(vector) => vector.encode(out),
            Frame::SnapshotEntries(entries) => encode_entries(out, entries),
            Frame::Hello(hello) => append_postcard(
                out,
                &HelloBody {
                    version: hello.version,
                    cluster: hello.cluster.clone(),
                    dc: hello.dc.clone(),
                    applied: hello.applied.to_bytes(),
                    incarnation: hello.incarnation,
                },
            ),
            Frame::Refused(reason) => append_postcard(out, reason),
            Frame::Forward(request) => append_postcard(out, request),
            Frame::ForwardReply(reply) => append_postcard(out, reply),
            Frame::Agreement(request) => append_postcard(out, request),
            Frame::AgreementReply(body) => out.extend_from_slice(body),
            Frame::Beat { sent, echo, epoch } => {
                out.extend_from_slice(&sent.to_le_bytes());
                out.extend_from_slice(&echo.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
            }
            Frame::Heartbeat | Frame::SnapshotEnd | Frame::SnapshotRequest => {}
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes the body of a frame of type `code`.
    pub fn decode(code: u8, body: &[u8], peer: &str) -> Result<Frame, FrameError> {
        let ty = frame_type(code, peer)?;
        let bad = |what: &dyn std::fmt::Display| FrameError::malformed(peer, ty.name, what);
        let empty = |frame: Frame| match body.is_empty() {
            true => Ok(frame),
            false => Err(bad(&"a body where none belongs")),
        };
        match code {
            1 => Ok(Frame::Change(body.to_vec())),
            2 => {
                let table: Vec<(String, Vec<u8>)> =
                    postcard::from_bytes(body).map_err(|e| bad(&e))?;
                let mut out = Vec::with_capacity(table.len());
                for (dc, bytes) in table {
                    let vector = VersionVector::decode(&bytes)
                        .map_err(|e| bad(&format!("the vector of {dc:?}: {e}")))?;
                    out.push((dc, vector));
                }
                Ok(Frame::Applied(out))
            }
            4 => VersionVector::decode(body)
                .map(Frame::SnapshotBegin)
                .map_err(|e| bad(&e)),
            5 => {
                let raw: Vec<(Vec<u8>, Vec<u8>)> =
                    postcard::from_bytes(body).map_err(|e| bad(&e))?;
                let mut entries = Vec::with_capacity(raw.len());
                for (key, record) in raw {
                    let stored = Stored::decode(&record).map_err(|e| bad(&e))?;
                    entries.push((key, stored));
                }
                Ok(Frame::SnapshotEntries(entries))
            }
            8 => {
                let hello: HelloBody = postcard::from_bytes(body).map_err(|e| bad(&e))?;
                let applied = VersionVector::decode(&hello.applied).map_err(|e| bad(&e))?;
                Ok(Frame::Hello(Hello {
                    version: hello.version,
                    cluster: hello.cluster,
                    dc: hello.dc,
                    applied,
                    incarnation: hello.incarnation,
                }))
            }
            9 => postcard::from_bytes(body)
                .map(Frame::Refused)
                .map_err(|e| bad(&e)),
            10 => postcard::from_bytes(body)
                .map(Frame::Forward)
                .map_err(|e| bad(&e)),
            11 => postcard::from_bytes(body)
                .map(Frame::ForwardReply)
                .map_err(|e| bad(&e)),
            12 => postcard::from_bytes(body)
                .map(Frame::Agreement)
                .map_err(|e| bad(&e)),
            13 => Ok(Frame::AgreementReply(body.to_vec())),
            14 => {
                let word = |i: usize| {
                    body.get(i * 8..i * 8 + 8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_le_bytes)
                };
                match (word(0), word(1), word(2), body.len()) {
                    (Some(sent), Some(echo), Some(epoch), 24) => {
                        Ok(Frame::Beat { sent, echo, epoch })
                    }
                    _ => Err(bad(&"a beat is 24 bytes")),
                }
            }
            3 => empty(Frame::Heartbeat),
            6 => empty(Frame::SnapshotEnd),
            _ => empty(Frame::SnapshotRequest),
        }
    }
}

/// The type of code `code`, or the error naming it.
fn frame_type(code: u8, peer: &str) -> Result<FrameType, FrameError> {
    TYPES
        .iter()
        .find(|t| t.code == code)
        .copied()
        .ok_or_else(|| FrameError::UnknownType {
            peer: peer.to_owned(),
            code,
        })
}

/// Checks a frame's announced length against its type's limit.
fn check_len(len: usize, code: u8, peer: &str) -> Result<FrameType, FrameError> {
    let ty = frame_type(code, peer)?;
    if len == 0 || len > ty.limit {
        return Err(FrameError::Oversized {
            peer: peer.to_owned(),
            name: ty.name,
            len,
            limit: ty.limit,
        });
    }
    Ok(ty)
}

/// Reads the next frame; `Ok(None)` when the stream ended cleanly between frames.
pub async fn read<R: AsyncRead + Unpin>(
    stream: &mut R,
    peer: &str,
) -> Result<Option<Frame>, FrameError> {
    let io = |source| FrameError::Io {
        peer: peer.to_owned(),
        source,
    };
    let mut head = [0u8; 5];
    match stream.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    stream.read_exact(&mut head[1..]).await.map_err(io)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    check_len(len, head[4], peer)?;
    let body_len = len - 1;
    let mut body = Vec::with_capacity(body_len.min(FIRST_READ));
    let read = (&mut *stream)
        .take(body_len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(io)?;
    if read < body_len {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    match head[4] {
        // A change is passed on as it is, without another copy.
        1 => Ok(Some(Frame::Change(body))),
        code => Frame::decode(code, &body, peer).map(Some),
    }
}

/// Decodes every frame of `bytes` (a datagram), in order. A datagram may end in
/// padding: zero bytes where the next frame's length would be (no frame is 0 bytes
/// long; see [`pad`]).
pub fn decode_all(mut bytes: &[u8], peer: &str) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        if bytes.iter().all(|&b| b == 0) {
            break;
        }
        let cut = || FrameError::malformed(peer, "datagram", "a frame cut short");
        let (head, rest) = bytes.split_first_chunk::<5>().ok_or_else(cut)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        check_len(len, head[4], peer)?;
        let (body, rest) = rest.split_at_checked(len - 1).ok_or_else(cut)?;
        frames.push(Frame::decode(head[4], body, peer)?);
        bytes = rest;
    }
    Ok(frames)
}

/// Pads `datagram` (whole frames) with zero bytes to `size` bytes, if shorter: a
/// datagram as large as the path carries fills a QUIC packet alone, so no other
/// data shares its fate when the packet is lost.
pub fn pad(datagram: &mut Vec<u8>, size: usize) {
    if datagram.len() < size {
        datagram.resize(size, 0);
    }
}

/// Appends a change frame around an encoded change, without copying it first.
pub fn push_change(out: &mut Vec<u8>, change: &[u8]) {
    out.extend_from_slice(&(change.len() as u32 + 1).to_le_bytes());
    out.push(1);
    out.extend_from_slice(change);
}

/// Appends a snapshot-entries frame without copying the entries into a frame first.
pub fn push_snapshot_entries(out: &mut Vec<u8>, entries: &[(Vec<u8>, Stored)]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(5);
    encode_entries(out, entries);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn encode_entries(out: &mut Vec<u8>, entries: &[(Vec<u8>, Stored)]) {
    let entries: Vec<(&[u8], Vec<u8>)> = entries
        .iter()
        .map(|(key, stored)| {
            let mut record = Vec::new();
            stored.encode(&mut record);
            (key.as_slice(), record)
        })
        .collect();
    append_postcard(out, &entries);
}

fn append_postcard<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serialising plain owned data into a Vec cannot fail.
    out.extend_from_slice(&postcard::to_stdvec(value).unwrap_or_default());
}

#[cfg(test)]
mod tests;
