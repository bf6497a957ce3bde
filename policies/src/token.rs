//! Session tokens: a client's write timestamp as text.
//!
//! A token is the version vector a session must see: every write it made and every
//! write it read, and, since format 2, the session's [`SessionMark`]. Its text form is
//! `mt2.` followed by the unpadded base64url of the vector's compact binary form and
//! the mark's two integers: ASCII letters, digits, `-`, `_` and `.`, safe in a RESP
//! bulk string, a URL or an HTTP header. `mt2` is the format version, so a later
//! format can be told apart instead of misread. `mt1` tokens (a vector alone, from
//! earlier proxies) are still read.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::varint;
use crate::vv::{DecodeError, VersionVector};

/// The format written: a vector and a mark.
const PREFIX: &str = "mt2.";
/// The earlier format, still read: a vector alone.
const PREFIX_V1: &str = "mt1.";
/// Longest token text accepted: ample for a vector of every datacenter, small enough
/// that a hostile token cannot make us decode much.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a session has written or read: a read is served where `applied` dominates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionToken {
    /// What the session must see.
    pub vector: VersionVector,
    /// Which session it is, and which of its connections handed it on last (absent
    /// from `mt1` tokens).
    pub mark: Option<SessionMark>,
}

/// A session's identity and epoch. Each connection that takes up a token writes in a
/// later epoch than the connection it came from, so a home can refuse a forwarded
/// write of an earlier epoch that reaches it after the session's later writes (see
/// [`crate::SessionFence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionMark {
    /// The session, random when it began.
    pub id: u64,
    /// How many times it has been taken up by a new connection, or has lost track
    /// of a write.
    pub epoch: u64,
}

/// Why text is not a session token. Every variant is the client's mistake: sending the
/// same token again cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("session token is {0} bytes long, more than the limit of {MAX_TOKEN_LEN}")]
    TooLong(usize),
    /// A token of another format version, from a newer or older meridian.
    #[error("session token has format {0:?}, but this proxy reads only \"mt1\" and \"mt2\"")]
    UnknownVersion(String),
    /// Not a meridian token at all.
    #[error("not a meridian session token (it should start with \"mt2.\")")]
    Foreign,
    /// The part after the prefix is not unpadded base64url.
    #[error("session token is damaged: its body is not base64url")]
    BadEncoding,
    /// The body decodes, but not to a version vector.
    #[error("session token is damaged: {0}")]
    BadVector(#[from] DecodeError),
    /// The session's mark after the vector is cut short or malformed.
    #[error("session token is damaged: its session mark is malformed")]
    BadMark,
}

impl SessionToken {
    /// The empty token: a session that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token of `vector`, without a mark.
    pub fn of(vector: VersionVector) -> Self {
        SessionToken { vector, mark: None }
    }

    /// The vector the session must see.
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    /// Records that the session has now seen `vv` (a write it made, or what a read
    /// observed).
    pub fn absorb(&mut self, vv: &VersionVector) {
        self.vector.merge(vv);
    }

    /// Whether a datacenter that has applied `applied` may serve this session.
    pub fn satisfied_by(&self, applied: &VersionVector) -> bool {
        applied.dominates(&self.vector)
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = self.vector.to_bytes();
        match self.mark {
            Some(mark) => {
                varint::put(&mut bytes, mark.id);
                varint::put(&mut bytes, mark.epoch);
                f.write_str(PREFIX)?;
            }
            None => f.write_str(PREFIX_V1)?,
        }
        f.write_str(&URL_SAFE_NO_PAD.encode(bytes))
    }
}

impl FromStr for SessionToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Self, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(text.len()));
        }
        let (body, marked) = match (text.strip_prefix(PREFIX), text.strip_prefix(PREFIX_V1)) {
            (Some(body), _) => (body, true),
            (None, Some(body)) => (body, false),
            (None, None) => {
                return Err(match text.split_once('.') {
                    Some((version, _)) if is_version_tag(version) => {
                        TokenError::UnknownVersion(version.to_owned())
                    }
                    _ => TokenError::Foreign,
                });
            }
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::BadEncoding)?;
        if !marked {
            return Ok(SessionToken::of(VersionVector::decode(&bytes)?));
        }
        let mut rest = bytes.as_slice();
        let vector = VersionVector::decode_prefix(&mut rest)?;
        let id = varint::take(&mut rest).map_err(|_| TokenError::BadMark)?;
        let epoch = varint::take(&mut rest).map_err(|_| TokenError::BadMark)?;
        if !rest.is_empty() {
            return Err(TokenError::BadMark);
        }
        Ok(SessionToken {
            vector,
            mark: Some(SessionMark { id, epoch }),
        })
    }
}

/// `mt` followed by digits: the shape of a token format tag.
fn is_version_tag(s: &str) -> bool {
    s.len() > 2 && s.starts_with("mt") && s[2..].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = SessionToken> {
        let entries = proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", 1u64..u64::MAX), 0..8);
        let mark = proptest::option::of((any::<u64>(), any::<u64>()));
        (entries, mark).prop_map(|(e, mark)| {
            let mut vv = VersionVector::new();
            for (id, seq) in e {
                vv.advance(&id, seq);
            }
            SessionToken {
                vector: vv,
                mark: mark.map(|(id, epoch)| SessionMark { id, epoch }),
            }
        })
    }

    proptest! {
        #[test]
        fn round_trips_through_text(t in token()) {
            let text = t.to_string();
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            prop_assert_eq!(text.parse::<SessionToken>(), Ok(t));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = text.parse::<SessionToken>();
        }

        #[test]
        fn mangled_bodies_are_refused_or_canonical(body in "[A-Za-z0-9_-]{0,40}") {
            for version in ["mt1", "mt2"] {
                if let Ok(t) = format!("{version}.{body}").parse::<SessionToken>() {
                    prop_assert_eq!(t.to_string(), format!("{version}.{body}"));
                }
            }
        }
    }

    #[test]
    fn the_empty_token_is_short() {
        assert_eq!(SessionToken::new().to_string(), "mt1.AA");
        let marked = SessionToken {
            vector: VersionVector::new(),
            mark: Some(SessionMark { id: 1, epoch: 2 }),
        };
        assert_eq!(marked.to_string(), "mt2.AAEC");
    }

    #[test]
    fn malformed_and_foreign_tokens_say_what_is_wrong() {
        let parse = |s: &str| s.parse::<SessionToken>().unwrap_err();
        assert_eq!(parse("mt3.AA"), TokenError::UnknownVersion("mt3".into()));
        assert_eq!(parse("mt2.AA"), TokenError::BadMark);
        assert_eq!(parse("mt2.AAEBAQ"), TokenError::BadMark);
        assert_eq!(parse("eyJhbGciOi.xyz"), TokenError::Foreign);
        assert_eq!(parse(""), TokenError::Foreign);
        assert_eq!(parse("mt1.!!"), TokenError::BadEncoding);
        assert_eq!(
            parse("mt1.AQ"),
            TokenError::BadVector(DecodeError::Truncated)
        );
        assert!(matches!(
            parse(&"mt1.".repeat(2000)),
            TokenError::TooLong(8000)
        ));
    }

    #[test]
    fn satisfaction_is_domination() {
        let mut token = SessionToken::new();
        let mut applied = VersionVector::new();
        assert!(token.satisfied_by(&applied));
        let mut write = VersionVector::new();
        write.advance("us-east", 3);
        token.absorb(&write);
        assert!(!token.satisfied_by(&applied));
        applied.advance("us-east", 3);
        applied.advance("eu-west", 9);
        assert!(token.satisfied_by(&applied));
    }
}
