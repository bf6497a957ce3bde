//! The client-facing server: accepts Redis connections on the datacenter's client
//! address and serves them until shutdown.

mod admin;
mod conn;

pub(crate) use conn::transaction::{
    FORWARDED as FORWARDED_TRANSACTION, from_forwarded as transaction_from_forwarded,
};
mod info;
mod observe;
mod replicate;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_topology::{DcIdx, FsyncPolicy, Topology, UserKey};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::command::UserRule;
use crate::engine::{BackendConfig, Engine, EngineConfig, Fsync, OpenError};
use crate::resp::Limits;

/// Everything one proxy needs to run.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This datacenter's id.
    pub dc: String,
    /// The Redis listener (port 0 picks a free port).
    pub client: String,
    /// Where the log (and the embedded store) live.
    pub data_dir: PathBuf,
    /// Where the data lives.
    pub backend: BackendConfig,
    /// When the log is synced.
    pub fsync: Fsync,
    /// How keys name users.
    pub user_rule: UserRule,
    /// Users and passwords clients must AUTH with (empty: every client is accepted).
    pub users: Vec<(String, String)>,
    /// The admin HTTP listener (`None`: no admin endpoint).
    pub admin: Option<String>,
    /// Bounds on client requests.
    pub limits: Limits,
    /// Most simultaneous client connections (default 10,000).
    pub max_clients: usize,
    /// The most reply bytes one connection may have waiting; past it the
    /// connection is closed (the topology's `clients.output_buffer_limit`).
    pub max_output: u64,
    /// Whether FLUSHDB and FLUSHALL run: always in a one-datacenter cluster, in a
    /// bigger one only with the topology's `clients.flush = "allow"`.
    pub flush_allowed: bool,
    /// How many datacenters the cluster has.
    pub datacenters: usize,
    /// How long shutdown waits for connections to finish (default 5 s).
    pub grace: Duration,
    /// Replication with the other datacenters (`None`: this proxy stands alone).
    pub replication: Option<crate::replication::ReplicationConfig>,
    /// Added to the wall clock for write timestamps (the testbed skews datacenters).
    pub clock_offset_ms: i64,
    /// Logged changes not yet in the store before writes and applies wait.
    pub max_unstored: usize,
    /// The most log kept for peers that have not acknowledged it, in bytes.
    pub log_retention: u64,
    /// Log segments are closed past this size.
    pub log_segment_bytes: u64,
}

impl ProxyConfig {
    /// The configuration of datacenter `dc` of `topology`.
    pub fn from_topology(topology: &Topology, dc: DcIdx) -> ProxyConfig {
        let d = topology.dc(dc);
        ProxyConfig {
            dc: d.id.clone(),
            client: d.client.to_string(),
            admin: Some(d.admin.to_string()),
            users: topology.users.clone(),
            data_dir: d.data_dir.clone(),
            backend: d.backend.clone(),
            fsync: match topology.replication.fsync {
                FsyncPolicy::Always => Fsync::Always,
                FsyncPolicy::Every(period) => Fsync::Every(period),
                FsyncPolicy::Never => Fsync::Never,
            },
            user_rule: match topology.homes.user {
                UserKey::HashTag => UserRule::HashTag,
                UserKey::Prefix => UserRule::Prefix,
            },
            limits: Limits::default(),
            max_clients: 10_000,
            max_output: topology.clients.output_buffer_limit,
            flush_allowed: topology.datacenters.len() == 1
                || topology.clients.flush == meridian_topology::FlushPolicy::Allow,
            datacenters: topology.datacenters.len(),
            grace: Duration::from_secs(5),
            replication: None,
            clock_offset_ms: 0,
            max_unstored: crate::engine::DEFAULT_MAX_UNSTORED,
            log_retention: topology.replication.log_retention_bytes,
            log_segment_bytes: crate::engine::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be opened.
    #[error(transparent)]
    Engine(#[from] OpenError),
    /// Replication could not start.
    #[error(transparent)]
    Replication(#[from] crate::replication::ReplicationError),
    /// The home agreement could not start.
    #[error(transparent)]
    Agreement(crate::control::ControlError),
    /// The client address could not be bound.
    #[error("cannot listen for clients on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What connections share.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) engine: Engine,
    pub(crate) config: ProxyConfig,
    pub(crate) started: Instant,
    pub(crate) clients: AtomicUsize,
    pub(crate) total_connections: AtomicU64,
    pub(crate) total_commands: AtomicU64,
    /// Connections closed for going over the output buffer limit.
    pub(crate) output_limit_disconnections: AtomicU64,
    pub(crate) next_client_id: AtomicU64,
    pub(crate) addr: SocketAddr,
    pub(crate) admin_addr: Option<SocketAddr>,
    pub(crate) commands: crate::metrics::CommandStats,
    pub(crate) replication: Option<Arc<crate::replication::Replication>>,
}

impl Context {
    /// Every peer's link status (none without replication).
    pub(crate) fn peers(&self) -> Vec<Arc<crate::replication::PeerStatus>> {
        self.replication
            .as_ref()
            .map(|r| r.peers())
            .unwrap_or_default()
    }
}

/// Whether this proxy takes part in the home agreement: where a home that is out
/// has its users' writes taken over (`on_home_down = "next-in-line"`).
fn repl_wants_agreement(repl: &crate::replication::Replication) -> bool {
    repl.on_home_down() == meridian_topology::OnHomeDown::NextInLine
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    ctx: Arc<Context>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Opens the data directory (replaying the log), binds the client address and
    /// starts serving.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, StartError> {
        let engine = open_engine(&config).await?;
        let (listener, addr) = bind(&config.client).await?;
        let admin = match &config.admin {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|(_, addr)| *addr);
        let (stop, stopped) = watch::channel(false);
        let replication = match &config.replication {
            Some(rc) => Some(crate::replication::Replication::start(
                engine.clone(),
                rc.clone(),
                stopped.clone(),
            )?),
            None => None,
        };
        if let Some(repl) = &replication
            && repl_wants_agreement(repl)
        {
            repl.start_agreement(&config.data_dir, stopped.clone())
                .await
                .map_err(StartError::Agreement)?;
        }
        // Writes that waited past the lease they were routed under do not run.
        if let Some(repl) = replication.clone().filter(|r| repl_wants_agreement(r)) {
            engine.set_write_fence(move || repl.fence_write());
        }
        // Expired keys are deleted where their user's writes run.
        let (rule, repl) = (config.user_rule, replication.clone());
        engine.set_expiry_owner(move |key| {
            let user = rule.user_of(key);
            let ours = match &repl {
                Some(repl) => repl.expires_here(user),
                None => true,
            };
            ours.then(|| user.to_vec())
        });
        let ctx = Arc::new(Context {
            replication,
            engine,
            started: Instant::now(),
            clients: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            total_commands: AtomicU64::new(0),
            output_limit_disconnections: AtomicU64::new(0),
            next_client_id: AtomicU64::new(1),
            addr,
            admin_addr,
            commands: crate::metrics::CommandStats::default(),
            config,
        });
        let span = tracing::info_span!("proxy", dc = %ctx.config.dc);
        if let Some((admin, _)) = admin {
            let (admin_ctx, stopped) = (ctx.clone(), stopped.clone());
            ctx.engine.workers().spawn("admin", None, |worker| {
                worker.set(crate::workers::State::Idle);
                admin::serve(admin, admin_ctx, stopped)
            });
        }
        let accept = tokio::spawn(accept_loop(listener, ctx.clone(), stopped).instrument(span));
        tracing::info!(dc = %ctx.config.dc, %addr, "serving Redis clients");
        Ok(Proxy { ctx, stop, accept })
    }

    /// The address clients connect to.
    pub fn client_addr(&self) -> SocketAddr {
        self.ctx.addr
    }

    /// The admin HTTP address, if it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.ctx.admin_addr
    }

    /// Replication, when the proxy has peers.
    pub fn replication(&self) -> Option<&Arc<crate::replication::Replication>> {
        self.ctx.replication.as_ref()
    }

    /// The engine, for tools and tests.
    pub fn engine(&self) -> &Engine {
        &self.ctx.engine
    }

    /// Stops accepting, lets connections finish their in-flight commands (bounded by
    /// the grace period), closes the links and joins every worker (bounded by the
    /// grace period too), then syncs the log and checkpoints the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        if let Some(repl) = &self.ctx.replication {
            repl.close();
        }
        self.ctx.engine.workers().join(self.ctx.config.grace).await;
        self.ctx.engine.shutdown().await;
    }
}

/// Opens the data directory and replays the log, off the async workers.
async fn open_engine(config: &ProxyConfig) -> Result<Engine, StartError> {
    let engine_config = EngineConfig {
        dc: config.dc.clone(),
        fsync: config.fsync,
        max_drift: Duration::from_secs(5),
        backend: config.backend.clone(),
        clock_offset_ms: config.clock_offset_ms,
        max_unstored: config.max_unstored,
        log_retention: config.log_retention,
        log_segment_bytes: config.log_segment_bytes,
    };
    let data_dir = config.data_dir.clone();
    let engine = tokio::task::spawn_blocking(move || Engine::open(&data_dir, engine_config))
        .await
        .map_err(|e| OpenError::Thread(std::io::Error::other(e)))??;
    Ok(engine)
}

/// Binds a listener, saying which address could not be bound.
async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let fail = |source| StartError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((listener, local))
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(ctx.config.max_clients));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a client failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            conn::refuse(stream, "ERR max number of clients reached").await;
            continue;
        };
        let id = ctx.next_client_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("client", id, %peer);
        let task = conn::serve(stream, peer, id, ctx.clone(), stopped.clone());
        conns.spawn(
            async move {
                task.await;
                drop(slot);
            }
            .instrument(span),
        );
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let grace = ctx.config.grace;
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = conns.len(),
            "closing client connections still busy after the grace period"
        );
        conns.abort_all();
    }
}
