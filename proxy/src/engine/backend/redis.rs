//! The Redis backend: a real Redis server holds the data.
//!
//! Values live at their own key names in Redis's native types (strings and hashes,
//! with native expiry), so existing tools can read them. Meridian's metadata lives
//! beside them in one hash, `__meridian:meta`: field `applied` holds the applied
//! version vector, `committed_ms` the wall time of the commit that wrote it (read
//! replicas report their lag from it), and field `v:<key>` the [`Version`] of each
//! key in its binary encoding (earlier builds wrote `timestamp/origin` as text,
//! still read).
//! A batch of changes and the new applied vector go to Redis in one MULTI/EXEC, so
//! data, versions and vector change together.
//!
//! The writer and committer threads use blocking connections; client reads (see
//! [`reads`]) share one connection of their own ([`pipe`]), whose replies pass to
//! clients undecoded. All reconnect after Redis restarts.

mod packed;
mod pipe;
mod reads;
mod replicas;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_policies::{Timestamp, Version, VersionVector};
use redis::{ConnectionLike, Value as RValue};

use super::{
    Backend, BackendError, BoxFuture, Entries, Fetched, Gather, Read, ReadContext, ScanArgs,
    ScanPage, Session, Stored,
};
use crate::change::{Change, Data, Op, Value};
use crate::engine::memtable::{Memtable, View};
use crate::resp::Reply;
use packed::Packed;

/// The hash holding meridian's metadata in the Redis database.
pub const META_KEY: &str = "__meridian:meta";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads each key's type, remaining TTL in ms, and value, in one round trip.
const FETCH: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  local pttl = redis.call('PTTL', key)
  if kind == 'string' then
    out[i] = {kind, pttl, redis.call('GET', key)}
  elseif kind == 'hash' then
    out[i] = {kind, pttl, redis.call('HGETALL', key)}
  elseif kind == 'set' then
    out[i] = {kind, pttl, redis.call('SMEMBERS', key)}
  elseif kind == 'list' then
    out[i] = {kind, pttl, redis.call('LRANGE', key, 0, -1)}
  elseif kind == 'zset' then
    out[i] = {kind, pttl, redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')}
  else
    out[i] = {kind, pttl}
  end
end
return out
";

/// A failure talking to Redis.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis backend {url}: {message}")]
pub struct RedisStoreError {
    /// The server.
    pub url: String,
    /// What went wrong.
    pub message: String,
    /// Whether it is a connection problem (Redis down or restarting): retrying later can help.
    pub retryable: bool,
    /// Whether Redis itself answered with an error for what was sent (a key it will
    /// not let this connection write, say), rather than failing to answer.
    pub refused: bool,
}

/// The Redis backend.
#[derive(Debug, Clone)]
pub struct RedisStore {
    url: String,
    client: redis::Client,
}

/// A blocking connection that reconnects on demand.
pub struct SyncConn {
    store: RedisStore,
    conn: Option<redis::Connection>,
    /// The commit request's buffer, kept from commit to commit.
    packed: Packed,
}

impl std::fmt::Debug for SyncConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConn")
            .field("url", &self.store.url)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl RedisStore {
    /// A backend for the server at `url` (no connection is made yet).
    pub fn new(url: &str) -> Result<RedisStore, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|e| RedisStoreError {
            url: url.to_owned(),
            message: e.to_string(),
            retryable: false,
            refused: false,
        })?;
        Ok(RedisStore {
            url: url.to_owned(),
            client,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the server is and how to log in, from the URL.
    fn connection_info(&self) -> &redis::ConnectionInfo {
        self.client.get_connection_info()
    }

    /// A failure that retrying will not fix, in our words.
    fn failure(&self, message: &str) -> RedisStoreError {
        RedisStoreError {
            url: self.url.clone(),
            message: message.to_owned(),
            retryable: false,
            refused: false,
        }
    }

    fn error(&self, e: &redis::RedisError) -> RedisStoreError {
        let retryable = busy(e)
            || e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped();
        let answered = e.code().is_some() || e.clone().into_server_errors().is_some();
        RedisStoreError {
            url: self.url.clone(),
            message: e.to_string(),
            retryable,
            refused: answered && !retryable,
        }
    }

    /// A blocking connection for the writer or committer.
    pub fn sync_conn(&self) -> SyncConn {
        SyncConn {
            store: self.clone(),
            conn: None,
            packed: Packed::default(),
        }
    }

    /// A multiplexed connection for client reads.
    pub async fn async_conn(&self) -> Result<redis::aio::MultiplexedConnection, RedisStoreError> {
        self.client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.error(&e))
    }
}

impl SyncConn {
    fn conn(&mut self) -> Result<&mut redis::Connection, RedisStoreError> {
        if self.conn.is_none() {
            let store = &self.store;
            let conn = store
                .client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .map_err(|e| store.error(&e))?;
            conn.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| store.error(&e))?;
            conn.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(|e| store.error(&e))?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| unreachable_error(&self.store))
    }

    /// Runs `f` on the connection; a connection error drops it, to reconnect next time.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisStoreError> {
        let result = f(self.conn()?);
        result.map_err(|e| {
            let err = self.store.error(&e);
            if err.retryable {
                self.conn = None;
            }
            err
        })
    }

    /// The applied version vector stored in Redis.
    pub fn applied(&mut self) -> Result<VersionVector, RedisStoreError> {
        let text: Option<String> =
            self.with(|c| redis::cmd("HGET").arg(META_KEY).arg("applied").query(c))?;
        let store = &self.store;
        text.unwrap_or_default()
            .parse()
            .map_err(|e| RedisStoreError {
                url: store.url.clone(),
                message: format!("the applied vector in {META_KEY} is damaged: {e}"),
                retryable: false,
                refused: false,
            })
    }

    /// The version of the change that last wrote each key, deletions included;
    /// `None` for a key meridian never wrote.
    pub fn versions(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Version>>, RedisStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(META_KEY);
        for key in keys {
            cmd.arg([b"v:".as_slice(), key].concat());
        }
        let found: Vec<Option<Vec<u8>>> = self.with(|c| cmd.query(c))?;
        Ok(found
            .into_iter()
            .map(|v| v.and_then(|bytes| stored_version(&bytes)))
            .collect())
    }

    /// Every key meridian holds in this Redis with its record, and the applied
    /// vector they reach. Consistent only while nothing commits meanwhile (the
    /// engine holds its commit lock around this).
    pub fn snapshot(&mut self, now_ms: u64) -> Result<(VersionVector, Entries), RedisStoreError> {
        let applied = self.applied()?;
        let versions = self.all_versions()?;
        let mut entries = Vec::with_capacity(versions.len());
        for chunk in versions.chunks(512) {
            let keys: Vec<&[u8]> = chunk.iter().map(|(k, _)| k.as_slice()).collect();
            for ((key, version), fetched) in chunk.iter().zip(self.fetch(&keys, now_ms)?) {
                if let Fetched::Known(Some(value)) = fetched {
                    let version = version.clone();
                    entries.push((key.clone(), Stored { value, version }));
                }
            }
        }
        Ok((applied, entries))
    }

    /// Every key meridian has written here (deleted ones too) with its version.
    pub fn all_versions(&mut self) -> Result<Vec<(Vec<u8>, Version)>, RedisStoreError> {
        let mut versions: Vec<(Vec<u8>, Version)> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, items): (u64, Vec<Field>) = self.with(|c| {
                redis::cmd("HSCAN")
                    .arg(META_KEY)
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("v:*")
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)
            })?;
            for (field, version) in items {
                let (Some(key), Some(version)) =
                    (field.strip_prefix(b"v:"), stored_version(&version))
                else {
                    continue;
                };
                versions.push((key.to_vec(), version));
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(versions)
    }

    /// The current state of `keys`, with expiries turned into absolute times at `now_ms`.
    pub fn fetch(&mut self, keys: &[&[u8]], now_ms: u64) -> Result<Vec<Fetched>, RedisStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let script = redis::Script::new(FETCH);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        let rows: Vec<RValue> = self.with(|c| invocation.invoke(c))?;
        Ok(rows.into_iter().map(|row| fetched(row, now_ms)).collect())
    }

    /// Writes `changes` (each op replacing its key) and `applied` in one transaction.
    pub fn commit(
        &mut self,
        changes: &[Change],
        applied: &VersionVector,
    ) -> Result<(), RedisStoreError> {
        let mut packed = std::mem::take(&mut self.packed);
        packed.clear();
        packed.push(&[b"MULTI"]);
        let newest = super::newest_ops(changes);
        write_newest(&mut packed, &newest);
        // Each key's version, written with the applied vector in one HSET.
        packed
            .command(6 + 2 * newest.len())
            .arg(b"HSET")
            .arg(META_KEY.as_bytes())
            .arg(b"applied")
            .arg(applied.to_string().as_bytes())
            .arg(b"committed_ms")
            .arg_number(crate::engine::wall_ms());
        let mut field = Vec::new();
        for (op, version) in &newest {
            field.clear();
            field.extend_from_slice(b"v:");
            field.extend_from_slice(&op.key);
            packed.arg(&field).arg(&version.to_bytes());
        }
        packed.push(&[b"EXEC"]);
        // Every reply is read, in order: MULTI's OK, a QUEUED per command, then
        // EXEC's array. The first error among them is the commit's (a Redis still
        // loading its data refuses MULTI itself; a command refused while queued
        // aborts EXEC).
        let result = self.with(|c| {
            let mut replies = c.req_packed_commands(packed.bytes(), 0, packed.commands())?;
            let exec = replies.pop();
            for reply in replies {
                reply.extract_error()?;
            }
            match exec {
                Some(RValue::Array(results)) => results
                    .into_iter()
                    .try_for_each(|r| r.extract_error().map(drop)),
                Some(other) => other.extract_error().and_then(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "EXEC did not answer with the transaction's replies",
                    )))
                }),
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "no reply to EXEC",
                ))),
            }
        });
        self.packed = packed;
        result
    }
}

fn unreachable_error(store: &RedisStore) -> RedisStoreError {
    RedisStoreError {
        url: store.url.clone(),
        message: "no connection".into(),
        retryable: true,
        refused: false,
    }
}

/// The commands that give each key its newest value. Each key is written once, so
/// their order does not matter: deletions go in one DEL and strings that do not
/// expire in one MSET (each command Redis queues in a MULTI costs it a parse, a
/// reply and a dispatch); the rest key by key.
fn write_newest(packed: &mut Packed, newest: &[(&Op, Version)]) {
    let deleted = newest.iter().filter(|(op, _)| op.value.is_none()).count();
    if deleted > 0 {
        packed.command(1 + deleted).arg(b"DEL");
        for (op, _) in newest.iter().filter(|(op, _)| op.value.is_none()) {
            packed.arg(&op.key);
        }
    }
    let strings = newest.iter().filter(|(op, _)| plain(op).is_some()).count();
    if strings > 0 {
        packed.command(1 + 2 * strings).arg(b"MSET");
        for (op, _) in newest {
            if let Some(s) = plain(op) {
                packed.arg(&op.key).arg(s);
            }
        }
    }
    for (op, _) in newest {
        if let (Some(value), None) = (&op.value, plain(op)) {
            write_value(packed, &op.key, value);
        }
    }
}

/// A string value that does not expire, as MSET can write it.
fn plain(op: &Op) -> Option<&[u8]> {
    match &op.value {
        Some(Value {
            data: Data::String(s),
            expire_at_ms: None,
        }) => Some(s),
        _ => None,
    }
}

fn write_value(packed: &mut Packed, key: &[u8], value: &Value) {
    // A collection's new state replaces the old one whole: DEL, then one command
    // that puts back every element.
    let mut replace = |command: &[u8], len: usize, elements: &mut dyn Iterator<Item = &[u8]>| {
        packed.push(&[b"DEL", key]);
        packed.command(2 + len).arg(command).arg(key);
        for element in elements {
            packed.arg(element);
        }
    };
    match &value.data {
        Data::String(s) => {
            match value.expire_at_ms {
                Some(at) => {
                    packed.command(5).arg(b"SET").arg(key).arg(s);
                    packed.arg(b"PXAT").arg_number(at);
                }
                None => packed.push(&[b"SET", key, s]),
            }
            return;
        }
        Data::Hash(fields) => replace(
            b"HSET",
            2 * fields.len(),
            &mut fields
                .iter()
                .flat_map(|(f, v)| [f.as_slice(), v.as_slice()]),
        ),
        Data::Set(members) => replace(
            b"SADD",
            members.len(),
            &mut members.iter().map(Vec::as_slice),
        ),
        Data::List(items) => replace(b"RPUSH", items.len(), &mut items.iter().map(Vec::as_slice)),
        Data::Zset(set) => {
            // Scores in a form Redis reads back exactly.
            let scores: Vec<String> = set.iter().map(|(_, s)| score_arg(s)).collect();
            replace(
                b"ZADD",
                2 * scores.len(),
                &mut set
                    .iter()
                    .zip(&scores)
                    .flat_map(|((m, _), s)| [s.as_bytes(), m]),
            )
        }
    }
    if let Some(at) = value.expire_at_ms {
        packed.command(3).arg(b"PEXPIREAT").arg(key).arg_number(at);
    }
}

/// A score as ZADD's argument: the shortest form that reads back as the same double.
fn score_arg(score: f64) -> String {
    if score.is_infinite() {
        if score > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{score:e}")
    }
}

/// The bulk strings of a reply array (elements of a set or list).
fn bulk_items(items: Vec<RValue>) -> impl Iterator<Item = Vec<u8>> {
    items.into_iter().filter_map(|m| match m {
        RValue::BulkString(b) => Some(b),
        _ => None,
    })
}

fn fetched(row: RValue, now_ms: u64) -> Fetched {
    let RValue::Array(mut parts) = row else {
        return Fetched::Foreign("unexpected reply".into());
    };
    let value = if parts.len() > 2 { parts.pop() } else { None };
    let pttl = match parts.get(1) {
        Some(RValue::Int(ms)) if *ms >= 0 => Some(now_ms + *ms as u64),
        _ => None,
    };
    let kind = match parts.first() {
        Some(RValue::SimpleString(s)) => s.clone(),
        Some(RValue::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(RValue::Okay) => "ok".into(),
        _ => String::new(),
    };
    let data = match (kind.as_str(), value) {
        ("none", _) => return Fetched::Known(None),
        ("string", Some(RValue::BulkString(b))) => Data::String(b),
        ("hash", Some(RValue::Array(items))) => {
            let mut fields = indexmap::IndexMap::new();
            let mut it = items.into_iter();
            while let (Some(RValue::BulkString(f)), Some(RValue::BulkString(v))) =
                (it.next(), it.next())
            {
                fields.insert(f, v);
            }
            Data::Hash(fields)
        }
        ("list", Some(RValue::Array(items))) => Data::List(bulk_items(items).collect()),
        ("set", Some(RValue::Array(items))) => Data::Set(bulk_items(items).collect()),
        ("zset", Some(RValue::Array(items))) => {
            let mut it = bulk_items(items);
            let mut set = crate::change::SortedSet::new();
            while let (Some(member), Some(score)) = (it.next(), it.next()) {
                match std::str::from_utf8(&score)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    Some(score) => set.insert(member, score),
                    None => return Fetched::Foreign("zset with an unreadable score".into()),
                };
            }
            Data::Zset(set)
        }
        (other, _) => return Fetched::Foreign(other.to_owned()),
    };
    Fetched::Known(Some(Value {
        data,
        expire_at_ms: pttl,
    }))
}

/// A field of a hash and its value, as HSCAN returns them.
type Field = (Vec<u8>, Vec<u8>);

/// Whether Redis answered that it cannot serve for now: it is loading its data
/// after a restart, or briefly unable to. It is waited for, as one that is down.
/// A transaction reports the codes of the commands it aborted.
fn busy(e: &redis::RedisError) -> bool {
    // OOM: a Redis at its maxmemory with no eviction takes writes again once
    // memory is freed; refusing them for good would drop them.
    const BUSY: [&str; 5] = ["LOADING", "TRYAGAIN", "MASTERDOWN", "BUSY", "OOM"];
    if e.code().is_some_and(|code| BUSY.contains(&code)) {
        return true;
    }
    e.clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, s)| BUSY.contains(&s.code())))
}

/// A key's version as the metadata hash holds it: the binary encoding, or the
/// `timestamp/origin` text of earlier builds. `None` for anything else.
fn stored_version(bytes: &[u8]) -> Option<Version> {
    if let Ok(version) = Version::decode(bytes) {
        return Some(version);
    }
    let (hlc, origin) = std::str::from_utf8(bytes).ok()?.split_once('/')?;
    let hlc = Timestamp::from_u64(hlc.parse().ok()?);
    meridian_policies::is_valid_dc_id(origin).then(|| Version::new(hlc, origin))
}

/// A Redis server as the engine's backend.
#[derive(Debug)]
pub(in crate::engine) struct RedisBackend {
    store: RedisStore,
    /// The connection client reads use.
    reader: tokio::sync::Mutex<Option<pipe::Pipe>>,
    /// Held around each commit and by a snapshot, which is consistent only while
    /// nothing commits.
    commit_lock: Arc<Mutex<()>>,
    /// Read replicas, sticky per user.
    replicas: replicas::Replicas,
}

/// One thread's blocking connection, sharing the backend's commit lock.
#[derive(Debug)]
struct RedisSession {
    conn: SyncConn,
    commit_lock: Arc<Mutex<()>>,
}

impl RedisBackend {
    pub(in crate::engine) fn new(
        url: &str,
        replica_urls: &[String],
    ) -> Result<RedisBackend, RedisStoreError> {
        Ok(RedisBackend {
            store: RedisStore::new(url)?,
            reader: tokio::sync::Mutex::new(None),
            commit_lock: Arc::new(Mutex::new(())),
            replicas: replicas::Replicas::new(replica_urls)?,
        })
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> String {
        self.store.url().to_owned()
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(RedisSession {
            conn: self.store.sync_conn(),
            commit_lock: self.commit_lock.clone(),
        })
    }

    /// Short and small: a read of keys the memtable holds only in part waits for
    /// the commit, and one `MULTI` of many keys holds Redis up while it runs.
    fn commit_gather(&self) -> Gather {
        Gather {
            every: Duration::from_millis(10),
            max_changes: 16_384,
        }
    }

    fn snapshot(
        &self,
        memtable: &Memtable,
        overlay: &mut dyn FnMut(&View<'_>),
    ) -> Result<(VersionVector, Entries), BackendError> {
        let _commits_wait = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.store.sync_conn().snapshot(crate::engine::wall_ms())?;
        // Still no commit: the memtable holds what Redis lacks.
        overlay(&memtable.view());
        Ok(snapshot)
    }

    fn read_many<'a>(
        &'a self,
        ctx: ReadContext<'a>,
        reads: &'a [Read<'a>],
    ) -> BoxFuture<'a, Vec<Reply>> {
        Box::pin(self.read_many(ctx, reads))
    }

    fn replica_stats(&self, applied: &VersionVector) -> Vec<super::ReplicaStats> {
        use std::sync::atomic::Ordering::Relaxed;
        self.replicas
            .each()
            .map(|(url, r)| {
                let (behind_changes, behind_seconds) = r.behind(applied);
                super::ReplicaStats {
                    url: url.to_owned(),
                    reads: r.reads.load(Relaxed),
                    skips: r.skips.load(Relaxed),
                    errors: r.errors.load(Relaxed),
                    up: r.is_up(),
                    behind_changes,
                    behind_seconds,
                }
            })
            .collect()
    }

    fn key_count<'a>(&'a self, ctx: ReadContext<'a>) -> BoxFuture<'a, Result<u64, BackendError>> {
        Box::pin(self.key_count(ctx))
    }

    fn scan<'a>(
        &'a self,
        ctx: ReadContext<'a>,
        args: ScanArgs<'a>,
    ) -> BoxFuture<'a, Result<ScanPage, BackendError>> {
        Box::pin(async move { self.scan_native(ctx, &args).await })
    }

    fn random_key<'a>(
        &'a self,
        ctx: ReadContext<'a>,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(self.random_native(ctx))
    }
}

impl Session for RedisSession {
    fn applied(&mut self) -> Result<VersionVector, BackendError> {
        Ok(self.conn.applied()?)
    }

    fn fetch(
        &mut self,
        keys: Vec<Vec<u8>>,
        now_ms: u64,
    ) -> Result<HashMap<Vec<u8>, Fetched>, BackendError> {
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let fetched = self.conn.fetch(&refs, now_ms)?;
        Ok(keys.into_iter().zip(fetched).collect())
    }

    fn versions(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Version>>, BackendError> {
        Ok(self.conn.versions(keys)?)
    }

    fn keys(&mut self) -> Result<Vec<Vec<u8>>, BackendError> {
        // Every key meridian wrote there (deleting one already gone is harmless).
        let versions = self.conn.all_versions()?;
        Ok(versions.into_iter().map(|(key, _)| key).collect())
    }

    fn commit(
        &mut self,
        changes: &[Change],
        applied: &VersionVector,
        _durable: bool,
    ) -> Result<(), BackendError> {
        // Redis persists by its own configuration.
        let _no_snapshot_meanwhile = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.conn.commit(changes, applied)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_in_both_encodings_are_read() {
        let v = Version::new(Timestamp::from_u64(1234), "us-east");
        assert_eq!(stored_version(&v.to_bytes()), Some(v.clone()));
        assert_eq!(stored_version(b"1234/us-east"), Some(v));
        assert_eq!(stored_version(b"1234/"), None);
        assert_eq!(stored_version(b"x/us-east"), None);
        assert_eq!(stored_version(b""), None);
    }

    #[test]
    fn a_commit_deletes_in_one_del_and_sets_plain_strings_in_one_mset() {
        let string = |s: &[u8], expire_at_ms| Value {
            data: Data::String(s.to_vec()),
            expire_at_ms,
        };
        let ops = [
            Op::new(b"a".to_vec(), Some(string(b"1", None))),
            Op::new(b"gone".to_vec(), None),
            Op::new(b"b".to_vec(), Some(string(b"2", Some(9)))),
            Op::new(b"c".to_vec(), Some(string(b"3", None))),
            Op::new(
                b"l".to_vec(),
                Some(Value {
                    data: Data::List(vec![b"x".to_vec()].into()),
                    expire_at_ms: None,
                }),
            ),
            Op::new(b"also-gone".to_vec(), None),
        ];
        let version = Version::new(Timestamp::from_u64(1), "dc1");
        let newest: Vec<(&Op, Version)> = ops.iter().map(|op| (op, version.clone())).collect();
        let mut packed = Packed::default();
        write_newest(&mut packed, &newest);
        let mut expected = Packed::default();
        expected.push(&[b"DEL", b"gone", b"also-gone"]);
        expected.push(&[b"MSET", b"a", b"1", b"c", b"3"]);
        expected.push(&[b"SET", b"b", b"2", b"PXAT", b"9"]);
        expected.push(&[b"DEL", b"l"]);
        expected.push(&[b"RPUSH", b"l", b"x"]);
        assert_eq!(
            String::from_utf8_lossy(packed.bytes()),
            String::from_utf8_lossy(expected.bytes())
        );
        assert_eq!(packed.commands(), 5);
    }
}
