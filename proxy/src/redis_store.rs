//! The Redis backend: a real Redis server holds the data.
//!
//! Values live at their own key names in Redis's native types (strings and hashes,
//! with native expiry), so existing tools can read them. Meridian's metadata lives
//! beside them in one hash, `__meridian:meta`: field `applied` holds the applied
//! version vector, and field `v:<key>` the version (timestamp and origin) of each key.
//! A batch of changes and the new applied vector go to Redis in one MULTI/EXEC, so
//! data, versions and vector change together.
//!
//! The writer and committer threads use blocking connections; client reads use a
//! multiplexed async connection. All reconnect after Redis restarts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use meridian_policies::VersionVector;
use redis::Value as RValue;

use crate::change::{Change, Data, Value};
use crate::resp::Reply;

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
}

/// What a key holds in Redis, as the writer needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// A string or hash meridian understands (`None`: absent).
    Known(Option<Value>),
    /// A type meridian does not handle (a list written by another tool, say).
    Foreign(String),
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

    pub(crate) fn error(&self, e: &redis::RedisError) -> RedisStoreError {
        let retryable = e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped();
        RedisStoreError {
            url: self.url.clone(),
            message: e.to_string(),
            retryable,
        }
    }

    /// A blocking connection for the writer or committer.
    pub fn sync_conn(&self) -> SyncConn {
        SyncConn {
            store: self.clone(),
            conn: None,
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
            })
    }

    /// The version `(hlc, origin)` of the change that last wrote each key, deletions
    /// included; `None` for a key meridian never wrote.
    pub fn versions(
        &mut self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<(u64, String)>>, RedisStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(META_KEY);
        for key in keys {
            cmd.arg([b"v:".as_slice(), key].concat());
        }
        let found: Vec<Option<String>> = self.with(|c| cmd.query(c))?;
        Ok(found
            .into_iter()
            .map(|v| {
                v.and_then(|text| {
                    let (hlc, origin) = text.split_once('/')?;
                    Some((hlc.parse().ok()?, origin.to_owned()))
                })
            })
            .collect())
    }

    /// Every key meridian holds in this Redis with its record, and the applied
    /// vector they reach. Consistent only while nothing commits meanwhile (the
    /// engine holds its commit lock around this).
    pub fn snapshot(
        &mut self,
        now_ms: u64,
    ) -> Result<(VersionVector, crate::store::Entries), RedisStoreError> {
        let applied = self.applied()?;
        let versions = self.all_versions()?;
        let mut entries = Vec::with_capacity(versions.len());
        for chunk in versions.chunks(512) {
            let keys: Vec<&[u8]> = chunk.iter().map(|(k, _, _)| k.as_slice()).collect();
            for ((key, hlc, origin), fetched) in chunk.iter().zip(self.fetch(&keys, now_ms)?) {
                if let Fetched::Known(Some(value)) = fetched {
                    let stored = crate::store::Stored {
                        value,
                        hlc: *hlc,
                        origin: origin.clone(),
                    };
                    entries.push((key.clone(), stored));
                }
            }
        }
        Ok((applied, entries))
    }

    /// Every key meridian has written here (deleted ones too) with its version.
    pub fn all_versions(&mut self) -> Result<Vec<(Vec<u8>, u64, String)>, RedisStoreError> {
        let mut versions: Vec<(Vec<u8>, u64, String)> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, items): (u64, Vec<(Vec<u8>, String)>) = self.with(|c| {
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
                let Some((hlc, origin)) = version.split_once('/') else {
                    continue;
                };
                let (Some(key), Ok(hlc)) = (field.strip_prefix(b"v:"), hlc.parse()) else {
                    continue;
                };
                versions.push((key.to_vec(), hlc, origin.to_owned()));
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
        let mut pipe = redis::pipe();
        pipe.atomic();
        // Each key's newest version, written with the applied vector in one HSET.
        let mut versions: HashMap<Vec<u8>, String> = HashMap::new();
        for change in changes {
            for op in &change.ops {
                match &op.value {
                    None => {
                        pipe.cmd("DEL").arg(&op.key).ignore();
                    }
                    Some(value) => write_value(&mut pipe, &op.key, value),
                }
                versions.insert(
                    [b"v:".as_slice(), &op.key].concat(),
                    format!("{}/{}", change.hlc, change.origin),
                );
            }
        }
        let meta = pipe
            .cmd("HSET")
            .arg(META_KEY)
            .arg("applied")
            .arg(applied.to_string());
        for (field, version) in &versions {
            meta.arg(field.as_slice()).arg(version);
        }
        meta.ignore();
        self.with(|c| pipe.query::<()>(c))
    }
}

fn unreachable_error(store: &RedisStore) -> RedisStoreError {
    RedisStoreError {
        url: store.url.clone(),
        message: "no connection".into(),
        retryable: true,
    }
}

fn write_value(pipe: &mut redis::Pipeline, key: &[u8], value: &Value) {
    match &value.data {
        Data::String(s) => {
            let cmd = pipe.cmd("SET").arg(key).arg(s.as_slice());
            if let Some(at) = value.expire_at_ms {
                cmd.arg("PXAT").arg(at);
            }
            cmd.ignore();
        }
        Data::Hash(fields) => {
            // The new state replaces the old hash whole.
            pipe.cmd("DEL").arg(key).ignore();
            let cmd = pipe.cmd("HSET").arg(key);
            for (f, v) in fields {
                cmd.arg(f.as_slice()).arg(v.as_slice());
            }
            cmd.ignore();
            if let Some(at) = value.expire_at_ms {
                pipe.cmd("PEXPIREAT").arg(key).arg(at).ignore();
            }
        }
    }
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
            let mut fields = BTreeMap::new();
            let mut it = items.into_iter();
            while let (Some(RValue::BulkString(f)), Some(RValue::BulkString(v))) =
                (it.next(), it.next())
            {
                fields.insert(f, v);
            }
            Data::Hash(fields)
        }
        (other, _) => return Fetched::Foreign(other.to_owned()),
    };
    Fetched::Known(Some(Value {
        data,
        expire_at_ms: pttl,
    }))
}

/// A Redis reply as the client's reply; `map_pairs` turns a flat array into a map
/// (HGETALL for a RESP3 client).
pub fn to_reply(value: RValue, map_pairs: bool) -> Reply {
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
pub fn error_reply(url: &str, e: &redis::RedisError) -> Reply {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => Reply::Error(format!("{code} {detail}")),
        (Some(code), None) => Reply::Error(code.to_owned()),
        _ => Reply::Error(format!("ERR redis backend {url} unavailable: {e}")),
    }
}

/// Fetches several keys' states into a map (for the writer's batch).
pub fn fetch_map(
    conn: &mut SyncConn,
    keys: Vec<Vec<u8>>,
    now_ms: u64,
) -> Result<HashMap<Vec<u8>, Fetched>, RedisStoreError> {
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let fetched = conn.fetch(&refs, now_ms)?;
    Ok(keys.into_iter().zip(fetched).collect())
}
