//! Commands about replication: `WAIT` and the `MERIDIAN` family.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

use super::Context;
use crate::command;
use crate::resp::Reply;

/// `WAIT numreplicas timeout`: waits until `numreplicas` other datacenters have
/// applied this datacenter's writes up to now (so the client's last write too), or
/// `timeout` milliseconds pass (0: no limit). Replies with how many have.
pub(super) async fn wait(ctx: &Context, args: &[Bytes]) -> Reply {
    let (Some(n), Some(timeout)) = (command::parse_i64(&args[1]), command::parse_i64(&args[2]))
    else {
        return command::not_an_integer();
    };
    if timeout < 0 {
        return Reply::error("ERR timeout is negative");
    }
    let Some(repl) = &ctx.replication else {
        return Reply::Integer(0);
    };
    let seq = ctx.engine.applied().get(ctx.engine.dc());
    let timeout = (timeout > 0).then(|| Duration::from_millis(timeout as u64));
    let n = n.max(0) as usize;
    Reply::Integer(repl.wait_for(seq, n, timeout).await as i64)
}

/// `MERIDIAN DIGEST | APPLIED | LAG`.
pub(super) async fn meridian(ctx: &Context, args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_uppercase();
    match (sub.as_slice(), args.len()) {
        (b"DIGEST", 2) => {
            let engine = ctx.engine.clone();
            match tokio::task::spawn_blocking(move || engine.digest()).await {
                Ok(Ok((keys, digest))) => Reply::bulk(format!("{keys}:{digest:016x}")),
                Ok(Err(e)) => Reply::error(format!("ERR {e}")),
                Err(e) => Reply::error(format!("ERR {e}")),
            }
        }
        (b"APPLIED", 2) => Reply::bulk(ctx.engine.applied().to_string()),
        (b"LAG", 2) => {
            let mut out = String::new();
            if let Some(repl) = &ctx.replication {
                for lag in repl.lag() {
                    let _ = writeln!(
                        out,
                        "{} applied={} known={} seconds_behind={:.3}",
                        lag.origin, lag.applied, lag.known, lag.seconds_behind
                    );
                }
            }
            Reply::bulk(out)
        }
        (b"DIGEST" | b"APPLIED" | b"LAG", _) => Reply::error(format!(
            "ERR wrong number of arguments for 'meridian|{}' command",
            String::from_utf8_lossy(&sub).to_lowercase()
        )),
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try MERIDIAN DIGEST, MERIDIAN APPLIED or MERIDIAN LAG.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// Replication's part of `/metrics`: totals, each peer's link and each origin's lag.
pub(super) fn render_metrics(out: &mut String, ctx: &Context) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = ctx.engine.stats();
    let (log_start, removed) = ctx.engine.log_start();
    let totals = [
        (
            "meridian_changes_applied_remote_total",
            "Changes of other datacenters applied here.",
            "counter",
            stats.applied_remote.load(Relaxed),
        ),
        (
            "meridian_changes_duplicate_total",
            "Changes received again and skipped.",
            "counter",
            stats.duplicates.load(Relaxed),
        ),
        (
            "meridian_conflicts_lww_lost_total",
            "Remote writes that lost last-writer-wins to a newer write of the key.",
            "counter",
            stats.conflicts.load(Relaxed),
        ),
        (
            "meridian_clock_drift_refusals_total",
            "Remote timestamps too far ahead of this clock.",
            "counter",
            stats.clock_drift_refusals.load(Relaxed),
        ),
        (
            "meridian_log_start",
            "The first record the replication log keeps.",
            "gauge",
            log_start,
        ),
        (
            "meridian_log_segments_removed_total",
            "Log segments removed by retention.",
            "counter",
            removed,
        ),
    ];
    for (name, help, kind, value) in totals {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    let Some(repl) = &ctx.replication else {
        return;
    };
    let peers = repl.peers();
    type PeerValue = fn(&crate::replication::PeerStatus) -> f64;
    let per_peer: [(&str, &str, &str, PeerValue); 10] = [
        (
            "meridian_peer_up",
            "Whether the link to the peer is up.",
            "gauge",
            |p| f64::from(u8::from(p.connected())),
        ),
        (
            "meridian_peer_rtt_seconds",
            "Round-trip time of the link.",
            "gauge",
            |p| p.path().map_or(0.0, |(rtt, _)| rtt.as_secs_f64()),
        ),
        (
            "meridian_peer_lost_packets_total",
            "QUIC packets lost on the link.",
            "counter",
            |p| p.path().map_or(0.0, |(_, lost)| lost as f64),
        ),
        (
            "meridian_peer_shipped_changes_total",
            "Changes shipped to the peer.",
            "counter",
            |p| p.shipped.load(Relaxed) as f64,
        ),
        (
            "meridian_peer_shipped_bytes_total",
            "Bytes shipped to the peer.",
            "counter",
            |p| p.shipped_bytes.load(Relaxed) as f64,
        ),
        (
            "meridian_peer_received_changes_total",
            "Changes received from the peer and applied.",
            "counter",
            |p| p.received.load(Relaxed) as f64,
        ),
        (
            "meridian_peer_buffered_changes",
            "Changes from the peer waiting for their predecessors or dependencies.",
            "gauge",
            |p| p.buffered.load(Relaxed) as f64,
        ),
        (
            "meridian_peer_held_for_deps_total",
            "Changes from the peer that arrived before their dependencies.",
            "counter",
            |p| p.held_for_deps.load(Relaxed) as f64,
        ),
        (
            "meridian_peer_snapshots_sent_total",
            "Snapshots sent to the peer.",
            "counter",
            |p| p.snapshots_sent.load(Relaxed) as f64,
        ),
        (
            "meridian_peer_snapshots_installed_total",
            "Snapshots received from the peer and installed.",
            "counter",
            |p| p.snapshots_installed.load(Relaxed) as f64,
        ),
    ];
    for (name, help, kind, value) in per_peer {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for p in &peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", p.dc, value(p));
        }
    }
    let lags = repl.lag();
    let _ = write!(
        out,
        "# HELP meridian_replication_lag_changes Changes of the origin known elsewhere and not yet applied here.\n\
         # TYPE meridian_replication_lag_changes gauge\n"
    );
    for lag in &lags {
        let _ = writeln!(
            out,
            "meridian_replication_lag_changes{{origin=\"{}\"}} {}",
            lag.origin,
            lag.known.saturating_sub(lag.applied)
        );
    }
    let _ = write!(
        out,
        "# HELP meridian_replication_lag_seconds Age of the newest applied change of the origin, while behind.\n\
         # TYPE meridian_replication_lag_seconds gauge\n"
    );
    for lag in &lags {
        let _ = writeln!(
            out,
            "meridian_replication_lag_seconds{{origin=\"{}\"}} {:.3}",
            lag.origin, lag.seconds_behind
        );
    }
}
