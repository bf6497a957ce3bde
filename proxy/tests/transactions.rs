//! Transactions across datacenters: `MULTI`/`EXEC` of one user runs at the user's
//! home, forwarded whole from wherever the client is; `WATCH` works from there
//! too; and another datacenter never sees a transaction half applied. Each
//! proxy is its own process, every link through the WAN emulator.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use meridian_testbed::{ClusterSpec, Shape};
use support::wan::{converged, linked, lossy, start};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

fn spec(seed: u64) -> ClusterSpec {
    let mut spec = ClusterSpec::new(BIN, 3, Shape::AllToAll);
    spec.set_links(lossy);
    spec.seed = seed;
    spec.session.read_wait_ms = Some(2_000);
    spec
}

/// A client at a datacenter that is not the user's home runs transactions that
/// move one unit between two counters, while a client at the third datacenter
/// reads both counters together again and again: their sum never changes, so it
/// never sees one half of a transaction. The transactions run at the home (their
/// changes originate there). A WATCH from the same client aborts the
/// transaction when another datacenter wrote the key meanwhile, and not
/// otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_run_at_the_home_and_apply_whole_everywhere() {
    const MOVES: i64 = 150;
    let cluster = Arc::new(start(spec(401)).await);
    linked(&cluster).await;
    // One command would empty every region: refused unless the topology allows it.
    let refused = cluster
        .cmd::<()>(2, &["FLUSHDB"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("refused in a cluster of 3 datacenters")
            && refused.contains("flush = \"allow\""),
        "{refused}"
    );
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user = (0..)
        .map(|i| format!("t{i}"))
        .find(|u| homes.home_of(u) == 0)
        .unwrap();
    let (a, b) = (format!("{{{user}}}:a"), format!("{{{user}}}:b"));
    let _: () = cluster
        .cmd(1, &["MSET", &a, "1000", &b, "0"])
        .await
        .unwrap();
    converged(&cluster).await;
    let before = cluster.applied(0).await.unwrap().get("dc0");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (cluster, a, b, done) = (cluster.clone(), a.clone(), b.clone(), done.clone());
        tokio::spawn(async move {
            let mut c = cluster.connect(2).await.unwrap();
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let (x, y): (i64, i64) = redis::cmd("MGET")
                    .arg(&a)
                    .arg(&b)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert_eq!(x + y, 1000, "dc2 saw half a transaction: {x} + {y}");
                reads += 1;
            }
            reads
        })
    };
    let mut c = cluster.connect(1).await.unwrap();
    for _ in 0..MOVES {
        let (x, y): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("DECR")
            .arg(&a)
            .cmd("INCR")
            .arg(&b)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(x + y, 1000);
    }
    converged(&cluster).await;
    done.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 0);
    for dc in 0..3 {
        let got: (i64, i64) = redis::cmd("MGET")
            .arg(&a)
            .arg(&b)
            .query_async(&mut cluster.connect(dc).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, (1000 - MOVES, MOVES), "at dc{dc}");
    }
    // One change per transaction, each made at the home.
    let after = cluster.applied(0).await.unwrap().get("dc0");
    assert_eq!(after - before, MOVES as u64, "changes made at dc0");

    // WATCH at dc1, nobody else writes: the transaction runs.
    let exec = |c: &mut redis::aio::MultiplexedConnection, value: &'static str| {
        let mut c = c.clone();
        let a = a.clone();
        async move {
            let (): () = redis::cmd("MULTI").query_async(&mut c).await.unwrap();
            let _: String = redis::cmd("SET")
                .arg(&a)
                .arg(value)
                .query_async(&mut c)
                .await
                .unwrap();
            let reply: Option<Vec<String>> = redis::cmd("EXEC").query_async(&mut c).await.unwrap();
            reply
        }
    };
    let mut watcher = cluster.connect(1).await.unwrap();
    let (): () = redis::cmd("WATCH")
        .arg(&a)
        .query_async(&mut watcher)
        .await
        .unwrap();
    assert_eq!(exec(&mut watcher, "ran").await, Some(vec!["OK".to_owned()]));
    // WATCH at dc1, then dc2 writes the key (at the home, dc0): it aborts.
    let (): () = redis::cmd("WATCH")
        .arg(&a)
        .query_async(&mut watcher)
        .await
        .unwrap();
    let (): () = cluster.cmd(2, &["SET", &a, "theirs"]).await.unwrap();
    assert_eq!(exec(&mut watcher, "mine").await, None);
    converged(&cluster).await;
    for dc in 0..3 {
        let got: String = cluster.cmd(dc, &["GET", &a]).await.unwrap();
        assert_eq!(got, "theirs", "at dc{dc}");
    }
}

/// Clients at all three datacenters run random set and list commands and
/// transactions on a few users' keys at once (each write runs at its user's
/// home); the datacenters converge to identical data (digests), sets and lists
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sets_lists_and_transactions_everywhere_converge() {
    let mut spec = spec(402);
    spec.clients = Some(meridian_testbed::ClientsSection {
        flush: Some("allow".into()),
        ..Default::default()
    });
    let cluster = Arc::new(start(spec).await);
    linked(&cluster).await;
    let mut clients = tokio::task::JoinSet::new();
    for dc in 0..3 {
        let cluster = cluster.clone();
        clients.spawn(async move {
            let mut rng = meridian_testbed::Rng::new(4020 + dc as u64);
            let mut c = cluster.connect(dc).await.unwrap();
            for _ in 0..150 {
                let user = format!("r{}", rng.below(4));
                let key = |k: &str| format!("{{{user}}}:{k}");
                let member = format!("m{}", rng.below(6));
                let mut pipe = redis::pipe();
                let score = format!("{}", rng.below(5));
                match rng.below(10) {
                    7 => pipe.cmd("ZADD").arg(key("z")).arg(&score).arg(&member),
                    8 => pipe.cmd("ZINCRBY").arg(key("z")).arg("1.5").arg(&member),
                    9 => pipe.cmd("ZPOPMIN").arg(key("z")),
                    5 => pipe.cmd("RPUSH").arg(key("l")).arg(&member),
                    6 => pipe
                        .cmd("LMOVE")
                        .arg(key("l"))
                        .arg(key("k"))
                        .arg("LEFT")
                        .arg("RIGHT"),
                    0 | 1 => pipe.cmd("SADD").arg(key("s")).arg(&member),
                    2 => pipe.cmd("SREM").arg(key("s")).arg(&member),
                    3 => pipe.cmd("SMOVE").arg(key("s")).arg(key("t")).arg(&member),
                    _ => pipe
                        .atomic()
                        .cmd("SADD")
                        .arg(key("t"))
                        .arg(&member)
                        .cmd("SUNIONSTORE")
                        .arg(key("u"))
                        .arg(key("s"))
                        .arg(key("t"))
                        .cmd("INCR")
                        .arg(key("n")),
                };
                let _: redis::Value = pipe.query_async(&mut c).await.unwrap();
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    converged(&cluster).await;
    for user in 0..4 {
        let key = format!("{{r{user}}}:u");
        let mut seen = Vec::new();
        for dc in 0..3 {
            let mut members: Vec<String> = cluster.cmd(dc, &["SMEMBERS", &key]).await.unwrap();
            members.sort();
            seen.push(members);
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{key}: {seen:?}");
        let key = format!("{{r{user}}}:k");
        let mut lists = Vec::new();
        for dc in 0..3 {
            let items: Vec<String> = cluster.cmd(dc, &["LRANGE", &key, "0", "-1"]).await.unwrap();
            lists.push(items);
        }
        assert!(lists.windows(2).all(|w| w[0] == w[1]), "{key}: {lists:?}");
        let key = format!("{{r{user}}}:z");
        let mut zsets = Vec::new();
        for dc in 0..3 {
            let items: Vec<String> = cluster
                .cmd(dc, &["ZRANGE", &key, "0", "-1", "WITHSCORES"])
                .await
                .unwrap();
            zsets.push(items);
        }
        assert!(zsets.windows(2).all(|w| w[0] == w[1]), "{key}: {zsets:?}");
    }
    // Allowed here: FLUSHDB at one datacenter deletes every key everywhere.
    let keys: Vec<String> = cluster.cmd(1, &["KEYS", "{r*"]).await.unwrap();
    assert!(keys.len() >= 8, "{keys:?}");
    let _: () = cluster.cmd(1, &["FLUSHDB"]).await.unwrap();
    converged(&cluster).await;
    for dc in 0..3 {
        let left: Vec<String> = cluster.cmd(dc, &["KEYS", "{r*"]).await.unwrap();
        assert!(left.is_empty(), "{}: {left:?}", cluster.id(dc));
    }
}
