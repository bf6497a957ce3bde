//! Ranges of a sorted set: by rank, by score and by member (lex), in either
//! direction, as ZRANGE and the older commands it subsumes define them.

use bytes::Bytes;

use super::{members_reply, store, zset_at};
use crate::change::SortedSet;
use crate::command::{Keyspace, Outcome, int_arg, syntax_error};
use crate::resp::Reply;

/// One end of a score range.
#[derive(Debug, Clone, Copy)]
struct ScoreBound {
    value: f64,
    exclusive: bool,
}

/// One end of a lex range.
#[derive(Debug, Clone)]
enum LexBound {
    Min,
    Max,
    Inclusive(Vec<u8>),
    Exclusive(Vec<u8>),
}

/// Which members a range takes.
#[derive(Debug, Clone)]
enum Range {
    Rank(i64, i64),
    Score(ScoreBound, ScoreBound),
    Lex(LexBound, LexBound),
}

/// Reads a score bound as Redis does: `(` makes it exclusive; the rest is read as
/// C's `strtod` reads it (leading space skipped, an empty text is 0), NaN refused.
fn score_bound(arg: &[u8]) -> Option<ScoreBound> {
    let (exclusive, text) = match arg.split_first() {
        Some((b'(', rest)) => (true, rest),
        _ => (false, arg),
    };
    let text = std::str::from_utf8(text).ok()?.trim_start();
    let value = if text.is_empty() {
        0.0
    } else {
        text.parse::<f64>().ok()?
    };
    (!value.is_nan()).then_some(ScoreBound { value, exclusive })
}

fn lex_bound(arg: &[u8]) -> Option<LexBound> {
    match arg {
        b"+" => Some(LexBound::Max),
        b"-" => Some(LexBound::Min),
        [b'[', rest @ ..] => Some(LexBound::Inclusive(rest.to_vec())),
        [b'(', rest @ ..] => Some(LexBound::Exclusive(rest.to_vec())),
        _ => None,
    }
}

fn score_range(min: &[u8], max: &[u8]) -> Result<Range, Reply> {
    match (score_bound(min), score_bound(max)) {
        (Some(min), Some(max)) => Ok(Range::Score(min, max)),
        _ => Err(Reply::error("ERR min or max is not a float")),
    }
}

fn lex_range(min: &[u8], max: &[u8]) -> Result<Range, Reply> {
    match (lex_bound(min), lex_bound(max)) {
        (Some(min), Some(max)) => Ok(Range::Lex(min, max)),
        _ => Err(Reply::error("ERR min or max not valid string range item")),
    }
}

impl ScoreBound {
    fn above_min(&self, score: f64) -> bool {
        if self.exclusive {
            score > self.value
        } else {
            score >= self.value
        }
    }
    fn below_max(&self, score: f64) -> bool {
        if self.exclusive {
            score < self.value
        } else {
            score <= self.value
        }
    }
}

impl LexBound {
    fn above_min(&self, member: &[u8]) -> bool {
        match self {
            LexBound::Min => true,
            LexBound::Max => false,
            LexBound::Inclusive(b) => member >= b.as_slice(),
            LexBound::Exclusive(b) => member > b.as_slice(),
        }
    }
    fn below_max(&self, member: &[u8]) -> bool {
        match self {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Inclusive(b) => member <= b.as_slice(),
            LexBound::Exclusive(b) => member < b.as_slice(),
        }
    }
}

/// The members `range` takes, in order (reversed when `reverse`), after skipping
/// `offset` and keeping at most `limit` (all when negative).
fn select<'a>(
    set: &'a SortedSet,
    range: &Range,
    reverse: bool,
    offset: i64,
    limit: i64,
) -> Vec<(&'a [u8], f64)> {
    let ordered: Box<dyn Iterator<Item = (&[u8], f64)>> = if reverse {
        Box::new(set.iter().rev())
    } else {
        Box::new(set.iter())
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match range {
        Range::Rank(start, stop) => match crate::command::lists::range(*start, *stop, set.len()) {
            Some((a, b)) => ordered.skip(a).take(b - a + 1).collect(),
            None => Vec::new(),
        },
        _ if offset < 0 => Vec::new(),
        Range::Score(min, max) => ordered
            .filter(|(_, s)| min.above_min(*s) && max.below_max(*s))
            .skip(offset as usize)
            .take(limit)
            .collect(),
        // Lex ranges assume equal scores. Where they differ, Redis finds nothing
        // when the last member is below the range or the first above it; else it
        // starts at the first member past the near bound and stops at the first
        // past the far one. So does this.
        Range::Lex(min, max)
            if !set
                .iter()
                .next_back()
                .is_some_and(|(m, _)| min.above_min(m))
                || !set.iter().next().is_some_and(|(m, _)| max.below_max(m)) =>
        {
            Vec::new()
        }
        Range::Lex(min, max) if reverse => ordered
            .skip_while(|(m, _)| !max.below_max(m))
            .take_while(|(m, _)| min.above_min(m))
            .skip(offset as usize)
            .take(limit)
            .collect(),
        Range::Lex(min, max) => ordered
            .skip_while(|(m, _)| !min.above_min(m))
            .take_while(|(m, _)| max.below_max(m))
            .skip(offset as usize)
            .take(limit)
            .collect(),
    }
}

/// How a ZRANGE-family command reads its arguments.
#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    /// Not fixed by the command: ZRANGE's options say (rank by default).
    Auto,
    Rank,
    Score,
    Lex,
}

/// A parsed ZRANGE-family request.
struct Request {
    range: Range,
    reverse: bool,
    offset: i64,
    limit: i64,
    with_scores: bool,
}

/// Reads `key min max [options]` starting at `args[at]`, as Redis's
/// `zrangeGenericCommand` does. `reverse` is `None` when the options decide it.
fn request(
    args: &[Bytes],
    at: usize,
    by: By,
    reverse: Option<bool>,
    store: bool,
) -> Result<Request, Reply> {
    let (mut by, mut reverse_opt) = (by, reverse);
    let (mut offset, mut limit, mut with_scores) = (0, -1, false);
    let mut j = at + 3;
    while j < args.len() {
        let word = args[j].to_ascii_uppercase();
        let left = args.len() - j - 1;
        match word.as_slice() {
            b"WITHSCORES" if !store => with_scores = true,
            b"LIMIT" if left >= 2 => {
                offset = int_arg(&args[j + 1])?;
                limit = int_arg(&args[j + 2])?;
                j += 2;
            }
            b"REV" if reverse_opt.is_none() => reverse_opt = Some(true),
            b"BYLEX" if by == By::Auto => by = By::Lex,
            b"BYSCORE" if by == By::Auto => by = By::Score,
            _ => return Err(syntax_error()),
        }
        j += 1;
    }
    let reverse = reverse_opt.unwrap_or(false);
    let by = if by == By::Auto { By::Rank } else { by };
    if limit != -1 && by == By::Rank {
        return Err(Reply::error(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && by == By::Lex {
        return Err(Reply::error(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    // A reversed score or lex range is given as max, then min.
    let (lo, hi) = if reverse && by != By::Rank {
        (&args[at + 2], &args[at + 1])
    } else {
        (&args[at + 1], &args[at + 2])
    };
    let range = match by {
        By::Score => score_range(lo, hi)?,
        By::Lex => lex_range(lo, hi)?,
        By::Rank | By::Auto => Range::Rank(int_arg(lo)?, int_arg(hi)?),
    };
    Ok(Request {
        range,
        reverse,
        offset,
        limit,
        with_scores,
    })
}

fn run(ks: &mut dyn Keyspace, args: &[Bytes], by: By, reverse: Option<bool>) -> Outcome {
    let req = request(args, 1, by, reverse, false)?;
    let Some((set, _)) = zset_at(ks, &args[1])? else {
        return Ok(Reply::Array(Vec::new()));
    };
    let items = select(&set, &req.range, req.reverse, req.offset, req.limit);
    Ok(members_reply(items.into_iter(), req.with_scores))
}

pub(crate) fn zrange(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    run(ks, args, By::Auto, None)
}

pub(crate) fn zrangebyscore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    run(ks, args, By::Score, Some(false))
}

pub(crate) fn zrevrangebyscore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    run(ks, args, By::Score, Some(true))
}

pub(crate) fn zrevrange(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    run(ks, args, By::Rank, Some(true))
}

pub(crate) fn zrangebylex(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    run(ks, args, By::Lex, Some(false))
}

pub(crate) fn zrevrangebylex(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    run(ks, args, By::Lex, Some(true))
}

/// `ZRANGESTORE dst src min max [options]`: the range replaces `dst` (no TTL),
/// deleted when empty.
pub(crate) fn zrangestore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let req = request(args, 2, By::Auto, None, true)?;
    let source = zset_at(ks, &args[2])?.map(|(s, _)| s).unwrap_or_default();
    let result: SortedSet = select(&source, &req.range, req.reverse, req.offset, req.limit)
        .into_iter()
        .map(|(m, s)| (m.to_vec(), s))
        .collect();
    let n = result.len() as i64;
    store(ks, &args[1], result, None);
    Ok(Reply::Integer(n))
}

fn count(ks: &mut dyn Keyspace, args: &[Bytes], range: Range) -> Outcome {
    let set = zset_at(ks, &args[1])?.map(|(s, _)| s).unwrap_or_default();
    Ok(Reply::Integer(
        select(&set, &range, false, 0, -1).len() as i64
    ))
}

pub(crate) fn zcount(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    count(ks, args, score_range(&args[2], &args[3])?)
}

pub(crate) fn zlexcount(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    count(ks, args, lex_range(&args[2], &args[3])?)
}

fn remove(ks: &mut dyn Keyspace, args: &[Bytes], range: Range) -> Outcome {
    let Some((mut set, expiry)) = zset_at(ks, &args[1])? else {
        return Ok(Reply::Integer(0));
    };
    let gone: Vec<Vec<u8>> = select(&set, &range, false, 0, -1)
        .into_iter()
        .map(|(m, _)| m.to_vec())
        .collect();
    for member in &gone {
        set.remove(member);
    }
    if !gone.is_empty() {
        store(ks, &args[1], set, expiry);
    }
    Ok(Reply::Integer(gone.len() as i64))
}

pub(crate) fn zremrangebyrank(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    let range = Range::Rank(int_arg(&args[2])?, int_arg(&args[3])?);
    remove(ks, args, range)
}

pub(crate) fn zremrangebyscore(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    remove(ks, args, score_range(&args[2], &args[3])?)
}

pub(crate) fn zremrangebylex(ks: &mut dyn Keyspace, args: &[Bytes]) -> Outcome {
    remove(ks, args, lex_range(&args[2], &args[3])?)
}
