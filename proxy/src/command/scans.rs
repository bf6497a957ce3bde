//! Reading collections piecemeal or by chance: HSCAN, SSCAN, ZSCAN, HRANDFIELD,
//! ZRANDMEMBER, and the SCAN arguments and reply every scan shares.
//!
//! A collection scan answers every matching element in one reply with cursor 0,
//! as Redis does for its small encodings: a full iteration that returns each
//! element once, whatever the collection's size (COUNT is a hint).

use bytes::Bytes;

use super::glob;
use super::{Keyspace, Outcome, int_arg, pick, syntax_error, wrong_type};
use crate::change::{Data, Value};
use crate::resp::{Reply, format_double};

/// Reads a SCAN cursor as Redis does: an unsigned decimal number.
pub fn parse_cursor(arg: &[u8]) -> Result<u64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reply::error("ERR invalid cursor"))
}

/// What a scan filters on.
pub type ScanOptions<'a> = (usize, Option<&'a [u8]>, Option<&'a [u8]>);

/// SCAN-family options from `args[from..]`: COUNT (default 10), MATCH and, when
/// `with_type`, TYPE.
pub fn scan_options(
    args: &[Bytes],
    from: usize,
    with_type: bool,
) -> Result<ScanOptions<'_>, Reply> {
    let (mut count, mut pattern, mut type_name) = (10, None, None);
    let mut i = from;
    while i < args.len() {
        let has_value = i + 1 < args.len();
        match args[i].to_ascii_uppercase().as_slice() {
            b"COUNT" if has_value => {
                let n = int_arg(&args[i + 1])?;
                if n < 1 {
                    return Err(syntax_error());
                }
                count = n as usize;
            }
            b"MATCH" if has_value => pattern = Some(&args[i + 1][..]),
            b"TYPE" if has_value && with_type => type_name = Some(&args[i + 1][..]),
            _ => return Err(syntax_error()),
        }
        i += 2;
    }
    // `*` matches everything: no need to test each key.
    Ok((count, pattern.filter(|p| *p != b"*"), type_name))
}

/// `[cursor, [items]]`, as every SCAN answers.
pub fn scan_reply(cursor: u64, items: Vec<Reply>) -> Reply {
    Reply::Array(vec![
        Reply::bulk(cursor.to_string().into_bytes()),
        Reply::Array(items),
    ])
}

/// The value at `key` if it is of `kind`; WRONGTYPE if it is of another.
fn typed(ks: &mut dyn Keyspace, key: &[u8], kind: &str) -> Result<Option<Value>, Reply> {
    match ks.get(key)? {
        Some(v) if v.data.type_name() != kind => Err(wrong_type()),
        other => Ok(other),
    }
}

fn bulk(bytes: &[u8]) -> Reply {
    Reply::bulk(bytes.to_vec())
}

fn collection_scan(ks: &mut dyn Keyspace, args: &[Bytes], kind: &str) -> Outcome {
    parse_cursor(&args[2])?;
    let Some(value) = typed(ks, &args[1], kind)? else {
        return Ok(scan_reply(0, Vec::new()));
    };
    let (_, pattern, _) = scan_options(args, 3, false)?;
    let keep = |element: &[u8]| pattern.is_none_or(|p| glob::matches(p, element));
    let items = match &value.data {
        Data::Hash(fields) => fields
            .iter()
            .filter(|(f, _)| keep(f))
            .flat_map(|(f, v)| [bulk(f), bulk(v)])
            .collect(),
        Data::Set(members) => members
            .iter()
            .filter(|m| keep(m))
            .map(|m| bulk(m))
            .collect(),
        Data::Zset(set) => set
            .iter()
            .filter(|(m, _)| keep(m))
            .flat_map(|(m, s)| [bulk(m), Reply::bulk(format_double(s).into_bytes())])
            .collect(),
        Data::String(_) | Data::List(_) => Vec::new(),
    };
    Ok(scan_reply(0, items))
}

pub(super) fn hscan(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    collection_scan(ks, args, "hash")
}

pub(super) fn sscan(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    collection_scan(ks, args, "set")
}

pub(super) fn zscan(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    collection_scan(ks, args, "zset")
}

/// The most elements one random pick with a negative count returns: a bound on
/// the reply built, not a limit applications meet.
const MAX_RANDOM: u64 = 1 << 24;

/// HRANDFIELD and ZRANDMEMBER: `count` and the option naming the second half of
/// each pair (WITHVALUES, WITHSCORES) as Redis reads them; elements as pairs.
fn random_pick(
    ks: &mut dyn Keyspace,
    args: &[Bytes],
    kind: &str,
    option: &[u8],
    elements: fn(&Data) -> Vec<(Reply, Reply)>,
) -> Outcome {
    let Some(count_arg) = args.get(2) else {
        let Some(value) = typed(ks, &args[1], kind)? else {
            return Ok(Reply::Null);
        };
        let all = elements(&value.data);
        let i = pick(ks, &args[1], 0, all.len());
        return Ok(all.into_iter().nth(i).map_or(Reply::Null, |(e, _)| e));
    };
    let count = int_arg(count_arg)?;
    let with = match args.get(3) {
        None if args.len() == 3 => false,
        Some(o) if args.len() == 4 && o.eq_ignore_ascii_case(option) => true,
        _ => return Err(syntax_error()),
    };
    if (with && count.unsigned_abs() > (i64::MAX / 2) as u64) || count.unsigned_abs() > MAX_RANDOM {
        return Err(Reply::error("ERR value is out of range"));
    }
    let Some(value) = typed(ks, &args[1], kind)? else {
        return Ok(Reply::Array(Vec::new()));
    };
    let mut all = elements(&value.data);
    let chosen: Vec<(Reply, Reply)> = if count >= 0 {
        // Distinct elements; all of them, in order, when asked for as many.
        let n = (count as usize).min(all.len());
        if n == all.len() {
            all
        } else {
            (0..n)
                .map(|round| {
                    let i = pick(ks, &args[1], round as u64, all.len());
                    all.swap_remove(i)
                })
                .collect()
        }
    } else {
        (0..count.unsigned_abs())
            .map(|round| all[pick(ks, &args[1], round, all.len())].clone())
            .collect()
    };
    Ok(if with {
        Reply::Pairs(chosen)
    } else {
        Reply::Array(chosen.into_iter().map(|(e, _)| e).collect())
    })
}

pub(super) fn hrandfield(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    random_pick(ks, args, "hash", b"WITHVALUES", |data| match data {
        Data::Hash(fields) => fields.iter().map(|(f, v)| (bulk(f), bulk(v))).collect(),
        _ => Vec::new(),
    })
}

pub(super) fn zrandmember(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    // Highest score first: the order Redis gives the whole set in.
    random_pick(ks, args, "zset", b"WITHSCORES", |data| match data {
        Data::Zset(set) => set
            .iter()
            .rev()
            .map(|(m, s)| (bulk(m), Reply::Double(s)))
            .collect(),
        _ => Vec::new(),
    })
}
