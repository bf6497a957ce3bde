//! Set commands.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::{Keyspace, Outcome, int_arg, pick};
use crate::resp::Reply;

type Members = BTreeSet<Vec<u8>>;

/// The set at `key` and its expiry; WRONGTYPE if it holds something else.
fn set_at(ks: &mut dyn Keyspace, key: &[u8]) -> Result<Option<(Members, Option<u64>)>, Reply> {
    super::collection_at(ks, key)
}

/// The members at `key` (none when it is missing).
fn members_at(ks: &mut dyn Keyspace, key: &[u8]) -> Result<Members, Reply> {
    Ok(set_at(ks, key)?.map(|(m, _)| m).unwrap_or_default())
}

/// Stores `members` at `key`, deleting the key when it is empty.
fn store(ks: &mut dyn Keyspace, key: &[u8], members: Members, expire_at_ms: Option<u64>) {
    super::store_collection(ks, key, members, expire_at_ms);
}

fn array(members: impl IntoIterator<Item = Vec<u8>>) -> Reply {
    Reply::Array(members.into_iter().map(Reply::bulk).collect())
}

pub(super) fn sadd(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (mut members, expiry) = set_at(ks, &args[1])?.unwrap_or_default();
    let added = args[2..]
        .iter()
        .filter(|m| members.insert(m.to_vec()))
        .count();
    if added > 0 {
        store(ks, &args[1], members, expiry);
    }
    Ok(Reply::Integer(added as i64))
}

pub(super) fn srem(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let Some((mut members, expiry)) = set_at(ks, &args[1])? else {
        return Ok(Reply::Integer(0));
    };
    let removed = args[2..].iter().filter(|m| members.remove(&m[..])).count();
    if removed > 0 {
        store(ks, &args[1], members, expiry);
    }
    Ok(Reply::Integer(removed as i64))
}

pub(super) fn smembers(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(array(members_at(ks, &args[1])?))
}

pub(super) fn sismember(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let members = members_at(ks, &args[1])?;
    Ok(Reply::Integer(i64::from(members.contains(&args[2][..]))))
}

pub(super) fn smismember(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let members = members_at(ks, &args[1])?;
    Ok(Reply::Array(
        args[2..]
            .iter()
            .map(|m| Reply::Integer(i64::from(members.contains(&m[..]))))
            .collect(),
    ))
}

pub(super) fn scard(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Integer(members_at(ks, &args[1])?.len() as i64))
}

/// How SINTER, SUNION and SDIFF combine their sets.
#[derive(Clone, Copy)]
enum Combine {
    Inter,
    Union,
    Diff,
}

/// The sets at `keys` combined; every key is checked for its type first, as
/// Redis does.
fn combine(ks: &mut dyn Keyspace, keys: &[Bytes], how: Combine) -> Result<Members, Reply> {
    let mut sets = Vec::with_capacity(keys.len());
    for key in keys {
        sets.push(members_at(ks, key)?);
    }
    let mut sets = sets.into_iter();
    let mut result = sets.next().unwrap_or_default();
    for set in sets {
        match how {
            Combine::Inter => result.retain(|m| set.contains(m)),
            Combine::Union => result.extend(set),
            Combine::Diff => result.retain(|m| !set.contains(m)),
        }
    }
    Ok(result)
}

pub(super) fn sinter(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(array(combine(ks, &args[1..], Combine::Inter)?))
}

pub(super) fn sunion(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(array(combine(ks, &args[1..], Combine::Union)?))
}

pub(super) fn sdiff(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(array(combine(ks, &args[1..], Combine::Diff)?))
}

/// SINTERSTORE and the others: the result replaces `args[1]` (no TTL), deleted
/// when empty.
fn combine_store(ks: &mut dyn Keyspace, args: &[Bytes], how: Combine) -> Outcome {
    let result = combine(ks, &args[2..], how)?;
    let n = result.len() as i64;
    store(ks, &args[1], result, None);
    Ok(Reply::Integer(n))
}

pub(super) fn sinterstore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    combine_store(ks, args, Combine::Inter)
}

pub(super) fn sunionstore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    combine_store(ks, args, Combine::Union)
}

pub(super) fn sdiffstore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    combine_store(ks, args, Combine::Diff)
}

pub(super) fn smove(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    // A missing source answers 0 before either type is checked, as in Redis.
    if !ks.exists(&args[1])? {
        return Ok(Reply::Integer(0));
    }
    let source = set_at(ks, &args[1])?;
    let destination = set_at(ks, &args[2])?;
    let Some((mut from, from_expiry)) = source else {
        return Ok(Reply::Integer(0));
    };
    let member = &args[3][..];
    if args[1] == args[2] {
        return Ok(Reply::Integer(i64::from(from.contains(member))));
    }
    if !from.remove(member) {
        return Ok(Reply::Integer(0));
    }
    let (mut to, to_expiry) = destination.unwrap_or_default();
    to.insert(member.to_vec());
    store(ks, &args[1], from, from_expiry);
    store(ks, &args[2], to, to_expiry);
    Ok(Reply::Integer(1))
}

/// The most members one SRANDMEMBER with a negative count returns (repeats
/// allowed): a bound on the reply built, not a limit applications meet.
const MAX_RANDOM: u64 = 1 << 24;

/// `count` as SPOP and SRANDMEMBER read it.
fn count_arg(arg: &Bytes) -> Result<i64, Reply> {
    int_arg(arg)
}

pub(super) fn spop(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    if args.len() > 3 {
        return Err(crate::command::syntax_error());
    }
    let count = match args.get(2) {
        Some(arg) => {
            let n = count_arg(arg)?;
            if n < 0 {
                return Err(Reply::error("ERR value is out of range, must be positive"));
            }
            Some(n as usize)
        }
        None => None,
    };
    let Some((mut members, expiry)) = set_at(ks, &args[1])? else {
        return Ok(match count {
            Some(_) => Reply::Array(Vec::new()),
            None => Reply::Null,
        });
    };
    let take = count.unwrap_or(1).min(members.len());
    let mut popped = Vec::with_capacity(take);
    for round in 0..take {
        let i = pick(ks, &args[1], round as u64, members.len());
        if let Some(m) = members.iter().nth(i).cloned() {
            members.remove(&m);
            popped.push(m);
        }
    }
    if !popped.is_empty() {
        store(ks, &args[1], members, expiry);
    }
    Ok(match count {
        Some(_) => array(popped),
        None => popped.pop().map_or(Reply::Null, Reply::bulk),
    })
}

pub(super) fn srandmember(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    if args.len() > 3 {
        return Err(crate::command::syntax_error());
    }
    let count = match args.get(2) {
        Some(arg) => Some(count_arg(arg)?),
        None => None,
    };
    let members: Vec<Vec<u8>> = members_at(ks, &args[1])?.into_iter().collect();
    match count {
        None if members.is_empty() => Ok(Reply::Null),
        None => Ok(Reply::bulk(
            members[pick(ks, &args[1], 0, members.len())].clone(),
        )),
        // Positive: distinct members, at most the set's size.
        Some(n) if n >= 0 => {
            let mut left = members;
            let mut out = Vec::new();
            for round in 0..(n as usize).min(left.len()) {
                let i = pick(ks, &args[1], round as u64, left.len());
                out.push(left.swap_remove(i));
            }
            Ok(array(out))
        }
        // Negative: that many, repeats allowed.
        Some(n) => {
            if n.unsigned_abs() > MAX_RANDOM {
                return Err(Reply::error("ERR value is out of range"));
            }
            if members.is_empty() {
                return Ok(Reply::Array(Vec::new()));
            }
            let out = (0..n.unsigned_abs())
                .map(|round| members[pick(ks, &args[1], round, members.len())].clone());
            Ok(array(out))
        }
    }
}
