//! The two backends behind the engine: the embedded store and a Redis server.

use std::path::Path;

use meridian_policies::VersionVector;

use super::OpenError;
use crate::change::Change;
use crate::redis_store::{RedisStore, SyncConn};
use crate::store::Store;

/// Which database holds this datacenter's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// The embedded store in the data directory.
    Embedded,
    /// A Redis server.
    Redis {
        /// `redis://host:port/db`.
        url: String,
    },
}

#[derive(Debug)]
pub(super) enum Backend {
    Embedded(Store),
    Redis(RedisStore),
}

/// Why a commit failed, and whether trying again later can succeed.
#[derive(Debug)]
pub(super) struct CommitError {
    pub(super) message: String,
    pub(super) retryable: bool,
}

/// Where the committer (and start-up replay) writes.
pub(super) enum Target<'a> {
    Embedded(&'a Store),
    Redis(Box<SyncConn>),
}

impl Backend {
    pub(super) fn open(data_dir: &Path, config: &BackendConfig) -> Result<Backend, OpenError> {
        Ok(match config {
            BackendConfig::Embedded => {
                Backend::Embedded(Store::open(&data_dir.join("store.redb"))?)
            }
            BackendConfig::Redis { url } => Backend::Redis(RedisStore::new(url)?),
        })
    }

    /// The applied vector the backend holds.
    pub(super) fn applied(&self) -> Result<VersionVector, OpenError> {
        Ok(match self {
            Backend::Embedded(store) => store.applied()?,
            Backend::Redis(redis) => redis.sync_conn().applied()?,
        })
    }

    pub(super) fn target(&self) -> Target<'_> {
        match self {
            Backend::Embedded(store) => Target::Embedded(store),
            Backend::Redis(redis) => Target::Redis(Box::new(redis.sync_conn())),
        }
    }
}

impl Target<'_> {
    /// Writes `changes` and `applied` atomically; `durable` asks the embedded store
    /// for a synced checkpoint (Redis persists by its own configuration).
    pub(super) fn commit(
        &mut self,
        changes: &[Change],
        applied: &VersionVector,
        durable: bool,
    ) -> Result<(), CommitError> {
        match self {
            Target::Embedded(store) => {
                store
                    .commit(changes, applied, durable)
                    .map_err(|e| CommitError {
                        message: e.to_string(),
                        retryable: false,
                    })
            }
            Target::Redis(conn) => conn.commit(changes, applied).map_err(|e| CommitError {
                message: e.to_string(),
                retryable: e.retryable,
            }),
        }
    }
}
