//! Client reads on the Redis backend: what the memtable holds whole is answered
//! from it, the rest goes to Redis as it is, one pipeline per run of reads.

use std::time::Duration;

use bytes::Bytes;
use redis::Value as RValue;

use super::pipe::{Pipe, PipeError};
use super::{CONNECT_TIMEOUT, META_KEY, RedisBackend, RedisStoreError};
use crate::engine::backend::BackendError;
use crate::engine::backend::{Read, ReadContext, ReadKeyspace, ScanArgs, ScanPage};
use crate::engine::placement::is_own_key;
use crate::engine::wall_ms;
use crate::resp::{Reply, decode_reply};

/// How long a read waits for the committer before answering that Redis is behind.
const READ_WAIT: Duration = Duration::from_secs(5);

impl RedisBackend {
    /// Runs consecutive read commands of one connection, in order: those whose keys
    /// the memtable holds are answered from it; those whose keys it lacks go to Redis
    /// as one pipeline (one round trip, order kept); a read of keys partly in the
    /// memtable waits until they are committed, then goes to Redis.
    pub(super) async fn read_many(&self, ctx: ReadContext<'_>, reads: &[Read<'_>]) -> Vec<Reply> {
        let (mut replies, wait_for) = from_memtable(ctx, reads);
        if let Some(batch) = wait_for
            && let Err(behind) = self.committed_up_to(ctx, batch).await
        {
            return replies
                .into_iter()
                .map(|r| r.unwrap_or_else(|| behind.clone()))
                .collect();
        }
        let forward: Vec<&[Bytes]> = reads
            .iter()
            .zip(&replies)
            .filter(|(_, r)| r.is_none())
            .map(|(read, _)| read.2)
            .collect();
        // A replica serves what the memtable does not hold, unless the reads had to
        // wait for this proxy's own commits (those are on the primary first).
        let on_replica = match (wait_for, forward.is_empty()) {
            (None, false) => {
                let reply = |value, args: &[Bytes]| to_reply(value, is_hgetall(args));
                self.replicas
                    .read(ctx.user, ctx.token, &forward, reply)
                    .await
            }
            _ => None,
        };
        let mut forwarded = match on_replica {
            Some(replies) => replies.into_iter(),
            None => self.forward_passed(&forward).await.into_iter(),
        };
        replies
            .iter_mut()
            .map(|r| r.take().or_else(|| forwarded.next()).unwrap_or(Reply::Null))
            .collect()
    }

    /// Waits until the committer has written `batch` to Redis; past [`READ_WAIT`],
    /// the error to answer.
    async fn committed_up_to(&self, ctx: ReadContext<'_>, batch: u64) -> Result<(), Reply> {
        let mut committed = ctx.committed.subscribe();
        match tokio::time::timeout(READ_WAIT, committed.wait_for(|c| *c >= batch)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Reply::error(format!(
                "ERR redis backend {} is behind this proxy's writes; retry later",
                self.store.url()
            ))),
        }
    }

    /// Keys clients see in Redis: DBSIZE less meridian's metadata key, once every
    /// write this proxy acknowledged before the call is in Redis.
    pub(super) async fn key_count(&self, ctx: ReadContext<'_>) -> Result<u64, BackendError> {
        self.all_committed(ctx).await?;
        let dbsize = [Bytes::from_static(b"DBSIZE")];
        let meta = [
            Bytes::from_static(b"EXISTS"),
            Bytes::from_static(META_KEY.as_bytes()),
        ];
        let replies = self.forward_many(&[&dbsize, &meta]).await;
        match replies.as_slice() {
            [Reply::Integer(n), Reply::Integer(m)] => Ok((n - m).max(0) as u64),
            [Reply::Error(e), _] | [_, Reply::Error(e)] => Err(BackendError::Refused(e.clone())),
            _ => Err(self.store.failure("unexpected reply to DBSIZE").into()),
        }
    }

    /// One page of SCAN, Redis's own (its cursors are Redis's), once every write
    /// this proxy acknowledged is in Redis; meridian's metadata key left out. Pages
    /// that come back empty are followed a little way, so a database that holds
    /// few keys in a big table is not walked one empty page per round trip.
    pub(super) async fn scan_native(
        &self,
        ctx: ReadContext<'_>,
        args: &ScanArgs<'_>,
    ) -> Result<ScanPage, BackendError> {
        const EMPTY_PAGES: usize = 64;
        self.all_committed(ctx).await?;
        let mut page = ScanPage {
            cursor: args.cursor,
            keys: Vec::new(),
        };
        for _ in 0..EMPTY_PAGES {
            page = self.scan_once(args, page.cursor).await?;
            if !page.keys.is_empty() || page.cursor == 0 {
                break;
            }
        }
        Ok(page)
    }

    async fn scan_once(&self, args: &ScanArgs<'_>, cursor: u64) -> Result<ScanPage, BackendError> {
        let mut cmd = vec![
            Bytes::from_static(b"SCAN"),
            Bytes::from(cursor.to_string()),
            Bytes::from_static(b"COUNT"),
            Bytes::from(args.count.to_string()),
        ];
        if let Some(pattern) = args.pattern {
            cmd.extend([
                Bytes::from_static(b"MATCH"),
                Bytes::copy_from_slice(pattern),
            ]);
        }
        if let Some(type_name) = args.type_name {
            cmd.extend([
                Bytes::from_static(b"TYPE"),
                Bytes::copy_from_slice(type_name),
            ]);
        }
        match self.forward_many(&[&cmd]).await.pop() {
            Some(Reply::Array(parts)) => match parts.as_slice() {
                [Reply::Bulk(cursor), Reply::Array(keys)] => Ok(ScanPage {
                    cursor: std::str::from_utf8(cursor)
                        .ok()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0),
                    keys: keys
                        .iter()
                        .filter_map(|k| match k {
                            Reply::Bulk(k) if !is_own_key(k) => Some(k.to_vec()),
                            _ => None,
                        })
                        .collect(),
                }),
                _ => Err(self.store.failure("unexpected reply to SCAN").into()),
            },
            Some(Reply::Error(e)) => Err(BackendError::Refused(e)),
            _ => Err(self.store.failure("unexpected reply to SCAN").into()),
        }
    }

    /// RANDOMKEY, Redis's own, never meridian's metadata key.
    pub(super) async fn random_native(
        &self,
        ctx: ReadContext<'_>,
    ) -> Result<Option<Vec<u8>>, BackendError> {
        self.all_committed(ctx).await?;
        let cmd = [Bytes::from_static(b"RANDOMKEY")];
        for _ in 0..8 {
            match self.forward_many(&[&cmd]).await.pop() {
                Some(Reply::Bulk(key)) if !is_own_key(&key) => {
                    return Ok(Some(key.to_vec()));
                }
                Some(Reply::Bulk(_)) => {}
                Some(Reply::Null) => return Ok(None),
                Some(Reply::Error(e)) => return Err(BackendError::Refused(e)),
                _ => return Err(self.store.failure("unexpected reply to RANDOMKEY").into()),
            }
        }
        // Mostly the metadata key: there may be no other. The first key a scan finds.
        let mut cursor = 0;
        loop {
            let args = ScanArgs {
                cursor,
                count: 100,
                pattern: None,
                type_name: None,
            };
            let page = self.scan_native(ctx, &args).await?;
            if let Some(key) = page.keys.into_iter().next() {
                return Ok(Some(key));
            }
            if page.cursor == 0 {
                return Ok(None);
            }
            cursor = page.cursor;
        }
    }

    /// Waits until every write this proxy acknowledged is in Redis.
    async fn all_committed(&self, ctx: ReadContext<'_>) -> Result<(), BackendError> {
        if let Some(batch) = ctx.memtable.newest_batch()
            && let Err(Reply::Error(e)) = self.committed_up_to(ctx, batch).await
        {
            return Err(BackendError::Refused(e));
        }
        Ok(())
    }

    /// Sends commands to Redis as they are, in one pipeline; each reply is passed
    /// on as Redis sent it, but HGETALL's, which a RESP3 client reads as a map.
    async fn forward_passed(&self, commands: &[&[Bytes]]) -> Vec<Reply> {
        match self.forward_raw(commands).await {
            Ok(raw) => (raw.into_iter().zip(commands))
                .map(|(raw, args)| match is_hgetall(args) {
                    true => decode_reply(&raw, true),
                    false => Reply::Redis(raw),
                })
                .collect(),
            Err(reply) => commands.iter().map(|_| reply.clone()).collect(),
        }
    }

    /// Sends commands to Redis as they are, in one pipeline; the replies read.
    async fn forward_many(&self, commands: &[&[Bytes]]) -> Vec<Reply> {
        match self.forward_raw(commands).await {
            Ok(raw) => (raw.iter().zip(commands))
                .map(|(raw, args)| decode_reply(raw, is_hgetall(args)))
                .collect(),
            Err(reply) => commands.iter().map(|_| reply.clone()).collect(),
        }
    }

    /// Redis's replies to `commands`, as Redis encoded them; the error to answer
    /// each when Redis cannot be reached.
    async fn forward_raw(&self, commands: &[&[Bytes]]) -> Result<Vec<Bytes>, Reply> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self
            .reader()
            .await
            .map_err(|e| Reply::error(format!("ERR {e}")))?;
        pipe.send(commands, READ_WAIT).await.map_err(|e| {
            Reply::error(format!(
                "ERR redis backend {} unavailable: {e}",
                self.store.url()
            ))
        })
    }

    /// The shared connection for client reads, connecting if there is none or the
    /// last one ended.
    async fn reader(&self) -> Result<Pipe, RedisStoreError> {
        let mut slot = self.reader.lock().await;
        if let Some(pipe) = slot.as_ref().filter(|p| !p.is_closed()) {
            return Ok(pipe.clone());
        }
        *slot = None;
        let info = self.store.connection_info();
        let pipe = Pipe::connect(info, CONNECT_TIMEOUT)
            .await
            .map_err(|e: PipeError| RedisStoreError {
                url: self.store.url().to_owned(),
                message: e.to_string(),
                retryable: true,
                refused: false,
            })?;
        Ok(slot.insert(pipe).clone())
    }
}

/// Whether a command is HGETALL, whose reply is a map for a RESP3 client.
fn is_hgetall(args: &[Bytes]) -> bool {
    args[0].eq_ignore_ascii_case(b"HGETALL")
}

/// Answers the reads whose keys the memtable holds whole (`Some`), leaves the others
/// for Redis (`None`), and says which batch must be committed first when a read's
/// keys are partly in the memtable.
fn from_memtable(ctx: ReadContext<'_>, reads: &[Read<'_>]) -> (Vec<Option<Reply>>, Option<u64>) {
    let view = ctx.memtable.view();
    let budget = std::cell::Cell::new(ctx.max_reply);
    let mut replies = Vec::with_capacity(reads.len());
    let mut wait_for = None;
    for (spec, f, args) in reads {
        let batches: Vec<Option<u64>> = spec
            .keys(args)
            .map(|k| view.get(k).map(|e| e.batch))
            .collect();
        if batches.iter().all(Option::is_none) {
            replies.push(None);
        } else if batches.iter().all(Option::is_some) {
            let mut ks = ReadKeyspace {
                view: &view,
                store: None,
                now_ms: wall_ms(),
                budget: &budget,
            };
            replies.push(Some(f(&mut ks, args).unwrap_or_else(|e| e)));
        } else {
            wait_for = wait_for.max(batches.into_iter().flatten().max());
            replies.push(None);
        }
    }
    (replies, wait_for)
}

/// A Redis reply as the client's reply; `map_pairs` turns a flat array into a map
/// (HGETALL for a RESP3 client).
fn to_reply(value: RValue, map_pairs: bool) -> Reply {
    match value {
        RValue::Nil => Reply::Null,
        RValue::Int(n) => Reply::Integer(n),
        RValue::BulkString(b) => Reply::Bulk(Bytes::from(b)),
        RValue::Array(items) if map_pairs => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((to_reply(k, false), to_reply(v, false)));
            }
            Reply::Map(pairs)
        }
        RValue::Array(items) | RValue::Set(items) => {
            Reply::Array(items.into_iter().map(|v| to_reply(v, false)).collect())
        }
        RValue::SimpleString(s) => Reply::Status(s),
        RValue::Okay => Reply::OK,
        RValue::Map(pairs) => Reply::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (to_reply(k, false), to_reply(v, false)))
                .collect(),
        ),
        RValue::Double(d) => Reply::Double(d),
        RValue::Boolean(b) => Reply::Integer(i64::from(b)),
        RValue::VerbatimString { text, .. } => Reply::Verbatim(text),
        RValue::ServerError(e) => Reply::Error(match e.details() {
            Some(detail) => format!("{} {detail}", e.code()),
            None => e.code().to_owned(),
        }),
        other => Reply::error(format!(
            "ERR unexpected reply from the redis backend: {other:?}"
        )),
    }
}

/// A Redis error as the client's error reply: Redis's own words when Redis refused
/// the command, otherwise a backend error naming the server.
pub(super) fn error_reply(url: &str, e: &redis::RedisError) -> Reply {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => Reply::Error(format!("{code} {detail}")),
        (Some(code), None) => Reply::Error(code.to_owned()),
        _ => Reply::Error(format!("ERR redis backend {url} unavailable: {e}")),
    }
}
