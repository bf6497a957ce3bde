//! Helpers for tests that run a cluster of proxies through the WAN emulator.

use std::time::Duration;

use meridian_policies::VersionVector;
use meridian_testbed::{Cluster, ClusterSpec, LinkShape};
use tokio::time::{Instant, sleep};

/// The users `<prefix>0`, `<prefix>1`, ... whose rendezvous home in the cluster's
/// topology is datacenter `dc`, in that order.
pub fn users_homed_at(cluster: &Cluster, prefix: &str, dc: usize) -> impl Iterator<Item = String> {
    let topology = cluster.parsed_topology().expect("the cluster's topology");
    let homes = meridian_proxy::user_homes(&topology).expect("rendezvous homes");
    let prefix = prefix.to_owned();
    (0..)
        .map(move |i| format!("{prefix}{i}"))
        .filter(move |u| homes.home_of(u) == dc)
}

/// Generous: a 2-core machine running five proxies and their relays.
pub const CONVERGE: Duration = Duration::from_secs(90);

/// 4 to 12 ms one way, 3 ms of jitter (datagrams reorder), 1% loss.
pub fn lossy(i: usize, j: usize) -> LinkShape {
    LinkShape {
        delay: Duration::from_millis(4 + ((i * 7 + j * 3) % 9) as u64),
        jitter: Duration::from_millis(3),
        loss: 0.01,
        bandwidth: None,
        cut: false,
    }
}

pub async fn start(spec: ClusterSpec) -> Cluster {
    match Cluster::start(spec).await {
        Ok(c) => c,
        Err(e) => panic!("cluster did not start: {e}"),
    }
}

/// The last lines of every proxy's log.
pub fn logs(cluster: &Cluster) -> String {
    (0..cluster.len())
        .map(|i| format!("--- {} ---\n{}", cluster.id(i), cluster.log_tail(i, 15)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until every datacenter has applied the same changes; returns them.
pub async fn converged(cluster: &Cluster) -> VersionVector {
    match cluster.wait_converged(CONVERGE).await {
        Ok(v) => v,
        Err(e) => panic!("{e}\n{}", logs(cluster)),
    }
}

/// A numeric field of datacenter `dc`'s `INFO replication`.
pub async fn info_u64(cluster: &Cluster, dc: usize, field: &str) -> u64 {
    let info = cluster.replication_info(dc).await.expect("INFO");
    info.get(field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO replication of {} has no {field}", cluster.id(dc)))
}

/// Polls `what` until it holds, for at most `CONVERGE`.
pub async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + CONVERGE;
    while !condition().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every link the topology allows is up (each datacenter's INFO
/// shows every peer up).
pub async fn linked(cluster: &Cluster) {
    cluster.wait_linked(CONVERGE).await.expect("every link up");
}

/// Snapshots datacenter `dc` installed, over all its peers.
pub async fn snapshots_installed(cluster: &Cluster, dc: usize) -> u64 {
    let info = cluster.replication_info(dc).await.expect("INFO");
    info.iter()
        .filter(|(k, _)| k.starts_with("peer_"))
        .filter_map(|(_, v)| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("snapshots_installed="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}
