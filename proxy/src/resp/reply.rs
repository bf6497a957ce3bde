//! Replies, encoded for the protocol version the client chose.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, every connection's start.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// A reply to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// A status that is not a constant.
    Status(String),
    /// `-ERR ...`: the text, starting with its code (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$5 hello`.
    Bulk(Bytes),
    /// The null (a missing key): `$-1` in RESP2, `_` in RESP3.
    Null,
    /// The null array (`*-1` in RESP2), e.g. an aborted transaction.
    NullArray,
    /// `*n` elements.
    Array(Vec<Reply>),
    /// A map: `%n` in RESP3, a flat array of pairs in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// Pairs (members and scores): `*n` arrays of two in RESP3, one flat array in RESP2.
    Pairs(Vec<(Reply, Reply)>),
    /// A double: `,` in RESP3, a bulk string in RESP2.
    Double(f64),
    /// Verbatim text (INFO, CLIENT INFO): `=` in RESP3, a bulk string in RESP2.
    Verbatim(String),
    /// A reply that would have gone over the client's output buffer limit, so was
    /// not built: the connection closes instead of answering (as Redis closes a
    /// client over its `client-output-buffer-limit`).
    OverLimit,
    /// A reply already encoded, for the connection's protocol: what a user's home
    /// answered a forwarded write, passed on byte for byte.
    Encoded(Bytes),
    /// Redis's own reply to a command passed on to it, as Redis encoded it on a
    /// RESP2 connection: written as it is to a RESP2 client, read and re-encoded
    /// for a RESP3 one.
    Redis(Bytes),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// About how many bytes the reply takes once encoded (its data and a few
    /// bytes of framing per element).
    pub fn size(&self) -> usize {
        const FRAME: usize = 16;
        FRAME
            + match self {
                Reply::Simple(s) => s.len(),
                Reply::Status(s) | Reply::Error(s) | Reply::Verbatim(s) => s.len(),
                Reply::Bulk(b) | Reply::Encoded(b) | Reply::Redis(b) => b.len(),
                Reply::Integer(_)
                | Reply::Null
                | Reply::NullArray
                | Reply::Double(_)
                | Reply::OverLimit => 0,
                Reply::Array(items) => items.iter().map(Reply::size).sum(),
                Reply::Map(pairs) | Reply::Pairs(pairs) => {
                    pairs.iter().map(|(k, v)| k.size() + v.size()).sum()
                }
            }
    }

    /// An error reply; `message` starts with its code (`ERR ...`).
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Error(message.into())
    }

    /// A bulk string of `bytes`.
    pub fn bulk(bytes: impl Into<Bytes>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        match self {
            Reply::Error(_) | Reply::OverLimit => true,
            Reply::Encoded(bytes) | Reply::Redis(bytes) => bytes.first() == Some(&b'-'),
            _ => false,
        }
    }

    /// Appends the encoding of this reply for `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Status(s) => line(out, b'+', clean(s).as_bytes()),
            Reply::Error(e) => line(out, b'-', clean(e).as_bytes()),
            // Never sent: the connection closes first. Should one reach here, an error.
            Reply::OverLimit => line(out, b'-', b"ERR reply over the output buffer limit"),
            Reply::Integer(n) => line(out, b':', itoa::Buffer::new().format(*n).as_bytes()),
            Reply::Bulk(b) => bulk(out, b'$', b),
            Reply::Null if resp3 => out.put_slice(b"_\r\n"),
            Reply::Null => out.put_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NullArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                header(out, b'*', items.len());
                items.iter().for_each(|i| i.encode(protocol, out));
            }
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len());
                } else {
                    header(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
            Reply::Pairs(pairs) => {
                header(out, b'*', if resp3 { pairs.len() } else { pairs.len() * 2 });
                for (k, v) in pairs {
                    if resp3 {
                        header(out, b'*', 2);
                    }
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
            Reply::Double(d) => {
                let text = format_double(*d);
                if resp3 {
                    line(out, b',', text.as_bytes())
                } else {
                    bulk(out, b'$', text.as_bytes())
                }
            }
            Reply::Verbatim(text) if resp3 => {
                header(out, b'=', text.len() + 4);
                out.put_slice(b"txt:");
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(text) => bulk(out, b'$', text.as_bytes()),
            Reply::Encoded(bytes) => out.put_slice(bytes),
            Reply::Redis(raw) if resp3 => super::decode_reply(raw, false).encode(protocol, out),
            Reply::Redis(raw) => out.put_slice(raw),
        }
    }
}

/// Redis's text form of a double, as C's `%.17g` writes it (`1.1000000000000001`,
/// `3`, `1.0000000000000001e+300`), and `inf`/`-inf`/`nan`.
pub fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d.is_nan() {
        return "nan".into();
    }
    // Seventeen significant digits, correctly rounded; its exponent picks the form.
    let sci = format!("{d:.16e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..17).contains(&exp) {
        let fixed = format!("{d:.*}", (16 - exp) as usize);
        strip_zeros(&fixed).to_owned()
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip_zeros(mantissa), exp.unsigned_abs())
    }
}

/// `%g`'s trimming: trailing zeros of a fraction go, and the point if nothing is left.
fn strip_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// Simple strings and errors cannot hold CR or LF; replace them rather than break framing.
fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        s.replace(['\r', '\n'], " ").into()
    } else {
        s.into()
    }
}

fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(kind);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, kind: u8, len: usize) {
    line(out, kind, itoa::Buffer::new().format(len).as_bytes());
}

fn bulk(out: &mut BytesMut, kind: u8, data: &[u8]) {
    header(out, kind, data.len());
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_read_as_c_printf_17g_writes_them() {
        for (d, text) in [
            (1.1, "1.1000000000000001"),
            (1.2000000000000002, "1.2000000000000002"),
            (3.0, "3"),
            (-0.5, "-0.5"),
            (1e300, "1.0000000000000001e+300"),
            (1e17, "1e+17"),
            (1e16, "10000000000000000"),
            (0.0001, "0.0001"),
            (0.00001, "1.0000000000000001e-05"),
            (123456.789, "123456.789"),
            (f64::INFINITY, "inf"),
            (0.0, "0"),
        ] {
            assert_eq!(format_double(d), text, "{d:e}");
        }
    }

    fn encoded(reply: Reply, protocol: Protocol) -> String {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn encodes_each_kind_for_each_protocol() {
        use Protocol::*;
        assert_eq!(encoded(Reply::OK, Resp2), "+OK\r\n");
        assert_eq!(
            encoded(Reply::error("ERR no\r\nway"), Resp2),
            "-ERR no  way\r\n"
        );
        assert_eq!(encoded(Reply::Integer(-7), Resp2), ":-7\r\n");
        assert_eq!(encoded(Reply::bulk("hi"), Resp2), "$2\r\nhi\r\n");
        assert_eq!(encoded(Reply::Null, Resp2), "$-1\r\n");
        assert_eq!(encoded(Reply::Null, Resp3), "_\r\n");
        assert_eq!(encoded(Reply::NullArray, Resp2), "*-1\r\n");
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(encoded(map.clone(), Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(map, Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(Reply::Double(1.5), Resp2), "$3\r\n1.5\r\n");
        let pairs = Reply::Pairs(vec![(Reply::bulk("m"), Reply::Double(2.0))]);
        assert_eq!(
            encoded(pairs.clone(), Resp2),
            "*2\r\n$1\r\nm\r\n$1\r\n2\r\n"
        );
        assert_eq!(encoded(pairs, Resp3), "*1\r\n*2\r\n$1\r\nm\r\n,2\r\n");
        assert_eq!(encoded(Reply::Double(3.0), Resp3), ",3\r\n");
        assert_eq!(
            encoded(Reply::Double(1.1), Resp3),
            ",1.1000000000000001\r\n"
        );
        assert_eq!(
            encoded(Reply::Verbatim("x".into()), Resp3),
            "=5\r\ntxt:x\r\n"
        );
        assert_eq!(
            encoded(Reply::Array(vec![Reply::Null, Reply::OK]), Resp2),
            "*2\r\n$-1\r\n+OK\r\n"
        );
    }
}
