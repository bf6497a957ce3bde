//! Homes that follow their users: a user's home moves to where its writes come
//! from, or where an operator sends it, with no write lost and never two homes
//! at once. Each proxy is its own process, every link through the testbed's WAN
//! emulator with delay, jitter and loss.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_testbed::history;
use meridian_testbed::{Cluster, ClusterSpec, FollowSection, Shape};
use redis::aio::MultiplexedConnection;
use support::wan::{
    CONVERGE, converged, info_u64, linked, logs, lossy, start, until, users_homed_at,
};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// Three datacenters whose homes follow their users: a move once 80% of at
/// least 10 writes in a one-second window come from elsewhere, at most one
/// move per user every `min_interval_ms`.
fn spec(seed: u64, min_interval_ms: u64) -> ClusterSpec {
    let mut spec = ClusterSpec::new(BIN, 3, Shape::AllToAll);
    spec.set_links(lossy);
    spec.seed = seed;
    spec.session.read_wait_ms = Some(2_000);
    spec.homes.follow = Some(FollowSection {
        share: Some(0.8),
        min_writes: Some(10),
        window_ms: Some(1_000),
        min_interval_ms: Some(min_interval_ms),
    });
    spec
}

/// A field of `MERIDIAN HOME <user>` as datacenter `dc` answers it.
async fn home_field(cluster: &Cluster, dc: usize, user: &str, field: &str) -> String {
    let fields: Vec<String> = cluster.cmd(dc, &["MERIDIAN", "HOME", user]).await.unwrap();
    let at = fields.iter().position(|f| f == field);
    at.and_then(|i| fields.get(i + 1).cloned())
        .unwrap_or_default()
}

/// INCR `key`, sent again while the answer is `TRYAGAIN` (the write did not
/// run: a move under way, a home catching up with the session).
async fn incr(c: &mut MultiplexedConnection, key: &str) -> i64 {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let reply: redis::RedisResult<i64> = redis::cmd("INCR").arg(key).query_async(c).await;
        match reply {
            Ok(n) => return n,
            Err(e) if e.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("INCR {key}: {e}"),
        }
    }
}

/// SET `key` to `value`, sent again while the answer is `TRYAGAIN`.
async fn set(c: &mut MultiplexedConnection, key: &str, value: &str) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let reply: redis::RedisResult<()> =
            redis::cmd("SET").arg(key).arg(value).query_async(c).await;
        match reply {
            Ok(()) => return,
            Err(e) if e.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("SET {key}: {e}"),
        }
    }
}

/// A user's session, recorded for the history checker: an INCR counter and a
/// key it SETs to unique values, read back after each write.
struct Session {
    key: String,
    counter: String,
    ops: u64,
    last: i64,
    writes: u64,
    history: Vec<history::Op>,
}

impl Session {
    /// INCR (counting exactly), SET, and a read of the SET key, at `dc`.
    async fn step(&mut self, c: &mut MultiplexedConnection, dc: usize) {
        let n = incr(c, &self.counter).await;
        assert_eq!(n, self.last + 1, "every INCR counts once");
        self.last = n;
        self.ops += 1;
        let value = history::Value {
            session: 1,
            op: self.ops,
        };
        set(c, &self.key, &value.text()).await;
        self.writes += 2;
        self.record(dc, history::Kind::Write);
        let got: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(c)
            .await
            .unwrap();
        self.ops += 1;
        self.record(
            dc,
            history::Kind::Read(got.as_deref().and_then(history::Value::parse)),
        );
    }

    fn record(&mut self, dc: usize, kind: history::Kind) {
        self.history.push(history::Op {
            session: 1,
            op: self.ops,
            dc,
            key: self.key.clone(),
            kind,
        });
    }
}

/// A user homed at dc0 whose client moves to dc1 (its session token handed
/// over): the home follows, its writes then run at dc1 (their changes' origin),
/// the counter stays exact, and the history checker finds no violation in the
/// session spanning the move nor in a reader's session in dc2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_follows_its_user_to_another_region() {
    let cluster = start(spec(31, 60_000)).await;
    linked(&cluster).await;
    let user = users_homed_at(&cluster, "u", 0).next().unwrap();
    let key = format!("{{{user}}}:n");
    assert_eq!(home_field(&cluster, 1, &user, "home").await, "dc0");
    let mut session = Session {
        key: format!("{{{user}}}:s"),
        counter: key.clone(),
        ops: 0,
        last: 0,
        writes: 0,
        history: Vec::new(),
    };
    // A reader in dc2 follows the user's key meanwhile (its own session).
    let mut reader = cluster.connect(2).await.unwrap();
    let mut reads = Vec::new();
    // The client in dc0 first.
    let mut at0 = cluster.connect(0).await.unwrap();
    for _ in 0..12 {
        session.step(&mut at0, 0).await;
    }
    // Then in dc1, its token handed over, until the home has followed it there.
    let token: String = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .query_async(&mut at0)
        .await
        .unwrap();
    let mut at1 = cluster.connect(1).await.unwrap();
    let _: () = redis::cmd("MERIDIAN")
        .arg("SESSION")
        .arg(&token)
        .query_async(&mut at1)
        .await
        .unwrap();
    let started = Instant::now();
    while home_field(&cluster, 1, &user, "home").await != "dc1" {
        assert!(
            started.elapsed() < CONVERGE,
            "the home never followed\n{}",
            logs(&cluster)
        );
        session.step(&mut at1, 1).await;
        let got: Option<String> = redis::cmd("GET")
            .arg(&session.key)
            .query_async(&mut reader)
            .await
            .unwrap();
        reads.push(got);
    }
    let before_move = session.writes;
    let local_before = info_u64(&cluster, 1, "home_writes_local").await;
    for _ in 0..15 {
        session.step(&mut at1, 1).await;
    }
    // dc1 ran the last 30 writes itself, as the home, for its own client.
    assert!(info_u64(&cluster, 1, "home_writes_local").await >= local_before + 30);
    assert_eq!(info_u64(&cluster, 0, "home_moves").await, 1);
    let applied = converged(&cluster).await;
    let last = session.last;
    for dc in 0..3 {
        let got: i64 = cluster.cmd(dc, &["GET", &key]).await.unwrap();
        assert_eq!(got, last, "the counter at dc{dc}");
        assert_eq!(home_field(&cluster, dc, &user, "home").await, "dc1");
        assert_eq!(info_u64(&cluster, dc, "conflicts").await, 0);
    }
    // No session guarantee broken, across the move.
    let mut ops = std::mem::take(&mut session.history);
    for (i, got) in reads.into_iter().enumerate() {
        ops.push(history::Op {
            session: 2,
            op: i as u64 + 1,
            dc: 2,
            key: session.key.clone(),
            kind: history::Kind::Read(got.as_deref().and_then(history::Value::parse)),
        });
    }
    let violations = history::check(&ops);
    assert!(violations.is_empty(), "{violations:?}");
    // Every write ran at one home: dc0 made the writes before the move and the
    // move itself, dc1 every write after it.
    let (at_dc0, at_dc1) = (applied.get("dc0"), applied.get("dc1"));
    assert_eq!(at_dc0 + at_dc1, session.writes + 1, "{applied}");
    assert!(at_dc1 >= 30 && at_dc0 > 24, "{applied}");
    assert!(at_dc0 <= before_move + 1, "{applied}");
    // The record is meridian's own: clients cannot read or write it, and it is
    // not among the keys.
    let own = format!("__meridian:home:{user}");
    let refused: Result<Option<String>, _> = cluster.cmd(1, &["GET", &own]).await;
    assert!(refused.is_err(), "{refused:?}");
    let mut keys: Vec<String> = cluster.cmd(1, &["KEYS", "*"]).await.unwrap();
    keys.sort();
    assert_eq!(keys, vec![key.clone(), session.key.clone()]);
    let size: i64 = cluster.cmd(1, &["DBSIZE"]).await.unwrap();
    assert_eq!(size, 2);
    // No move to a datacenter the home cannot reach: the user stays at dc1.
    cluster.cut(1, 2);
    until("dc1 to see dc2 down", || async {
        let info = cluster.replication_info(1).await.unwrap();
        info.get("peer_dc2")
            .is_some_and(|v| !v.contains("state=up"))
    })
    .await;
    let refused: Result<String, _> = cluster.cmd(0, &["MERIDIAN", "HOME", &user, "dc2"]).await;
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("dc2 cannot be reached from dc1"), "{error}");
    assert_eq!(home_field(&cluster, 1, &user, "home").await, "dc1");
}

/// Clients in all three regions INCR one user's counter while an operator moves
/// its home around the three: every INCR ran exactly once (the replies are
/// 1..=N, none twice), and no write was lost or overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_everywhere_during_moves_lose_nothing() {
    const PER_DC: usize = 150;
    // Moves by hand only, so the home ends where the last one sent it.
    let mut spec = spec(32, 600_000);
    spec.homes.follow = None;
    let cluster = std::sync::Arc::new(start(spec).await);
    linked(&cluster).await;
    let user = users_homed_at(&cluster, "u", 0).next().unwrap();
    let key = format!("{{{user}}}:n");
    let mut tasks = JoinSet::new();
    for dc in 0..3 {
        let mut c = cluster.connect(dc).await.unwrap();
        let key = key.clone();
        tasks.spawn(async move {
            let mut replies = Vec::with_capacity(PER_DC);
            for _ in 0..PER_DC {
                replies.push(incr(&mut c, &key).await);
            }
            replies
        });
    }
    // Moves by hand, each asked at a datacenter other than the home, while the
    // writers run.
    let mut moves = 0;
    for (ask_at, to) in [(2, "dc1"), (0, "dc2"), (1, "dc0"), (2, "dc1")] {
        sleep(Duration::from_millis(150)).await;
        let done: String = cluster
            .cmd(ask_at, &["MERIDIAN", "HOME", &user, to])
            .await
            .unwrap();
        assert!(done.contains(&format!("to {to}")), "{done}");
        moves += 1;
    }
    let mut replies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        replies.extend(done.unwrap());
    }
    let total = 3 * PER_DC;
    let distinct: BTreeSet<i64> = replies.iter().copied().collect();
    assert_eq!(distinct.len(), total, "an INCR reply came twice");
    assert_eq!(distinct, (1..=total as i64).collect::<BTreeSet<_>>());
    let applied = converged(&cluster).await;
    for dc in 0..3 {
        let got: i64 = cluster.cmd(dc, &["GET", &key]).await.unwrap();
        assert_eq!(
            got,
            total as i64,
            "the counter at dc{dc}\n{}",
            logs(&cluster)
        );
        assert_eq!(home_field(&cluster, dc, &user, "home").await, "dc1");
        assert_eq!(info_u64(&cluster, dc, "conflicts").await, 0);
    }
    // One change per write and per move, nothing else.
    let changes: u64 = applied.iter().map(|(_, seq)| seq).sum();
    assert_eq!(changes, (total + moves) as u64, "{applied}");
}

/// A pinned user never moves, whatever its traffic or an operator asks; a user
/// alternating between two regions faster than the rule's interval moves at
/// most once per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_users_stay_and_commuters_move_a_bounded_number_of_times() {
    const INTERVAL_MS: u64 = 2_000;
    let mut spec = spec(33, INTERVAL_MS);
    spec.homes.pins.insert("pinned".into(), "dc0".into());
    let cluster = start(spec).await;
    linked(&cluster).await;
    let mut at1 = cluster.connect(1).await.unwrap();
    for _ in 0..200 {
        incr(&mut at1, "{pinned}:n").await;
    }
    assert_eq!(home_field(&cluster, 1, "pinned", "home").await, "dc0");
    let refused: Result<String, _> = cluster.cmd(1, &["MERIDIAN", "HOME", "pinned", "dc1"]).await;
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("pinned"), "{error}");
    // A commuter: 600 ms in dc1, 600 ms in dc2, and so on, for 8 s.
    let user = users_homed_at(&cluster, "u", 0).next().unwrap();
    let key = format!("{{{user}}}:n");
    let mut at2 = cluster.connect(2).await.unwrap();
    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let c = match (started.elapsed().as_millis() / 600) % 2 {
            0 => &mut at1,
            _ => &mut at2,
        };
        incr(c, &key).await;
        writes += 1;
        sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_millis() as u64;
    let moves: u64 = {
        let mut sum = 0;
        for dc in 0..3 {
            sum += info_u64(&cluster, dc, "home_moves").await;
        }
        sum
    };
    assert!(
        moves <= elapsed / INTERVAL_MS + 1,
        "{moves} moves in {elapsed} ms"
    );
    until("the counter everywhere", || async {
        let mut all = true;
        for dc in 0..3 {
            let got: Option<i64> = cluster.cmd(dc, &["GET", &key]).await.unwrap();
            all &= got == Some(writes);
        }
        all
    })
    .await;
}

/// The old home is SIGKILLed right as it moves a user while another region
/// writes: after it restarts every datacenter names the same one home, and
/// every acknowledged INCR is in the counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_killed_during_a_move_leaves_one_home_and_loses_nothing() {
    // Moves by hand only: the writes from dc2 must not move the user there.
    let mut spec = spec(34, 600_000);
    spec.homes.follow = None;
    let mut cluster = start(spec).await;
    linked(&cluster).await;
    let user = users_homed_at(&cluster, "u", 0).next().unwrap();
    let key = format!("{{{user}}}:n");
    let mut at2 = cluster.connect(2).await.unwrap();
    for _ in 0..20 {
        incr(&mut at2, &key).await;
    }
    // Ask for the move and kill dc0 at once: the move may or may not have been
    // logged when it dies.
    let mut at0 = cluster.connect(0).await.unwrap();
    let mut ask = redis::cmd("MERIDIAN");
    ask.arg("HOME").arg(&user).arg("dc1");
    let asked = ask.query_async::<String>(&mut at0);
    let _ = tokio::time::timeout(Duration::from_millis(2), asked).await;
    cluster.kill(0).unwrap();
    // Writes from dc2 go on: acknowledged ones count, refused ones did not run,
    // and an unknown outcome may have.
    let (mut acked, mut unknown) = (20i64, 0i64);
    for _ in 0..20 {
        let reply: redis::RedisResult<i64> =
            redis::cmd("INCR").arg(&key).query_async(&mut at2).await;
        match reply {
            Ok(_) => acked += 1,
            Err(e) if e.code() == Some("TRYAGAIN") => {}
            Err(_) => unknown += 1,
        }
    }
    cluster.restart(0).await.unwrap();
    linked(&cluster).await;
    for _ in 0..20 {
        incr(&mut at2, &key).await;
        acked += 1;
    }
    converged(&cluster).await;
    let home = home_field(&cluster, 0, &user, "home").await;
    assert!(home == "dc0" || home == "dc1", "{home}");
    for dc in 0..3 {
        assert_eq!(home_field(&cluster, dc, &user, "home").await, home);
        let got: i64 = cluster.cmd(dc, &["GET", &key]).await.unwrap();
        assert!(
            (acked..=acked + unknown).contains(&got),
            "dc{dc} counts {got}, {acked} acknowledged, {unknown} unknown\n{}",
            logs(&cluster)
        );
        assert_eq!(info_u64(&cluster, dc, "conflicts").await, 0);
    }
}

/// With `default = "first-write"` a new user lives where its first write came
/// from, placed by its rendezvous home (so two regions writing a new user at
/// once still give it one home); after that only following or an operator
/// moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_lives_where_its_first_write_came_from() {
    let mut spec = spec(35, 600_000);
    spec.homes.follow = None;
    spec.homes.default = Some("first-write".into());
    let cluster = std::sync::Arc::new(start(spec).await);
    linked(&cluster).await;
    // First written from dc2, though its rendezvous home is dc0.
    let user = users_homed_at(&cluster, "u", 0).next().unwrap();
    let key = format!("{{{user}}}:n");
    let mut at2 = cluster.connect(2).await.unwrap();
    assert_eq!(incr(&mut at2, &key).await, 1);
    until("the user placed at dc2", || async {
        home_field(&cluster, 2, &user, "home").await == "dc2"
    })
    .await;
    let why = home_field(&cluster, 2, &user, "why").await;
    assert!(why.contains("first write"), "{why}");
    let before = info_u64(&cluster, 2, "home_writes_local").await;
    for n in 2..=11 {
        assert_eq!(incr(&mut at2, &key).await, n);
    }
    assert!(info_u64(&cluster, 2, "home_writes_local").await >= before + 10);
    // First written at its rendezvous home: it stays there, whoever writes next.
    let stay = users_homed_at(&cluster, "u", 1).next().unwrap();
    let stay_key = format!("{{{stay}}}:n");
    let mut at1 = cluster.connect(1).await.unwrap();
    incr(&mut at1, &stay_key).await;
    until("the user placed at dc1", || async {
        home_field(&cluster, 0, &stay, "why")
            .await
            .contains("first write")
    })
    .await;
    for _ in 0..30 {
        incr(&mut at2, &stay_key).await;
    }
    assert_eq!(home_field(&cluster, 2, &stay, "home").await, "dc1");
    // Two regions write a new user at once: one home, every INCR once.
    let raced = users_homed_at(&cluster, "u", 0).nth(1).unwrap();
    let raced_key = format!("{{{raced}}}:n");
    let mut tasks = JoinSet::new();
    for dc in [1, 2] {
        let mut c = cluster.connect(dc).await.unwrap();
        let key = raced_key.clone();
        tasks.spawn(async move {
            let mut replies = Vec::new();
            for _ in 0..30 {
                replies.push(incr(&mut c, &key).await);
            }
            replies
        });
    }
    let mut replies = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        replies.extend(done.unwrap());
    }
    assert_eq!(replies, (1..=60).collect::<BTreeSet<i64>>());
    converged(&cluster).await;
    let home = home_field(&cluster, 0, &raced, "home").await;
    assert!(home == "dc1" || home == "dc2", "{home}");
    for dc in 0..3 {
        assert_eq!(home_field(&cluster, dc, &raced, "home").await, home);
        let got: i64 = cluster.cmd(dc, &["GET", &raced_key]).await.unwrap();
        assert_eq!(got, 60);
        assert_eq!(info_u64(&cluster, dc, "conflicts").await, 0);
    }
}
