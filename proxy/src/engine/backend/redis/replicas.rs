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
//! in the user's order is asked, then the primary.
//!
//! A replica that fails a read, or does not answer it within [`TIMEOUT`], is left
//! alone until a health check answers again. A checker thread asks every replica
//! for its applied vector each [`CHECK_EVERY`] (with the same timeout): that keeps
//! the lag figures fresh when nobody reads, and takes a replica that stops
//! answering (down, paused, partitioned) out of every user's order before a read
//! has to find out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_policies::{Candidate, Rendezvous, VersionVector};
use redis::Value as RValue;

use super::{META_KEY, RedisStore, RedisStoreError};
use crate::resp::Reply;

/// How long a read or a health check waits for a replica's answer. A replica sits
/// in the proxy's own datacenter: it answers in well under a millisecond, or it is
/// in trouble.
const TIMEOUT: Duration = Duration::from_millis(200);
/// How often the checker asks every replica how far it is.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a replica that failed a read is not asked, unless a health check
/// answers first.
const DOWN_FOR: Duration = Duration::from_secs(5);

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
    /// Reads that failed on it (connection errors, no answer in time).
    pub(in crate::engine) errors: AtomicU64,
    /// Whether the last health check answered.
    healthy: AtomicBool,
    /// The applied vector it last reported, and the wall time (ms) of the primary
    /// commit that vector came from.
    applied: Mutex<(VersionVector, u64)>,
}

/// A Redis backend's read replicas.
#[derive(Debug)]
pub(in crate::engine) struct Replicas {
    list: Arc<Vec<Replica>>,
    order: Option<Rendezvous>,
    /// Dropping it stops the health checker.
    _checker: Option<mpsc::Sender<()>>,
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
                    healthy: AtomicBool::new(true),
                    applied: Mutex::new((VersionVector::new(), 0)),
                })
            })
            .collect::<Result<Vec<_>, RedisStoreError>>()?;
        let list = Arc::new(list);
        let order =
            Rendezvous::new(urls.iter().map(|u| Candidate::new(u.clone())).collect(), []).ok();
        let checker = match list.is_empty() {
            true => None,
            false => Some(spawn_checker(&list)?),
        };
        Ok(Replicas {
            list,
            order,
            _checker: checker,
        })
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
            let read = tokio::time::timeout(TIMEOUT, replica.read(token, commands, &to_reply));
            match read.await {
                Ok(Ok(Some(replies))) => {
                    replica.reads.fetch_add(1, Ordering::Relaxed);
                    return Some(replies);
                }
                Ok(Ok(None)) => drop(replica.skips.fetch_add(1, Ordering::Relaxed)),
                Ok(Err(e)) => replica.failed(&e.to_string()).await,
                Err(_) => replica.failed("no answer in time").await,
            }
        }
        None
    }
}

impl Replica {
    /// Whether reads skip it: its last health check failed, or a read failed on
    /// it since.
    fn is_down(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        !self.healthy.load(Ordering::Relaxed) || down.is_some_and(|until| Instant::now() < until)
    }

    /// Whether reads may go to it now.
    pub(in crate::engine) fn is_up(&self) -> bool {
        !self.is_down()
    }

    /// A read failed on it: left alone until a health check answers (at most
    /// [`DOWN_FOR`]), its connection dropped.
    async fn failed(&self, why: &str) {
        tracing::debug!(
            replica = self.store.url(),
            error = why,
            "a read replica failed"
        );
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
        *self.conn.lock().await = None;
    }

    /// One health check: asks for the applied vector on a fresh blocking
    /// connection, each step bounded by [`TIMEOUT`].
    fn check(&self) -> Result<(), String> {
        let mut conn = self
            .store
            .client
            .get_connection_with_timeout(TIMEOUT)
            .map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let (applied, committed_ms): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(META_KEY)
            .arg("applied")
            .arg("committed_ms")
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        self.record(
            &applied.unwrap_or_default(),
            &committed_ms.unwrap_or_default(),
        );
        Ok(())
    }

    /// Notes what the replica said it has applied; returns that vector.
    fn record(&self, applied: &str, committed_ms: &str) -> VersionVector {
        let applied = applied.parse::<VersionVector>().unwrap_or_default();
        let committed_ms = committed_ms.parse::<u64>().unwrap_or(0);
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = (applied.clone(), committed_ms);
        applied
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
        let applied = match results.next() {
            Some(Ok(RValue::Array(fields))) if fields.len() == 2 => {
                self.record(&text(&fields[0]), &text(&fields[1]))
            }
            _ => self.record("", ""),
        };
        if !applied.dominates(token) {
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

/// Starts the thread that checks every replica each [`CHECK_EVERY`]; it stops
/// when the returned sender is dropped (with the backend).
fn spawn_checker(list: &Arc<Vec<Replica>>) -> Result<mpsc::Sender<()>, RedisStoreError> {
    let (stop, stopped) = mpsc::channel::<()>();
    let list = Arc::downgrade(list);
    std::thread::Builder::new()
        .name("meridian-replica-checks".into())
        .spawn(move || {
            loop {
                let Some(list) = list.upgrade() else { return };
                for replica in list.iter() {
                    let result = replica.check();
                    let was = replica.healthy.swap(result.is_ok(), Ordering::Relaxed);
                    match result {
                        Ok(()) => {
                            *replica.down_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            if !was {
                                tracing::info!(replica = replica.store.url(), "read replica answers again");
                            }
                        }
                        Err(e) if was => {
                            tracing::warn!(replica = replica.store.url(), error = %e, "read replica failed its health check; reads skip it");
                        }
                        Err(_) => {}
                    }
                }
                drop(list);
                if stopped.recv_timeout(CHECK_EVERY) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
            }
        })
        .map_err(|e| RedisStoreError {
            url: String::new(),
            message: format!("cannot start the read replica health checker: {e}"),
            retryable: false,
            refused: false,
        })?;
    Ok(stop)
}
