//! Home leaders: every user's writes run at the user's home, forwarded there over
//! QUIC from wherever the client is. Each proxy is its own process, every link
//! through the testbed's WAN emulator with delay, jitter and loss.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::time::Duration;

use meridian_policies::Rendezvous;
use meridian_testbed::{Cluster, ClusterSpec, LinkShape, Shape};
use support::wan::{CONVERGE, converged, info_u64, linked, logs, lossy, start, until};
use support::{Client, Resp};
use tokio::task::JoinSet;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

fn spec(shape: Shape, seed: u64) -> ClusterSpec {
    let mut spec = ClusterSpec::new(BIN, 3, shape);
    spec.set_links(lossy);
    spec.seed = seed;
    // Homes wait for a session's earlier writes to reach them: over lossy links
    // on a busy machine that can take longer than the default 100 ms.
    spec.session.read_wait_ms = Some(2_000);
    spec
}

/// The homes the cluster's own topology file gives users.
fn homes(cluster: &Cluster) -> Rendezvous {
    meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap()
}

/// The first `n` users `u0`, `u1`, ... whose home is datacenter `dc`.
fn users_homed_at(homes: &Rendezvous, dc: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("u{i}"))
        .filter(|u| homes.home_of(u) == dc)
        .take(n)
        .collect()
}

/// Clients in all three datacenters INCR the same users' counters at once. Users
/// are homed unevenly (three at dc0, two at dc1, one at dc2), so the number of
/// changes each datacenter originates shows who executed the writes.
async fn one_writer_per_user(shape: Shape, seed: u64) {
    const PER_DC: usize = 60;
    let cluster = start(spec(shape, seed)).await;
    let homes = homes(&cluster);
    let mut users = users_homed_at(&homes, 0, 3);
    users.extend(users_homed_at(&homes, 1, 2));
    users.extend(users_homed_at(&homes, 2, 1));
    let mut tasks = JoinSet::new();
    for dc in 0..3 {
        let mut c = cluster.connect(dc).await.unwrap();
        let users = users.clone();
        tasks.spawn(async move {
            for i in 0..PER_DC {
                let key = format!("{{{}}}:n", users[(i + dc) % users.len()]);
                let reply: redis::RedisResult<i64> =
                    redis::cmd("INCR").arg(&key).query_async(&mut c).await;
                if let Err(e) = reply {
                    panic!("INCR {key} at dc{dc}: {e}");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let applied = converged(&cluster).await;
    // Each user was incremented PER_DC / 6 times from each of the three.
    let per_user = 3 * PER_DC / users.len();
    for dc in 0..3 {
        for user in &users {
            let got: Option<i64> = cluster
                .cmd(dc, &["GET", &format!("{{{user}}}:n")])
                .await
                .unwrap();
            assert_eq!(
                got,
                Some(per_user as i64),
                "{user}'s counter at dc{dc}\n{}",
                logs(&cluster)
            );
        }
        assert_eq!(info_u64(&cluster, dc, "conflicts").await, 0);
    }
    // Every change of a user has the user's home as its origin.
    for (dc, homed) in [(0, 3), (1, 2), (2, 1)] {
        assert_eq!(
            applied.get(cluster.id(dc)),
            (homed * per_user) as u64,
            "changes originated at dc{dc}: {applied}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_has_one_writer_all_to_all() {
    one_writer_per_user(Shape::AllToAll, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_has_one_writer_ring() {
    one_writer_per_user(Shape::Ring, 12).await;
}

/// A star without fallback: leaves reach each other's users through the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_has_one_writer_star_through_the_hub() {
    let hub = 1;
    one_writer_per_user(Shape::Star { hub, direct: false }, 13).await;
}

/// Replies of a pipeline come in order, whether its writes ran here or at a home
/// elsewhere, and the home's errors come back as it gave them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_local_and_forwarded_writes_answers_in_order() {
    let cluster = start(spec(Shape::AllToAll, 21)).await;
    let homes = homes(&cluster);
    let here = &users_homed_at(&homes, 0, 1)[0];
    let away = &users_homed_at(&homes, 1, 1)[0];
    let (here, away) = (format!("{{{here}}}"), format!("{{{away}}}"));
    let addr = cluster.client_addr(0);
    let pipeline: Vec<Vec<String>> = vec![
        vec!["SET".into(), format!("{away}:s"), "text".into()],
        vec!["INCR".into(), format!("{away}:s")],
        vec!["HSET".into(), format!("{away}:s"), "f".into(), "v".into()],
        vec!["INCR".into(), format!("{here}:n")],
        vec!["GET".into(), format!("{here}:n")],
        vec!["INCR".into(), format!("{away}:n")],
        vec!["INCRBY".into(), format!("{away}:n"), "4".into()],
        vec!["SET".into(), format!("{here}:s"), "x".into(), "NX".into()],
        vec!["SET".into(), format!("{away}:t"), "y".into(), "GET".into()],
        vec!["GET".into(), format!("{here}:s")],
    ];
    let replies = tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(addr).unwrap();
        for command in &pipeline {
            let args: Vec<&[u8]> = command.iter().map(|a| a.as_bytes()).collect();
            c.send(&args);
        }
        (0..pipeline.len())
            .map(|_| c.read().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(
        replies,
        vec![
            Resp::Simple("OK".into()),
            Resp::Error("ERR value is not an integer or out of range".into()),
            Resp::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into()),
            Resp::Int(1),
            Resp::Bulk(b"1".to_vec()),
            Resp::Int(1),
            Resp::Int(5),
            Resp::Simple("OK".into()),
            Resp::Nil,
            Resp::Bulk(b"x".to_vec()),
        ]
    );
    let applied = converged(&cluster).await;
    // Two local writes at dc0; four changes of the user homed at dc1 (the refused
    // writes change nothing).
    assert_eq!(applied.get("dc0"), 2, "{applied}");
    assert_eq!(applied.get("dc1"), 4, "{applied}");
    assert!(info_u64(&cluster, 0, "forward_requests").await >= 1);
    assert_eq!(info_u64(&cluster, 1, "forward_served_writes").await, 6);
}

/// INCR `key` at datacenter `dc` from `clients` connections until `stop` is
/// set; returns how many were acknowledged and how many ended with their outcome
/// unknown (TRYAGAIN refusals are neither: they were not applied).
async fn incr_load(
    cluster: &Cluster,
    dc: usize,
    key: &str,
    clients: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> JoinSet<(u64, u64)> {
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (key, stop) = (key.to_owned(), stop.clone());
        let mut c = cluster.connect(dc).await.unwrap();
        tasks.spawn(async move {
            let (mut acked, mut unknown) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply: redis::RedisResult<i64> =
                    redis::cmd("INCR").arg(&key).query_async(&mut c).await;
                match reply {
                    Ok(_) => acked += 1,
                    Err(e) if e.code() == Some("TRYAGAIN") => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) if e.is_io_error() => panic!("the proxy dropped the client: {e}"),
                    Err(_) => unknown += 1,
                }
            }
            (acked, unknown)
        });
    }
    tasks
}

async fn totals(mut tasks: JoinSet<(u64, u64)>) -> (u64, u64) {
    let (mut acked, mut unknown) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (a, u) = done.unwrap();
        acked += a;
        unknown += u;
    }
    (acked, unknown)
}

/// Every datacenter holds `key` = `got`, with `acked <= got <= acked + unknown`.
async fn applied_at_most_once(cluster: &Cluster, key: &str, acked: u64, unknown: u64) {
    converged(cluster).await;
    let got: Option<u64> = cluster.cmd(0, &["GET", key]).await.unwrap();
    let got = got.unwrap_or(0);
    assert!(
        got >= acked && got <= acked + unknown,
        "{got} applied, {acked} acknowledged, {unknown} of unknown outcome\n{}",
        logs(cluster)
    );
    assert!(acked > 0, "no INCR was acknowledged");
    for dc in 1..cluster.len() {
        let here: Option<u64> = cluster.cmd(dc, &["GET", key]).await.unwrap();
        assert_eq!(here, Some(got), "dc{dc}");
    }
}

/// INCRs forwarded while the home's replies are lost (long enough for the sender
/// to drop the link, so requests the home ran are sent again), then while the
/// link is cut both ways: each acknowledged INCR is applied exactly once, the
/// others at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_incrs_survive_a_flapping_link_exactly_once() {
    // A 2 s peer timeout: the sender drops the link 2 s into the loss of the
    // home's replies, and requests that reached the home wait 4 s more for a new
    // link to be sent again on, ample on a loaded machine.
    let mut spec = spec(Shape::AllToAll, 31);
    spec.peer_timeout_ms = Some(2_000);
    let cluster = start(spec).await;
    linked(&cluster).await;
    let homes = homes(&cluster);
    let key = format!("{{{}}}:n", users_homed_at(&homes, 1, 1)[0]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = incr_load(&cluster, 0, &key, 4, &stop).await;
    let shape = lossy(1, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.set_link(1, 0, LinkShape { cut: true, ..shape });
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    cluster.set_link(1, 0, shape);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    cluster.cut(0, 1);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    cluster.heal(0, 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, unknown) = totals(load).await;
    applied_at_most_once(&cluster, &key, acked, unknown).await;
    // The requests the home ran while its replies were lost were sent again on
    // the new link, and answered from the home's memory.
    let duplicates = info_u64(&cluster, 1, "forward_duplicates_suppressed").await;
    assert!(
        duplicates > 0,
        "no request was sent again ({acked} acknowledged, {unknown} unknown)"
    );
}

/// The home is killed with SIGKILL while forwarded INCRs are in flight: no
/// acknowledged INCR is lost once it is back and caught up, none is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_killed_mid_request_loses_no_acknowledged_write() {
    let mut spec = spec(Shape::AllToAll, 61);
    spec.peer_timeout_ms = Some(1_000);
    let mut cluster = start(spec).await;
    linked(&cluster).await;
    let homes = homes(&cluster);
    let key = format!("{{{}}}:n", users_homed_at(&homes, 1, 1)[0]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = incr_load(&cluster, 0, &key, 4, &stop).await;
    until("some INCRs to run", || async {
        let n: Option<u64> = cluster.cmd(1, &["GET", &key]).await.unwrap_or(None);
        n.unwrap_or(0) >= 20
    })
    .await;
    cluster.kill(1).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.restart(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, unknown) = totals(load).await;
    applied_at_most_once(&cluster, &key, acked, unknown).await;
}

/// A home that cannot be reached is refused at once with TRYAGAIN, once the link
/// is known to be down; writes go through again when it heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_home_answers_tryagain_at_once_and_service_resumes() {
    let mut spec = spec(Shape::AllToAll, 41);
    spec.peer_timeout_ms = Some(1_000);
    let cluster = start(spec).await;
    linked(&cluster).await;
    let homes = homes(&cluster);
    let user = &users_homed_at(&homes, 2, 1)[0];
    let key = format!("{{{user}}}:n");
    let mut c = cluster.connect(0).await.unwrap();
    let _: i64 = redis::cmd("INCR")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    cluster.cut(0, 2);
    let cut_at = Instant::now();
    let refused_after = loop {
        let started = Instant::now();
        let reply: redis::RedisResult<i64> = redis::cmd("INCR").arg(&key).query_async(&mut c).await;
        match reply {
            Err(e) if e.code() == Some("TRYAGAIN") => {
                let text = e.to_string();
                assert!(text.contains("dc2") && text.contains(user), "{text}");
                // Refused at once, not after a hang.
                assert!(started.elapsed() < Duration::from_millis(200), "{text}");
                break cut_at.elapsed();
            }
            // A write in flight when the link went can end either way.
            other => assert!(
                cut_at.elapsed() < Duration::from_secs(30),
                "never refused; the last reply was {other:?}"
            ),
        }
    };
    // The link is declared down after the peer timeout (1 s); a write in flight
    // then waits up to two more for the link to come back and give its outcome.
    assert!(
        refused_after < Duration::from_millis(4_500),
        "refused only after {refused_after:?}"
    );
    assert!(
        cluster
            .replication_info(0)
            .await
            .unwrap()
            .get("peer_dc2")
            .is_some_and(|line| line.contains("home_unreachable_refusals=")),
        "INFO shows the refusals"
    );
    cluster.heal(0, 2);
    until("writes to dc2's user go through again", || {
        let mut c = c.clone();
        let key = key.clone();
        async move {
            let reply: redis::RedisResult<i64> =
                redis::cmd("INCR").arg(&key).query_async(&mut c).await;
            reply.is_ok()
        }
    })
    .await;
}

/// A token handed from a connection at dc0 to a new connection at dc1 orders a
/// write at dc1, for a user homed at dc2, after the token's write everywhere: no
/// datacenter ever holds the second without the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_token_orders_writes_across_homes() {
    let cluster = start(spec(Shape::AllToAll, 51)).await;
    // The first write reaches dc2 later than the second write's request does: the
    // home waits for it (within read_wait_ms, 100 ms by default).
    let mut slow = lossy(0, 2);
    slow.delay = Duration::from_millis(60);
    cluster.set_link(0, 2, slow);
    let homes = homes(&cluster);
    let first_user = format!("{{{}}}", users_homed_at(&homes, 0, 1)[0]);
    let second_user = format!("{{{}}}", users_homed_at(&homes, 2, 1)[0]);
    let mut a = cluster.connect(0).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{first_user}:cause"))
        .arg("1")
        .query_async(&mut a)
        .await
        .unwrap();
    let token: String = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .query_async(&mut a)
        .await
        .unwrap();
    assert!(token.starts_with("mt2."), "{token}");
    let mut b = cluster.connect(1).await.unwrap();
    let bad: redis::RedisResult<()> = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .arg("not-a-token")
        .query_async(&mut b)
        .await;
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("invalid session token"),
        "a bad token is refused clearly"
    );
    let _: () = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .arg(&token)
        .query_async(&mut b)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{second_user}:effect"))
        .arg("1")
        .query_async(&mut b)
        .await
        .unwrap();
    // Wherever the effect is, the cause is: watch every datacenter until both
    // are everywhere.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut everywhere = true;
        for dc in 0..3 {
            // The effect first: a datacenter that holds it held the cause already.
            let effect: Option<String> = cluster
                .cmd(dc, &["GET", &format!("{second_user}:effect")])
                .await
                .unwrap();
            let cause: Option<String> = cluster
                .cmd(dc, &["GET", &format!("{first_user}:cause")])
                .await
                .unwrap();
            assert!(
                effect.is_none() || cause.is_some(),
                "dc{dc} holds the effect without its cause"
            );
            everywhere &= effect.is_some();
        }
        if everywhere {
            break;
        }
        assert!(Instant::now() < deadline, "the effect never spread");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The session's token now names the write at dc2, and WAIT waits for it.
    let token: String = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .query_async(&mut b)
        .await
        .unwrap();
    assert!(token.len() > 4);
    let n: i64 = redis::cmd("WAIT")
        .arg(2)
        .arg(30_000)
        .query_async(&mut b)
        .await
        .unwrap();
    assert_eq!(n, 2, "both other datacenters applied the session's writes");
}
