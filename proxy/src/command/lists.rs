//! List commands.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Keyspace, Outcome, arity_error, int_arg, syntax_error};
use crate::resp::Reply;

type Items = VecDeque<Vec<u8>>;

/// The list at `key` and its expiry; WRONGTYPE if it holds something else.
fn list_at(ks: &mut dyn Keyspace, key: &[u8]) -> Result<Option<(Items, Option<u64>)>, Reply> {
    super::collection_at(ks, key)
}

/// Stores `items` at `key`, deleting the key when it is empty.
fn store(ks: &mut dyn Keyspace, key: &[u8], items: Items, expire_at_ms: Option<u64>) {
    super::store_collection(ks, key, items, expire_at_ms);
}

fn array(items: impl IntoIterator<Item = Vec<u8>>) -> Reply {
    Reply::Array(items.into_iter().map(Reply::bulk).collect())
}

/// Which end of a list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Left,
    Right,
}

fn push_at(items: &mut Items, end: End, item: Vec<u8>) {
    match end {
        End::Left => items.push_front(item),
        End::Right => items.push_back(item),
    }
}

fn pop_at(items: &mut Items, end: End) -> Option<Vec<u8>> {
    match end {
        End::Left => items.pop_front(),
        End::Right => items.pop_back(),
    }
}

/// LPUSH/RPUSH (`only_existing`: LPUSHX/RPUSHX).
fn push(ks: &mut dyn Keyspace, args: &[Bytes], end: End, only_existing: bool) -> Outcome {
    let existing = list_at(ks, &args[1])?;
    if only_existing && existing.is_none() {
        return Ok(Reply::Integer(0));
    }
    let (mut items, expiry) = existing.unwrap_or_default();
    for item in &args[2..] {
        push_at(&mut items, end, item.to_vec());
    }
    let len = items.len() as i64;
    store(ks, &args[1], items, expiry);
    Ok(Reply::Integer(len))
}

pub(super) fn lpush(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    push(ks, args, End::Left, false)
}

pub(super) fn rpush(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    push(ks, args, End::Right, false)
}

pub(super) fn lpushx(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    push(ks, args, End::Left, true)
}

pub(super) fn rpushx(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    push(ks, args, End::Right, true)
}

/// LPOP/RPOP key [count].
fn pop(ks: &mut dyn Keyspace, args: &[Bytes], end: End, name: &str) -> Outcome {
    if args.len() > 3 {
        return Err(arity_error(name));
    }
    let count = match args.get(2) {
        Some(arg) => {
            let n = int_arg(arg)?;
            if n < 0 {
                return Err(Reply::error("ERR value is out of range, must be positive"));
            }
            Some(n as usize)
        }
        None => None,
    };
    let Some((mut items, expiry)) = list_at(ks, &args[1])? else {
        return Ok(match count {
            Some(_) => Reply::NullArray,
            None => Reply::Null,
        });
    };
    let Some(count) = count else {
        let item = pop_at(&mut items, end);
        store(ks, &args[1], items, expiry);
        return Ok(item.map_or(Reply::Null, Reply::bulk));
    };
    if count == 0 {
        return Ok(Reply::Array(Vec::new()));
    }
    let popped: Vec<Vec<u8>> = (0..count).map_while(|_| pop_at(&mut items, end)).collect();
    store(ks, &args[1], items, expiry);
    Ok(array(popped))
}

pub(super) fn lpop(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    pop(ks, args, End::Left, "lpop")
}

pub(super) fn rpop(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    pop(ks, args, End::Right, "rpop")
}

/// The inclusive range `[start, stop]` of a list (or sorted set) of `len`,
/// Redis's way; `None` when it is empty.
pub(super) fn range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let stop = if stop < 0 { len + stop } else { stop };
    if start > stop || start >= len || stop < 0 {
        return None;
    }
    Some((start as usize, stop.min(len - 1) as usize))
}

pub(super) fn lrange(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (start, stop) = (int_arg(&args[2])?, int_arg(&args[3])?);
    let items = list_at(ks, &args[1])?.map(|(i, _)| i).unwrap_or_default();
    Ok(match range(start, stop, items.len()) {
        Some((a, b)) => array(items.into_iter().skip(a).take(b - a + 1)),
        None => Reply::Array(Vec::new()),
    })
}

pub(super) fn llen(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Integer(
        list_at(ks, &args[1])?.map_or(0, |(i, _)| i.len() as i64),
    ))
}

/// The position of `index` (negative from the end) in a list of `len`.
fn position(index: i64, len: usize) -> Option<usize> {
    let index = if index < 0 { len as i64 + index } else { index };
    (0..len as i64).contains(&index).then_some(index as usize)
}

pub(super) fn lindex(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    // The key first, then the index, as Redis reads them.
    let Some((items, _)) = list_at(ks, &args[1])? else {
        return Ok(Reply::Null);
    };
    let index = int_arg(&args[2])?;
    Ok(position(index, items.len())
        .and_then(|i| items.get(i).cloned())
        .map_or(Reply::Null, Reply::bulk))
}

pub(super) fn lset(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    // The key first, then the index, as Redis reads them.
    let Some((mut items, expiry)) = list_at(ks, &args[1])? else {
        return Err(Reply::error("ERR no such key"));
    };
    let index = int_arg(&args[2])?;
    let Some(i) = position(index, items.len()) else {
        return Err(Reply::error("ERR index out of range"));
    };
    items[i] = args[3].to_vec();
    store(ks, &args[1], items, expiry);
    Ok(Reply::OK)
}

pub(super) fn lrem(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let count = int_arg(&args[2])?;
    let Some((items, expiry)) = list_at(ks, &args[1])? else {
        return Ok(Reply::Integer(0));
    };
    let target = &args[3][..];
    let limit = if count == 0 {
        usize::MAX
    } else {
        count.unsigned_abs() as usize
    };
    let mut removed = 0;
    let kept: Items = if count >= 0 {
        items
            .into_iter()
            .filter(|item| {
                let drop = removed < limit && item == target;
                removed += usize::from(drop);
                !drop
            })
            .collect()
    } else {
        let mut kept: Vec<Vec<u8>> = items
            .into_iter()
            .rev()
            .filter(|item| {
                let drop = removed < limit && item == target;
                removed += usize::from(drop);
                !drop
            })
            .collect();
        kept.reverse();
        kept.into()
    };
    if removed > 0 {
        store(ks, &args[1], kept, expiry);
    }
    Ok(Reply::Integer(removed as i64))
}

pub(super) fn ltrim(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (start, stop) = (int_arg(&args[2])?, int_arg(&args[3])?);
    let Some((items, expiry)) = list_at(ks, &args[1])? else {
        return Ok(Reply::OK);
    };
    let kept: Items = match range(start, stop, items.len()) {
        Some((a, b)) => items.into_iter().skip(a).take(b - a + 1).collect(),
        None => Items::new(),
    };
    store(ks, &args[1], kept, expiry);
    Ok(Reply::OK)
}

pub(super) fn linsert(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let after = match args[2].to_ascii_uppercase().as_slice() {
        b"BEFORE" => false,
        b"AFTER" => true,
        _ => return Err(syntax_error()),
    };
    let Some((mut items, expiry)) = list_at(ks, &args[1])? else {
        return Ok(Reply::Integer(0));
    };
    let Some(at) = items.iter().position(|item| item[..] == args[3][..]) else {
        return Ok(Reply::Integer(-1));
    };
    items.insert(at + usize::from(after), args[4].to_vec());
    let len = items.len() as i64;
    store(ks, &args[1], items, expiry);
    Ok(Reply::Integer(len))
}

/// LPOS key element [RANK rank] [COUNT num] [MAXLEN len].
pub(super) fn lpos(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (mut rank, mut count, mut maxlen) = (1i64, None::<i64>, 0i64);
    let mut i = 3;
    while i < args.len() {
        let value = args.get(i + 1).ok_or_else(syntax_error);
        match args[i].to_ascii_uppercase().as_slice() {
            b"RANK" => {
                rank = int_arg(value?)?;
                if rank == 0 {
                    return Err(Reply::error(
                        "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                    ));
                }
            }
            b"COUNT" => {
                let n = int_arg(value?)?;
                if n < 0 {
                    return Err(Reply::error("ERR COUNT can't be negative"));
                }
                count = Some(n);
            }
            b"MAXLEN" => {
                maxlen = int_arg(value?)?;
                if maxlen < 0 {
                    return Err(Reply::error("ERR MAXLEN can't be negative"));
                }
            }
            _ => return Err(syntax_error()),
        }
        i += 2;
    }
    let items = list_at(ks, &args[1])?.map(|(i, _)| i).unwrap_or_default();
    let target = &args[2][..];
    let wanted = match count {
        Some(0) => usize::MAX,
        Some(n) => n as usize,
        None => 1,
    };
    let scan = if maxlen == 0 {
        items.len()
    } else {
        (maxlen as usize).min(items.len())
    };
    let order: Box<dyn Iterator<Item = usize>> = match rank > 0 {
        true => Box::new(0..items.len()),
        false => Box::new((0..items.len()).rev()),
    };
    let mut skip = rank.unsigned_abs() - 1;
    let mut found = Vec::new();
    for index in order.take(scan) {
        if found.len() >= wanted {
            break;
        }
        if items[index][..] == *target {
            match skip {
                0 => found.push(Reply::Integer(index as i64)),
                _ => skip -= 1,
            }
        }
    }
    Ok(match count {
        Some(_) => Reply::Array(found),
        None => found.pop().unwrap_or(Reply::Null),
    })
}

fn end_arg(arg: &Bytes) -> Result<End, Reply> {
    match arg.to_ascii_uppercase().as_slice() {
        b"LEFT" => Ok(End::Left),
        b"RIGHT" => Ok(End::Right),
        _ => Err(syntax_error()),
    }
}

/// Pops from `args[1]` at `from` and pushes onto `args[2]` at `to`.
fn move_item(ks: &mut dyn Keyspace, args: &[Bytes], from: End, to: End) -> Outcome {
    let Some((mut source, source_expiry)) = list_at(ks, &args[1])? else {
        return Ok(Reply::Null);
    };
    if args[1] == args[2] {
        let Some(item) = pop_at(&mut source, from) else {
            return Ok(Reply::Null);
        };
        push_at(&mut source, to, item.clone());
        store(ks, &args[1], source, source_expiry);
        return Ok(Reply::bulk(item));
    }
    let (mut destination, destination_expiry) = list_at(ks, &args[2])?.unwrap_or_default();
    let Some(item) = pop_at(&mut source, from) else {
        return Ok(Reply::Null);
    };
    push_at(&mut destination, to, item.clone());
    store(ks, &args[1], source, source_expiry);
    store(ks, &args[2], destination, destination_expiry);
    Ok(Reply::bulk(item))
}

pub(super) fn lmove(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (from, to) = (end_arg(&args[3])?, end_arg(&args[4])?);
    move_item(ks, args, from, to)
}

pub(super) fn rpoplpush(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    move_item(ks, args, End::Right, End::Left)
}
