//! Hash commands.

use bytes::Bytes;

use super::float::{self, FloatError};
use super::{Keyspace, Outcome, int_arg, parse_i64};
use crate::resp::Reply;

type Fields = indexmap::IndexMap<Vec<u8>, Vec<u8>>;

/// The hash at `key` and its expiry; WRONGTYPE if it holds something else.
fn hash_at(ks: &mut dyn Keyspace, key: &[u8]) -> Result<Option<(Fields, Option<u64>)>, Reply> {
    super::collection_at(ks, key)
}

/// Stores `fields` at `key`, deleting the key when it is empty.
fn store(ks: &mut dyn Keyspace, key: &[u8], fields: Fields, expire_at_ms: Option<u64>) {
    super::store_collection(ks, key, fields, expire_at_ms);
}

pub(super) fn hset(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (mut fields, expiry) = hash_at(ks, &args[1])?.unwrap_or_default();
    let mut added = 0;
    for pair in args[2..].chunks(2) {
        added += i64::from(fields.insert(pair[0].to_vec(), pair[1].to_vec()).is_none());
    }
    store(ks, &args[1], fields, expiry);
    Ok(Reply::Integer(added))
}

pub(super) fn hget(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let fields = hash_at(ks, &args[1])?.map(|(f, _)| f).unwrap_or_default();
    Ok(fields
        .get(&args[2][..])
        .map_or(Reply::Null, |v| Reply::bulk(v.clone())))
}

pub(super) fn hmget(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let fields = hash_at(ks, &args[1])?.map(|(f, _)| f).unwrap_or_default();
    let values = args[2..].iter().map(|f| {
        fields
            .get(&f[..])
            .map_or(Reply::Null, |v| Reply::bulk(v.clone()))
    });
    Ok(Reply::Array(values.collect()))
}

pub(super) fn hdel(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let Some((mut fields, expiry)) = hash_at(ks, &args[1])? else {
        return Ok(Reply::Integer(0));
    };
    let removed = args[2..]
        .iter()
        .filter(|f| fields.shift_remove(&f[..]).is_some())
        .count() as i64;
    if removed > 0 {
        store(ks, &args[1], fields, expiry);
    }
    Ok(Reply::Integer(removed))
}

pub(super) fn hgetall(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let fields = hash_at(ks, &args[1])?.map(|(f, _)| f).unwrap_or_default();
    Ok(Reply::Map(
        fields
            .into_iter()
            .map(|(f, v)| (Reply::bulk(f), Reply::bulk(v)))
            .collect(),
    ))
}

pub(super) fn hincrby(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let by = int_arg(&args[3])?;
    let (mut fields, expiry) = hash_at(ks, &args[1])?.unwrap_or_default();
    let current = match fields.get(&args[2][..]) {
        None => 0,
        Some(v) => parse_i64(v).ok_or_else(|| Reply::error("ERR hash value is not an integer"))?,
    };
    let result = current
        .checked_add(by)
        .ok_or_else(|| Reply::error("ERR increment or decrement would overflow"))?;
    fields.insert(args[2].to_vec(), result.to_string().into_bytes());
    store(ks, &args[1], fields, expiry);
    Ok(Reply::Integer(result))
}

pub(super) fn hincrbyfloat(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    match float::is_finite(&args[3]) {
        None => return Err(Reply::error("ERR value is not a valid float")),
        Some(false) => return Err(Reply::error("ERR value is NaN or Infinity")),
        Some(true) => {}
    }
    let (mut fields, expiry) = hash_at(ks, &args[1])?.unwrap_or_default();
    let current = fields.get(&args[2][..]).map(Vec::as_slice);
    let result = float::add(current, &args[3]).map_err(|e| match e {
        FloatError::Value => Reply::error("ERR hash value is not a float"),
        FloatError::Increment => Reply::error("ERR value is not a valid float"),
        FloatError::NanOrInfinity => Reply::error("ERR increment would produce NaN or Infinity"),
    })?;
    fields.insert(args[2].to_vec(), result.clone().into_bytes());
    store(ks, &args[1], fields, expiry);
    Ok(Reply::bulk(result))
}

pub(super) fn hexists(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let fields = hash_at(ks, &args[1])?.map(|(f, _)| f).unwrap_or_default();
    Ok(Reply::Integer(i64::from(fields.contains_key(&args[2][..]))))
}

pub(super) fn hlen(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    Ok(Reply::Integer(
        hash_at(ks, &args[1])?.map_or(0, |(f, _)| f.len() as i64),
    ))
}

pub(super) fn hmset(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    hset(ks, args)?;
    Ok(Reply::OK)
}

pub(super) fn hsetnx(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let (mut fields, expiry) = hash_at(ks, &args[1])?.unwrap_or_default();
    if fields.contains_key(&args[2][..]) {
        return Ok(Reply::Integer(0));
    }
    fields.insert(args[2].to_vec(), args[3].to_vec());
    store(ks, &args[1], fields, expiry);
    Ok(Reply::Integer(1))
}

pub(super) fn hkeys(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let fields = hash_at(ks, &args[1])?.map(|(f, _)| f).unwrap_or_default();
    Ok(Reply::Array(fields.into_keys().map(Reply::bulk).collect()))
}

pub(super) fn hvals(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let fields = hash_at(ks, &args[1])?.map(|(f, _)| f).unwrap_or_default();
    Ok(Reply::Array(
        fields.into_values().map(Reply::bulk).collect(),
    ))
}

pub(super) fn hstrlen(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let fields = hash_at(ks, &args[1])?.map(|(f, _)| f).unwrap_or_default();
    Ok(Reply::Integer(
        fields.get(&args[2][..]).map_or(0, |v| v.len() as i64),
    ))
}
