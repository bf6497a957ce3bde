//! Sorted set commands.

use bytes::Bytes;

use super::{Keyspace, Outcome, syntax_error};
use crate::change::SortedSet;
use crate::resp::Reply;

mod range;

pub(super) use range::{
    zcount, zlexcount, zrange, zrangebylex, zrangebyscore, zrangestore, zremrangebylex,
    zremrangebyrank, zremrangebyscore, zrevrange, zrevrangebylex, zrevrangebyscore,
};

/// The sorted set at `key` and its expiry; WRONGTYPE if it holds something else.
fn zset_at(ks: &mut dyn Keyspace, key: &[u8]) -> Result<Option<(SortedSet, Option<u64>)>, Reply> {
    super::collection_at(ks, key)
}

/// Stores `set` at `key`, deleting the key when it is empty.
fn store(ks: &mut dyn Keyspace, key: &[u8], set: SortedSet, expire_at_ms: Option<u64>) {
    super::store_collection(ks, key, set, expire_at_ms);
}

/// A score argument, read as Redis's `string2d` reads it: the whole text, no
/// leading space, no NaN, nothing out of a double's range.
pub(super) fn parse_score(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty() || text.as_bytes()[0].is_ascii_whitespace() {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    let word = text.trim_start_matches(['+', '-']).to_ascii_lowercase();
    let overflow = value.is_infinite() && word != "inf" && word != "infinity";
    let underflow = value == 0.0
        && text
            .bytes()
            .take_while(|b| !b"eE".contains(b))
            .any(|b| (b'1'..=b'9').contains(&b));
    (!value.is_nan() && !overflow && !underflow).then_some(value)
}

fn not_a_float() -> Reply {
    Reply::error("ERR value is not a valid float")
}

/// Members (and their scores) as a reply.
fn members_reply<'a>(items: impl Iterator<Item = (&'a [u8], f64)>, with_scores: bool) -> Reply {
    if with_scores {
        Reply::Pairs(
            items
                .map(|(m, s)| (Reply::bulk(m.to_vec()), Reply::Double(s)))
                .collect(),
        )
    } else {
        Reply::Array(items.map(|(m, _)| Reply::bulk(m.to_vec())).collect())
    }
}

/// A score and its member, as ZADD takes them.
type Scored = (f64, Vec<u8>);

/// ZADD's options.
#[derive(Default)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

/// Reads ZADD's options and its score-member pairs, refusing as Redis does
/// before the key is looked at.
fn add_args(args: &[Bytes]) -> Result<(AddFlags, Vec<Scored>), Reply> {
    let mut flags = AddFlags::default();
    let mut at = 2;
    while let Some(arg) = args.get(at) {
        let flag = match arg.to_ascii_uppercase().as_slice() {
            b"NX" => &mut flags.nx,
            b"XX" => &mut flags.xx,
            b"GT" => &mut flags.gt,
            b"LT" => &mut flags.lt,
            b"CH" => &mut flags.ch,
            b"INCR" => &mut flags.incr,
            _ => break,
        };
        *flag = true;
        at += 1;
    }
    let rest = &args[at..];
    if rest.is_empty() || rest.len() % 2 != 0 {
        return Err(syntax_error());
    }
    if flags.nx && flags.xx {
        return Err(Reply::error(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (flags.nx && (flags.gt || flags.lt)) || (flags.gt && flags.lt) {
        return Err(Reply::error(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if flags.incr && rest.len() > 2 {
        return Err(Reply::error(
            "ERR INCR option supports a single increment-element pair",
        ));
    }
    let mut pairs = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let score = parse_score(&pair[0]).ok_or_else(not_a_float)?;
        pairs.push((score, pair[1].to_vec()));
    }
    Ok((flags, pairs))
}

/// What adding one member did.
enum Added {
    New(f64),
    Updated(f64),
    Same(f64),
    Skipped,
}

/// Adds or updates one member under ZADD's rules.
fn add_one(
    set: &mut SortedSet,
    flags: &AddFlags,
    score: f64,
    member: Vec<u8>,
) -> Result<Added, Reply> {
    match set.score(&member) {
        Some(_) if flags.nx => Ok(Added::Skipped),
        Some(current) => {
            let score = if flags.incr { current + score } else { score };
            if score.is_nan() {
                return Err(Reply::error("ERR resulting score is not a number (NaN)"));
            }
            if (flags.lt && score >= current) || (flags.gt && score <= current) {
                return Ok(Added::Skipped);
            }
            if score == current {
                return Ok(Added::Same(score));
            }
            set.insert(member, score);
            Ok(Added::Updated(score))
        }
        None if flags.xx => Ok(Added::Skipped),
        None => {
            set.insert(member, score);
            Ok(Added::New(score))
        }
    }
}

pub(super) fn zadd(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (flags, pairs) = add_args(args)?;
    zadd_pairs(ks, &args[1], &flags, pairs)
}

pub(super) fn zincrby(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let score = parse_score(&args[2]).ok_or_else(not_a_float)?;
    let flags = AddFlags {
        incr: true,
        ..AddFlags::default()
    };
    zadd_pairs(ks, &args[1], &flags, vec![(score, args[3].to_vec())])
}

fn zadd_pairs(
    ks: &mut dyn Keyspace,
    key: &[u8],
    flags: &AddFlags,
    pairs: Vec<(f64, Vec<u8>)>,
) -> Outcome {
    let current = zset_at(ks, key)?;
    let (mut set, expiry) = current.unwrap_or_default();
    let (mut added, mut updated, mut last) = (0, 0, None);
    for (score, member) in pairs {
        match add_one(&mut set, flags, score, member)? {
            Added::New(s) => (added, last) = (added + 1, Some(s)),
            Added::Updated(s) => (updated, last) = (updated + 1, Some(s)),
            Added::Same(s) => last = Some(s),
            Added::Skipped => {}
        }
    }
    if added + updated > 0 {
        store(ks, key, set, expiry);
    }
    Ok(if flags.incr {
        last.map_or(Reply::Null, Reply::Double)
    } else {
        Reply::Integer(if flags.ch { added + updated } else { added })
    })
}

pub(super) fn zrem(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let Some((mut set, expiry)) = zset_at(ks, &args[1])? else {
        return Ok(Reply::Integer(0));
    };
    let removed = args[2..].iter().filter(|m| set.remove(m)).count();
    if removed > 0 {
        store(ks, &args[1], set, expiry);
    }
    Ok(Reply::Integer(removed as i64))
}

pub(super) fn zscore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let set = zset_at(ks, &args[1])?.map(|(s, _)| s).unwrap_or_default();
    Ok(set.score(&args[2]).map_or(Reply::Null, Reply::Double))
}

pub(super) fn zmscore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let set = zset_at(ks, &args[1])?.map(|(s, _)| s).unwrap_or_default();
    Ok(Reply::Array(
        args[2..]
            .iter()
            .map(|m| set.score(m).map_or(Reply::Null, Reply::Double))
            .collect(),
    ))
}

pub(super) fn zcard(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Integer(
        zset_at(ks, &args[1])?.map_or(0, |(s, _)| s.len() as i64),
    ))
}

fn rank_of(ks: &mut dyn Keyspace, args: &[Bytes], reverse: bool) -> Outcome {
    let set = zset_at(ks, &args[1])?.map(|(s, _)| s).unwrap_or_default();
    Ok(set.rank(&args[2]).map_or(Reply::Null, |r| {
        Reply::Integer(if reverse { set.len() - 1 - r } else { r } as i64)
    }))
}

pub(super) fn zrank(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    rank_of(ks, args, false)
}

pub(super) fn zrevrank(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    rank_of(ks, args, true)
}

fn pop(ks: &mut dyn Keyspace, args: &[Bytes], highest: bool) -> Outcome {
    if args.len() > 3 {
        return Err(syntax_error());
    }
    let count = match args.get(2) {
        Some(arg) => match super::parse_i64(arg) {
            Some(n) if n >= 0 => Some(n as usize),
            _ => return Err(Reply::error("ERR value is out of range, must be positive")),
        },
        None => None,
    };
    let Some((mut set, expiry)) = zset_at(ks, &args[1])? else {
        return Ok(Reply::Array(Vec::new()));
    };
    if count == Some(0) {
        return Ok(Reply::Array(Vec::new()));
    }
    let take = count.unwrap_or(1).min(set.len());
    let popped: Vec<(Vec<u8>, f64)> = if highest {
        set.iter()
            .rev()
            .take(take)
            .map(|(m, s)| (m.to_vec(), s))
            .collect()
    } else {
        set.iter()
            .take(take)
            .map(|(m, s)| (m.to_vec(), s))
            .collect()
    };
    for (member, _) in &popped {
        set.remove(member);
    }
    store(ks, &args[1], set, expiry);
    let items = popped.iter().map(|(m, s)| (m.as_slice(), *s));
    Ok(match count {
        Some(_) => members_reply(items, true),
        None => Reply::Array(
            items
                .flat_map(|(m, s)| [Reply::bulk(m.to_vec()), Reply::Double(s)])
                .collect(),
        ),
    })
}

pub(super) fn zpopmin(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    pop(ks, args, false)
}

pub(super) fn zpopmax(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    pop(ks, args, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_read_as_strtod_reads_them_for_redis() {
        for (text, want) in [
            ("1", Some(1.0)),
            ("-2.5", Some(-2.5)),
            ("+inf", Some(f64::INFINITY)),
            ("-inf", Some(f64::NEG_INFINITY)),
            (".5", Some(0.5)),
            ("1e3", Some(1000.0)),
            ("0", Some(0.0)),
            ("0e10", Some(0.0)),
            ("nan", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("1e400", None),
            ("1e-400", None),
            ("x", None),
        ] {
            assert_eq!(parse_score(text.as_bytes()), want, "{text:?}");
        }
    }
}
