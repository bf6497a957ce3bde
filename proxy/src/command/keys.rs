//! Generic key commands.

use bytes::Bytes;

use super::{Keyspace, Outcome, int_arg};
use crate::change::{Data, Value};
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

/// EXPIRE/PEXPIRE with `unit_ms` milliseconds per unit, and the NX/XX/GT/LT options.
fn expire_in(ks: &mut dyn Keyspace, args: &[Bytes], unit_ms: i64, name: &str) -> Outcome {
    let amount = int_arg(&args[2])?;
    let flags = expire_flags(&args[3..])?;
    let invalid = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    let delta = amount.checked_mul(unit_ms).ok_or_else(invalid)?;
    let at = (ks.now_ms() as i64)
        .checked_add(delta)
        .ok_or_else(invalid)?;
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
    expire_in(ks, args, 1000, "expire")
}

pub(super) fn pexpire(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    expire_in(ks, args, 1, "pexpire")
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
    Ok(Reply::Simple(match ks.get(&args[1])? {
        None => "none",
        Some(Value {
            data: Data::String(_),
            ..
        }) => "string",
        Some(Value {
            data: Data::Hash(_),
            ..
        }) => "hash",
    }))
}
