//! Making and keeping the links: the datacenter listed first in the topology dials,
//! the other accepts; a link that drops is dialled again with backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meridian_topology::DcIdx;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Replication, receiver, shipper};
use crate::link::{self, Identity, Link};

/// First and longest wait between dial attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

pub(super) fn spawn(repl: Arc<Replication>, stopped: watch::Receiver<bool>) {
    let me = repl.config.me;
    let topology = repl.topology();
    for i in 0..topology.datacenters.len() {
        let peer = DcIdx(i as u8);
        if peer == me || !topology.router.may_link(me, peer) {
            continue;
        }
        repl.peer_status(repl.id(peer));
        if me.get() < peer.get() {
            let span = tracing::info_span!("dial", dc = %repl.dc(), peer = %repl.id(peer));
            tokio::spawn(dial_loop(repl.clone(), peer, stopped.clone()).instrument(span));
        }
    }
    let span = tracing::info_span!("accept", dc = %repl.dc());
    tokio::spawn(accept_loop(repl, stopped).instrument(span));
}

fn identity(repl: &Replication) -> Identity {
    Identity {
        cluster: repl.topology().cluster_name.clone(),
        dc: repl.dc().to_owned(),
        applied: repl.engine.applied(),
    }
}

fn address(repl: &Replication, peer: DcIdx) -> Option<SocketAddr> {
    let id = repl.id(peer);
    if let Some(addr) = repl.config.dial.get(id) {
        return Some(*addr);
    }
    let endpoint = &repl.topology().dc(peer).peer;
    use std::net::ToSocketAddrs as _;
    (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .ok()?
        .next()
}

async fn dial_loop(repl: Arc<Replication>, peer: DcIdx, mut stopped: watch::Receiver<bool>) {
    let mut backoff = BACKOFF.0;
    let mut failures = 0u32;
    loop {
        if *stopped.borrow() {
            return;
        }
        let attempt = async {
            let addr = address(&repl, peer)
                .ok_or_else(|| format!("cannot resolve the peer address of {}", repl.id(peer)))?;
            link::connect(&repl.endpoint, addr, repl.id(peer), &identity(&repl))
                .await
                .map_err(|e| e.to_string())
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = stopped.changed() => return,
        };
        match result {
            Ok(link) => {
                if failures > 0 {
                    tracing::info!(failures, "linked again");
                }
                failures = 0;
                backoff = BACKOFF.0;
                run(repl.clone(), link, stopped.clone()).await;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot link; retrying");
                } else {
                    tracing::debug!(error = %e, failures, "cannot link; retrying");
                }
                failures += 1;
                repl.peer_status(repl.id(peer)).set_error(&e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

async fn accept_loop(repl: Arc<Replication>, mut stopped: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = repl.endpoint.accept() => i,
            _ = stopped.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let repl = repl.clone();
        let stopped = stopped.clone();
        tokio::spawn(
            async move {
                match link::accept(incoming, &identity(&repl), repl.topology()).await {
                    Ok(link) => run(repl, link, stopped).await,
                    Err(e) => tracing::warn!(error = %e, "refused a link"),
                }
            }
            .in_current_span(),
        );
    }
}

/// Runs an established link until it fails or the proxy stops.
async fn run(repl: Arc<Replication>, link: Link, mut stopped: watch::Receiver<bool>) {
    let Link { peer, connection } = link;
    let Some(idx) = repl.topology().index_of(&peer.dc) else {
        return;
    };
    let conn_id = repl.next_conn.fetch_add(1, Ordering::Relaxed);
    let status = repl.peer_status(&peer.dc);
    if let Some(old) = status.replace_connection(conn_id, connection.clone()) {
        old.close(0u32.into(), b"replaced by a newer connection");
    }
    repl.acknowledged(&peer.dc, &peer.applied);
    repl.engine
        .peer_has_own_changes(peer.applied.get(repl.dc()));
    repl.set_live(idx, true);
    tracing::info!(peer = %peer.dc, rtt_ms = connection.rtt().as_millis() as u64, "linked");
    let span = tracing::info_span!("link", dc = %repl.dc(), peer = %peer.dc);
    let ship = shipper::run(repl.clone(), idx, connection.clone()).instrument(span.clone());
    let receive = receiver::run(repl.clone(), idx, connection.clone()).instrument(span);
    let why = tokio::select! {
        r = ship => r.err().unwrap_or_else(|| "shipper ended".into()),
        r = receive => r.err().unwrap_or_else(|| "peer closed its stream".into()),
        e = connection.closed() => e.to_string(),
        _ = stopped.changed() => "shutting down".into(),
    };
    connection.close(0u32.into(), why.as_bytes());
    if status.clear_connection(conn_id) {
        repl.set_live(idx, false);
        status.set_error(&why);
        tracing::warn!(peer = %peer.dc, reason = %why, "link down");
    }
}
