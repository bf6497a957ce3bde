//! Making and keeping the links: the datacenter listed first in the topology dials,
//! the other accepts; a link that drops is dialled again with backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meridian_topology::DcIdx;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Replication, forward, receiver, shipper};
use crate::link::{self, Identity, Link};
use crate::workers::State;

/// First and longest time between the starts of dial attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

pub(super) fn spawn(repl: Arc<Replication>, stopped: watch::Receiver<bool>) {
    let me = repl.config.me;
    let topology = repl.topology();
    for i in 0..topology.datacenters.len() {
        let peer = DcIdx(i as u8);
        if peer == me || !topology.router.may_link(me, peer) {
            continue;
        }
        let status = repl.peer_status(repl.id(peer));
        if me.get() < peer.get() {
            let (dialer, stopped) = (repl.clone(), stopped.clone());
            repl.engine.workers().run_as(status.link.clone(), move |_| {
                dial_loop(dialer, peer, stopped)
            });
        }
    }
    let acceptor = repl.clone();
    repl.engine.workers().spawn("accept", None, move |worker| {
        worker.set(State::Idle);
        accept_loop(acceptor, stopped)
    });
}

fn identity(repl: &Replication) -> Identity {
    Identity {
        cluster: repl.topology().cluster_name.clone(),
        dc: repl.dc().to_owned(),
        applied: repl.engine.applied(),
        incarnation: repl.forwarding.incarnation(),
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

/// How long one dial attempt may take before a fresh one replaces it: the peer
/// timeout (at least 2 s), at most the handshake timeout. A handshake whose
/// first packets were lost (the link was cut when it began) retransmits them on
/// QUIC's doubling probe timeout, 1, 2, then 4 s apart; a fresh attempt after a
/// heal links in one round trip instead of waiting for the next probe.
fn dial_timeout(repl: &Replication) -> Duration {
    repl.topology()
        .replication
        .peer_timeout
        .max(Duration::from_secs(2))
        .min(link::HANDSHAKE_TIMEOUT)
}

async fn dial_loop(repl: Arc<Replication>, peer: DcIdx, mut stopped: watch::Receiver<bool>) {
    let mut backoff = BACKOFF.0;
    let mut failures = 0u32;
    // The round trip the last connection to the peer measured.
    let mut last_rtt = None;
    loop {
        if *stopped.borrow() {
            return;
        }
        let attempt = async {
            let addr = address(&repl, peer).ok_or_else(|| link::LinkError::Connection {
                peer: repl.id(peer).to_owned(),
                message: "cannot resolve its peer address".into(),
            })?;
            let me = identity(&repl);
            link::connect_with(
                &repl.endpoint,
                last_rtt.map(|rtt| repl.config.tls.resuming(rtt)),
                addr,
                repl.id(peer),
                &me,
                dial_timeout(&repl),
            )
            .await
        };
        let started = tokio::time::Instant::now();
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
                let connection = link.connection.clone();
                run(repl.clone(), link, stopped.clone()).await;
                last_rtt = Some(connection.rtt());
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot link; retrying");
                } else {
                    tracing::debug!(error = %e, failures, "cannot link; retrying");
                }
                failures += 1;
                let status = repl.peer_status(repl.id(peer));
                status.link.error(&e);
                status.set_error(&e.to_string());
            }
        }
        // Attempts start `backoff` apart: one that timed out has waited already,
        // and one more begins at once, so a peer back from a restart is reached by
        // the next handshake packet rather than after a pause.
        tokio::select! {
            _ = tokio::time::sleep_until(started + backoff) => {}
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
        let (task_repl, stopped) = (repl.clone(), stopped.clone());
        repl.engine.workers().track(async move {
            let repl = task_repl;
            let me = identity(&repl);
            match link::accept(incoming, &me, repl.topology(), link::HANDSHAKE_TIMEOUT).await {
                Ok(link) => {
                    let span = tracing::info_span!("link", dc = %repl.dc(), peer = %link.peer.dc);
                    run(repl, link, stopped).instrument(span).await;
                }
                Err(e) => tracing::warn!(error = %e, "refused a link"),
            }
        });
    }
}

/// Why a shipper or receiver ended: its error (counted against its worker), or
/// `ended` when it ended without one.
fn failed(
    result: Result<(), super::StreamError>,
    worker: &crate::workers::Worker,
    ended: &str,
) -> String {
    match result {
        Ok(()) => ended.to_owned(),
        Err(e) => {
            worker.error(&e);
            e.to_string()
        }
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
    if let Some(old) = status.replace_connection(conn_id, connection.clone(), peer.incarnation) {
        old.close(0u32.into(), b"replaced by a newer connection");
    }
    repl.acknowledged(&peer.dc, &peer.applied);
    repl.engine
        .peer_has_own_changes(peer.applied.get(repl.dc()));
    repl.set_live(idx, true);
    status.link.set(State::Busy);
    status.shipper.set(State::Idle);
    status.receiver.set(State::Idle);
    status.forward.set(State::Idle);
    tracing::info!(peer = %peer.dc, rtt_ms = connection.rtt().as_millis() as u64, "linked");
    let ship = shipper::run(repl.clone(), idx, connection.clone());
    let receive = receiver::run(repl.clone(), idx, connection.clone());
    let requests = forward::serve(repl.clone(), idx, connection.clone());
    let beats = repl.clone().beats(idx, connection.clone());
    let why = tokio::select! {
        () = beats => "beats ended".into(),
        r = ship => failed(r, &status.shipper, "shipper ended"),
        r = receive => failed(r, &status.receiver, "peer closed its stream"),
        r = requests => failed(r, &status.forward, "peer stopped forwarding"),
        e = connection.closed() => e.to_string(),
        _ = stopped.changed() => "shutting down".into(),
    };
    connection.close(0u32.into(), why.as_bytes());
    if status.clear_connection(conn_id) {
        repl.set_live(idx, false);
        status.set_error(&why);
        for worker in [
            &status.link,
            &status.shipper,
            &status.receiver,
            &status.forward,
        ] {
            worker.set(State::Waiting);
        }
        tracing::warn!(peer = %peer.dc, reason = %why, "link down");
    }
}
