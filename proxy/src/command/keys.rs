//! Generic key commands.

use bytes::Bytes;

use super::{Keyspace, Outcome, int_arg, parse_i64};
use crate::change::Value;
use crate::resp::Reply;

pub(super) fn del(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let mut removed = 0;
    for key in &args[1..] {
        if ks.exists(key)? {
            ks.put(key, None);
            removed += 1;
        }
    }
    Ok(Reply::Integer(removed))
}

pub(super) fn exists(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let mut count = 0;
    for key in &args[1..] {
        count += i64::from(ks.exists(key)?);
    }
    Ok(Reply::Integer(count))
}

/// The NX/XX/GT/LT options of EXPIRE, which may be combined (XX with GT or LT).
#[derive(Debug, Default, Clone, Copy)]
struct ExpireFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

/// Reads the options as Redis does: an unknown one first, then NX with any other,
/// then GT with LT, each with Redis's own error.
fn expire_flags(args: &[Bytes]) -> Result<ExpireFlags, Reply> {
    let mut f = ExpireFlags::default();
    for arg in args {
        match arg.to_ascii_uppercase().as_slice() {
            b"NX" => f.nx = true,
            b"XX" => f.xx = true,
            b"GT" => f.gt = true,
            b"LT" => f.lt = true,
            _ => {
                return Err(Reply::error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(arg)
                )));
            }
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        return Err(Reply::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if f.gt && f.lt {
        return Err(Reply::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    Ok(f)
}

/// EXPIRE/PEXPIRE (relative) and EXPIREAT/PEXPIREAT (`absolute`) with `unit_ms`
/// milliseconds per unit, and the NX/XX/GT/LT options.
fn expire_generic(
    ks: &mut dyn Keyspace,
    args: &[Bytes],
    unit_ms: i64,
    absolute: bool,
    name: &str,
) -> Outcome {
    let amount = int_arg(&args[2])?;
    let flags = expire_flags(&args[3..])?;
    let invalid = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    let delta = amount.checked_mul(unit_ms).ok_or_else(invalid)?;
    let base = if absolute { 0 } else { ks.now_ms() as i64 };
    let at = base.checked_add(delta).ok_or_else(invalid)?;
    let Some(mut value) = ks.get(&args[1])? else {
        return Ok(Reply::Integer(0));
    };
    let current = value.expire_at_ms;
    // A key without expiry counts as an infinite TTL.
    let refused = (flags.nx && current.is_some())
        || (flags.xx && current.is_none())
        || (flags.gt && current.is_none_or(|c| at <= c as i64))
        || (flags.lt && current.is_some_and(|c| at >= c as i64));
    let allowed = !refused;
    if !allowed {
        return Ok(Reply::Integer(0));
    }
    if at <= ks.now_ms() as i64 {
        ks.put(&args[1], None);
    } else {
        value.expire_at_ms = Some(at as u64);
        ks.put(&args[1], Some(value));
    }
    Ok(Reply::Integer(1))
}

pub(super) fn expire(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    expire_generic(ks, args, 1000, false, "expire")
}

pub(super) fn pexpire(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    expire_generic(ks, args, 1, false, "pexpire")
}

pub(super) fn expireat(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    expire_generic(ks, args, 1000, true, "expireat")
}

pub(super) fn pexpireat(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    expire_generic(ks, args, 1, true, "pexpireat")
}

/// EXPIRETIME/PEXPIRETIME: the absolute expiry, -1 without one, -2 without the key.
fn expire_time(ks: &mut dyn Keyspace, key: &[u8], in_ms: bool) -> Outcome {
    Ok(Reply::Integer(match ks.get(key)? {
        None => -2,
        Some(Value {
            expire_at_ms: None, ..
        }) => -1,
        Some(Value {
            expire_at_ms: Some(at),
            ..
        }) if in_ms => at as i64,
        Some(Value {
            expire_at_ms: Some(at),
            ..
        }) => (at as i64 + 500) / 1000,
    }))
}

pub(super) fn expiretime(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    expire_time(ks, &args[1], false)
}

pub(super) fn pexpiretime(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    expire_time(ks, &args[1], true)
}

/// RENAME (`nx`: RENAMENX): moves the value, with its TTL, to the new name.
fn rename_generic(ks: &mut dyn Keyspace, args: &[Bytes], nx: bool) -> Outcome {
    let Some(value) = ks.get(&args[1])? else {
        return Err(Reply::error("ERR no such key"));
    };
    if args[1] == args[2] {
        return Ok(if nx { Reply::Integer(0) } else { Reply::OK });
    }
    if nx && ks.exists(&args[2])? {
        return Ok(Reply::Integer(0));
    }
    ks.put(&args[1], None);
    ks.put(&args[2], Some(value));
    Ok(if nx { Reply::Integer(1) } else { Reply::OK })
}

pub(super) fn rename(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    rename_generic(ks, args, false)
}

pub(super) fn renamenx(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    rename_generic(ks, args, true)
}

/// COPY source destination [DB 0] [REPLACE].
pub(super) fn copy(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        match args[i].to_ascii_uppercase().as_slice() {
            b"REPLACE" => replace = true,
            b"DB" if i + 1 < args.len() => {
                if int_arg(&args[i + 1])? != 0 {
                    return Err(Reply::error("ERR DB index is out of range"));
                }
                i += 1;
            }
            _ => return Err(crate::command::syntax_error()),
        }
        i += 1;
    }
    if args[1] == args[2] {
        return Err(Reply::error(
            "ERR source and destination objects are the same",
        ));
    }
    let Some(value) = ks.get(&args[1])? else {
        return Ok(Reply::Integer(0));
    };
    if !replace && ks.exists(&args[2])? {
        return Ok(Reply::Integer(0));
    }
    ks.put(&args[2], Some(value));
    Ok(Reply::Integer(1))
}

fn remaining_ms(ks: &mut dyn Keyspace, key: &[u8]) -> Result<Option<Option<u64>>, Reply> {
    let now = ks.now_ms();
    Ok(ks
        .get(key)?
        .map(|v| v.expire_at_ms.map(|at| at.saturating_sub(now))))
}

pub(super) fn ttl(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Integer(match remaining_ms(ks, &args[1])? {
        None => -2,
        Some(None) => -1,
        Some(Some(ms)) => (ms as i64 + 500) / 1000,
    }))
}

pub(super) fn pttl(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Integer(match remaining_ms(ks, &args[1])? {
        None => -2,
        Some(None) => -1,
        Some(Some(ms)) => ms as i64,
    }))
}

pub(super) fn persist(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    match ks.get(&args[1])? {
        Some(Value {
            data,
            expire_at_ms: Some(_),
        }) => {
            ks.put(
                &args[1],
                Some(Value {
                    data,
                    expire_at_ms: None,
                }),
            );
            Ok(Reply::Integer(1))
        }
        _ => Ok(Reply::Integer(0)),
    }
}

pub(super) fn type_of(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Simple(
        ks.get(&args[1])?.map_or("none", |v| v.data.type_name()),
    ))
}

/// OBJECT: what Redis 7.0 would say of a value meridian holds. ENCODING names
/// the encoding Redis would pick for it; IDLETIME is 0 and REFCOUNT 1 (meridian
/// tracks neither); FREQ answers as Redis does without an LFU policy.
pub(super) fn object(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let sub = args[1].to_ascii_uppercase();
    if sub == b"HELP" && args.len() == 2 {
        let lines = [
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ENCODING <key>",
            "    The encoding Redis would use for the value at <key>.",
            "FREQ <key>",
            "    Refused: access frequency is not tracked.",
            "IDLETIME <key>",
            "    Seconds since the key was last used (not tracked: 0).",
            "REFCOUNT <key>",
            "    References to the value at <key> (always 1).",
            "HELP",
            "    Prints this help.",
        ];
        return Ok(Reply::Array(
            lines
                .iter()
                .map(|l| Reply::Status((*l).to_owned()))
                .collect(),
        ));
    }
    let known = matches!(
        sub.as_slice(),
        b"ENCODING" | b"FREQ" | b"IDLETIME" | b"REFCOUNT"
    );
    if !known {
        return Err(Reply::error(format!(
            "ERR unknown subcommand '{}'. Try OBJECT HELP.",
            String::from_utf8_lossy(&args[1])
        )));
    }
    if args.len() != 3 {
        return Err(Reply::error(format!(
            "ERR wrong number of arguments for 'object|{}' command",
            String::from_utf8_lossy(&sub).to_ascii_lowercase()
        )));
    }
    let Some(value) = ks.get(&args[2])? else {
        return Ok(Reply::Null);
    };
    Ok(match sub.as_slice() {
        b"ENCODING" => Reply::bulk(encoding(&value.data)),
        b"FREQ" => {
            return Err(Reply::error(
                "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
            ));
        }
        b"IDLETIME" => Reply::Integer(0),
        _ => Reply::Integer(1),
    })
}

/// The encoding Redis 7.0 picks for `data` with its default thresholds.
fn encoding(data: &crate::change::Data) -> &'static str {
    use crate::change::Data;
    let small = |n: usize, longest: usize| n <= 128 && longest <= 64;
    match data {
        Data::String(s) if s.len() <= 20 && parse_i64(s).is_some() => "int",
        Data::String(s) if s.len() <= 44 => "embstr",
        Data::String(_) => "raw",
        Data::List(_) => "quicklist",
        Data::Set(m) if m.len() <= 512 && m.iter().all(|x| parse_i64(x).is_some()) => "intset",
        Data::Set(_) => "hashtable",
        Data::Hash(f) => {
            let longest = f
                .iter()
                .map(|(k, v)| k.len().max(v.len()))
                .max()
                .unwrap_or(0);
            if small(f.len(), longest) {
                "listpack"
            } else {
                "hashtable"
            }
        }
        Data::Zset(z) => {
            let longest = z.iter().map(|(m, _)| m.len()).max().unwrap_or(0);
            if small(z.len(), longest) {
                "listpack"
            } else {
                "skiplist"
            }
        }
    }
}
