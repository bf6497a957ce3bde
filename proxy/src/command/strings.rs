//! String commands.

use bytes::Bytes;

use super::float::{self, FloatError};
use super::{Keyspace, Outcome, int_arg, not_an_integer, parse_i64, syntax_error, wrong_type};
use crate::change::{Data, Value};
use crate::resp::Reply;

/// The string at `key`; WRONGTYPE if it holds something else.
pub(super) fn string_at(ks: &mut dyn Keyspace, key: &[u8]) -> Result<Option<Value>, Reply> {
    match ks.get(key)? {
        Some(v) if !matches!(v.data, Data::String(_)) => Err(wrong_type()),
        other => Ok(other),
    }
}

fn bytes_of(value: &Value) -> &[u8] {
    match &value.data {
        Data::String(s) => s,
        _ => &[],
    }
}

fn string(bytes: Vec<u8>, expire_at_ms: Option<u64>) -> Option<Value> {
    Some(Value {
        data: Data::String(bytes),
        expire_at_ms,
    })
}

pub(super) fn get(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(string_at(ks, &args[1])?.map_or(Reply::Null, |v| Reply::bulk(bytes_of(&v).to_vec())))
}

/// Options of SET.
#[derive(Default)]
struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    expire_at_ms: Option<u64>,
}

/// The absolute expiry time of `SET ... <unit> n`, refused as Redis refuses it:
/// not positive, or beyond what a signed 64-bit millisecond time holds once the
/// unit is applied and, for a relative time, the current time added.
fn expire_at(unit: &[u8], n: i64, now_ms: u64) -> Result<u64, Reply> {
    let invalid = || Reply::error("ERR invalid expire time in 'set' command");
    if n <= 0 {
        return Err(invalid());
    }
    let ms = match unit {
        b"EX" | b"EXAT" => n.checked_mul(1000).ok_or_else(invalid)?,
        _ => n,
    };
    let at = match unit {
        b"EX" | b"PX" => ms.checked_add(now_ms as i64).ok_or_else(invalid)?,
        _ => ms,
    };
    Ok(at as u64)
}

fn set_options(args: &[Bytes], now_ms: u64) -> Result<SetOptions, Reply> {
    let mut o = SetOptions::default();
    // The expiry's unit: it may be given again (the last time wins), not mixed.
    let mut unit: Option<Vec<u8>> = None;
    let mut i = 3;
    while i < args.len() {
        let word = args[i].to_ascii_uppercase();
        match word.as_slice() {
            b"NX" if !o.xx => o.nx = true,
            b"XX" if !o.nx => o.xx = true,
            b"GET" => o.get = true,
            b"KEEPTTL" if unit.is_none() => o.keep_ttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT"
                if unit.as_deref().is_none_or(|u| u == word.as_slice())
                    && !o.keep_ttl
                    && i + 1 < args.len() =>
            {
                let n = parse_i64(&args[i + 1]).ok_or_else(not_an_integer)?;
                o.expire_at_ms = Some(expire_at(word.as_slice(), n, now_ms)?);
                unit = Some(word.clone());
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(o)
}

pub(super) fn set(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let o = set_options(args, ks.now_ms())?;
    let key = &args[1];
    // A plain SET replaces whatever is there: it needs no read (and so no round trip
    // to a Redis backend).
    let old = if o.get {
        string_at(ks, key)?
    } else if o.keep_ttl {
        ks.get(key)?
    } else {
        None
    };
    // NX and XX only ask whether the key exists, whatever its type.
    let exists = if o.get || o.keep_ttl {
        old.is_some()
    } else if o.nx || o.xx {
        ks.exists(key)?
    } else {
        false
    };
    let old_reply = || {
        old.as_ref()
            .map_or(Reply::Null, |v| Reply::bulk(bytes_of(v).to_vec()))
    };
    if (o.nx && exists) || (o.xx && !exists) {
        return Ok(if o.get { old_reply() } else { Reply::Null });
    }
    let expire_at_ms = if o.keep_ttl {
        old.as_ref().and_then(|v| v.expire_at_ms)
    } else {
        o.expire_at_ms
    };
    ks.put(key, string(args[2].to_vec(), expire_at_ms));
    Ok(if o.get { old_reply() } else { Reply::OK })
}

pub(super) fn setnx(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    if ks.get(&args[1])?.is_some() {
        return Ok(Reply::Integer(0));
    }
    ks.put(&args[1], string(args[2].to_vec(), None));
    Ok(Reply::Integer(1))
}

pub(super) fn getdel(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let Some(old) = string_at(ks, &args[1])? else {
        return Ok(Reply::Null);
    };
    ks.put(&args[1], None);
    Ok(Reply::bulk(bytes_of(&old).to_vec()))
}

pub(super) fn mget(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let mut out = Vec::with_capacity(args.len() - 1);
    for key in &args[1..] {
        out.push(match ks.get(key)? {
            Some(Value {
                data: Data::String(s),
                ..
            }) => Reply::bulk(s),
            _ => Reply::Null,
        });
    }
    Ok(Reply::Array(out))
}

pub(super) fn mset(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    for pair in args[1..].chunks(2) {
        ks.put(&pair[0], string(pair[1].to_vec(), None));
    }
    Ok(Reply::OK)
}

pub(super) fn append(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let old = string_at(ks, &args[1])?;
    let expire_at_ms = old.as_ref().and_then(|v| v.expire_at_ms);
    let mut bytes = old.map(|v| bytes_of(&v).to_vec()).unwrap_or_default();
    bytes.extend_from_slice(&args[2]);
    let len = bytes.len() as i64;
    ks.put(&args[1], string(bytes, expire_at_ms));
    Ok(Reply::Integer(len))
}

pub(super) fn strlen(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Integer(
        string_at(ks, &args[1])?.map_or(0, |v| bytes_of(&v).len() as i64),
    ))
}

/// Adds `by` to the integer at `key`, keeping its expiry; the change records the result.
fn add(ks: &mut dyn Keyspace, key: &[u8], by: i64) -> Outcome {
    let old = string_at(ks, key)?;
    let current = match &old {
        None => 0,
        Some(v) => parse_i64(bytes_of(v)).ok_or_else(not_an_integer)?,
    };
    let result = current
        .checked_add(by)
        .ok_or_else(|| Reply::error("ERR increment or decrement would overflow"))?;
    ks.put(
        key,
        string(
            result.to_string().into_bytes(),
            old.and_then(|v| v.expire_at_ms),
        ),
    );
    Ok(Reply::Integer(result))
}

pub(super) fn incr(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    add(ks, &args[1], 1)
}

pub(super) fn decr(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    add(ks, &args[1], -1)
}

pub(super) fn incrby(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    add(ks, &args[1], int_arg(&args[2])?)
}

pub(super) fn decrby(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let by = int_arg(&args[2])?;
    let by = by
        .checked_neg()
        .ok_or_else(|| Reply::error("ERR decrement would overflow"))?;
    add(ks, &args[1], by)
}

pub(super) fn incrbyfloat(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let current = string_at(ks, &args[1])?;
    let result = float::add(current.as_ref().map(bytes_of), &args[2]).map_err(|e| match e {
        FloatError::NanOrInfinity => Reply::error("ERR increment would produce NaN or Infinity"),
        FloatError::Value | FloatError::Increment => Reply::error("ERR value is not a valid float"),
    })?;
    let expiry = current.and_then(|v| v.expire_at_ms);
    ks.put(&args[1], string(result.clone().into_bytes(), expiry));
    Ok(Reply::bulk(result))
}

/// SETEX/PSETEX: a value with a TTL of `args[2]` units of `unit_ms`, replacing
/// whatever the key held.
fn set_with_ttl(ks: &mut dyn Keyspace, args: &[Bytes], unit_ms: i64, name: &str) -> Outcome {
    let n = int_arg(&args[2])?;
    let invalid = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let at = n
        .checked_mul(unit_ms)
        .and_then(|ms| ms.checked_add(ks.now_ms() as i64))
        .ok_or_else(invalid)?;
    ks.put(&args[1], string(args[3].to_vec(), Some(at as u64)));
    Ok(Reply::OK)
}

pub(super) fn setex(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    set_with_ttl(ks, args, 1000, "setex")
}

pub(super) fn psetex(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    set_with_ttl(ks, args, 1, "psetex")
}

/// GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]: the value, and its TTL
/// set or removed.
pub(super) fn getex(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    // None: leave the TTL; Some(None): PERSIST; Some(Some(at)): expire at `at`.
    let mut change: Option<Option<i64>> = None;
    let now = ks.now_ms() as i64;
    let mut i = 2;
    while i < args.len() {
        let word = args[i].to_ascii_uppercase();
        match word.as_slice() {
            b"PERSIST" if change.is_none() => change = Some(None),
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if change.is_none() && i + 1 < args.len() => {
                let n = int_arg(&args[i + 1])?;
                let invalid = || Reply::error("ERR invalid expire time in 'getex' command");
                if n <= 0 {
                    return Err(invalid());
                }
                let ms = match word.as_slice() {
                    b"EX" | b"EXAT" => n.checked_mul(1000).ok_or_else(invalid)?,
                    _ => n,
                };
                let at = match word.as_slice() {
                    b"EX" | b"PX" => ms.checked_add(now).ok_or_else(invalid)?,
                    _ => ms,
                };
                change = Some(Some(at));
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    let Some(mut value) = string_at(ks, &args[1])? else {
        return Ok(Reply::Null);
    };
    let reply = Reply::bulk(bytes_of(&value).to_vec());
    match change {
        None => {}
        Some(Some(at)) if at <= now => ks.put(&args[1], None),
        Some(at) => {
            let at = at.map(|ms| ms as u64);
            if at != value.expire_at_ms {
                value.expire_at_ms = at;
                ks.put(&args[1], Some(value));
            }
        }
    }
    Ok(reply)
}

pub(super) fn getset(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let old = string_at(ks, &args[1])?;
    ks.put(&args[1], string(args[2].to_vec(), None));
    Ok(old.map_or(Reply::Null, |v| Reply::bulk(bytes_of(&v).to_vec())))
}

/// The largest string Redis builds (its default `proto-max-bulk-len`).
const MAX_STRING: i64 = 512 << 20;

pub(super) fn setrange(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let offset = int_arg(&args[2])?;
    if offset < 0 {
        return Err(Reply::error("ERR offset is out of range"));
    }
    let old = string_at(ks, &args[1])?;
    let patch = &args[3];
    if patch.is_empty() {
        return Ok(Reply::Integer(old.map_or(0, |v| bytes_of(&v).len() as i64)));
    }
    if offset + patch.len() as i64 > MAX_STRING {
        return Err(Reply::error(
            "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
        ));
    }
    let expire_at_ms = old.as_ref().and_then(|v| v.expire_at_ms);
    let mut bytes = old.map(|v| bytes_of(&v).to_vec()).unwrap_or_default();
    let (start, end) = (offset as usize, offset as usize + patch.len());
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(patch);
    let len = bytes.len() as i64;
    ks.put(&args[1], string(bytes, expire_at_ms));
    Ok(Reply::Integer(len))
}

pub(super) fn getrange(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (start, end) = (int_arg(&args[2])?, int_arg(&args[3])?);
    let value = string_at(ks, &args[1])?;
    let bytes = value.as_ref().map_or(&[][..], bytes_of);
    let len = bytes.len() as i64;
    // Redis's arithmetic: negative counts from the end, then clamped.
    if start < 0 && end < 0 && start > end {
        return Ok(Reply::bulk(Vec::new()));
    }
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let mut end = if end < 0 { (len + end).max(0) } else { end };
    if end >= len {
        end = len - 1;
    }
    if len == 0 || start > end {
        return Ok(Reply::bulk(Vec::new()));
    }
    Ok(Reply::bulk(bytes[start as usize..=end as usize].to_vec()))
}

pub(super) fn msetnx(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    for pair in args[1..].chunks(2) {
        if ks.exists(&pair[0])? {
            return Ok(Reply::Integer(0));
        }
    }
    for pair in args[1..].chunks(2) {
        ks.put(&pair[0], string(pair[1].to_vec(), None));
    }
    Ok(Reply::Integer(1))
}
