//! Element-level changes: a small change to a big value travels as an edit of
//! the state before it, and every datacenter rebuilds the same state from it; a
//! datacenter that holds another state asks for a snapshot instead of guessing.
//! Each proxy is its own process, every link through the WAN emulator.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use meridian_testbed::{Cluster, ClusterSpec, Shape};
use support::wan::{converged, info_u64, linked, lossy, snapshots_installed, start, until};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A field of datacenter `dc`'s `INFO stats`.
async fn stat(cluster: &Cluster, dc: usize, field: &str) -> u64 {
    let text: String = cluster.cmd(dc, &["INFO", "stats"]).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO stats has no {field}"))
}

/// Big values of a user homed at dc0 get small changes from a client at dc1
/// (forwarded to the home): each is logged as an edit, a few dozen bytes where
/// the value is kilobytes, and all three datacenters end with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_changes_to_big_values_travel_as_edits_and_converge() {
    let mut spec = ClusterSpec::new(BIN, 3, Shape::AllToAll);
    spec.set_links(lossy);
    spec.seed = 501;
    let cluster = start(spec).await;
    linked(&cluster).await;
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user = (0..)
        .map(|i| format!("e{i}"))
        .find(|u| homes.home_of(u) == 0)
        .unwrap();
    let key = |k: &str| format!("{{{user}}}:{k}");
    let (s, h, l, z, t) = (key("s"), key("h"), key("l"), key("z"), key("t"));
    // The big values, each written whole once.
    let mut sadd = vec!["SADD".to_string(), s.clone()];
    sadd.extend((0..2000).map(|i| format!("member-{i}")));
    let mut hset = vec!["HSET".to_string(), h.clone()];
    hset.extend((0..500).flat_map(|i| [format!("field-{i}"), format!("value-{i}")]));
    let mut rpush = vec!["RPUSH".to_string(), l.clone()];
    rpush.extend((0..300).map(|i| format!("item-{i}")));
    let mut zadd = vec!["ZADD".to_string(), z.clone()];
    zadd.extend((0..300).flat_map(|i| [format!("{i}"), format!("player-{i}")]));
    for cmd in [&sadd, &hset, &rpush, &zadd] {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let _: i64 = cluster.cmd(1, &args).await.unwrap();
    }
    let _: () = cluster
        .cmd(1, &["SET", &t, &"x".repeat(4096)])
        .await
        .unwrap();
    converged(&cluster).await;
    let (bytes0, changes0) = (
        stat(&cluster, 0, "log_bytes_appended").await,
        stat(&cluster, 0, "changes_committed").await,
    );
    let edits0 = info_u64(&cluster, 0, "edits_written").await;
    // Small changes from a client at dc1: each runs at the home, dc0.
    const ROUNDS: usize = 40;
    for i in 0..ROUNDS {
        let i = i.to_string();
        let cmds: [Vec<&str>; 6] = [
            vec!["SADD", &s, &i],
            vec!["HSET", &h, "field-7", &i],
            vec!["LPUSH", &l, &i],
            vec!["LTRIM", &l, "0", "299"],
            vec!["ZINCRBY", &z, "1.5", "player-3"],
            vec!["APPEND", &t, "y"],
        ];
        for cmd in cmds {
            let _: redis::Value = cluster.cmd(1, &cmd).await.unwrap();
        }
    }
    converged(&cluster).await;
    let changes = stat(&cluster, 0, "changes_committed").await - changes0;
    let bytes = stat(&cluster, 0, "log_bytes_appended").await - bytes0;
    let edits = info_u64(&cluster, 0, "edits_written").await - edits0;
    assert_eq!(
        changes,
        6 * ROUNDS as u64,
        "every small change ran at the home"
    );
    assert_eq!(edits, changes, "every small change was written as an edit");
    // The values are kilobytes; their edits a record of some tens of bytes.
    assert!(
        bytes / changes < 200,
        "{bytes} log bytes for {changes} changes"
    );
    // Where the changes' lag built up, stage by stage: dc0 shipped them to dc1,
    // which took and applied them; MERIDIAN RESETSTATS starts the count again.
    let stages = |info: std::collections::BTreeMap<String, String>, peer: &str| {
        info.get(&format!("peer_{peer}"))
            .cloned()
            .unwrap_or_default()
    };
    let at_home = stages(cluster.replication_info(0).await.unwrap(), "dc1");
    let at_dc1 = stages(cluster.replication_info(1).await.unwrap(), "dc0");
    assert!(at_home.contains("ship_lag_ms="), "{at_home}");
    assert!(
        at_dc1.contains("arrival_lag_ms=") && at_dc1.contains("applied_lag_ms="),
        "{at_dc1}"
    );
    let _: () = cluster.cmd(1, &["MERIDIAN", "RESETSTATS"]).await.unwrap();
    let at_dc1 = stages(cluster.replication_info(1).await.unwrap(), "dc0");
    assert!(!at_dc1.contains("applied_lag_ms="), "{at_dc1}");
    for dc in 0..3 {
        assert_eq!(info_u64(&cluster, dc, "edits_unbuildable").await, 0);
        let card: i64 = cluster.cmd(dc, &["SCARD", &s]).await.unwrap();
        assert_eq!(card, 2000 + ROUNDS as i64, "{}", cluster.id(dc));
        let len: i64 = cluster.cmd(dc, &["LLEN", &l]).await.unwrap();
        assert_eq!(len, 300);
        let score: f64 = cluster.cmd(dc, &["ZSCORE", &z, "player-3"]).await.unwrap();
        assert_eq!(score, 3.0 + 1.5 * ROUNDS as f64);
    }
}

/// Under `writes = "local"`, dc2 writes a big set while cut off from dc0, and
/// dc1 takes that write; then dc0, which has not seen it, adds a member as an
/// edit of its own earlier state. dc1 holds another state than the edit's, so
/// it cannot rebuild the new one: it holds the change, asks dc0 for a snapshot,
/// and ends with the same data as everyone once the links heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_state_a_datacenter_does_not_hold_brings_a_snapshot() {
    let mut spec = ClusterSpec::new(BIN, 3, Shape::AllToAll);
    spec.set_links(lossy);
    spec.seed = 502;
    spec.homes.writes = Some("local".into());
    let cluster = start(spec).await;
    linked(&cluster).await;
    let mut sadd = vec!["SADD".to_string(), "{big}:s".to_string()];
    sadd.extend((0..500).map(|i| format!("m{i}")));
    let args: Vec<&str> = sadd.iter().map(String::as_str).collect();
    let _: i64 = cluster.cmd(0, &args).await.unwrap();
    converged(&cluster).await;
    cluster.cut(0, 2);
    let _: i64 = cluster
        .cmd(2, &["SADD", "{big}:s", "from-dc2"])
        .await
        .unwrap();
    until("dc1 holds dc2's write", || async {
        let has: i64 = cluster
            .cmd(1, &["SISMEMBER", "{big}:s", "from-dc2"])
            .await
            .unwrap();
        has == 1
    })
    .await;
    let before = snapshots_installed(&cluster, 1).await;
    let _: i64 = cluster
        .cmd(0, &["SADD", "{big}:s", "from-dc0"])
        .await
        .unwrap();
    assert!(info_u64(&cluster, 0, "edits_written").await >= 1);
    until("dc1 installs a snapshot", || async {
        snapshots_installed(&cluster, 1).await > before
    })
    .await;
    assert!(info_u64(&cluster, 1, "edits_unbuildable").await >= 1);
    cluster.heal(0, 2);
    converged(&cluster).await;
    // Last writer wins: dc0's write is the later one, and dc2's is logged lost.
    for dc in 0..3 {
        let has: i64 = cluster
            .cmd(dc, &["SISMEMBER", "{big}:s", "from-dc0"])
            .await
            .unwrap();
        assert_eq!(has, 1, "{}", cluster.id(dc));
    }
    let mut conflicts = 0;
    for dc in 0..3 {
        conflicts += info_u64(&cluster, dc, "conflicts").await;
    }
    assert!(conflicts >= 1, "dc2's lost write is logged as a conflict");
}
