//! The Redis protocol: requests in (RESP2 multibulk and inline), replies out
//! (RESP2, or RESP3 after `HELLO 3`).

mod redis_reply;
mod reply;
mod request;

pub use redis_reply::{ReplyScanner, decode_reply};
pub use reply::{Protocol, Reply, format_double};
pub use request::{Limits, RequestParser};

/// Feeds `input` into a buffer in the given chunk sizes (cycled; 0 counts as 1),
/// calling `take` after each chunk until it finds nothing more whole; returns what
/// it took, or its first error. The parsers' tests feed input as a network would.
#[cfg(test)]
fn feed_in_chunks<T, E>(
    input: &[u8],
    chunks: &[usize],
    mut take: impl FnMut(&mut bytes::BytesMut) -> Result<Option<T>, E>,
) -> Result<Vec<T>, E> {
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(taken) = take(&mut buf)? {
            out.push(taken);
        }
    }
    Ok(out)
}
