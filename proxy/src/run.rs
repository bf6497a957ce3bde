//! `meridian run --config FILE --dc ID`: serve one datacenter until told to stop.

use std::collections::HashMap;
use std::net::ToSocketAddrs as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use meridian_proxy::LinkTls;
use meridian_proxy::ReplicationConfig;
use meridian_topology::{DcIdx, Topology};

use meridian_proxy::{Proxy, ProxyConfig};
use tracing_subscriber::EnvFilter;

use crate::check::load_or_exit;
use crate::{EX_SOFTWARE, EX_USAGE, LogFormat};

/// Settings of `meridian run` beyond the topology file.
#[derive(Debug)]
pub(crate) struct Extra {
    /// `DC=ADDR`: reach a peer somewhere else than its topology address.
    pub(crate) dial: Vec<String>,
    /// Clock shift for write timestamps, in milliseconds.
    pub(crate) clock_offset_ms: i64,
    /// Bound on logged changes not yet in the store.
    pub(crate) max_unstored: usize,
    /// Size past which a log segment is closed.
    pub(crate) log_segment_bytes: u64,
    /// Threads that serve clients and peers.
    pub(crate) threads: usize,
}

pub(crate) fn run(file: &Path, dc: &str, format: LogFormat, extra: &Extra) -> ExitCode {
    init_logging(format);
    let topology = match load_or_exit(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let Some(idx) = topology.index_of(dc) else {
        let ids: Vec<&str> = topology.datacenters.iter().map(|d| d.id.as_str()).collect();
        eprintln!(
            "{}: no datacenter {dc:?}; the datacenters are {}",
            file.display(),
            ids.join(", ")
        );
        return ExitCode::from(EX_USAGE);
    };
    let mut config = ProxyConfig::from_topology(&topology, idx);
    config.clock_offset_ms = extra.clock_offset_ms;
    config.max_unstored = extra.max_unstored;
    config.log_segment_bytes = extra.log_segment_bytes;
    if topology.datacenters.len() > 1 {
        match replication_config(file, topology, idx, &extra.dial) {
            Ok(rc) => config.replication = Some(rc),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EX_USAGE);
            }
        }
    }
    tracing::info!(threads = extra.threads, "serving threads");
    let runtime = match crate::runtime(Some(extra.threads)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    runtime.block_on(serve(config))
}

fn replication_config(
    file: &Path,
    topology: Topology,
    me: DcIdx,
    dial: &[String],
) -> Result<ReplicationConfig, String> {
    let d = topology.dc(me);
    let heartbeat = topology.replication.heartbeat;
    let tls = LinkTls::load(&topology.tls.ca, &d.cert, &d.key)
        .map_err(|e| {
            format!(
                "{}: {e} (create the certificates with `meridian certs --config {}`)",
                file.display(),
                file.display()
            )
        })?
        .with_transport(
            topology.replication.heartbeat,
            topology.replication.peer_timeout,
        );
    let listen = (d.peer.host.as_str(), d.peer.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            format!(
                "{}: cannot resolve the peer address {}",
                file.display(),
                d.peer
            )
        })?;
    let mut routes = HashMap::new();
    for entry in dial {
        let (dc, addr) = entry
            .split_once('=')
            .ok_or_else(|| format!("--dial {entry:?}: expected DC=host:port"))?;
        if topology.index_of(dc).is_none() {
            return Err(format!(
                "--dial {entry:?}: no datacenter {dc:?} in {}",
                file.display()
            ));
        }
        let addr = addr
            .parse()
            .map_err(|e| format!("--dial {entry:?}: {addr:?} is not host:port ({e})"))?;
        routes.insert(dc.to_owned(), addr);
    }
    Ok(ReplicationConfig {
        topology: Arc::new(topology),
        me,
        tls,
        listen,
        dial: routes,
        heartbeat,
    })
}

async fn serve(config: ProxyConfig) -> ExitCode {
    let proxy = match Proxy::start(config).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("meridian: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight commands");
    proxy.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MERIDIAN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
