//! Session guarantees on the read side: a read is served where the session's
//! token is applied, after a bounded wait, or forwarded, or refused clearly. Each
//! proxy is its own process, every link through the WAN emulator.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::time::Duration;

use meridian_testbed::{Cluster, ClusterSpec, LinkShape, Shape};
use redis::aio::MultiplexedConnection;
use support::wan::{linked, lossy, start};
use tokio::task::JoinSet;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// Links of 30 to 40 ms one way, with jitter that reorders and 1% loss: a read
/// right after a write elsewhere would find the old value without the read rule.
fn slow(i: usize, j: usize) -> LinkShape {
    let mut shape = lossy(i, j);
    shape.delay += Duration::from_millis(30);
    shape
}

fn spec(shape: Shape, seed: u64) -> ClusterSpec {
    let mut spec = ClusterSpec::new(BIN, 3, shape);
    spec.set_links(slow);
    spec.seed = seed;
    for (i, dc) in spec.dcs.iter_mut().enumerate() {
        dc.clock_offset_ms = (i as i64 - 1) * 25;
    }
    spec.session.read_wait_ms = Some(1_000);
    spec
}

/// Starts the cluster and waits for every link: sessions are about reads racing
/// replication, not links still being made.
async fn start_linked(spec: ClusterSpec) -> Cluster {
    let cluster = start(spec).await;
    linked(&cluster).await;
    cluster
}

async fn token(c: &mut MultiplexedConnection) -> String {
    redis::cmd("MERIDIAN")
        .arg("SESSION")
        .query_async(c)
        .await
        .unwrap()
}

async fn hand_over(c: &mut MultiplexedConnection, token: &str) {
    redis::cmd("MERIDIAN")
        .arg("SESSION")
        .arg(token)
        .query_async::<()>(c)
        .await
        .unwrap();
}

/// A session writes at one datacenter, then its token moves with it to a new
/// connection at another (a device switch), which reads at once: it always reads
/// its own write.
async fn device_switches_read_their_writes(shape: Shape, seed: u64) {
    let cluster = start_linked(spec(shape, seed)).await;
    for i in 0..24usize {
        let (from, to) = (i % 3, (i + 1 + i / 3 % 2) % 3);
        let key = format!("{{s{}}}:k", i % 5);
        let value = format!("v{i}");
        let mut a = cluster.connect(from).await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query_async(&mut a)
            .await
            .unwrap();
        let token = token(&mut a).await;
        let mut b = cluster.connect(to).await.unwrap();
        hand_over(&mut b, &token).await;
        let got: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut b)
            .await
            .unwrap();
        assert_eq!(
            got.as_deref(),
            Some(value.as_str()),
            "write {i} at dc{from}, read with its token at dc{to}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_switch_reads_its_own_writes_all_to_all() {
    device_switches_read_their_writes(Shape::AllToAll, 71).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_switch_reads_its_own_writes_ring() {
    device_switches_read_their_writes(Shape::Ring, 72).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_switch_reads_its_own_writes_star() {
    device_switches_read_their_writes(
        Shape::Star {
            hub: 0,
            direct: false,
        },
        73,
    )
    .await;
}

/// A session that has read a value at one datacenter never reads an older one
/// at another, wherever the writes run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_back_in_time_across_datacenters() {
    let cluster = start_linked(spec(Shape::AllToAll, 74)).await;
    // Writes of dc0 reach dc2 much later than dc1.
    let mut far = slow(0, 2);
    far.delay = Duration::from_millis(200);
    cluster.set_link(0, 2, far);
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user = (0..)
        .map(|i| format!("m{i}"))
        .find(|u| homes.home_of(u) == 0)
        .unwrap();
    let mut writer = cluster.connect(0).await.unwrap();
    let key = &format!("{{{user}}}:n");
    let mut last = 0i64;
    for round in 0..20usize {
        let _: i64 = redis::cmd("INCR")
            .arg(key)
            .query_async(&mut writer)
            .await
            .unwrap();
        // A reader that saw the newest value at dc1 (waiting for it there) moves to
        // dc2 at once.
        let mut first = cluster.connect(1).await.unwrap();
        let seen = loop {
            let n: Option<i64> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut first)
                .await
                .unwrap();
            if n.unwrap_or(0) as usize > round {
                break n.unwrap_or(0);
            }
        };
        assert!(seen >= last);
        let token = token(&mut first).await;
        let mut second = cluster.connect(2).await.unwrap();
        hand_over(&mut second, &token).await;
        let again: Option<i64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut second)
            .await
            .unwrap();
        assert!(
            again.unwrap_or(0) >= seen,
            "read {seen} at dc1, then {again:?} at dc2"
        );
        last = seen;
    }
}

/// Where the token cannot be caught up with (the link from the writer is cut),
/// `on_stale = "error"` answers at once after the wait with an error naming what
/// is missing, and `"forward"` answers from a datacenter that has it, in about a
/// round trip after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_is_refused_clearly_or_forwarded() {
    for on_stale in ["error", "forward"] {
        let mut spec = spec(Shape::AllToAll, 75);
        spec.peer_timeout_ms = Some(1_000);
        spec.session.read_wait_ms = Some(200);
        spec.session.on_stale = Some(on_stale.into());
        let cluster = start_linked(spec).await;
        let mut a = cluster.connect(0).await.unwrap();
        // dc0 and dc1 are cut off from each other (and know it); dc2 still gets
        // dc0's writes.
        cluster.cut(0, 1);
        support::wan::until("dc1 to see its link to dc0 down", || async {
            let info = cluster.replication_info(1).await.unwrap();
            info.get("peer_dc0")
                .is_some_and(|l| l.contains("state=down"))
        })
        .await;
        // A user homed at dc0, so the write runs there.
        let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
        let user = (0..)
            .map(|i| format!("stale{i}"))
            .find(|u| homes.home_of(u) == 0)
            .unwrap();
        let key = &format!("{{{user}}}:k");
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("fresh")
            .query_async(&mut a)
            .await
            .unwrap();
        let token = token(&mut a).await;
        // dc2 learns of the write (and tells dc1 by gossip) before the read.
        support::wan::until("dc2 to apply the write", || async {
            let v: Option<String> = cluster.cmd(2, &["GET", key]).await.unwrap_or(None);
            v.as_deref() == Some("fresh")
        })
        .await;
        support::wan::until("dc1 to hear that dc2 has the write", || async {
            let info = cluster.replication_info(1).await.unwrap();
            info.get("origin_dc0")
                .is_some_and(|line| line.contains("known=1,"))
        })
        .await;
        let mut b = cluster.connect(1).await.unwrap();
        hand_over(&mut b, &token).await;
        let started = Instant::now();
        let got: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(key).query_async(&mut b).await;
        let took = started.elapsed();
        match on_stale {
            "error" => {
                let e = got.unwrap_err();
                assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");
                assert!(e.to_string().contains("has not yet applied"), "{e}");
                assert!(
                    took < Duration::from_millis(1_000),
                    "refused after {took:?}"
                );
            }
            _ => {
                assert_eq!(got.unwrap().as_deref(), Some("fresh"));
                // The wait, then one round trip to dc2 (about 80 ms) and a margin.
                assert!(took < Duration::from_millis(1_500), "forwarded in {took:?}");
            }
        }
    }
}

/// A read's token names what the read saw: the newest change of the user whose
/// key it read, not everything the datacenter has applied. A session that read
/// alice's key at dc0 moves to dc1, which has alice's write but is cut off from
/// dc0's later writes for bob (same home): dc1 serves the read at once. With the
/// datacenter's whole position in the token, dc1 would refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_names_only_the_users_it_read() {
    let mut spec = spec(Shape::AllToAll, 76);
    spec.peer_timeout_ms = Some(1_000);
    spec.session.read_wait_ms = Some(200);
    spec.session.on_stale = Some("error".into());
    let cluster = start_linked(spec).await;
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let mut at_home = (0..)
        .map(|i| format!("tok{i}"))
        .filter(|u| homes.home_of(u) == 0);
    let (alice, bob) = (at_home.next().unwrap(), at_home.next().unwrap());
    let (alice_key, bob_key) = (format!("{{{alice}}}:k"), format!("{{{bob}}}:k"));
    let _: () = cluster.cmd(0, &["SET", &alice_key, "a1"]).await.unwrap();
    support::wan::until("dc1 to apply alice's write", || async {
        let v: Option<String> = cluster.cmd(1, &["GET", &alice_key]).await.unwrap_or(None);
        v.as_deref() == Some("a1")
    })
    .await;
    // dc1 hears nothing more from dc0, directly or through dc2.
    cluster.cut(0, 1);
    cluster.cut(0, 2);
    let _: () = cluster.cmd(0, &["SET", &bob_key, "b1"]).await.unwrap();
    let mut a = cluster.connect(0).await.unwrap();
    let got: Option<String> = redis::cmd("GET")
        .arg(&alice_key)
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("a1"));
    let token = token(&mut a).await;
    let mut b = cluster.connect(1).await.unwrap();
    hand_over(&mut b, &token).await;
    let got: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg(&alice_key).query_async(&mut b).await;
    assert_eq!(got.unwrap().as_deref(), Some("a1"), "token {token}");
}

/// Users served by pools: each datacenter's application has a pool of 20
/// connections shared by its users (200 in all, homed anywhere), and runs their
/// operations in random order, each on any connection of the pool, passing no
/// tokens. Each user is a session of the history: it writes its own keys and
/// reads its own and others'. Returns the violations the checker finds. On a ring,
/// a user's changes reach some datacenters through a third one while forwarded
/// writes' replies come straight back: without user scope, a read at once would
/// often miss the user's own write.
async fn pooled_sessions_violations(scope: Option<&str>, seed: u64) -> usize {
    let mut spec = spec(Shape::Ring, seed);
    spec.session.scope = scope.map(str::to_owned);
    let cluster = start_linked(spec).await;
    const USERS: u32 = 200;
    let mut tasks = JoinSet::new();
    for dc in 0..cluster.len() {
        let mut pool = Vec::new();
        for _ in 0..20 {
            pool.push(cluster.connect(dc).await.unwrap());
        }
        // This datacenter's users (every third one), served by four workers.
        let users: Vec<u32> = (0..USERS).filter(|u| *u as usize % 3 == dc).collect();
        for worker in 0..4 {
            let mine: Vec<u32> = users.iter().copied().skip(worker).step_by(4).collect();
            let seed = seed * 100 + dc as u64 * 10 + worker as u64;
            tasks.spawn(pool_worker(dc, pool.clone(), mine, seed));
        }
    }
    let mut histories = Vec::new();
    while let Some(done) = tasks.join_next().await {
        histories.extend(done.unwrap());
    }
    meridian_testbed::history::check(&histories).len()
}

/// Runs `users`' operations (four each) on random connections of `pool`: the
/// two users at a time take turns in random order, so one user's operations come
/// close together, as a user's requests do.
async fn pool_worker(
    dc: usize,
    mut pool: Vec<MultiplexedConnection>,
    mut users: Vec<u32>,
    seed: u64,
) -> Vec<meridian_testbed::history::Op> {
    use meridian_testbed::history::{Kind, Op, Value};
    const OPS: u64 = 4;
    let mut rng = meridian_testbed::Rng::new(seed);
    let mut done: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    let mut history = Vec::new();
    while !users.is_empty() {
        let i = rng.below(users.len().min(2) as u64) as usize;
        let session = users[i];
        let op = done.entry(session).or_default();
        *op += 1;
        let op = *op;
        if op == OPS {
            // The last of the rest steps in.
            users.swap_remove(i);
        }
        let write = op == 1 || rng.below(2) == 0;
        let of = match write || users.is_empty() || rng.below(2) == 0 {
            true => session,
            false => users[rng.below(users.len() as u64) as usize],
        };
        let key = format!("{{pool{of}}}:k");
        let c = &mut pool[rng.below(20) as usize];
        let kind = if write {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(Value { session, op }.text())
                .query_async(c)
                .await
                .unwrap();
            Kind::Write
        } else {
            let got: Option<String> = redis::cmd("GET").arg(&key).query_async(c).await.unwrap();
            Kind::Read(got.as_deref().and_then(Value::parse))
        };
        history.push(Op {
            session,
            op,
            dc,
            key,
            kind,
        });
    }
    history
}

/// In user scope a pool's connections share each user's guarantees: the checker
/// finds no violation. In connection scope, with no token passed, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_user_scope_pools_keep_every_users_guarantees() {
    assert_eq!(pooled_sessions_violations(Some("user"), 81).await, 0);
    assert!(
        pooled_sessions_violations(None, 82).await > 0,
        "without user scope, reads on another connection of the pool should break some guarantee"
    );
}

/// One session of the checked workload: writes of its own keys and reads of
/// everybody's, moving to another datacenter (its token handed over) now and
/// then, and whenever its proxy fails; returns its history. Each command goes
/// with `MERIDIAN SESSION`, so the session always holds its newest token.
async fn hopping_session(
    addrs: Vec<std::net::SocketAddr>,
    session: u32,
    sessions: u32,
    ops: u64,
) -> Vec<meridian_testbed::history::Op> {
    use meridian_testbed::history::{Kind, Op, Value};
    let mut state = meridian_testbed::Rng::new(u64::from(session));
    let mut next = move |n: u64| state.below(n);
    let mut dc = session as usize % addrs.len();
    let mut c: Option<MultiplexedConnection> = None;
    let mut held = String::new();
    let mut history = Vec::new();
    let mut op = 0;
    while op < ops {
        if c.is_none() || next(3) == 0 {
            if c.is_some() {
                dc = (dc + 1 + next(2) as usize) % addrs.len();
            }
            c = meridian_testbed::connect_to(addrs[dc]).await.ok();
            if let (Some(conn), false) = (c.as_mut(), held.is_empty()) {
                let handed: redis::RedisResult<()> = redis::cmd("MERIDIAN")
                    .arg("SESSION")
                    .arg(&held)
                    .query_async(conn)
                    .await;
                if handed.is_err() {
                    c = None;
                }
            }
            let Some(_) = c else {
                dc = (dc + 1) % addrs.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
        }
        let Some(conn) = c.as_mut() else { continue };
        op += 1;
        let write = next(2) == 0;
        // Its own keys for writes and half the reads, anybody's for the rest.
        let of = if write || next(2) == 0 {
            session
        } else {
            next(u64::from(sessions)) as u32
        };
        let key = format!("{{u{of}}}:k{}", next(3));
        let mut pipe = redis::pipe();
        if write {
            pipe.cmd("SET").arg(&key).arg(Value { session, op }.text());
        } else {
            pipe.cmd("GET").arg(&key);
        }
        pipe.cmd("MERIDIAN").arg("SESSION");
        let reply: redis::RedisResult<(Option<String>, String)> = pipe.query_async(conn).await;
        let kind = match reply {
            Ok((got, token)) => {
                held = token;
                match write {
                    true => Kind::Write,
                    false => Kind::Read(got.as_deref().and_then(Value::parse)),
                }
            }
            Err(_) => {
                // Refused or cut off: go on elsewhere with the token held.
                c = None;
                if !write {
                    continue;
                }
                Kind::MaybeWrite
            }
        };
        history.push(Op {
            session,
            op,
            dc,
            key,
            kind,
        });
    }
    history
}

/// Runs `sessions` hopping sessions of `ops` operations each at once.
fn hopping_sessions(
    cluster: &Cluster,
    sessions: u32,
    ops: u64,
) -> JoinSet<Vec<meridian_testbed::history::Op>> {
    let addrs: Vec<_> = (0..cluster.len()).map(|i| cluster.client_addr(i)).collect();
    let mut tasks = JoinSet::new();
    for s in 0..sessions {
        tasks.spawn(hopping_session(addrs.clone(), s, sessions, ops));
    }
    tasks
}

/// Checks the sessions' histories; fails naming the first violations.
async fn assert_no_violation(mut tasks: JoinSet<Vec<meridian_testbed::history::Op>>) {
    let mut histories = Vec::new();
    while let Some(done) = tasks.join_next().await {
        histories.extend(done.unwrap());
    }
    let violations = meridian_testbed::history::check(&histories);
    // For a failure's post-mortem: every operation, one per line.
    if let Ok(path) = std::env::var("MERIDIAN_HISTORY_DUMP") {
        let text: Vec<String> = histories.iter().map(|o| format!("{o:?}")).collect();
        std::fs::write(path, text.join("\n")).unwrap();
    }
    let first: Vec<String> = violations.iter().take(5).map(|v| v.to_string()).collect();
    assert!(
        violations.is_empty(),
        "{} violations in {} operations; first: {first:#?}",
        violations.len(),
        histories.len()
    );
}

/// Sessions that write, read each other's keys and move between datacenters
/// with their tokens: the history checker finds no violation of any guarantee,
/// and every datacenter converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_sessions_break_no_guarantee() {
    let cluster = start_linked(spec(Shape::AllToAll, 91)).await;
    // What dc0 and dc1 write reaches dc2 late: sessions moving there would read
    // the past without their tokens.
    for from in [0, 1] {
        let mut late = slow(from, 2);
        late.delay += Duration::from_millis(150);
        cluster.set_link(from, 2, late);
    }
    assert_no_violation(hopping_sessions(&cluster, 6, 40)).await;
    support::wan::converged(&cluster).await;
}

/// The same while a link is cut and healed, a datacenter is SIGKILLed and
/// restarted, and of dc1's two read replicas one is frozen and thawed, the other
/// cut off from its primary (so it falls behind) and reattached: sessions that lose their
/// proxy go on elsewhere with their token, and still no guarantee breaks; every
/// datacenter converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_sessions_break_no_guarantee_through_faults() {
    let mut spec = spec(Shape::AllToAll, 92);
    spec.peer_timeout_ms = Some(1_000);
    let (_primary, primary) = support::start_redis();
    let replicas = [
        support::start_redis_replica(primary),
        support::start_redis_replica(primary),
    ];
    spec.dcs[1].redis = Some(format!("redis://{primary}/0"));
    spec.dcs[1].replicas = replicas
        .iter()
        .map(|(_, addr)| format!("redis://{addr}/0"))
        .collect();
    let mut cluster = start_linked(spec).await;
    let sessions = hopping_sessions(&cluster, 6, 80);
    tokio::time::sleep(Duration::from_millis(500)).await;
    support::signal(&replicas[0].0, "STOP");
    let mut detached = support::Client::connect(replicas[1].1).unwrap();
    let ok = support::Resp::Simple("OK".into());
    assert_eq!(detached.cmd(&[b"REPLICAOF", b"NO", b"ONE"]), ok);
    cluster.cut(0, 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.heal(0, 1);
    support::signal(&replicas[0].0, "CONT");
    let port = primary.port().to_string();
    assert_eq!(
        detached.cmd(&[b"REPLICAOF", b"127.0.0.1", port.as_bytes()]),
        ok
    );
    cluster.kill(2).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    cluster.restart(2).await.unwrap();
    assert_no_violation(sessions).await;
    support::wan::converged(&cluster).await;
    // Both replicas serve reads again (each user's go to one of them): read
    // forty users' keys at dc1 until each has served some.
    let replica_reads = |info: &str, n: usize| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("replica_{n}:reads=")))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    support::wan::until("both of dc1's replicas to serve reads", || async {
        for u in 0..40 {
            let key = format!("{{u{u}}}:k0");
            let _: Option<String> = cluster.cmd(1, &["GET", &key]).await.unwrap();
        }
        let info: String = cluster.cmd(1, &["INFO", "replication"]).await.unwrap();
        (0..2).all(|n| replica_reads(&info, n) > 0)
    })
    .await;
}

/// A read forwarded to a datacenter whose Redis has read replicas is checked
/// against the session's token there too: a replica that has not applied what
/// the session has seen does not serve it, the primary does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_read_is_not_served_by_a_replica_behind_the_session() {
    let mut spec = spec(Shape::AllToAll, 93);
    // Stale reads are forwarded at once.
    spec.session.read_wait_ms = Some(50);
    // dc1's datagrams are held 3 s below: the links must outlast that silence.
    spec.peer_timeout_ms = Some(10_000);
    let (_primary, primary) = support::start_redis();
    let replica = support::start_redis_replica(primary);
    spec.dcs[1].redis = Some(format!("redis://{primary}/0"));
    spec.dcs[1].replicas = vec![format!("redis://{}/0", replica.1)];
    let cluster = start_linked(spec).await;
    let user = support::wan::users_homed_at(&cluster, "r", 1)
        .next()
        .unwrap();
    let key = format!("{{{user}}}:k");
    cluster.cmd::<()>(1, &["SET", &key, "old"]).await.unwrap();
    support::wan::converged(&cluster).await;
    // The replica holds "old", then stops following its primary.
    let mut on_replica = support::Client::connect(replica.1).unwrap();
    support::eventually("the replica to hold the first value", || {
        on_replica.cmd(&[b"GET", key.as_bytes()]) == support::Resp::Bulk(b"old".to_vec())
    });
    let ok = support::Resp::Simple("OK".into());
    assert_eq!(on_replica.cmd(&[b"REPLICAOF", b"NO", b"ONE"]), ok);
    // dc1's changes now reach the others late.
    for other in [0, 2] {
        let mut late = slow(1, other);
        late.delay += Duration::from_millis(3_000);
        cluster.set_link(1, other, late);
    }
    let mut at1 = cluster.connect(1).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("new")
        .query_async(&mut at1)
        .await
        .unwrap();
    let held = token(&mut at1).await;
    // The write is in Redis and no longer in dc1's memtable: reads there go to
    // Redis (the replica, or the primary).
    support::wan::until("dc1's writes to be in Redis", || async {
        let info = cluster.replication_info(1).await.unwrap();
        info.get("uncommitted_keys").map(String::as_str) == Some("0")
    })
    .await;
    // At dc2, which lacks the write, the session's read goes to dc1, whose
    // replica is behind it: the primary answers.
    let mut at2 = cluster.connect(2).await.unwrap();
    let _: () = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .arg(&held)
        .query_async(&mut at2)
        .await
        .unwrap();
    let got: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut at2)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("new"));
    let forwarded = support::wan::info_u64(&cluster, 2, "session_reads_forwarded").await;
    assert!(forwarded > 0, "the read was not forwarded");
}

/// A forwarded write that its client gave up while it was still on the WAN (it
/// closed the connection, then went on at the home with the token it held) does
/// not land after the session's next write: the home refuses it as overtaken
/// (monotonic writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_on_the_wan_does_not_land_after_the_sessions_next_write() {
    let mut spec = spec(Shape::AllToAll, 94);
    // dc2's datagrams are held 1.5 s below: the links must outlast that silence.
    spec.peer_timeout_ms = Some(10_000);
    let cluster = start_linked(spec).await;
    let user = support::wan::users_homed_at(&cluster, "g", 0)
        .next()
        .unwrap();
    let key = format!("{{{user}}}:k");
    let mut far = support::Client::connect(cluster.client_addr(2)).unwrap();
    let support::Resp::Bulk(held) = far.cmd(&[b"MERIDIAN", b"SESSION"]) else {
        panic!("no session token");
    };
    // dc2's requests reach the home late.
    let mut late = slow(2, 0);
    late.delay += Duration::from_millis(1_500);
    cluster.set_link(2, 0, late);
    far.send(&[b"SET", key.as_bytes(), b"old"]);
    support::wan::until("dc2 to forward the write", || async {
        support::wan::info_u64(&cluster, 2, "forward_in_flight").await > 0
    })
    .await;
    // The client gives the write up, and goes on at the home with its token.
    drop(far);
    let mut near = cluster.connect(0).await.unwrap();
    hand_over(&mut near, &String::from_utf8(held).unwrap()).await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("new")
        .query_async(&mut near)
        .await
        .unwrap();
    support::wan::until("the given-up write to reach its home", || async {
        support::wan::info_u64(&cluster, 0, "session_writes_overtaken").await > 0
    })
    .await;
    // dc2 is done with it, and did not send it again: its client was gone.
    support::wan::until("dc2 to be done with the write", || async {
        support::wan::info_u64(&cluster, 2, "forward_in_flight").await == 0
    })
    .await;
    let sent = support::wan::info_u64(&cluster, 2, "forward_requests").await;
    assert_eq!(sent, 1, "dc2 sent the given-up write again");
    let got: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut near)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("new"));
}

/// A connection whose token another connection took up and wrote with is still
/// in use (two devices): its forwarded writes, which the home refuses as overtaken
/// at first, are sent again in the newer epoch while it waits for them, so its
/// client never sees the refusal and every write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_behind_by_its_token_goes_on_writing() {
    let cluster = start_linked(spec(Shape::AllToAll, 95)).await;
    let user = support::wan::users_homed_at(&cluster, "g", 0)
        .next()
        .unwrap();
    let key = format!("{{{user}}}:k");
    let set = |value: &'static str| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(value);
        cmd
    };
    let mut first = cluster.connect(2).await.unwrap();
    let held = token(&mut first).await;
    let mut second = cluster.connect(1).await.unwrap();
    hand_over(&mut second, &held).await;
    let _: () = set("a").query_async(&mut second).await.unwrap();
    let _: () = set("b").query_async(&mut first).await.unwrap();
    // The home refused it once, and dc2 sent it again.
    let refused = support::wan::info_u64(&cluster, 0, "session_writes_overtaken").await;
    assert_eq!(refused, 1);
    let got: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut first)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("b"));
    // The first connection writes in the newer epoch from now on.
    let _: () = set("c").query_async(&mut first).await.unwrap();
    let _: () = set("d").query_async(&mut second).await.unwrap();
    let refused = support::wan::info_u64(&cluster, 0, "session_writes_overtaken").await;
    assert_eq!(refused, 1);
}
