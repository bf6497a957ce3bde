//! Sticky read replicas: a user's reads go to the replica that rendezvous hashing
//! of the user picks among the healthy ones, so one user keeps one replica's
//! timeline.
//!
//! Each read to a replica carries, first in its pipeline, a read of the applied
//! vector (and the commit's wall time) the proxy stores with its data (Redis replication brings it to the
//! replica in the same transaction as the data it describes). A replica applies
//! the primary's stream in order, so the reads after it see at least that state:
//! when the vector covers the session's token the replies stand; when it does not,
//! the replica is behind the session, its replies are dropped and the next replica
//! in the user's order is asked, then the primary. A replica that fails is left
//! alone for a second.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_policies::{Candidate, Rendezvous, VersionVector};
use redis::Value as RValue;

use super::{META_KEY, RedisStore, RedisStoreError};
use crate::resp::Reply;

/// How long a replica that failed is not asked.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// One read replica.
#[derive(Debug)]
pub(in crate::engine) struct Replica {
    store: RedisStore,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    down_until: Mutex<Option<Instant>>,
    /// Reads it served.
    pub(in crate::engine) reads: AtomicU64,
    /// Reads it was asked and could not serve: behind the session's token.
    pub(in crate::engine) skips: AtomicU64,
    /// Reads that failed on it (connection errors).
    pub(in crate::engine) errors: AtomicU64,
    /// The applied vector it last reported, and the wall time (ms) of the primary
    /// commit that vector came from.
    applied: Mutex<(VersionVector, u64)>,
}

/// A Redis backend's read replicas.
#[derive(Debug)]
pub(in crate::engine) struct Replicas {
    list: Vec<Replica>,
    order: Option<Rendezvous>,
}

impl Replicas {
    pub(super) fn new(urls: &[String]) -> Result<Replicas, RedisStoreError> {
        let list = urls
            .iter()
            .map(|url| {
                Ok(Replica {
                    store: RedisStore::new(url)?,
                    conn: tokio::sync::Mutex::new(None),
                    down_until: Mutex::new(None),
                    reads: AtomicU64::new(0),
                    skips: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    applied: Mutex::new((VersionVector::new(), 0)),
                })
            })
            .collect::<Result<Vec<_>, RedisStoreError>>()?;
        let order =
            Rendezvous::new(urls.iter().map(|u| Candidate::new(u.clone())).collect(), []).ok();
        Ok(Replicas { list, order })
    }

    /// Every replica, with its URL.
    pub(in crate::engine) fn each(&self) -> impl Iterator<Item = (&str, &Replica)> {
        self.list.iter().map(|r| (r.store.url(), r))
    }

    /// Runs `commands` on the first replica in `user`'s order that is up and has
    /// applied `token`; `None` when none could (the primary then serves them).
    pub(super) async fn read(
        &self,
        user: &[u8],
        token: &VersionVector,
        commands: &[&[Bytes]],
        to_reply: impl Fn(RValue, &[Bytes]) -> Reply,
    ) -> Option<Vec<Reply>> {
        let order = self.order.as_ref()?;
        for i in order.ranking(&String::from_utf8_lossy(user)) {
            let replica = &self.list[i];
            if replica.is_down() {
                continue;
            }
            match replica.read(token, commands, &to_reply).await {
                Ok(Some(replies)) => {
                    replica.reads.fetch_add(1, Ordering::Relaxed);
                    return Some(replies);
                }
                Ok(None) => drop(replica.skips.fetch_add(1, Ordering::Relaxed)),
                Err(e) => {
                    tracing::debug!(replica = replica.store.url(), error = %e, "a read replica failed");
                    replica.errors.fetch_add(1, Ordering::Relaxed);
                    *replica.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now() + DOWN_FOR);
                    *replica.conn.lock().await = None;
                }
            }
        }
        None
    }
}

impl Replica {
    fn is_down(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.is_some_and(|until| Instant::now() < until)
    }

    /// Changes `primary` has applied that this replica had not when it last said,
    /// and, when it was behind, the age in seconds of the newest commit it had.
    pub(in crate::engine) fn behind(&self, primary: &VersionVector) -> (u64, f64) {
        let (applied, committed_ms) = &*self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let changes = meridian_policies::missing(applied, primary);
        let seconds = match (changes, *committed_ms) {
            (0, _) | (_, 0) => 0.0,
            (_, at) => crate::engine::wall_ms().saturating_sub(at) as f64 / 1000.0,
        };
        (changes, seconds)
    }

    /// The replies, or `None` when this replica has not applied `token`.
    async fn read(
        &self,
        token: &VersionVector,
        commands: &[&[Bytes]],
        to_reply: &impl Fn(RValue, &[Bytes]) -> Reply,
    ) -> Result<Option<Vec<Reply>>, RedisStoreError> {
        let mut conn = {
            let mut slot = self.conn.lock().await;
            match slot.as_ref() {
                Some(conn) => conn.clone(),
                None => slot.insert(self.store.async_conn().await?).clone(),
            }
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("HMGET")
            .arg(META_KEY)
            .arg("applied")
            .arg("committed_ms");
        for args in commands {
            let cmd = pipe.cmd(&String::from_utf8_lossy(&args[0]));
            for arg in &args[1..] {
                cmd.arg(&arg[..]);
            }
        }
        let mut results = pipe
            .query_async::<Vec<redis::RedisResult<RValue>>>(&mut conn)
            .await
            .map_err(|e| self.store.error(&e))?
            .into_iter();
        let text = |v: &RValue| match v {
            RValue::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let (applied, committed_ms) = match results.next() {
            Some(Ok(RValue::Array(fields))) if fields.len() == 2 => (
                text(&fields[0])
                    .parse::<VersionVector>()
                    .unwrap_or_default(),
                text(&fields[1]).parse::<u64>().unwrap_or(0),
            ),
            _ => (VersionVector::new(), 0),
        };
        let covered = applied.dominates(token);
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = (applied, committed_ms);
        if !covered {
            return Ok(None);
        }
        Ok(Some(
            results
                .zip(commands)
                .map(|(result, args)| match result {
                    Ok(value) => to_reply(value, args),
                    Err(e) => super::reads::error_reply(self.store.url(), &e),
                })
                .collect(),
        ))
    }
}
