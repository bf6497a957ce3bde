//! `meridian run --config FILE --dc ID`: serve one datacenter until told to stop.

use std::path::Path;
use std::process::ExitCode;

use meridian_proxy::server::{Proxy, ProxyConfig};
use tracing_subscriber::EnvFilter;

use crate::check::load_or_exit;
use crate::{EX_SOFTWARE, EX_USAGE, LogFormat};

pub(crate) fn run(file: &Path, dc: &str, format: LogFormat) -> ExitCode {
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
    let config = ProxyConfig::from_topology(&topology, idx);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    runtime.block_on(serve(config))
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
