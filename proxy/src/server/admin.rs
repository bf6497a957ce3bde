//! The admin HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /status` (JSON).

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
        let task_ctx = ctx.clone();
        ctx.engine.workers().track(async move {
            if let Err(e) = handle(stream, &task_ctx).await {
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
    crate::metrics::prometheus(&super::observe::collect(ctx))
}

fn status(ctx: &Context) -> String {
    let engine = &ctx.engine;
    let stats = engine.stats();
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
        "writes_stopped": engine.broken(),
        "conflicts": stats.conflicts.load(Ordering::Relaxed),
        "home_agreement": ctx.replication.as_ref().and_then(|r| {
            let status = r.agreement_status()?;
            Some(serde_json::json!({
                "epoch": status.epoch,
                "leader": status.leader.map(|l| r.dc_id(l).to_owned()),
                "service": status.service.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            }))
        }),
        "recent_conflicts": engine.conflicts(10).iter().map(|c| serde_json::json!({
            "key": String::from_utf8_lossy(&c.key),
            "found_at_ms": c.at_ms,
            "kept": c.kept.0.to_string(),
            "lost": c.lost.0.to_string(),
        })).collect::<Vec<_>>(),
        "workers": engine.workers().json(),
        "metrics": crate::metrics::json(&super::observe::collect(ctx)),
    });
    format!("{body:#}\n")
}
