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
    let mut families = scalars(ctx);
    families.extend(peers(ctx));
    families.extend(origins(ctx));
    families.extend(replicas(ctx));
    families.extend(ctx.commands.families());
    if let Some(repl) = &ctx.replication {
        families.push(repl.forward_stats().latency.family(
            "meridian_forward_seconds",
            "Time from sending a forwarded request to its reply.",
        ));
        families.push(repl.read_stats().waits.family(
            "meridian_session_read_wait_seconds",
            "Time a read waited for this datacenter to catch up with its session's token.",
        ));
    }
    families.push(ctx.engine.backend_stats().family(
        "meridian_backend_commit_seconds",
        "Time of one backend transaction (a batch of changes).",
    ));
    families
}

/// A single-valued family: name, help, kind, INFO section and field, and how to
/// read its value.
type ScalarRow = (
    &'static str,
    &'static str,
    Kind,
    Option<(Section, &'static str)>,
    fn(&Context) -> f64,
);

fn stat(ctx: &Context, counter: fn(&crate::engine::Stats) -> &AtomicU64) -> f64 {
    load(counter(ctx.engine.stats()))
}

/// The proxy's and engine's single values, in the order INFO shows them.
const SCALARS: [ScalarRow; 48] = [
    (
        "meridian_connected_clients",
        "Client connections open now.",
        Kind::Gauge,
        Some((Section::Clients, "connected_clients")),
        |c| c.clients.load(Ordering::Relaxed) as f64,
    ),
    (
        "meridian_connections_total",
        "Client connections accepted.",
        Kind::Counter,
        Some((Section::Stats, "total_connections_received")),
        |c| load(&c.total_connections),
    ),
    (
        "meridian_commands_processed_total",
        "Commands received from clients.",
        Kind::Counter,
        Some((Section::Stats, "total_commands_processed")),
        |c| load(&c.total_commands),
    ),
    (
        "meridian_client_output_limit_disconnections_total",
        "Client connections closed for going over the output buffer limit.",
        Kind::Counter,
        Some((Section::Stats, "client_output_buffer_limit_disconnections")),
        |c| load(&c.output_limit_disconnections),
    ),
    (
        "meridian_changes_committed_total",
        "Changes this datacenter wrote to its log.",
        Kind::Counter,
        Some((Section::Stats, "changes_committed")),
        |c| stat(c, |s| &s.changes),
    ),
    (
        "meridian_write_batches_total",
        "Writer batches (one log append each).",
        Kind::Counter,
        Some((Section::Stats, "write_batches")),
        |c| stat(c, |s| &s.batches),
    ),
    (
        "meridian_log_bytes_total",
        "Bytes appended to the replication log.",
        Kind::Counter,
        Some((Section::Stats, "log_bytes_appended")),
        |c| stat(c, |s| &s.log_bytes),
    ),
    (
        "meridian_log_syncs_total",
        "Syncs of the replication log to disk started.",
        Kind::Counter,
        Some((Section::Stats, "log_syncs")),
        |c| stat(c, |s| &s.log_syncs),
    ),
    (
        "meridian_changes_replayed_total",
        "Changes replayed from the log at start-up.",
        Kind::Counter,
        Some((Section::Stats, "changes_replayed_at_start")),
        |c| stat(c, |s| &s.replayed),
    ),
    (
        "meridian_uptime_seconds",
        "Seconds since the proxy started.",
        Kind::Gauge,
        None,
        |c| c.started.elapsed().as_secs() as f64,
    ),
    (
        "meridian_uncommitted_keys",
        "Keys logged but not yet durably in the backend (served from memory meanwhile).",
        Kind::Gauge,
        Some((Section::Replication, "uncommitted_keys")),
        |c| c.engine.uncommitted() as f64,
    ),
    (
        "meridian_connected_peers",
        "Peers whose link is up.",
        Kind::Gauge,
        Some((Section::Replication, "connected_peers")),
        |c| c.peers().iter().filter(|p| p.connected()).count() as f64,
    ),
    (
        "meridian_changes_applied_remote_total",
        "Changes of other datacenters applied here.",
        Kind::Counter,
        Some((Section::Replication, "changes_applied_remote")),
        |c| stat(c, |s| &s.applied_remote),
    ),
    (
        "meridian_changes_duplicate_total",
        "Changes received again and skipped.",
        Kind::Counter,
        Some((Section::Replication, "changes_duplicate_skipped")),
        |c| stat(c, |s| &s.duplicates),
    ),
    (
        "meridian_conflicts_total",
        "Writes last-writer-wins discarded here without their writer having seen the write that beat them (MERIDIAN CONFLICTS lists them).",
        Kind::Counter,
        Some((Section::Replication, "conflicts")),
        |c| stat(c, |s| &s.conflicts),
    ),
    (
        "meridian_expired_keys_total",
        "Keys this datacenter deleted because their TTL had passed.",
        Kind::Counter,
        Some((Section::Stats, "expired_keys")),
        |c| stat(c, |s| &s.expired_keys),
    ),
    (
        "meridian_edits_written_total",
        "Ops of this datacenter's changes written to the log and the wire as edits of the state before (a member added to a big set, a field of a big hash).",
        Kind::Counter,
        Some((Section::Replication, "edits_written")),
        |c| stat(c, |s| &s.edits_written),
    ),
    (
        "meridian_edits_unbuildable_total",
        "Changes of other datacenters held because an edit in them edits a state this datacenter does not hold; each asks its peer for a snapshot.",
        Kind::Counter,
        Some((Section::Replication, "edits_unbuildable")),
        |c| stat(c, |s| &s.edits_unbuildable),
    ),
    (
        "meridian_changes_refused_by_backend_total",
        "Logged changes the backend refused to store (each logged as an error).",
        Kind::Counter,
        Some((Section::Replication, "changes_refused_by_backend")),
        |c| stat(c, |s| &s.refused_by_backend),
    ),
    (
        "meridian_clock_drift_refusals_total",
        "Remote timestamps too far ahead of this clock.",
        Kind::Counter,
        Some((Section::Replication, "clock_drift_refusals")),
        |c| stat(c, |s| &s.clock_drift_refusals),
    ),
    (
        "meridian_session_writes_overtaken_total",
        "Forwarded writes refused because a later connection of their session wrote here first: their client had given them up.",
        Kind::Counter,
        Some((Section::Replication, "session_writes_overtaken")),
        |c| stat(c, |s| &s.session_writes_overtaken),
    ),
    (
        "meridian_changes_held_for_deps_total",
        "Changes that arrived before their dependencies and were held.",
        Kind::Counter,
        Some((Section::Replication, "changes_held_for_deps")),
        |c| c.peers().iter().map(|p| load(&p.held_for_deps)).sum(),
    ),
    (
        "meridian_log_start",
        "The first record the replication log keeps.",
        Kind::Gauge,
        Some((Section::Replication, "log_start")),
        |c| c.engine.log_start().0 as f64,
    ),
    (
        "meridian_log_segments_removed_total",
        "Log segments removed by retention.",
        Kind::Counter,
        Some((Section::Replication, "log_segments_removed")),
        |c| c.engine.log_start().1 as f64,
    ),
    (
        "meridian_home_epoch",
        "The home agreement's epoch as applied here (0 without next-in-line failover).",
        Kind::Gauge,
        Some((Section::Replication, "home_epoch")),
        |c| agreement(c).map_or(0.0, |(epoch, _)| epoch as f64),
    ),
    (
        "meridian_home_agreement_leader",
        "The home agreement's leader, by topology index (-1: none known or no agreement).",
        Kind::Gauge,
        Some((Section::Replication, "home_agreement_leader")),
        |c| {
            agreement(c)
                .and_then(|(_, leader)| leader)
                .map_or(-1.0, |l| l as f64)
        },
    ),
    (
        "meridian_writes_fenced_total",
        "Writes refused because this datacenter had not heard from a majority within its home lease.",
        Kind::Counter,
        Some((Section::Replication, "writes_fenced")),
        |c| failover(c, |f| &f.fenced),
    ),
    (
        "meridian_takeovers_total",
        "Datacenters seen taken out of service (their users' writes went to the next in line).",
        Kind::Counter,
        Some((Section::Replication, "takeovers")),
        |c| failover(c, |f| &f.takeovers),
    ),
    (
        "meridian_failbacks_total",
        "Datacenters seen back in service after an outage.",
        Kind::Counter,
        Some((Section::Replication, "failbacks")),
        |c| failover(c, |f| &f.failbacks),
    ),
    (
        "meridian_home_writes_local_total",
        "Writes executed here as their user's home for a client of this datacenter (served at home).",
        Kind::Counter,
        Some((Section::Replication, "home_writes_local")),
        |c| homes(c, |h| &h.writes_local),
    ),
    (
        "meridian_home_writes_forwarded_total",
        "Writes executed here as their user's home for a client of another datacenter.",
        Kind::Counter,
        Some((Section::Replication, "home_writes_forwarded")),
        |c| homes(c, |h| &h.writes_forwarded),
    ),
    (
        "meridian_home_moves_total",
        "Users this datacenter moved to another home (following their writes, or by hand).",
        Kind::Counter,
        Some((Section::Replication, "home_moves")),
        |c| homes(c, |h| &h.moves),
    ),
    (
        "meridian_home_moves_failed_total",
        "Moves the follow rule asked for that could not be made (the target out of service or reach).",
        Kind::Counter,
        Some((Section::Replication, "home_moves_failed")),
        |c| homes(c, |h| &h.moves_failed),
    ),
    (
        "meridian_home_writes_passed_on_total",
        "Writes that reached this datacenter after their user moved away, passed on to the new home.",
        Kind::Counter,
        Some((Section::Replication, "home_writes_passed_on")),
        |c| homes(c, |h| &h.passed_on),
    ),
    (
        "meridian_home_placements",
        "Users whose home has moved from its default (placement records held here).",
        Kind::Gauge,
        Some((Section::Replication, "home_placements")),
        |c| c.engine.placements().len() as f64,
    ),
    (
        "meridian_home_users_moved_here",
        "Users whose home moved to this datacenter.",
        Kind::Gauge,
        Some((Section::Replication, "home_users_moved_here")),
        |c| {
            let homed = c.engine.placements().homed();
            homed.get(c.engine.dc()).copied().unwrap_or(0) as f64
        },
    ),
    (
        "meridian_forward_requests_total",
        "Requests (groups of writes of one connection) sent toward their users' homes.",
        Kind::Counter,
        Some((Section::Replication, "forward_requests")),
        |c| forward(c, |f| &f.requests),
    ),
    (
        "meridian_forward_in_flight",
        "Forwarded requests waiting for their home's reply now.",
        Kind::Gauge,
        Some((Section::Replication, "forward_in_flight")),
        |c| forward(c, |f| &f.in_flight),
    ),
    (
        "meridian_forward_failed_total",
        "Forwarded requests that got no reply (the client was told the outcome is unknown).",
        Kind::Counter,
        Some((Section::Replication, "forward_failed")),
        |c| forward(c, |f| &f.failed),
    ),
    (
        "meridian_forward_served_writes_total",
        "Writes other datacenters forwarded here, executed as their home.",
        Kind::Counter,
        Some((Section::Replication, "forward_served_writes")),
        |c| forward(c, |f| &f.served),
    ),
    (
        "meridian_forward_relayed_total",
        "Forwarded requests passed on toward a home elsewhere.",
        Kind::Counter,
        Some((Section::Replication, "forward_relayed")),
        |c| forward(c, |f| &f.relayed),
    ),
    (
        "meridian_forward_duplicates_total",
        "Forwarded requests received again and answered from memory instead of run twice.",
        Kind::Counter,
        Some((Section::Replication, "forward_duplicates_suppressed")),
        |c| forward(c, |f| &f.duplicates),
    ),
    (
        "meridian_forward_remembered",
        "Forwarded requests remembered for at-most-once execution.",
        Kind::Gauge,
        Some((Section::Replication, "forward_remembered")),
        |c| {
            c.replication
                .as_ref()
                .map_or(0.0, |r| r.forward_window().0 as f64)
        },
    ),
    (
        "meridian_session_reads_local_total",
        "Reads served here at once: this datacenter had applied the session's token.",
        Kind::Counter,
        Some((Section::Replication, "session_reads_local")),
        |c| reads(c, |r| &r.local),
    ),
    (
        "meridian_session_reads_waited_total",
        "Reads served here after waiting for this datacenter to catch up with the token.",
        Kind::Counter,
        Some((Section::Replication, "session_reads_waited")),
        |c| reads(c, |r| &r.waited),
    ),
    (
        "meridian_session_reads_forwarded_total",
        "Reads sent to a datacenter that had applied the session's token.",
        Kind::Counter,
        Some((Section::Replication, "session_reads_forwarded")),
        |c| reads(c, |r| &r.forwarded),
    ),
    (
        "meridian_session_reads_refused_total",
        "Reads refused as stale (on_stale = error, or nowhere to send them).",
        Kind::Counter,
        Some((Section::Replication, "session_reads_refused")),
        |c| reads(c, |r| &r.refused),
    ),
    (
        "meridian_session_token_entries_mean",
        "Mean number of entries (origins) of the session tokens reads carried.",
        Kind::Gauge,
        None,
        |c| {
            let tokens = reads(c, |r| &r.tokens);
            if tokens == 0.0 {
                0.0
            } else {
                reads(c, |r| &r.token_entries) / tokens
            }
        },
    ),
];

fn reads(ctx: &Context, counter: fn(&crate::replication::ReadStats) -> &AtomicU64) -> f64 {
    ctx.replication
        .as_ref()
        .map_or(0.0, |r| load(counter(r.read_stats())))
}

fn failover(ctx: &Context, counter: fn(&crate::replication::FailoverStats) -> &AtomicU64) -> f64 {
    ctx.replication
        .as_ref()
        .map_or(0.0, |r| load(counter(r.failover_stats())))
}

/// The agreed epoch and the agreement's leader.
fn agreement(ctx: &Context) -> Option<(u64, Option<usize>)> {
    let status = ctx.replication.as_ref()?.agreement_status()?;
    Some((status.epoch, status.leader))
}

fn homes(ctx: &Context, counter: fn(&crate::replication::HomeStats) -> &AtomicU64) -> f64 {
    ctx.replication
        .as_ref()
        .map_or(0.0, |r| load(counter(r.home_stats())))
}

fn forward(ctx: &Context, counter: fn(&crate::replication::ForwardStats) -> &AtomicU64) -> f64 {
    ctx.replication
        .as_ref()
        .map_or(0.0, |r| load(counter(r.forward_stats())))
}

fn scalars(ctx: &Context) -> Vec<Family> {
    SCALARS
        .into_iter()
        .map(|(name, help, kind, info, value)| {
            let family = Family::single(name, help, kind, value(ctx));
            match info {
                Some((section, field)) => family.in_info(section, field, InfoFormat::Integer),
                None => family,
            }
        })
        .collect()
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
const PEER_FAMILIES: [PeerRow; 14] = [
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
        "meridian_peer_relayed_datagrams_total",
        "Datagrams of other datacenters' changes passed on to the peer as they arrived, before they were applied here.",
        Kind::Counter,
        Some(("relayed", InfoFormat::Integer)),
        |p| load(&p.relayed),
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
    (
        "meridian_peer_forwarded_writes_total",
        "Writes forwarded to the peer: to their user's home, or through it toward the home.",
        Kind::Counter,
        Some(("forwarded_writes", InfoFormat::Integer)),
        |p| load(&p.forwarded),
    ),
    (
        "meridian_peer_home_unreachable_total",
        "Writes refused at once (TRYAGAIN) because the link toward their home, through the peer, was down.",
        Kind::Counter,
        Some(("home_unreachable_refusals", InfoFormat::Integer)),
        |p| load(&p.home_unreachable),
    ),
];

fn peers(ctx: &Context) -> Vec<Family> {
    let peers = ctx.peers();
    let mut families: Vec<Family> = PEER_FAMILIES
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
        .collect();
    families.extend(PEER_STAGES.into_iter().map(|(name, help, field, stage)| {
        Family::summaries(
            name,
            help,
            "peer",
            peers.iter().map(|p| (p.dc.clone(), stage(p).quantiles())),
        )
        .in_info(Section::Peer, field, InfoFormat::Millis)
    }));
    families
}

/// A per-peer stage of replication: how long after a change was made it got there.
type PeerStage = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PeerStatus) -> &crate::metrics::Latency,
);

/// The stages a change passes, each a summary per peer and an INFO field
/// (`p50/p99/max` in milliseconds): a tail shows at the first stage it appears in.
const PEER_STAGES: [PeerStage; 3] = [
    (
        "meridian_peer_ship_lag_seconds",
        "How long after they were made this datacenter's changes were shipped to the peer (as logged, not in catch-up).",
        "ship_lag_ms",
        |p| &p.ship_lag,
    ),
    (
        "meridian_peer_arrival_lag_seconds",
        "How long after they were made the peer's changes arrived here (the clocks' difference included).",
        "arrival_lag_ms",
        |p| &p.arrival_lag,
    ),
    (
        "meridian_peer_applied_lag_seconds",
        "How long after they were made the peer's changes were applied here (the clocks' difference included).",
        "applied_lag_ms",
        |p| &p.applied_lag,
    ),
];

/// The Redis backend's read replicas: reads each served, skipped (behind the
/// session), failed, and how far behind this datacenter each last said it was.
fn replicas(ctx: &Context) -> Vec<Family> {
    let stats = ctx.engine.replica_stats();
    if stats.is_empty() {
        return Vec::new();
    }
    type Pick = fn(&crate::engine::ReplicaStats) -> f64;
    let per = |name, help, kind, field: &'static str, format, value: Pick| {
        Family::labelled(
            name,
            help,
            kind,
            "replica",
            stats
                .iter()
                .enumerate()
                .map(|(i, s)| (i.to_string(), value(s))),
        )
        .in_info(Section::Replica, field, format)
    };
    use InfoFormat::{Integer, Seconds};
    vec![
        per(
            "meridian_replica_reads_total",
            "Read pipelines the replica served.",
            Kind::Counter,
            "reads",
            Integer,
            |s| s.reads as f64,
        ),
        per(
            "meridian_replica_skips_total",
            "Reads the replica could not serve: it had not applied the session's token.",
            Kind::Counter,
            "skips",
            Integer,
            |s| s.skips as f64,
        ),
        per(
            "meridian_replica_errors_total",
            "Reads that failed on the replica or got no answer in time (it is then left alone until a health check answers).",
            Kind::Counter,
            "errors",
            Integer,
            |s| s.errors as f64,
        ),
        per(
            "meridian_replica_up",
            "Whether reads go to the replica: 1 when its health check answers and no read failed on it since.",
            Kind::Gauge,
            "up",
            Integer,
            |s| f64::from(u8::from(s.up)),
        ),
        per(
            "meridian_replica_behind_changes",
            "Changes this datacenter has applied that the replica had not, when it last said.",
            Kind::Gauge,
            "changes_behind",
            Integer,
            |s| s.behind_changes as f64,
        ),
        per(
            "meridian_replica_behind_seconds",
            "While the replica is behind, the age of the newest commit it had.",
            Kind::Gauge,
            "seconds_behind",
            Seconds,
            |s| s.behind_seconds,
        ),
    ]
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
