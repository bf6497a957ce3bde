//! The one place that collects what a proxy measures into the registry's families
//! (see [`crate::metrics`]): `/metrics`, INFO and `/status` all render these.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Context;
use crate::metrics::{Family, InfoFormat, Kind, Section};
use crate::replication::PeerStatus;

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// Everything measured, in the order INFO shows it.
pub(super) fn collect(ctx: &Context) -> Vec<Family> {
    let mut families = server(ctx);
    families.extend(engine(ctx));
    families.extend(peers(ctx));
    families.extend(origins(ctx));
    families.extend(ctx.commands.families());
    families.push(ctx.engine.backend_stats().family());
    families
}

fn server(ctx: &Context) -> Vec<Family> {
    use InfoFormat::Integer;
    let stats = ctx.engine.stats();
    vec![
        Family::single(
            "meridian_connected_clients",
            "Client connections open now.",
            Kind::Gauge,
            ctx.clients.load(Ordering::Relaxed) as f64,
        )
        .in_info(Section::Clients, "connected_clients", Integer),
        Family::single(
            "meridian_connections_total",
            "Client connections accepted.",
            Kind::Counter,
            load(&ctx.total_connections),
        )
        .in_info(Section::Stats, "total_connections_received", Integer),
        Family::single(
            "meridian_commands_processed_total",
            "Commands received from clients.",
            Kind::Counter,
            load(&ctx.total_commands),
        )
        .in_info(Section::Stats, "total_commands_processed", Integer),
        Family::single(
            "meridian_client_output_limit_disconnections_total",
            "Client connections closed for going over the output buffer limit.",
            Kind::Counter,
            load(&ctx.output_limit_disconnections),
        )
        .in_info(
            Section::Stats,
            "client_output_buffer_limit_disconnections",
            Integer,
        ),
        Family::single(
            "meridian_changes_committed_total",
            "Changes this datacenter wrote to its log.",
            Kind::Counter,
            load(&stats.changes),
        )
        .in_info(Section::Stats, "changes_committed", Integer),
        Family::single(
            "meridian_write_batches_total",
            "Writer batches (one log append each).",
            Kind::Counter,
            load(&stats.batches),
        )
        .in_info(Section::Stats, "write_batches", Integer),
        Family::single(
            "meridian_log_bytes_total",
            "Bytes appended to the replication log.",
            Kind::Counter,
            load(&stats.log_bytes),
        )
        .in_info(Section::Stats, "log_bytes_appended", Integer),
        Family::single(
            "meridian_changes_replayed_total",
            "Changes replayed from the log at start-up.",
            Kind::Counter,
            load(&stats.replayed),
        )
        .in_info(Section::Stats, "changes_replayed_at_start", Integer),
        Family::single(
            "meridian_uptime_seconds",
            "Seconds since the proxy started.",
            Kind::Gauge,
            ctx.started.elapsed().as_secs() as f64,
        ),
    ]
}

fn engine(ctx: &Context) -> Vec<Family> {
    use InfoFormat::Integer;
    let stats = ctx.engine.stats();
    let peers = ctx.peers();
    let (log_start, removed) = ctx.engine.log_start();
    let one = |name, help, kind, value, field| {
        Family::single(name, help, kind, value).in_info(Section::Replication, field, Integer)
    };
    vec![
        one(
            "meridian_uncommitted_keys",
            "Keys logged but not yet durably in the backend (served from memory meanwhile).",
            Kind::Gauge,
            ctx.engine.uncommitted() as f64,
            "uncommitted_keys",
        ),
        one(
            "meridian_connected_peers",
            "Peers whose link is up.",
            Kind::Gauge,
            peers.iter().filter(|p| p.connected()).count() as f64,
            "connected_peers",
        ),
        one(
            "meridian_changes_applied_remote_total",
            "Changes of other datacenters applied here.",
            Kind::Counter,
            load(&stats.applied_remote),
            "changes_applied_remote",
        ),
        one(
            "meridian_changes_duplicate_total",
            "Changes received again and skipped.",
            Kind::Counter,
            load(&stats.duplicates),
            "changes_duplicate_skipped",
        ),
        one(
            "meridian_conflicts_lww_lost_total",
            "Remote writes that lost last-writer-wins to a newer write of the key.",
            Kind::Counter,
            load(&stats.conflicts),
            "conflicts_lww_lost",
        ),
        one(
            "meridian_changes_refused_by_backend_total",
            "Logged changes the backend refused to store (each logged as an error).",
            Kind::Counter,
            load(&stats.refused_by_backend),
            "changes_refused_by_backend",
        ),
        one(
            "meridian_clock_drift_refusals_total",
            "Remote timestamps too far ahead of this clock.",
            Kind::Counter,
            load(&stats.clock_drift_refusals),
            "clock_drift_refusals",
        ),
        one(
            "meridian_changes_held_for_deps_total",
            "Changes that arrived before their dependencies and were held.",
            Kind::Counter,
            peers.iter().map(|p| load(&p.held_for_deps)).sum(),
            "changes_held_for_deps",
        ),
        one(
            "meridian_log_start",
            "The first record the replication log keeps.",
            Kind::Gauge,
            log_start as f64,
            "log_start",
        ),
        one(
            "meridian_log_segments_removed_total",
            "Log segments removed by retention.",
            Kind::Counter,
            removed as f64,
            "log_segments_removed",
        ),
    ]
}

/// A per-peer family: `value` of each peer.
type PeerValue = fn(&PeerStatus) -> f64;
/// A per-peer family's name, help, kind, INFO field and value.
type PeerRow = (
    &'static str,
    &'static str,
    Kind,
    Option<(&'static str, InfoFormat)>,
    PeerValue,
);

/// The per-peer families, in the order INFO shows their fields.
const PEER_FAMILIES: [PeerRow; 11] = [
    (
        "meridian_peer_up",
        "Whether the link to the peer is up.",
        Kind::Gauge,
        Some(("state", InfoFormat::UpDown)),
        |p| f64::from(u8::from(p.connected())),
    ),
    (
        "meridian_peer_rtt_seconds",
        "Round-trip time of the link.",
        Kind::Gauge,
        Some(("rtt_ms", InfoFormat::Millis)),
        |p| p.path().map_or(0.0, |(rtt, _)| rtt.as_secs_f64()),
    ),
    (
        "meridian_peer_lost_packets_total",
        "QUIC packets lost on the link.",
        Kind::Counter,
        Some(("lost_packets", InfoFormat::Integer)),
        |p| p.path().map_or(0.0, |(_, lost)| lost as f64),
    ),
    (
        "meridian_peer_shipped_changes_total",
        "Changes shipped to the peer.",
        Kind::Counter,
        Some(("shipped", InfoFormat::Integer)),
        |p| load(&p.shipped),
    ),
    (
        "meridian_peer_shipped_bytes_total",
        "Bytes shipped to the peer.",
        Kind::Counter,
        Some(("shipped_bytes", InfoFormat::Integer)),
        |p| load(&p.shipped_bytes),
    ),
    (
        "meridian_peer_received_changes_total",
        "Changes received from the peer and applied.",
        Kind::Counter,
        Some(("received", InfoFormat::Integer)),
        |p| load(&p.received),
    ),
    (
        "meridian_peer_buffered_changes",
        "Changes from the peer waiting for their predecessors or dependencies.",
        Kind::Gauge,
        Some(("buffered", InfoFormat::Integer)),
        |p| load(&p.buffered),
    ),
    (
        "meridian_peer_shipper_restarts_total",
        "Times the shipper restarted from the peer's acknowledged position.",
        Kind::Counter,
        Some(("restarts", InfoFormat::Integer)),
        |p| load(&p.restarts),
    ),
    (
        "meridian_peer_snapshots_sent_total",
        "Snapshots sent to the peer.",
        Kind::Counter,
        Some(("snapshots_sent", InfoFormat::Integer)),
        |p| load(&p.snapshots_sent),
    ),
    (
        "meridian_peer_snapshots_installed_total",
        "Snapshots received from the peer and installed.",
        Kind::Counter,
        Some(("snapshots_installed", InfoFormat::Integer)),
        |p| load(&p.snapshots_installed),
    ),
    (
        "meridian_peer_held_for_deps_total",
        "Changes from the peer that arrived before their dependencies.",
        Kind::Counter,
        None,
        |p| load(&p.held_for_deps),
    ),
];

fn peers(ctx: &Context) -> Vec<Family> {
    let peers = ctx.peers();
    PEER_FAMILIES
        .into_iter()
        .map(|(name, help, kind, info, value)| {
            let family = Family::labelled(
                name,
                help,
                kind,
                "peer",
                peers.iter().map(|p| (p.dc.clone(), value(p))),
            );
            match info {
                Some((field, format)) => family.in_info(Section::Peer, field, format),
                None => family,
            }
        })
        .collect()
}

fn origins(ctx: &Context) -> Vec<Family> {
    use InfoFormat::{Integer, Seconds};
    let lags = ctx
        .replication
        .as_ref()
        .map(|r| r.lag())
        .unwrap_or_default();
    let per = |name, help, value: fn(&crate::replication::OriginLag) -> f64| {
        Family::labelled(
            name,
            help,
            Kind::Gauge,
            "origin",
            lags.iter().map(|l| (l.origin.clone(), value(l))),
        )
    };
    vec![
        per(
            "meridian_replication_applied",
            "The origin's newest change applied here.",
            |l| l.applied as f64,
        )
        .in_info(Section::Origin, "applied", Integer),
        per(
            "meridian_replication_known",
            "The origin's newest change known anywhere.",
            |l| l.known as f64,
        )
        .in_info(Section::Origin, "known", Integer),
        per(
            "meridian_replication_lag_changes",
            "Changes of the origin known elsewhere and not yet applied here.",
            |l| l.known.saturating_sub(l.applied) as f64,
        )
        .in_info(Section::Origin, "changes_behind", Integer),
        per(
            "meridian_replication_lag_seconds",
            "Age of the newest applied change of the origin, while behind.",
            |l| l.seconds_behind,
        )
        .in_info(Section::Origin, "seconds_behind", Seconds),
    ]
}
