//! An incremental request parser. It keeps its place between reads, so a frame split
//! anywhere across reads costs no re-parsing, and it refuses oversized frames from
//! their headers, before buffering their bodies.

use bytes::{Buf, Bytes, BytesMut};

/// Bounds on what one client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string, in bytes (default 64 MiB).
    pub max_bulk: usize,
    /// Most arguments in one command (default 1,048,576, as Redis).
    pub max_args: usize,
    /// Longest inline command line, in bytes (default 64 KiB, as Redis).
    pub max_inline: usize,
    /// Most bytes of bulk strings in one command (default 256 MiB).
    pub max_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 64 << 20,
            max_args: 1 << 20,
            max_inline: 64 << 10,
            max_request: 256 << 20,
        }
    }
}

/// A request the client framed wrongly. The connection cannot be resynchronised
/// afterwards: the server answers with the message and closes it, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `*` followed by something that is not a count, or a count over the limit.
    #[error("Protocol error: invalid multibulk length")]
    BadArrayLength,
    /// `$` followed by something that is not a length, or a length over the limit.
    #[error("Protocol error: invalid bulk length")]
    BadBulkLength,
    /// An array element that does not start with `$`.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk string not followed by CRLF.
    #[error("Protocol error: bulk string not terminated by CRLF")]
    MissingCrlf,
    /// An inline command longer than the limit.
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// A command whose bulk strings add up to more than the limit.
    #[error("Protocol error: request of more than {0} bytes")]
    RequestTooBig(usize),
    /// A header line (`*3`, `$5`) longer than any valid one.
    #[error("Protocol error: too big mbulk count string")]
    HeaderTooLong,
    /// Quotes that do not close in an inline command.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Longest valid header line: `*` or `$`, 20 digits, CRLF.
const MAX_HEADER: usize = 32;

/// Where the parser is inside a multibulk request.
#[derive(Debug, Default)]
enum State {
    /// Between requests.
    #[default]
    Idle,
    /// Inside `*n`: `args` read so far, `remaining` to go, and the length of the
    /// next bulk string once its header has been read.
    Array {
        args: Vec<Bytes>,
        remaining: usize,
        bulk: Option<usize>,
        bytes: usize,
    },
}

/// Parses requests from the bytes a client sends.
#[derive(Debug, Default)]
pub struct RequestParser {
    limits: Limits,
    state: State,
}

impl RequestParser {
    /// A parser that enforces `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            state: State::Idle,
        }
    }

    /// Takes the next complete request off the front of `buf`: `Ok(None)` when more
    /// bytes are needed. An empty request (a blank inline line, `*0`) comes back as an
    /// empty argument list, which the caller ignores, as Redis does.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if let State::Idle = self.state {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                if first != b'*' {
                    return self.inline(buf);
                }
                match self.begin_array(buf)? {
                    Step::NeedMore => return Ok(None),
                    Step::Done(args) => return Ok(Some(args)),
                    Step::Continue => continue,
                }
            }
            match self.take_bulk(buf)? {
                Step::NeedMore => return Ok(None),
                Step::Done(args) => return Ok(Some(args)),
                Step::Continue => {}
            }
        }
    }

    /// Reads an array header `*<n>`: an empty request is done at once, otherwise the
    /// parser now expects `n` bulk strings.
    fn begin_array(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let Some(count) = header(buf, self.limits.max_args, ProtocolError::BadArrayLength)? else {
            return Ok(Step::NeedMore);
        };
        match count {
            None | Some(0) => Ok(Step::Done(Vec::new())),
            Some(n) => {
                self.state = State::Array {
                    args: Vec::with_capacity(n.min(1024)),
                    remaining: n,
                    bulk: None,
                    bytes: 0,
                };
                Ok(Step::Continue)
            }
        }
    }

    /// Reads the next bulk string of the array being parsed (its header first, if
    /// not read yet); the request is done after the last one.
    fn take_bulk(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let limits = self.limits;
        let State::Array {
            args,
            remaining,
            bulk,
            bytes,
        } = &mut self.state
        else {
            return Ok(Step::Continue);
        };
        let len = match *bulk {
            Some(len) => len,
            None => match bulk_header(buf, &limits, bytes)? {
                Some(len) => *bulk.insert(len),
                None => return Ok(Step::NeedMore),
            },
        };
        if buf.len() < len + 2 {
            // Room for the body, but never a large allocation on a header's word.
            buf.reserve((len + 2 - buf.len()).min(1 << 20));
            return Ok(Step::NeedMore);
        }
        if &buf[len..len + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        args.push(buf.split_to(len).freeze());
        buf.advance(2);
        *bulk = None;
        *remaining -= 1;
        if *remaining > 0 {
            return Ok(Step::Continue);
        }
        match std::mem::take(&mut self.state) {
            State::Array { args, .. } => Ok(Step::Done(args)),
            State::Idle => Ok(Step::Continue),
        }
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.limits.max_inline {
                return Err(ProtocolError::InlineTooLong);
            }
            return Ok(None);
        };
        if end > self.limits.max_inline {
            return Err(ProtocolError::InlineTooLong);
        }
        let line = buf.split_to(end + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        split_inline(line).map(Some)
    }
}

/// Reads a `*n` or `$n` header line. `Ok(None)`: incomplete. `Ok(Some(None))`: a
/// negative count (a null). Counts above `max` are `err`.
/// Where a request stands after one step of parsing.
enum Step {
    /// More bytes are needed.
    NeedMore,
    /// The request is complete.
    Done(Vec<Bytes>),
    /// Parse on.
    Continue,
}

/// Reads a bulk string's header `$<len>`, counting its length against the
/// request's limit; `None` when more bytes are needed.
fn bulk_header(
    buf: &mut BytesMut,
    limits: &Limits,
    bytes: &mut usize,
) -> Result<Option<usize>, ProtocolError> {
    match buf.first() {
        None => return Ok(None),
        Some(b'$') => {}
        Some(&other) => return Err(ProtocolError::ExpectedBulk(other as char)),
    }
    match header(buf, limits.max_bulk, ProtocolError::BadBulkLength)? {
        None => Ok(None),
        Some(None) => Err(ProtocolError::BadBulkLength),
        Some(Some(len)) => {
            *bytes += len;
            if *bytes > limits.max_request {
                return Err(ProtocolError::RequestTooBig(limits.max_request));
            }
            Ok(Some(len))
        }
    }
}

fn header(
    buf: &mut BytesMut,
    max: usize,
    err: ProtocolError,
) -> Result<Option<Option<usize>>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_HEADER)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= MAX_HEADER {
            return Err(ProtocolError::HeaderTooLong);
        }
        return Ok(None);
    };
    if buf.len() < cr + 2 {
        return Ok(None);
    }
    if buf[cr + 1] != b'\n' {
        return Err(err);
    }
    let digits = &buf[1..cr];
    let value = match digits {
        [b'-', rest @ ..] if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) => None,
        _ if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse::<usize>().ok());
            match n {
                Some(n) if n <= max => Some(n),
                _ => return Err(err),
            }
        }
        _ => return Err(err),
    };
    buf.advance(cr + 2);
    Ok(Some(value))
}

/// Splits an inline command into arguments: whitespace separates them; double quotes
/// (with `\n`, `\r`, `\t`, `\\`, `\"` and `\xHH` escapes) and single quotes group them.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => i = double_quoted(line, i + 1, &mut arg)?,
            b'\'' => i = single_quoted(line, i + 1, &mut arg)?,
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
    Ok(args)
}

/// Reads a double-quoted argument from `i` (after the quote); returns where it ends.
fn double_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    while i < line.len() {
        match line[i] {
            b'"' => return closed(line, i + 1),
            b'\\' if i + 1 < line.len() => {
                let hex = line
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match (
                    line[i + 1],
                    hex.and_then(|h| u8::from_str_radix(h, 16).ok()),
                ) {
                    (b'x', Some(byte)) => {
                        arg.push(byte);
                        i += 4;
                        continue;
                    }
                    (b'n', _) => arg.push(b'\n'),
                    (b'r', _) => arg.push(b'\r'),
                    (b't', _) => arg.push(b'\t'),
                    (b'b', _) => arg.push(0x08),
                    (b'a', _) => arg.push(0x07),
                    (other, _) => arg.push(other),
                }
                i += 2;
            }
            byte => {
                arg.push(byte);
                i += 1;
            }
        }
    }
    Err(ProtocolError::UnbalancedQuotes)
}

fn single_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    while i < line.len() {
        match line[i] {
            b'\\' if line.get(i + 1) == Some(&b'\'') => {
                arg.push(b'\'');
                i += 2;
            }
            b'\'' => return closed(line, i + 1),
            byte => {
                arg.push(byte);
                i += 1;
            }
        }
    }
    Err(ProtocolError::UnbalancedQuotes)
}

/// A closing quote must be followed by whitespace or the end of the line.
fn closed(line: &[u8], after: usize) -> Result<usize, ProtocolError> {
    match line.get(after) {
        None => Ok(after),
        Some(b) if b.is_ascii_whitespace() => Ok(after),
        Some(_) => Err(ProtocolError::UnbalancedQuotes),
    }
}

#[cfg(test)]
mod tests;
