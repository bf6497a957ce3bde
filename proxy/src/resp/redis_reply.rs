//! Replies as Redis sends them on a RESP2 connection: where each one ends in a
//! stream of bytes (found without building it, so a reply can be passed on as it
//! came), and what one says, for when it must be re-encoded or inspected.

use bytes::Bytes;

use super::Reply;

/// Most arrays open at once inside one reply: far past what any Redis reply nests,
/// a bound on what a broken stream can make the scanner hold.
const MAX_DEPTH: usize = 256;

/// A stream that is not RESP2 replies, with what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at} of the reply")]
pub struct MalformedReply {
    /// What the bytes there should have been.
    pub what: &'static str,
    /// Its offset from the reply's first byte.
    pub at: usize,
}

/// Finds where whole replies end in a growing buffer. A reply that has not all
/// arrived is resumed where the scan stopped when more comes, so a large reply
/// arriving in many reads is scanned once, not once per read.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Where the next element starts, from the start of the reply.
    pos: usize,
    /// For each array open around `pos`, how many of its elements are still to come.
    open: Vec<u64>,
}

impl ReplyScanner {
    /// The length of the whole reply at the start of `buf`, or `None` while part of
    /// it has yet to arrive (call again with the same start and more bytes). After
    /// `Some`, the next call starts a new reply: take the bytes off `buf` first.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<usize>, MalformedReply> {
        loop {
            match self.element(buf)? {
                Step::Partial => return Ok(None),
                Step::Opened => {}
                Step::Whole(end) => {
                    self.pos = end;
                    if self.closed_one() {
                        self.pos = 0;
                        return Ok(Some(end));
                    }
                }
            }
        }
    }

    /// Steps over the element at `pos`.
    fn element(&mut self, buf: &[u8]) -> Result<Step, MalformedReply> {
        let pos = self.pos;
        let Some(eol) = line_end(buf, pos) else {
            return Ok(Step::Partial);
        };
        let malformed = |what| MalformedReply { what, at: pos };
        let kind = buf[pos];
        let after = eol + 2;
        match kind {
            b'+' | b'-' | b':' => Ok(Step::Whole(after)),
            b'$' | b'*' => {
                let len = length(&buf[pos + 1..eol]).ok_or(malformed("a length"))?;
                match (kind, len) {
                    (_, None) => Ok(Step::Whole(after)),
                    (b'$', Some(len)) => {
                        let end = after.saturating_add(len).saturating_add(2);
                        if buf.len() < end {
                            return Ok(Step::Partial);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(malformed("a bulk string ending in CRLF"));
                        }
                        Ok(Step::Whole(end))
                    }
                    (_, Some(0)) => Ok(Step::Whole(after)),
                    (_, Some(n)) => {
                        if self.open.len() >= MAX_DEPTH {
                            return Err(malformed("an array nested less deeply"));
                        }
                        self.open.push(n as u64);
                        self.pos = after;
                        Ok(Step::Opened)
                    }
                }
            }
            _ => Err(malformed("a RESP2 type byte")),
        }
    }

    /// Counts a whole element against the arrays around it; whether that closed the
    /// reply itself.
    fn closed_one(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

/// What the element at the scan's position was.
enum Step {
    /// Part of it has yet to arrive.
    Partial,
    /// An element that is whole, ending here.
    Whole(usize),
    /// An array's header: its elements follow.
    Opened,
}

/// The offset of the CR of the line that starts at `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let cr = from + buf.get(from..)?.iter().position(|&b| b == b'\r')?;
    match buf.get(cr + 1) {
        Some(b'\n') => Some(cr),
        _ => None,
    }
}

/// A length header's number: `Some(None)` for -1 (the null), `None` if it is not one.
fn length(text: &[u8]) -> Option<Option<usize>> {
    if text == b"-1" {
        return Some(None);
    }
    let text = std::str::from_utf8(text).ok()?;
    if text.starts_with('+') {
        return None;
    }
    text.parse().ok().map(Some)
}

/// What one whole reply (as [`ReplyScanner`] found it) says. `map_pairs` reads an
/// array as pairs of a map (HGETALL's reply, a map for a RESP3 client). A reply
/// that does not parse reads as an error naming the fault.
pub fn decode_reply(raw: &Bytes, map_pairs: bool) -> Reply {
    let mut pos = 0;
    decode_at(raw, &mut pos, map_pairs, 0).unwrap_or_else(|e| {
        Reply::error(format!("ERR unexpected reply from the redis backend: {e}"))
    })
}

fn decode_at(
    raw: &Bytes,
    pos: &mut usize,
    map_pairs: bool,
    depth: usize,
) -> Result<Reply, MalformedReply> {
    let start = *pos;
    let malformed = |what| MalformedReply { what, at: start };
    let eol = line_end(raw, start).ok_or(malformed("a line ending in CRLF"))?;
    let text = &raw[start + 1..eol];
    *pos = eol + 2;
    match raw[start] {
        b'+' if text == b"OK" => Ok(Reply::OK),
        b'+' => Ok(Reply::Status(String::from_utf8_lossy(text).into_owned())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(text).into_owned())),
        b':' => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .map(Reply::Integer)
            .ok_or(malformed("an integer")),
        b'$' => match length(text).ok_or(malformed("a length"))? {
            None => Ok(Reply::Null),
            Some(len) => {
                let body = *pos..*pos + len;
                if raw.len() < body.end + 2 {
                    return Err(malformed("a whole bulk string"));
                }
                *pos = body.end + 2;
                Ok(Reply::Bulk(raw.slice(body)))
            }
        },
        b'*' if depth >= MAX_DEPTH => Err(malformed("an array nested less deeply")),
        b'*' => match length(text).ok_or(malformed("a length"))? {
            None => Ok(Reply::Null),
            Some(n) => {
                let mut items = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    items.push(decode_at(raw, pos, false, depth + 1)?);
                }
                Ok(if map_pairs {
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut items = items.into_iter();
                    while let (Some(k), Some(v)) = (items.next(), items.next()) {
                        pairs.push((k, v));
                    }
                    Reply::Map(pairs)
                } else {
                    Reply::Array(items)
                })
            }
        },
        _ => Err(malformed("a RESP2 type byte")),
    }
}

#[cfg(test)]
mod tests;
