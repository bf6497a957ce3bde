//! The admin HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /status` (JSON).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Context;

/// The largest request head accepted.
const MAX_REQUEST: usize = 8 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &ctx).await {
                tracing::debug!(error = %e, "admin request failed");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, ctx: &Context) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
        }
    }
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default())
        .into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4",
                &metrics(ctx),
            )
            .await
        }
        ("GET", "/status") => {
            respond(&mut stream, "200 OK", "application/json", &status(ctx)).await
        }
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "not found: try /metrics or /status\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "only GET is served\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn metrics(ctx: &Context) -> String {
    let mut out = String::with_capacity(16 << 10);
    let engine = &ctx.engine;
    let stats = engine.stats();
    let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    gauge(
        &mut out,
        "meridian_connected_clients",
        "Client connections open now.",
        "gauge",
        ctx.clients.load(Ordering::Relaxed) as u64,
    );
    gauge(
        &mut out,
        "meridian_connections_total",
        "Client connections accepted.",
        "counter",
        ctx.total_connections.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "meridian_changes_committed_total",
        "Changes this datacenter wrote to its log.",
        "counter",
        stats.changes.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "meridian_write_batches_total",
        "Writer batches (one log append each).",
        "counter",
        stats.batches.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "meridian_log_bytes_total",
        "Bytes appended to the replication log.",
        "counter",
        stats.log_bytes.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "meridian_changes_replayed_total",
        "Changes replayed from the log at start-up.",
        "counter",
        stats.replayed.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "meridian_uncommitted_keys",
        "Keys logged but not yet in the backend.",
        "gauge",
        engine.uncommitted() as u64,
    );
    gauge(
        &mut out,
        "meridian_uptime_seconds",
        "Seconds since the proxy started.",
        "gauge",
        ctx.started.elapsed().as_secs(),
    );
    ctx.commands.render(&mut out);
    engine.backend_stats().render(&mut out);
    super::replicate::render_metrics(&mut out, ctx);
    out
}

fn status(ctx: &Context) -> String {
    let engine = &ctx.engine;
    let stats = engine.stats();
    let writer = match engine.broken() {
        Some(why) => serde_json::json!({ "name": "writer", "state": "stopped", "error": why }),
        None => serde_json::json!({ "name": "writer", "state": "running" }),
    };
    let committer = serde_json::json!({
        "name": "committer",
        "state": if engine.uncommitted() == 0 { "idle" } else { "busy" },
        "uncommitted_keys": engine.uncommitted(),
    });
    let body = serde_json::json!({
        "datacenter": ctx.config.dc,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "client_address": ctx.addr.to_string(),
        "backend": engine.backend_name(),
        "applied": engine.applied().to_string(),
        "clients": ctx.clients.load(Ordering::Relaxed),
        "changes_committed": stats.changes.load(Ordering::Relaxed),
        "changes_replayed_at_start": stats.replayed.load(Ordering::Relaxed),
        "workers": [writer, committer],
    });
    format!("{body:#}\n")
}
