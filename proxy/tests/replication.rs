//! Replication between datacenters, each proxy its own process, every link through
//! the testbed's WAN emulator with delay, jitter and loss.
//!
//! These tests are about the replication stream itself (catch-up, snapshots,
//! routing around down datacenters, causal apply, last-writer-wins), so every
//! datacenter writes where its clients are (`[homes] writes = "local"`): each
//! datacenter originates changes, concurrently, on the same keys. Writes forwarded
//! to their users' homes are tested in `homes.rs`.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::time::Duration;

use meridian_policies::VersionVector;
use meridian_testbed::{Cluster, ClusterSpec, LinkShape, Shape};
use redis::aio::MultiplexedConnection;
use support::wan::{CONVERGE, converged, info_u64, lossy, snapshots_installed, start, until};
use tokio::task::JoinSet;
use tokio::time::sleep;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

fn spec(n: usize, shape: Shape, seed: u64) -> ClusterSpec {
    let mut spec = ClusterSpec::new(BIN, n, shape);
    spec.homes.writes = Some("local".into());
    spec.set_links(lossy);
    spec.seed = seed;
    // Skewed clocks exercise the hybrid logical clock.
    for (i, dc) in spec.dcs.iter_mut().enumerate() {
        dc.clock_offset_ms = (i as i64 - 1) * 40;
    }
    spec
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `writes` random writes at datacenter `id` over `c`: strings, counters, hashes
/// and deletes on users homed there, and plain SETs on keys every datacenter
/// writes (concurrent writes there are settled by last-writer-wins). Returns the
/// final value of this datacenter's counter.
async fn workload(mut c: MultiplexedConnection, id: String, writes: usize, seed: u64) -> i64 {
    let mut rng = Rng(seed);
    let mut counter = 0;
    for n in 0..writes {
        let user = format!("{{{id}-u{}}}", rng.below(8));
        let mut cmd;
        match rng.below(6) {
            0 => {
                cmd = redis::cmd("INCR");
                cmd.arg(format!("{{{id}-count}}"));
                counter += 1;
            }
            1 => {
                cmd = redis::cmd("HSET");
                cmd.arg(format!("{user}:h"))
                    .arg(format!("f{}", rng.below(4)))
                    .arg(n);
            }
            2 => {
                cmd = redis::cmd("DEL");
                cmd.arg(format!("{user}:s"));
            }
            3 => {
                cmd = redis::cmd("SET");
                cmd.arg(format!("shared{}", rng.below(5)))
                    .arg(format!("{id}-{n}"));
            }
            _ => {
                cmd = redis::cmd("SET");
                cmd.arg(format!("{user}:s")).arg(format!("v{n}"));
            }
        }
        let reply: redis::RedisResult<redis::Value> = cmd.query_async(&mut c).await;
        if let Err(e) = reply {
            panic!("write {n} at {id} failed: {e}");
        }
    }
    counter
}

/// Runs the workload at every datacenter at once; returns each one's counter.
async fn write_everywhere(cluster: &Cluster, writes: usize, seed: u64) -> Vec<i64> {
    let mut tasks = JoinSet::new();
    for dc in 0..cluster.len() {
        let c = cluster.connect(dc).await.expect("connect");
        let id = cluster.id(dc).to_owned();
        tasks.spawn(async move { (dc, workload(c, id, writes, seed + dc as u64).await) });
    }
    let mut counters = vec![0; cluster.len()];
    while let Some(done) = tasks.join_next().await {
        let (dc, counter) = done.expect("workload task");
        counters[dc] = counter;
    }
    counters
}

/// Every change applied exactly once: a datacenter that ran throughout applied,
/// from others, exactly the changes the others logged.
async fn assert_exactly_once(cluster: &Cluster, applied: &VersionVector, dcs: &[usize]) {
    for &dc in dcs {
        let from_others: u64 = applied
            .iter()
            .filter(|(origin, _)| *origin != cluster.id(dc))
            .map(|(_, seq)| seq)
            .sum();
        let remote = info_u64(cluster, dc, "changes_applied_remote").await;
        assert_eq!(
            remote,
            from_others,
            "{} applied {remote} changes from others, who logged {from_others}",
            cluster.id(dc)
        );
    }
}

/// Every datacenter writes, and all converge with each change applied once
/// everywhere; the cluster, for more checks.
async fn converges(n: usize, shape: Shape, seed: u64) -> Cluster {
    let cluster = start(spec(n, shape, seed)).await;
    let counters = write_everywhere(&cluster, 120, seed).await;
    let applied = converged(&cluster).await;
    for dc in 0..n {
        assert!(
            applied.get(cluster.id(dc)) > 0,
            "{} logged nothing: {applied:?}",
            cluster.id(dc)
        );
        for (origin, &count) in counters.iter().enumerate() {
            let key = format!("{{{}-count}}", cluster.id(origin));
            let got: Option<i64> = cluster.cmd(dc, &["GET", &key]).await.expect("GET");
            assert_eq!(got.unwrap_or(0), count, "{key} at {}", cluster.id(dc));
        }
    }
    let all: Vec<usize> = (0..n).collect();
    assert_exactly_once(&cluster, &applied, &all).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datacenters_all_to_all_converge() {
    converges(3, Shape::AllToAll, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datacenters_ring_converge() {
    converges(3, Shape::Ring, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datacenters_star_converge() {
    let shape = Shape::Star {
        hub: 1,
        direct: true,
    };
    converges(3, shape, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_datacenters_all_to_all_converge() {
    converges(5, Shape::AllToAll, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_datacenters_ring_converge() {
    converges(5, Shape::Ring, 22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_datacenters_star_converge() {
    let shape = Shape::Star {
        hub: 0,
        direct: false,
    };
    let cluster = converges(5, shape, 23).await;
    // The hub passed the leaves' changes on as they arrived; a leaf, the end of
    // every route through it, passed nothing on.
    let cluster = &cluster;
    let relayed = |dc| async move {
        let info = cluster.replication_info(dc).await.expect("INFO");
        (info.iter().filter(|(k, _)| k.starts_with("peer_")))
            .map(|(_, v)| {
                let field = v.split(',').find_map(|f| f.strip_prefix("relayed="));
                field.and_then(|n| n.parse::<u64>().ok()).expect("relayed=")
            })
            .sum::<u64>()
    };
    assert!(relayed(0).await > 0, "the hub relayed nothing");
    for leaf in 1..5 {
        assert_eq!(relayed(leaf).await, 0, "leaf {leaf} relayed");
    }
}

/// Writes `{user}:k<n>` for n in `range` at `dc`, one at a time; returns the keys
/// whose write was acknowledged (a write cut off by a kill is not).
async fn numbered_writes(
    mut c: MultiplexedConnection,
    user: String,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let mut acked = Vec::new();
    for n in range {
        let key = format!("{{{user}}}:k{n}");
        let r: redis::RedisResult<String> =
            redis::cmd("SET").arg(&key).arg(n).query_async(&mut c).await;
        match r {
            Ok(_) => acked.push(key),
            Err(_) => break,
        }
    }
    acked
}

async fn assert_all_present(cluster: &Cluster, dcs: &[usize], keys: &[String]) {
    for &dc in dcs {
        let mut c = cluster.connect(dc).await.expect("connect");
        for key in keys {
            let got: Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut c)
                .await
                .expect("GET");
            assert!(
                got.is_some(),
                "acknowledged write {key} is missing at {}",
                cluster.id(dc)
            );
        }
    }
}

async fn applied_from(cluster: &Cluster, dc: usize, origin: usize) -> u64 {
    let applied = cluster.applied(dc).await.expect("MERIDIAN APPLIED");
    applied.get(cluster.id(origin))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_write_and_applies_nothing_twice() {
    let mut cluster = start(spec(3, Shape::AllToAll, 31)).await;
    // A stream of writes at dc0; dc1, a receiver, is killed in the middle of it.
    let c = cluster.connect(0).await.expect("connect");
    let stream = tokio::spawn(numbered_writes(c, "w0".into(), 0..400));
    until("dc1 to apply part of the stream", || async {
        applied_from(&cluster, 1, 0).await >= 50
    })
    .await;
    cluster.kill(1).expect("kill dc1");
    let mut acked = stream.await.expect("writer");
    assert_eq!(
        acked.len(),
        400,
        "dc0 kept acknowledging while dc1 was down"
    );
    cluster.restart(1).await.expect("restart dc1");

    // Then the origin itself is killed in the middle of a stream of its own writes.
    let c = cluster.connect(0).await.expect("connect");
    let stream = tokio::spawn(numbered_writes(c, "w0".into(), 400..100_000));
    until("dc2 to apply part of the second stream", || async {
        applied_from(&cluster, 2, 0).await >= 500
    })
    .await;
    cluster.kill(0).expect("kill dc0");
    acked.extend(stream.await.expect("writer"));
    cluster.restart(0).await.expect("restart dc0");

    let applied = converged(&cluster).await;
    assert!(applied.get("dc0") >= acked.len() as u64, "{applied:?}");
    assert_all_present(&cluster, &[0, 1, 2], &acked).await;
    // dc2 ran throughout: it applied each of dc0's changes once.
    assert_exactly_once(&cluster, &applied, &[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_heals_and_catches_up() {
    let cluster = start(spec(3, Shape::AllToAll, 41)).await;
    cluster.cut(0, 1);
    let c = cluster.connect(0).await.expect("connect");
    let acked = numbered_writes(c, "cut".into(), 0..300).await;
    // All-to-all sends only directly: dc2 has everything, dc1 nothing, while cut.
    until("dc2 to apply dc0's writes", || async {
        applied_from(&cluster, 2, 0).await >= 300
    })
    .await;
    assert_eq!(
        applied_from(&cluster, 1, 0).await,
        0,
        "dc1 behind a cut link"
    );
    cluster.heal(0, 1);
    let applied = converged(&cluster).await;
    assert_all_present(&cluster, &[0, 1, 2], &acked).await;
    assert_exactly_once(&cluster, &applied, &[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_with_a_datacenter_down_delivers_to_the_others() {
    let mut cluster = start(spec(5, Shape::Ring, 51)).await;
    cluster.kill(2).expect("kill dc2");
    let counters = write_everywhere_but(&cluster, 2, 60, 51).await;
    let applied = converged(&cluster).await;
    assert_eq!(applied.get("dc2"), 0, "{applied:?}");
    assert!(counters.iter().sum::<i64>() > 0);
    // Back on the configured route once dc2 returns.
    cluster.restart(2).await.expect("restart dc2");
    write_everywhere(&cluster, 30, 52).await;
    converged(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_whose_hub_is_down_delivers_directly() {
    let shape = Shape::Star {
        hub: 0,
        direct: true,
    };
    let mut cluster = start(spec(4, shape, 61)).await;
    cluster.kill(0).expect("kill the hub");
    write_everywhere_but(&cluster, 0, 60, 61).await;
    converged(&cluster).await;
    cluster.restart(0).await.expect("restart the hub");
    write_everywhere(&cluster, 30, 62).await;
    converged(&cluster).await;
}

/// The workload at every running datacenter but `down`.
async fn write_everywhere_but(
    cluster: &Cluster,
    down: usize,
    writes: usize,
    seed: u64,
) -> Vec<i64> {
    let mut tasks = JoinSet::new();
    for dc in (0..cluster.len()).filter(|&dc| dc != down) {
        let c = cluster.connect(dc).await.expect("connect");
        let id = cluster.id(dc).to_owned();
        tasks.spawn(workload(c, id, writes, seed + dc as u64));
    }
    tasks.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_write_is_never_visible_before_its_cause() {
    // A = dc0, B = dc1, C = dc2; A to C is far slower than A to B to C.
    let mut spec = spec(3, Shape::AllToAll, 71);
    spec.set_links(|i, j| {
        let slow = (i.min(j), i.max(j)) == (0, 2);
        LinkShape {
            delay: Duration::from_millis(if slow { 400 } else { 5 }),
            jitter: Duration::from_millis(2),
            loss: 0.01,
            bandwidth: None,
            cut: false,
        }
    });
    let cluster = start(spec).await;
    for round in 0..3 {
        let cause = format!("{{alice}}:post{round}");
        let effect = format!("{{bob}}:reply{round}");
        let _: () = cluster
            .cmd(0, &["SET", &cause, "hello"])
            .await
            .expect("SET at A");
        until("B to see A's write", || async {
            let got: Option<String> = cluster.cmd(1, &["GET", &cause]).await.expect("GET at B");
            got.is_some()
        })
        .await;
        let _: () = cluster
            .cmd(1, &["SET", &effect, "hi"])
            .await
            .expect("SET at B");
        let mut c = cluster.connect(2).await.expect("connect C");
        until("C to see B's reply", || {
            let mut c = c.clone();
            let (cause, effect) = (cause.clone(), effect.clone());
            async move {
                let reply: Option<String> = redis::cmd("GET")
                    .arg(&effect)
                    .query_async(&mut c)
                    .await
                    .expect("GET");
                if reply.is_none() {
                    return false;
                }
                let post: Option<String> = redis::cmd("GET")
                    .arg(&cause)
                    .query_async(&mut c)
                    .await
                    .expect("GET");
                assert!(
                    post.is_some(),
                    "C shows {effect} before {cause}, which it depends on"
                );
                true
            }
        })
        .await;
        let _: Option<String> = redis::cmd("GET")
            .arg(&cause)
            .query_async(&mut c)
            .await
            .expect("GET");
    }
    let held = info_u64(&cluster, 2, "changes_held_for_deps").await;
    assert!(
        held > 0,
        "C never had to hold a change for its dependencies"
    );
    converged(&cluster).await;
}

/// SETs `key` to `value` on `c`, then asks `WAIT numreplicas timeout_ms`; returns
/// how many datacenters WAIT counted.
async fn set_and_wait(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    value: &str,
    numreplicas: i64,
    timeout_ms: u64,
) -> i64 {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(c)
        .await
        .expect("SET");
    redis::cmd("WAIT")
        .arg(numreplicas)
        .arg(timeout_ms)
        .query_async(c)
        .await
        .expect("WAIT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_at_a_leaf_hears_at_once_from_the_other_leaf_through_the_hub() {
    let shape = Shape::Star {
        hub: 0,
        direct: false,
    };
    let mut spec = ClusterSpec::new(BIN, 3, shape);
    spec.homes.writes = Some("local".into());
    // Idle links beat every 3 s: the other leaf's acknowledgement, had it waited
    // for the hub's next gossip, would miss each WAIT's 1.5 s.
    spec.heartbeat_ms = Some(3000);
    spec.peer_timeout_ms = Some(10_000);
    let cluster = start(spec).await;
    let mut c = cluster.connect(1).await.expect("connect");
    for round in 0..3 {
        let n = set_and_wait(&mut c, "{dave}:k", &round.to_string(), 2, 1500).await;
        assert_eq!(
            n, 2,
            "write {round}: the hub did not pass dc2's acknowledgement on"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_the_datacenters_that_applied_the_write() {
    let cluster = start(spec(3, Shape::AllToAll, 81)).await;
    let mut c = cluster.connect(0).await.expect("connect");
    assert_eq!(set_and_wait(&mut c, "{carol}:k", "1", 2, 60_000).await, 2);
    // Once WAIT said so, the write is readable there without waiting.
    for dc in 1..3 {
        let got: Option<String> = cluster.cmd(dc, &["GET", "{carol}:k"]).await.expect("GET");
        assert_eq!(got.as_deref(), Some("1"), "at {}", cluster.id(dc));
    }
    // With dc2 cut off, only dc1 can confirm the next write before the timeout.
    cluster.cut(0, 2);
    assert_eq!(set_and_wait(&mut c, "{carol}:k", "2", 2, 3000).await, 1);
    cluster.heal(0, 2);
    converged(&cluster).await;

    // The same figures, per peer and origin, for Prometheus.
    let metrics = http_get(cluster.admin_addr(0), "/metrics").await;
    for line in [
        "meridian_peer_up{peer=\"dc1\"} 1",
        "meridian_peer_up{peer=\"dc2\"} 1",
        "meridian_replication_lag_changes{origin=\"dc1\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    let shipped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meridian_peer_shipped_changes_total{peer=\"dc1\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(shipped.is_some_and(|n| n >= 2.0), "{metrics}");

    // Every worker is in /status with its state: the engine's, and per peer its
    // link (up: busy), shipper and receiver.
    let status: serde_json::Value =
        serde_json::from_str(&http_get(cluster.admin_addr(0), "/status").await).expect("JSON");
    let workers = status["workers"].as_array().expect("a workers list");
    let find = |name: &str, peer: Option<&str>| {
        workers
            .iter()
            .find(|w| w["name"] == name && w["peer"].as_str() == peer)
            .unwrap_or_else(|| panic!("no worker {name} {peer:?} in {workers:?}"))
    };
    for name in [
        "writer",
        "committer",
        "log-sync",
        "retention",
        "accept",
        "peer-needs",
        "admin",
    ] {
        let state = find(name, None)["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            ["idle", "busy"].contains(&state.as_str()),
            "{name} is {state}"
        );
    }
    for peer in ["dc1", "dc2"] {
        assert_eq!(find("link", Some(peer))["state"], "busy", "{workers:?}");
        for name in ["shipper", "receiver", "forward"] {
            let state = find(name, Some(peer))["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                ["idle", "busy"].contains(&state.as_str()),
                "{name} {peer} is {state}"
            );
        }
    }
    assert_eq!(status["metrics"]["meridian_peer_up"]["dc1"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_cannot_end_ends_with_its_client() {
    use tokio::io::AsyncWriteExt;
    let cluster = start(spec(2, Shape::AllToAll, 91)).await;
    let clients = || async {
        let text: String = cluster.cmd(0, &["INFO", "clients"]).await.expect("INFO");
        text.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("connected_clients")
    };
    let baseline = clients().await;
    // Five datacenters will never confirm in a cluster of two, and 0 waits forever.
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(cluster.client_addr(0))
            .await
            .expect("connect");
        stream
            .write_all(b"*3\r\n$4\r\nWAIT\r\n$1\r\n5\r\n$1\r\n0\r\n")
            .await
            .expect("send WAIT");
        waiters.push(stream);
    }
    until("the waiters to connect", || async {
        clients().await >= baseline + 20
    })
    .await;
    drop(waiters);
    // Closed clients are not held by their waits.
    until("the closed waiters to be let go", || async {
        clients().await <= baseline
    })
    .await;
}

/// The body of an HTTP GET.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to admin");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_a_slowed_backend_falls_behind_and_catches_up() {
    let (_redis, redis_addr) = support::start_redis();
    let mut spec = spec(2, Shape::AllToAll, 91);
    spec.dcs[1].redis = Some(format!("redis://{redis_addr}/0"));
    // A small bound on changes waiting for the store, so the slowed store holds
    // back the receiver's applies, and through them the link.
    spec.dcs[1].extra_args = vec!["--max-unstored-changes".into(), "500".into()];
    let cluster = start(spec).await;

    // The receiver's Redis takes writes 10 ms of every 100.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let pauser = tokio::spawn(async move {
        let client = redis::Client::open(format!("redis://{redis_addr}/")).expect("url");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        let mut pauses = 0u32;
        while !*stop.borrow() {
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(90)
                .arg("WRITE")
                .query_async(&mut c)
                .await
                .expect("CLIENT PAUSE");
            pauses += 1;
            sleep(Duration::from_millis(100)).await;
        }
        pauses
    });

    // A sustained burst at the origin, pipelined.
    const WRITES: usize = 20_000;
    let mut c = cluster.connect(0).await.expect("connect");
    for chunk in (0..WRITES).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET").arg(format!("{{b{i}}}:v")).arg(i).ignore();
        }
        let _: () = pipe.query_async(&mut c).await.expect("burst");
    }
    let behind = WRITES as u64 - applied_from(&cluster, 1, 0).await;
    stop_tx.send_replace(true);
    let pauses = pauser.await.expect("pauser");
    assert!(pauses > 0);

    let applied = match cluster.wait_applied(CONVERGE).await {
        Ok(v) => v,
        Err(e) => panic!("{e}\n{}", cluster.log_tail(1, 20)),
    };
    assert_eq!(applied.get("dc0"), WRITES as u64, "{applied:?}");
    assert_exactly_once(&cluster, &applied, &[1]).await;
    // Every value arrived, in the store the receiver reads from.
    let mut r = cluster.connect(1).await.expect("connect");
    for chunk in (0..WRITES).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("GET").arg(format!("{{b{i}}}:v"));
        }
        let got: Vec<Option<usize>> = pipe.query_async(&mut r).await.expect("read back");
        for (i, v) in chunk.iter().zip(got) {
            assert_eq!(v, Some(*i), "{{b{i}}}:v at the receiver");
        }
    }
    eprintln!("the receiver was {behind} changes behind when the burst ended");
}

/// A field of INFO replication, as a number (0 when absent).
async fn info_field(cluster: &Cluster, dc: usize, field: &str) -> u64 {
    let info = cluster.replication_info(dc).await.expect("INFO");
    info.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_behind_the_retained_log_or_new_bootstraps_from_a_snapshot() {
    let mut spec = spec(3, Shape::AllToAll, 101);
    spec.log_retention = Some("1MiB".into());
    for dc in &mut spec.dcs {
        dc.extra_args = vec!["--log-segment-bytes".into(), "65536".into()];
    }
    let mut cluster = start(spec).await;
    write_everywhere(&cluster, 30, 101).await;
    converged(&cluster).await;

    // dc2 goes down; the others write far more than their logs may keep.
    cluster.kill(2).expect("kill dc2");
    let value = "x".repeat(1000);
    for dc in 0..2 {
        let mut c = cluster.connect(dc).await.expect("connect");
        for chunk in (0..3000).collect::<Vec<_>>().chunks(100) {
            let mut pipe = redis::pipe();
            for i in chunk {
                pipe.cmd("SET")
                    .arg(format!("{{big{dc}-{}}}:v", i % 700))
                    .arg(format!("{i}{value}"))
                    .ignore();
            }
            let _: () = pipe.query_async(&mut c).await.expect("write");
        }
    }
    until(
        "dc0 and dc1 to remove log segments dc2 still needs",
        || async {
            info_field(&cluster, 0, "log_segments_removed").await > 0
                && info_field(&cluster, 1, "log_segments_removed").await > 0
        },
    )
    .await;
    // Back, it gets snapshots, then the log from where they reach.
    cluster.restart(2).await.expect("restart dc2");
    converged(&cluster).await;
    assert!(
        snapshots_installed(&cluster, 2).await > 0,
        "dc2 installed no snapshot"
    );

    // A datacenter that starts empty in the running cluster bootstraps the same way,
    // and takes part in replication afterwards.
    cluster.kill(2).expect("kill dc2");
    std::fs::remove_dir_all(cluster.data_dir(2)).expect("wipe dc2");
    cluster.restart(2).await.expect("start dc2 empty");
    converged(&cluster).await;
    assert!(
        snapshots_installed(&cluster, 2).await > 0,
        "the new dc2 installed no snapshot"
    );
    write_everywhere(&cluster, 30, 102).await;
    converged(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_that_lost_its_data_gets_its_own_changes_back() {
    let mut cluster = start(spec(3, Shape::AllToAll, 111)).await;
    write_everywhere(&cluster, 40, 111).await;
    let before = converged(&cluster).await;
    // dc2's disk is lost; the others' logs are whole, but no log gives a datacenter
    // its own changes back: they come in a snapshot.
    cluster.kill(2).expect("kill dc2");
    std::fs::remove_dir_all(cluster.data_dir(2)).expect("wipe dc2");
    cluster.restart(2).await.expect("start dc2 empty");
    let after = converged(&cluster).await;
    assert_eq!(after, before);
    assert!(snapshots_installed(&cluster, 2).await > 0);
    // Its new writes continue its numbering, so the others take them.
    let _: () = cluster
        .cmd(2, &["SET", "{dave}:k", "new"])
        .await
        .expect("SET at dc2");
    let after = converged(&cluster).await;
    assert_eq!(after.get("dc2"), before.get("dc2") + 1, "{after:?}");
    let got: Option<String> = cluster.cmd(0, &["GET", "{dave}:k"]).await.expect("GET");
    assert_eq!(got.as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacenters_on_redis_replicate_and_bootstrap_from_each_other() {
    let (_redis0, addr0) = support::start_redis();
    let (_redis1, addr1) = support::start_redis();
    let mut spec = spec(2, Shape::AllToAll, 121);
    spec.dcs[0].redis = Some(format!("redis://{addr0}/0"));
    spec.dcs[1].redis = Some(format!("redis://{addr1}/0"));
    let mut cluster = start(spec).await;
    write_everywhere(&cluster, 60, 121).await;
    let before = converged(&cluster).await;
    // dc1 loses its Redis and its log; a snapshot of dc0's Redis restores it.
    cluster.kill(1).expect("kill dc1");
    let client = redis::Client::open(format!("redis://{addr1}/")).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut c)
        .await
        .expect("FLUSHALL");
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("wipe dc1");
    cluster.restart(1).await.expect("start dc1 empty");
    let after = converged(&cluster).await;
    assert_eq!(after, before);
    assert!(snapshots_installed(&cluster, 1).await > 0);
    write_everywhere(&cluster, 20, 122).await;
    converged(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_beats_an_older_write_that_arrives_after_it() {
    // dc1's clock runs 40 ms ahead of dc0's, and it writes later.
    let cluster = start(spec(2, Shape::AllToAll, 131)).await;
    cluster.cut(0, 1);
    let _: () = cluster
        .cmd(0, &["SET", "{erin}:k", "old"])
        .await
        .expect("SET at dc0");
    let _: () = cluster
        .cmd(1, &["SET", "{erin}:k", "new"])
        .await
        .expect("SET at dc1");
    let deleted: i64 = cluster
        .cmd(1, &["DEL", "{erin}:k"])
        .await
        .expect("DEL at dc1");
    assert_eq!(deleted, 1);
    // The delete is in dc1's store, not only in memory, before dc0's write arrives.
    until("dc1 to store its delete", || async {
        info_field(&cluster, 1, "uncommitted_keys").await == 0
    })
    .await;
    cluster.heal(0, 1);
    converged(&cluster).await;
    for dc in 0..2 {
        let got: Option<String> = cluster.cmd(dc, &["GET", "{erin}:k"]).await.expect("GET");
        assert_eq!(got, None, "at {}", cluster.id(dc));
    }
    assert!(info_field(&cluster, 1, "conflicts").await > 0);
}

/// The shipper restarts of `dc`'s link to `peer`, from INFO.
async fn link_restarts(cluster: &Cluster, dc: usize, peer: usize) -> u64 {
    let info = cluster.replication_info(dc).await.expect("INFO");
    let line = info
        .get(&format!("peer_{}", cluster.id(peer)))
        .expect("a peer line");
    line.split(',')
        .find_map(|f| f.strip_prefix("restarts="))
        .and_then(|v| v.parse().ok())
        .expect("restarts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_whose_redis_restarts_and_loads_keeps_its_links() {
    let redis_dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let redis_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut redis = support::start_redis_persistent(redis_dir.path(), port);
    // About three seconds of LOADING at half a millisecond a key.
    let mut direct = support::Client::connect(redis_addr).expect("redis");
    let fill = b"for i=1,6000 do redis.call('set','other:'..i,'v') end";
    assert_eq!(direct.cmd(&[b"EVAL", fill, b"0"]), support::Resp::Nil);
    let mut spec = spec(2, Shape::AllToAll, 131);
    spec.dcs[1].redis = Some(format!("redis://{redis_addr}/0"));
    let cluster = start(spec).await;
    write_everywhere(&cluster, 20, 131).await;
    converged(&cluster).await;
    let before = (
        link_restarts(&cluster, 0, 1).await,
        link_restarts(&cluster, 1, 0).await,
    );

    redis.0.kill().expect("kill redis");
    redis.0.wait().expect("reap redis");
    let _redis = support::start_redis_loading_slowly(redis_dir.path(), port, 500);
    // Changes arrive at dc1 while its Redis loads: they wait, the link stays.
    let mut c = cluster.connect(0).await.expect("connect");
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("{{loading}}:{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .expect("SET");
    }
    converged(&cluster).await;
    let after = (
        link_restarts(&cluster, 0, 1).await,
        link_restarts(&cluster, 1, 0).await,
    );
    assert_eq!(
        after, before,
        "the link went down while dc1's Redis was loading"
    );
    let got: Option<String> = cluster
        .cmd(1, &["GET", "{loading}:199"])
        .await
        .expect("GET");
    assert_eq!(got.as_deref(), Some("199"));
}

/// What `MERIDIAN CONFLICTS` lists at `dc`: (key, kept value, lost value) each.
async fn conflict_log(
    cluster: &Cluster,
    dc: usize,
) -> Vec<(String, Option<String>, Option<String>)> {
    let entries: Vec<std::collections::HashMap<String, Option<String>>> = cluster
        .cmd(dc, &["MERIDIAN", "CONFLICTS", "100"])
        .await
        .expect("MERIDIAN CONFLICTS");
    entries
        .into_iter()
        .map(|mut e| {
            let mut take = |f: &str| e.remove(f).flatten();
            (
                take("key").unwrap_or_default(),
                take("kept_value"),
                take("lost_value"),
            )
        })
        .collect()
}

/// Concurrent writes of one key (each datacenter writes it while cut off from
/// the other) end as one value everywhere, and each datacenter logs the write
/// that was discarded with both values: the one where the winner arrives (it
/// replaces a state its writer had not seen) and the one where the loser
/// arrives. Writes made after seeing the previous one are no conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_logged_as_conflicts_with_both_values() {
    let mut spec = spec(2, Shape::AllToAll, 141);
    // dc1's clock runs ahead, so its write wins.
    spec.dcs[1].clock_offset_ms = 40;
    let cluster = start(spec).await;
    // One after the other, each seen before the next: no conflict.
    let _: () = cluster.cmd(0, &["SET", "{fay}:k", "a1"]).await.unwrap();
    converged(&cluster).await;
    let _: () = cluster.cmd(1, &["SET", "{fay}:k", "a2"]).await.unwrap();
    converged(&cluster).await;
    for dc in 0..2 {
        assert_eq!(info_field(&cluster, dc, "conflicts").await, 0);
    }
    // Concurrent: neither has seen the other's write.
    cluster.cut(0, 1);
    let _: () = cluster.cmd(0, &["SET", "{fay}:k", "lost"]).await.unwrap();
    let _: () = cluster.cmd(1, &["SET", "{fay}:k", "kept"]).await.unwrap();
    cluster.heal(0, 1);
    converged(&cluster).await;
    for dc in 0..2 {
        let got: Option<String> = cluster.cmd(dc, &["GET", "{fay}:k"]).await.unwrap();
        assert_eq!(got.as_deref(), Some("kept"));
        assert_eq!(info_field(&cluster, dc, "conflicts").await, 1, "at dc{dc}");
        assert_eq!(
            conflict_log(&cluster, dc).await,
            vec![(
                "{fay}:k".to_owned(),
                Some("kept".to_owned()),
                Some("lost".to_owned())
            )],
            "at dc{dc}"
        );
    }
}

/// The wall clock in microseconds since the Unix epoch.
fn wall_us() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_micros() as u64
}

/// The value of one sample line of a `/metrics` body.
fn metric(body: &str, line_start: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics"))
}

/// `MERIDIAN WAITFOR` waits until this datacenter has applied a token from
/// another one (and says so), and not before; and each change's stages are all
/// measured and in order: shipped before it arrived, arrived (at least the
/// link's delay after it was made) before it was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waitfor_is_woken_by_apply_and_the_stages_are_in_order() {
    const DELAY: Duration = Duration::from_millis(30);
    const WRITES: u64 = 40;
    let mut spec = ClusterSpec::new(BIN, 2, Shape::AllToAll);
    spec.homes.writes = Some("local".into());
    spec.set_links(|_, _| LinkShape {
        delay: DELAY,
        jitter: Duration::from_millis(2),
        loss: 0.0,
        bandwidth: None,
        cut: false,
    });
    let cluster = start(spec).await;
    support::wan::linked(&cluster).await;
    for dc in 0..2 {
        let _: () = cluster.cmd(dc, &["MERIDIAN", "RESETSTATS"]).await.unwrap();
    }
    let mut origin = cluster.connect(0).await.unwrap();
    let mut far = cluster.connect(1).await.unwrap();
    let bad: redis::RedisResult<i64> = redis::cmd("MERIDIAN")
        .arg("WAITFOR")
        .arg("nonsense")
        .arg(10)
        .query_async(&mut far)
        .await;
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("invalid session token"),
        "a bad token is refused"
    );
    // The link cut: dc1 cannot have the writes, so a bounded wait says 0.
    cluster.cut(0, 1);
    for n in 1..=WRITES {
        let _: () = redis::cmd("SET")
            .arg("{u}:k")
            .arg(n)
            .query_async(&mut origin)
            .await
            .unwrap();
    }
    let token: String = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .query_async(&mut origin)
        .await
        .unwrap();
    let waited: i64 = redis::cmd("MERIDIAN")
        .arg("WAITFOR")
        .arg(&token)
        .arg(200)
        .query_async(&mut far)
        .await
        .unwrap();
    assert_eq!(
        waited, 0,
        "dc1 cannot have applied writes behind a cut link"
    );
    let flag: redis::RedisResult<i64> = redis::cmd("MERIDIAN")
        .arg("WAITFOR")
        .arg(&token)
        .arg(10)
        .arg("SOON")
        .query_async(&mut far)
        .await;
    assert!(flag.unwrap_err().to_string().contains("syntax error"));
    // An unbounded wait ends once the healed link brings them, and the key
    // read right after shows the last write. Asked with TIME, the answer is when
    // dc1 saw them applied: after the heal, before the answer came.
    let waiter = tokio::spawn(async move {
        let reply: (u64, u64) = redis::pipe()
            .cmd("MERIDIAN")
            .arg("WAITFOR")
            .arg(&token)
            .arg(0)
            .arg("TIME")
            .cmd("GET")
            .arg("{u}:k")
            .query_async(&mut far)
            .await
            .unwrap();
        reply
    });
    let healed = wall_us();
    cluster.heal(0, 1);
    let (caught, value) = tokio::time::timeout(CONVERGE, waiter)
        .await
        .expect("WAITFOR ends once the changes are applied")
        .unwrap();
    let answered = wall_us();
    assert_eq!(value, WRITES);
    assert!(
        (healed..=answered).contains(&caught),
        "applied at {caught} µs, not between the heal ({healed}) and the answer ({answered})"
    );
    converged(&cluster).await;

    let at_origin = http_get(cluster.admin_addr(0), "/metrics").await;
    let at_far = http_get(cluster.admin_addr(1), "/metrics").await;
    let stage = |body: &str, name: &str, peer: &str, what: &str| {
        let line = match what {
            "count" | "max" => {
                format!("meridian_peer_{name}_lag_seconds_{what}{{peer=\"{peer}\"}}")
            }
            q => format!("meridian_peer_{name}_lag_seconds{{peer=\"{peer}\",quantile=\"{q}\"}}"),
        };
        metric(body, &line)
    };
    // Every change was measured at each stage it passed at dc1.
    assert_eq!(stage(&at_far, "arrival", "dc0", "count"), WRITES as f64);
    assert_eq!(stage(&at_far, "applied", "dc0", "count"), WRITES as f64);
    assert!(stage(&at_origin, "ship", "dc1", "count") >= 1.0);
    for q in ["0.5", "0.99", "max"] {
        let arrived = stage(&at_far, "arrival", "dc0", q);
        let applied = stage(&at_far, "applied", "dc0", q);
        assert!(
            arrived <= applied,
            "{q}: arrived {arrived} s, applied {applied} s"
        );
    }
    assert!(
        stage(&at_far, "arrival", "dc0", "0.5") >= DELAY.as_secs_f64(),
        "nothing arrives sooner than the link's delay"
    );
    let shipped = stage(&at_origin, "ship", "dc1", "max");
    let arrived = stage(&at_far, "arrival", "dc0", "max");
    assert!(
        shipped <= arrived,
        "shipped {shipped} s, arrived {arrived} s"
    );
}
