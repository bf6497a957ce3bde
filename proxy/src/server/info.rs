//! INFO and COMMAND replies.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Context;
use crate::command::table::{COMMANDS, Kind};
use crate::resp::Reply;

/// Whether `INFO [section]` shows section `name`.
pub(super) fn shows(section: Option<&Bytes>, name: &str) -> bool {
    match section
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .as_deref()
    {
        None | Some("all" | "default" | "everything") => true,
        Some(wanted) => wanted == name,
    }
}

/// The INFO text: sections server, clients, stats, replication, keyspace.
pub(super) fn info(
    ctx: &Context,
    section: Option<&Bytes>,
    keys: Result<u64, crate::engine::BackendError>,
) -> String {
    let show = |name: &str| shows(section, name);
    let mut out = String::new();
    let stats = ctx.engine.stats();
    if show("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:7.0.0\r\nmeridian_version:{}\r\nredis_mode:standalone\r\ndatacenter:{}\r\n\
             process_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            ctx.config.dc,
            std::process::id(),
            ctx.addr.port(),
            ctx.started.elapsed().as_secs()
        );
    }
    if show("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            ctx.clients.load(Ordering::Relaxed),
            ctx.config.max_clients
        );
    }
    if show("stats") {
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nchanges_committed:{}\r\n\
             write_batches:{}\r\nlog_bytes_appended:{}\r\nchanges_replayed_at_start:{}\r\n\r\n",
            ctx.total_connections.load(Ordering::Relaxed),
            ctx.total_commands.load(Ordering::Relaxed),
            stats.changes.load(Ordering::Relaxed),
            stats.batches.load(Ordering::Relaxed),
            stats.log_bytes.load(Ordering::Relaxed),
            stats.replayed.load(Ordering::Relaxed),
        );
    }
    if show("replication") {
        replication(&mut out, ctx);
    }
    if show("keyspace") {
        out.push_str("# Keyspace\r\n");
        if let Ok(keys @ 1..) = keys {
            let _ = write!(out, "db0:keys={keys},expires=0,avg_ttl=0\r\n");
        }
        out.push_str("\r\n");
    }
    out
}

/// The replication section: this datacenter, each peer's link, each origin's lag.
fn replication(out: &mut String, ctx: &Context) {
    let applied = ctx.engine.applied();
    let stats = ctx.engine.stats();
    let peers = ctx
        .replication
        .as_ref()
        .map(|r| r.peers())
        .unwrap_or_default();
    let (log_start, segments_removed) = ctx.engine.log_start();
    let _ = write!(
        out,
        "# Replication\r\nrole:master\r\ndatacenter:{}\r\napplied:{applied}\r\nuncommitted_keys:{}\r\n\
         connected_peers:{}\r\nchanges_applied_remote:{}\r\nchanges_duplicate_skipped:{}\r\n\
         conflicts_lww_lost:{}\r\nclock_drift_refusals:{}\r\nchanges_held_for_deps:{}\r\n\
         log_start:{}\r\nlog_segments_removed:{}\r\n",
        ctx.config.dc,
        ctx.engine.uncommitted(),
        peers.iter().filter(|p| p.connected()).count(),
        stats.applied_remote.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
        stats.conflicts.load(Ordering::Relaxed),
        stats.clock_drift_refusals.load(Ordering::Relaxed),
        peers
            .iter()
            .map(|p| p.held_for_deps.load(Ordering::Relaxed))
            .sum::<u64>(),
        log_start,
        segments_removed,
    );
    for p in &peers {
        let (rtt, lost) = p.path().unwrap_or_default();
        let _ = write!(
            out,
            "peer_{}:state={},rtt_ms={:.1},lost_packets={lost},shipped={},shipped_bytes={},received={},buffered={},restarts={},snapshots_sent={},snapshots_installed={}\r\n",
            p.dc,
            if p.connected() { "up" } else { "down" },
            rtt.as_secs_f64() * 1000.0,
            p.shipped.load(Ordering::Relaxed),
            p.shipped_bytes.load(Ordering::Relaxed),
            p.received.load(Ordering::Relaxed),
            p.buffered.load(Ordering::Relaxed),
            p.restarts.load(Ordering::Relaxed),
            p.snapshots_sent.load(Ordering::Relaxed),
            p.snapshots_installed.load(Ordering::Relaxed),
        );
    }
    if let Some(repl) = &ctx.replication {
        for lag in repl.lag() {
            let _ = write!(
                out,
                "origin_{}:applied={},known={},changes_behind={},seconds_behind={:.3}\r\n",
                lag.origin,
                lag.applied,
                lag.known,
                lag.known - lag.applied,
                lag.seconds_behind
            );
        }
    }
    out.push_str("\r\n");
}

/// COMMAND, COMMAND COUNT, COMMAND INFO name..., COMMAND DOCS.
pub(super) fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|s| s.to_ascii_uppercase()) else {
        return Reply::Array(COMMANDS.iter().map(entry).collect());
    };
    match sub.as_slice() {
        b"COUNT" => Reply::Integer(COMMANDS.len() as i64),
        b"DOCS" => Reply::Array(vec![]),
        b"INFO" => Reply::Array(
            args[2..]
                .iter()
                .map(|name| crate::command::lookup(name).map_or(Reply::Null, entry))
                .collect(),
        ),
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

fn entry(spec: &crate::command::Spec) -> Reply {
    let flags = match spec.kind {
        Kind::Read(_) => vec!["readonly", "fast"],
        Kind::Write(_) => vec!["write", "denyoom"],
        Kind::Server => vec!["fast"],
    };
    Reply::Array(vec![
        Reply::bulk(spec.name.to_ascii_lowercase()),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Array(flags.into_iter().map(Reply::Simple).collect()),
        Reply::Integer(spec.first_key as i64),
        Reply::Integer(i64::from(spec.last_key)),
        Reply::Integer(spec.step as i64),
    ])
}
