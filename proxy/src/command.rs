//! Commands: the table of what meridian accepts, argument checks in Redis's own
//! words, the user a command belongs to, and the data commands' semantics.

mod float;
pub(crate) mod glob;
mod hashes;
mod keys;
mod lists;
mod scans;
mod sets;
mod strings;
pub(crate) mod table;
mod zsets;

use bytes::Bytes;

use crate::change::{Data, SortedSet, Value};
use crate::resp::Reply;

pub use scans::{parse_cursor, scan_options, scan_reply};
pub use table::{Kind, Spec, lookup, lookup_indexed};

/// The outcome of a command: its reply, or an error reply.
pub type Outcome = Result<Reply, Reply>;

/// The keys a data command reads and writes, as one datacenter sees them.
pub trait Keyspace {
    /// The live (unexpired) value of `key`.
    fn get(&mut self, key: &[u8]) -> Result<Option<Value>, Reply>;
    /// Whether `key` holds a live value of any type, one meridian does not handle
    /// included (a list in a fronted Redis): commands that only test existence or
    /// replace a key work on those as Redis does.
    fn exists(&mut self, key: &[u8]) -> Result<bool, Reply> {
        Ok(self.get(key)?.is_some())
    }
    /// Sets `key`'s new state (`None` deletes it). Only write commands call this.
    fn put(&mut self, key: &[u8], value: Option<Value>);
    /// The current wall time, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// A data command's implementation: `args[0]` is the command name.
pub type DataFn = fn(&mut dyn Keyspace, &[Bytes]) -> Outcome;

/// How keys name their users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRule {
    /// The text inside the first `{...}` (the whole key when there is none).
    HashTag,
    /// The text before the first `:` (the whole key when there is none).
    Prefix,
}

impl UserRule {
    /// The user that `key` belongs to.
    pub fn user_of(self, key: &[u8]) -> &[u8] {
        match self {
            UserRule::HashTag => {
                let Some(open) = key.iter().position(|&b| b == b'{') else {
                    return key;
                };
                match key[open + 1..].iter().position(|&b| b == b'}') {
                    Some(0) | None => key,
                    Some(len) => &key[open + 1..open + 1 + len],
                }
            }
            UserRule::Prefix => key
                .iter()
                .position(|&b| b == b':')
                .map_or(key, |i| &key[..i]),
        }
    }
}

/// The user all of a command's keys belong to; `Ok(None)` for keyless commands.
/// Keys of different users are refused, as Redis Cluster refuses keys of different slots.
pub fn user_of_command(
    spec: &Spec,
    args: &[Bytes],
    rule: UserRule,
) -> Result<Option<Bytes>, Reply> {
    let mut user: Option<&[u8]> = None;
    for key in spec.keys(args) {
        if crate::engine::placement::is_own_key(key) {
            return Err(Reply::error(format!(
                "ERR '{}' is a key meridian keeps for itself (keys starting with '__meridian:' are not for clients)",
                String::from_utf8_lossy(key)
            )));
        }
        let this = rule.user_of(key);
        match user {
            None => user = Some(this),
            Some(first) if first == this => {}
            Some(first) => {
                return Err(Reply::error(format!(
                    "CROSSSLOT Keys in request belong to different users ('{}' and '{}'); \
                     a command may only touch one user's keys",
                    String::from_utf8_lossy(first),
                    String::from_utf8_lossy(this)
                )));
            }
        }
    }
    Ok(user.map(Bytes::copy_from_slice))
}

/// `ERR wrong number of arguments for 'get' command`.
pub fn arity_error(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// `ERR unknown command 'foo', with args beginning with: 'a' 'b' `, as Redis words it.
pub fn unknown_command(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]);
    let mut message = format!(
        "ERR unknown command '{}', with args beginning with: ",
        truncate(&name)
    );
    for arg in args.iter().skip(1).take(16) {
        message.push_str(&format!("'{}' ", truncate(&String::from_utf8_lossy(arg))));
    }
    Reply::error(message)
}

fn truncate(s: &str) -> String {
    s.chars().take(128).collect()
}

pub(crate) fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

pub(crate) fn not_an_integer() -> Reply {
    Reply::error("ERR value is not an integer or out of range")
}

pub(crate) fn wrong_type() -> Reply {
    Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value")
}

/// Parses an integer argument as Redis does: optional '-', digits, no '+', no
/// leading zeros, no spaces.
pub(crate) fn parse_i64(arg: &[u8]) -> Option<i64> {
    let digits = arg.strip_prefix(b"-").unwrap_or(arg);
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
        && !(digits == b"0" && arg.len() > 1);
    if !canonical {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

pub(crate) fn int_arg(arg: &[u8]) -> Result<i64, Reply> {
    parse_i64(arg).ok_or_else(not_an_integer)
}

/// A collection a key can hold (hash, set, list, sorted set): how it comes out
/// of a value and goes back in.
pub(crate) trait Collection: Sized {
    /// The collection `data` holds, or `data` back when it is another type.
    fn take(data: Data) -> Result<Self, Data>;
    /// The collection as data.
    fn wrap(self) -> Data;
    /// Whether it has no elements (a key is never left holding an empty one).
    fn is_empty(&self) -> bool;
}

macro_rules! collection {
    ($type:ty, $variant:ident) => {
        impl Collection for $type {
            fn take(data: Data) -> Result<Self, Data> {
                match data {
                    Data::$variant(c) => Ok(c),
                    other => Err(other),
                }
            }
            fn wrap(self) -> Data {
                Data::$variant(self)
            }
            fn is_empty(&self) -> bool {
                <$type>::is_empty(self)
            }
        }
    };
}

collection!(indexmap::IndexMap<Vec<u8>, Vec<u8>>, Hash);
collection!(std::collections::BTreeSet<Vec<u8>>, Set);
collection!(std::collections::VecDeque<Vec<u8>>, List);
collection!(SortedSet, Zset);

/// The collection at `key` and its expiry; WRONGTYPE if it holds another type.
pub(crate) fn collection_at<C: Collection>(
    ks: &mut dyn Keyspace,
    key: &[u8],
) -> Result<Option<(C, Option<u64>)>, Reply> {
    match ks.get(key)? {
        None => Ok(None),
        Some(value) => match C::take(value.data) {
            Ok(c) => Ok(Some((c, value.expire_at_ms))),
            Err(_) => Err(wrong_type()),
        },
    }
}

/// Stores `c` at `key` with `expire_at_ms`, deleting the key when `c` is empty.
pub(crate) fn store_collection<C: Collection>(
    ks: &mut dyn Keyspace,
    key: &[u8],
    c: C,
    expire_at_ms: Option<u64>,
) {
    let value = (!c.is_empty()).then(|| Value {
        data: c.wrap(),
        expire_at_ms,
    });
    ks.put(key, value);
}

/// A pick among `n` that changes with the time and the key: no two proxies need
/// agree on it, since a change records its effect, not the pick.
pub(crate) fn pick(ks: &dyn Keyspace, key: &[u8], round: u64, n: usize) -> usize {
    let seed = xxhash_rust::xxh3::xxh3_64_with_seed(key, ks.now_ms() ^ round.rotate_left(17));
    (seed % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests;
