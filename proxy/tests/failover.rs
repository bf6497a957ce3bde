//! Failover under `on_home_down = "next-in-line"`: a home cut off from the others
//! is taken over by the next datacenter in its users' order, after a majority
//! agrees (Raft) and the old home's lease has run out; the cut-off home fences
//! itself; after the heal it takes its users back once it has applied what was
//! written for them meanwhile. Each proxy is its own process, every link through
//! the WAN emulator.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::time::Duration;

use meridian_testbed::{Cluster, ClusterSpec, Shape};
use support::wan::{converged, info_u64, linked, logs, lossy, start, until};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

fn spec(seed: u64) -> ClusterSpec {
    let mut spec = ClusterSpec::new(BIN, 3, Shape::AllToAll);
    spec.set_links(lossy);
    spec.seed = seed;
    spec.peer_timeout_ms = Some(1_000);
    spec.homes.on_home_down = Some("next-in-line".into());
    spec
}

/// Heals `home`'s links to every other datacenter, waits until `next` (which
/// wrote for its users meanwhile) sees it resume and it writes `key` = `value`
/// itself, then until everything converged.
async fn heal_and_resume(cluster: &Cluster, home: usize, next: usize, key: &str, value: &str) {
    let failbacks = info_u64(cluster, next, "failbacks").await;
    for other in (0..cluster.len()).filter(|&d| d != home) {
        cluster.heal(home, other);
    }
    until("the home to resume", || async {
        info_u64(cluster, next, "failbacks").await > failbacks
    })
    .await;
    until("the home to write again", || async {
        set(cluster, home, key, value).await.is_ok()
    })
    .await;
    converged(cluster).await;
}

/// SET `key` `value` at datacenter `dc`: the reply, or the error's text.
/// A new connection to datacenter `dc` after one was lost. A proxy of a loaded
/// two-core machine may take longer than one connection timeout (5 s) to answer
/// while links flap; a wedged one never answers, and fails the test after 30 s.
async fn reconnect(cluster: &Cluster, dc: usize) -> redis::aio::MultiplexedConnection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.connect(dc).await {
            Ok(c) => return c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("dc{dc}: connecting again after {e}");
            }
            Err(e) => panic!("dc{dc} took no connection for 30 s: {e}"),
        }
    }
}

async fn set(cluster: &Cluster, dc: usize, key: &str, value: &str) -> Result<(), String> {
    cluster
        .cmd::<()>(dc, &["SET", key, value])
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_home_is_fenced_taken_over_and_given_back() {
    let cluster = start(spec(301)).await;
    linked(&cluster).await;
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user = (0..)
        .map(|i| format!("f{i}"))
        .find(|u| homes.home_of(u) == 0)
        .unwrap();
    let next = homes.ranking(&user)[1];
    let third = 3 - next;
    let key = format!("{{{user}}}:k");
    // The agreement elects a leader and the home's lease starts: then it writes.
    until("the home to write", || async {
        set(&cluster, 0, &key, "v0").await.is_ok()
    })
    .await;
    converged(&cluster).await;
    let mut failbacks = Vec::new();
    for dc in 0..3 {
        failbacks.push(info_u64(&cluster, dc, "failbacks").await);
    }
    // The home is cut off from both others.
    cluster.cut(0, 1);
    cluster.cut(0, 2);
    let cut = tokio::time::Instant::now();
    // The next in line takes the user's writes, directly and forwarded.
    let last = std::sync::Mutex::new(String::new());
    let took_over = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match set(&cluster, next, &key, "v1").await {
                Ok(()) => return,
                Err(e) => *last.lock().unwrap() = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        took_over.is_ok(),
        "the next in line never took the user's writes; last error: {}\n{}",
        last.lock().unwrap(),
        logs(&cluster)
    );
    eprintln!(
        "writes for the cut-off home's user ran again after {:?}",
        cut.elapsed()
    );
    // The third datacenter forwards them there once it has applied the agreed
    // epoch too (the agreement's followers learn a commit a heartbeat later).
    until(
        "the third datacenter to forward to the next in line",
        || async { set(&cluster, third, &key, "v2").await.is_ok() },
    )
    .await;
    // The cut-off home refuses them: its lease is gone.
    let refused = set(&cluster, 0, &key, "never").await.unwrap_err();
    assert!(refused.contains("fenced"), "{refused}\n{}", logs(&cluster));
    assert!(info_u64(&cluster, 0, "writes_fenced").await > 0);
    assert!(info_u64(&cluster, next, "takeovers").await > 0);
    assert!(info_u64(&cluster, next, "home_epoch").await > 0);
    // Healed, the home returns, applies what was written meanwhile, resumes:
    // every datacenter sees it back in service.
    cluster.heal(0, 1);
    cluster.heal(0, 2);
    let back = tokio::time::timeout(support::wan::CONVERGE, async {
        for (dc, &before) in failbacks.iter().enumerate() {
            while info_u64(&cluster, dc, "failbacks").await == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await;
    assert!(back.is_ok(), "the home never came back\n{}", logs(&cluster));
    // It writes its user's data itself again: the write's token names it.
    let mut c = cluster.connect(0).await.unwrap();
    let (_, token): ((), String) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg("v3")
        .cmd("MERIDIAN")
        .arg("SESSION")
        .query_async(&mut c)
        .await
        .unwrap();
    let token: meridian_policies::SessionToken = token.parse().unwrap();
    assert!(token.vector().get("dc0") > 0, "written elsewhere: {token}");
    converged(&cluster).await;
    for dc in 0..3 {
        let got: Option<String> = cluster.cmd(dc, &["GET", &key]).await.unwrap();
        assert_eq!(got.as_deref(), Some("v3"), "at dc{dc}");
        assert_eq!(info_u64(&cluster, dc, "conflicts").await, 0, "at dc{dc}");
    }
}

/// Every datacenter cut off from every other: no majority anywhere, so nobody
/// takes over; each refuses writes for users homed elsewhere at once, and, its
/// lease gone, its own users' writes too. The agreed epoch never moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_nobody_takes_over() {
    let cluster = start(spec(302)).await;
    linked(&cluster).await;
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user_of = |dc: usize| {
        (0..)
            .map(|i| format!("n{i}"))
            .find(|u| homes.home_of(u) == dc)
            .unwrap()
    };
    let (mine, theirs) = (
        format!("{{{}}}:k", user_of(0)),
        format!("{{{}}}:k", user_of(1)),
    );
    until("the home to write", || async {
        set(&cluster, 0, &mine, "a").await.is_ok()
    })
    .await;
    let epoch = info_u64(&cluster, 0, "home_epoch").await;
    for dc in 1..3 {
        assert_eq!(info_u64(&cluster, dc, "home_epoch").await, epoch);
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        cluster.cut(a, b);
    }
    until("dc0 to refuse its own user's writes, fenced", || async {
        set(&cluster, 0, &mine, "b")
            .await
            .is_err_and(|e| e.contains("fenced"))
    })
    .await;
    let refused = set(&cluster, 0, &theirs, "c").await.unwrap_err();
    assert!(
        refused.contains("unreachable") && refused.contains("next-in-line"),
        "{refused}"
    );
    // Long enough for a takeover, had one been possible (peer timeout, lease,
    // an election): nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for dc in 0..3 {
        assert_eq!(
            info_u64(&cluster, dc, "home_epoch").await,
            epoch,
            "at dc{dc}"
        );
        assert_eq!(info_u64(&cluster, dc, "takeovers").await, 0, "at dc{dc}");
    }
}

/// Writers at every datacenter increment one counter of a user homed at dc0
/// while dc0's links flap (cut and healed every 500 ms for 20 s), then go down
/// and up again long enough for takeovers and failbacks; the epochs stay few.
/// What dc0 acknowledges in a cut before its lease runs out reaches nobody, and
/// the next in line overwrites it: that loss of asynchronous
/// failover must be in the conflict log, every lost increment of it. And the
/// two sides never write at once: had the next in line written while dc0 still
/// did, some of its own writes would have lost to dc0's later ones, so every
/// conflict's lost write is dc0's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_that_comes_and_goes_never_has_two_writers() {
    let cluster = std::sync::Arc::new(start(spec(303)).await);
    linked(&cluster).await;
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user = (0..)
        .map(|i| format!("c{i}"))
        .find(|u| homes.home_of(u) == 0)
        .unwrap();
    let key = format!("{{{user}}}:n");
    until("the home to write", || async {
        set(&cluster, 0, &key, "0").await.is_ok()
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for dc in 0..3 {
        let (cluster, key, stop) = (cluster.clone(), key.clone(), stop.clone());
        writers.spawn(async move {
            let (mut acked, mut unknown) = (0u64, 0u64);
            let mut c = cluster.connect(dc).await.unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r: redis::RedisResult<i64> =
                    redis::cmd("INCR").arg(&key).query_async(&mut c).await;
                match r {
                    Ok(_) => acked += 1,
                    Err(e) if e.to_string().contains("may or may not") => unknown += 1,
                    Err(e) if e.is_io_error() || e.is_timeout() => {
                        unknown += 1;
                        c = reconnect(&cluster, dc).await;
                    }
                    // Refused before it ran: fenced, out of reach, handing over.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            (acked, unknown)
        });
    }
    // Cut and healed every 500 ms for 20 s, then three cuts long enough for a
    // takeover each.
    let flapping = tokio::time::Instant::now();
    while flapping.elapsed() < Duration::from_secs(20) {
        cluster.cut(0, 1);
        cluster.cut(0, 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.heal(0, 1);
        cluster.heal(0, 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let flapped = info_u64(&cluster, 1, "home_epoch").await;
    for _ in 0..3 {
        cluster.cut(0, 1);
        cluster.cut(0, 2);
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        cluster.heal(0, 1);
        cluster.heal(0, 2);
        tokio::time::sleep(Duration::from_millis(2_000)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut unknown) = (0, 0);
    while let Some(done) = writers.join_next().await {
        let (a, u) = done.unwrap();
        acked += a;
        unknown += u;
    }
    converged(&cluster).await;
    let total: i64 = cluster
        .cmd::<Option<i64>>(0, &["GET", &key])
        .await
        .unwrap()
        .unwrap_or(0);
    let total = total as u64;
    assert!(
        total <= acked + unknown,
        "counter {total}, {acked} increments acknowledged, {unknown} of unknown outcome"
    );
    let (mut takeovers, mut most_conflicts) = (0, 0);
    for dc in 0..3 {
        takeovers += info_u64(&cluster, dc, "takeovers").await;
        most_conflicts = most_conflicts.max(info_u64(&cluster, dc, "conflicts").await);
        let entries: Vec<std::collections::HashMap<String, Option<String>>> = cluster
            .cmd(dc, &["MERIDIAN", "CONFLICTS", "1000"])
            .await
            .unwrap();
        for entry in entries {
            let lost = entry.get("lost").cloned().flatten().unwrap_or_default();
            assert!(
                lost.contains("@dc0#"),
                "at dc{dc}, a write of {lost} was lost: two datacenters wrote at once? {entry:?}"
            );
        }
    }
    eprintln!(
        "{acked} increments acknowledged, {unknown} of unknown outcome, counter {total}; {most_conflicts} conflicts logged; {takeovers} takeovers seen"
    );
    assert!(takeovers > 0, "the cuts were long enough for a takeover");
    // Each takeover and failback is at most three epochs (out, returning, back);
    // the flapping may have made one round too.
    let epoch = info_u64(&cluster, 1, "home_epoch").await;
    assert!(
        flapped <= 3 && epoch <= flapped + 3 * 3,
        "epoch {flapped} after the flapping, {epoch} in the end"
    );
    assert!(
        acked.saturating_sub(total) <= most_conflicts,
        "{} acknowledged increments are gone, {most_conflicts} conflicts logged",
        acked.saturating_sub(total)
    );
}

/// Five datacenters: a home is cut off and, at once, the agreement's leader is
/// SIGKILLed. The three left are a majority: they elect a new leader, take the
/// home out, and the next in line writes for its users. Once the leader is back
/// and the home healed, the home resumes and everything converges, with no
/// conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_survives_the_loss_of_the_agreement_s_leader() {
    let mut spec = spec(304);
    spec = ClusterSpec {
        dcs: (0..5)
            .map(|i| meridian_testbed::DcSpec::new(format!("dc{i}")))
            .collect(),
        ..spec
    };
    spec.set_links(lossy);
    let mut cluster = start(spec).await;
    linked(&cluster).await;
    let leader = tokio::time::timeout(support::wan::CONVERGE, async {
        loop {
            let info = cluster.replication_info(0).await.unwrap();
            if let Some(l) = info
                .get("home_agreement_leader")
                .and_then(|v| v.parse::<usize>().ok())
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("an agreement leader");
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let home = (0..5).find(|&d| d != leader).unwrap();
    let (user, next) = (0..)
        .map(|i| format!("k{i}"))
        .find_map(|u| {
            let ranking = homes.ranking(&u);
            (ranking[0] == home && ranking[1] != leader).then(|| (u, ranking[1]))
        })
        .unwrap();
    let key = format!("{{{user}}}:k");
    until("the home to write", || async {
        set(&cluster, home, &key, "v0").await.is_ok()
    })
    .await;
    converged(&cluster).await;
    for other in (0..5).filter(|&d| d != home) {
        cluster.cut(home, other);
    }
    cluster.kill(leader).unwrap();
    until("the next in line to take the user's writes", || async {
        set(&cluster, next, &key, "v1").await.is_ok()
    })
    .await;
    cluster.restart(leader).await.unwrap();
    heal_and_resume(&cluster, home, next, &key, "v2").await;
    for dc in 0..5 {
        let got: Option<String> = cluster.cmd(dc, &["GET", &key]).await.unwrap();
        assert_eq!(got.as_deref(), Some("v2"), "at dc{dc}");
        assert_eq!(info_u64(&cluster, dc, "conflicts").await, 0, "at dc{dc}");
    }
}

/// What the writers of [`writers_everywhere`] had acknowledged.
#[derive(Debug, Default)]
struct Tally {
    /// Acknowledged increments per counter.
    increments: std::collections::HashMap<String, u64>,
    /// Keys written once each, acknowledged.
    written: Vec<String>,
    /// Values set and then acknowledged by `WAIT 1` (another datacenter had them).
    waited: std::collections::HashSet<String>,
    /// Writes whose outcome the client could not know.
    unknown: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (key, n) in other.increments {
            *self.increments.entry(key).or_default() += n;
        }
        self.written.extend(other.written);
        self.waited.extend(other.waited);
        self.unknown += other.unknown;
    }
}

/// A writer at `dc` until `stop`: for the `users` in turn, increments a counter,
/// writes a key of its own, and sets a value it then waits (`WAIT 1`) to reach
/// another datacenter. Refused writes are retried after a pause.
async fn writer(
    cluster: std::sync::Arc<Cluster>,
    dc: usize,
    users: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut c = cluster.connect(dc).await.unwrap();
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let user = &users[n % users.len()];
        let (counter, own, set) = (
            format!("{{{user}}}:n"),
            format!("{{{user}}}:w:{dc}:{n}"),
            format!("{{{user}}}:s"),
        );
        let value = format!("dc{dc}-{n}");
        let result: redis::RedisResult<()> = match n % 3 {
            0 => redis::cmd("INCR").arg(&counter).query_async(&mut c).await,
            1 => redis::cmd("SET").arg(&own).arg(1).query_async(&mut c).await,
            _ => {
                let done: redis::RedisResult<((), i64)> = redis::pipe()
                    .cmd("SET")
                    .arg(&set)
                    .arg(&value)
                    .cmd("WAIT")
                    .arg(1)
                    .arg(2_000)
                    .query_async(&mut c)
                    .await;
                done.map(|((), reached)| {
                    if reached >= 1 {
                        tally.waited.insert(value.clone());
                    }
                })
            }
        };
        match result {
            Ok(()) => match n % 3 {
                0 => *tally.increments.entry(counter).or_default() += 1,
                1 => tally.written.push(own),
                _ => {}
            },
            Err(e) if e.to_string().contains("may or may not") => tally.unknown += 1,
            Err(e) if e.is_io_error() || e.is_timeout() => {
                tally.unknown += 1;
                c = reconnect(&cluster, dc).await;
            }
            // Refused before it ran: fenced, out of reach, handing over.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    tally
}

/// Five datacenters, each with a writer for users homed at `home` and one homed
/// elsewhere; `home` is cut from the others for three seconds, then healed.
/// Returns the cluster (converged), what was acknowledged, and how long after
/// the cut a probe write for a user of `home` at `next` first ran (`Ok`) or was
/// refused (`Err`, under `reject`: the refusal's text).
async fn writers_everywhere(
    policy: &str,
    seed: u64,
) -> (
    std::sync::Arc<Cluster>,
    Tally,
    Result<Duration, String>,
    usize,
) {
    let mut spec = spec(seed);
    spec.dcs = (0..5)
        .map(|i| meridian_testbed::DcSpec::new(format!("dc{i}")))
        .collect();
    spec.set_links(lossy);
    spec.homes.on_home_down = Some(policy.into());
    let cluster = std::sync::Arc::new(start(spec).await);
    linked(&cluster).await;
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let home = 0;
    let of_home: Vec<String> = (0..)
        .map(|i| format!("w{i}"))
        .filter(|u| homes.home_of(u) == home)
        .take(3)
        .collect();
    let elsewhere = (0..)
        .map(|i| format!("e{i}"))
        .find(|u| homes.home_of(u) != home)
        .unwrap();
    let probe = of_home[0].clone();
    let next = homes.ranking(&probe)[1];
    let probe_key = format!("{{{probe}}}:probe");
    until("the home to write", || async {
        set(&cluster, home, &probe_key, "0").await.is_ok()
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for dc in 0..5 {
        let mut users = of_home[1..].to_vec();
        users.push(elsewhere.clone());
        writers.spawn(writer(cluster.clone(), dc, users, stop.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for other in (0..5).filter(|&d| d != home) {
        cluster.cut(home, other);
    }
    let cut = tokio::time::Instant::now();
    let mut probed = Err(String::new());
    while cut.elapsed() < Duration::from_secs(30) {
        let sent = tokio::time::Instant::now();
        match set(&cluster, next, &probe_key, "1").await {
            Ok(()) => {
                probed = Ok(cut.elapsed());
                break;
            }
            Err(e) if policy == "reject" && e.to_uppercase().contains("TRYAGAIN") => {
                // Refused: at once, once the link is known down.
                if sent.elapsed() < Duration::from_millis(500)
                    && cut.elapsed() > Duration::from_secs(2)
                {
                    probed = Err(e);
                    break;
                }
            }
            Err(e) => probed = Err(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if policy == "next-in-line" {
        // The cut-off home has no lease any more: it refuses.
        let refused = set(&cluster, home, &probe_key, "never").await.unwrap_err();
        if refused.contains("timed out") {
            let dir = cluster.topology().display().to_string();
            let out = std::process::Command::new("sh").arg("-c").arg(format!(
                "for p in $(pgrep -f '{dir}'); do echo == $p; cat /proc/$p/cmdline | tr '\\0' ' '; echo; gdb -p $p -batch -ex 'thread apply all bt' 2>&1; done > /tmp/wedge.txt"
            )).output();
            eprintln!("gdb: {out:?}");
        }
        assert!(refused.contains("fenced"), "{refused}\n{}", logs(&cluster));
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(cut.elapsed())).await;
    let mut failbacks = Vec::new();
    for dc in 0..5 {
        failbacks.push(info_u64(&cluster, dc, "failbacks").await);
    }
    for other in (0..5).filter(|&d| d != home) {
        cluster.heal(home, other);
    }
    if policy == "next-in-line" {
        until("every datacenter to see the home back", || async {
            for (dc, &before) in failbacks.iter().enumerate() {
                if info_u64(&cluster, dc, "failbacks").await == before {
                    return false;
                }
            }
            true
        })
        .await;
    } else {
        linked(&cluster).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut tally = Tally::default();
    while let Some(done) = writers.join_next().await {
        tally.merge(done.unwrap());
    }
    converged(&cluster).await;
    (cluster, tally, probed, home)
}

/// Every acknowledged write is present after the heal, but for increments the
/// conflict log accounts for; returns (increments lost, conflicts logged at the
/// datacenter that logged the most). Each conflict lost a write of `home`, and
/// never one another datacenter had acknowledged through `WAIT 1`.
async fn check_acknowledged(cluster: &Cluster, tally: &Tally, home: usize) -> (u64, u64) {
    for dc in 0..5 {
        for keys in tally.written.chunks(500) {
            let mut cmd = redis::cmd("EXISTS");
            for key in keys {
                cmd.arg(key);
            }
            let mut c = cluster.connect(dc).await.unwrap();
            let present: usize = cmd.query_async(&mut c).await.unwrap();
            assert_eq!(present, keys.len(), "acknowledged writes missing at dc{dc}");
        }
    }
    let mut lost = 0;
    for (counter, acked) in &tally.increments {
        let got: Option<u64> = cluster.cmd(0, &["GET", counter]).await.unwrap();
        lost += acked.saturating_sub(got.unwrap_or(0));
    }
    let mut most = 0;
    for dc in 0..5 {
        most = most.max(info_u64(cluster, dc, "conflicts").await);
        let entries: Vec<std::collections::HashMap<String, Option<String>>> = cluster
            .cmd(dc, &["MERIDIAN", "CONFLICTS", "1000"])
            .await
            .unwrap();
        for entry in entries {
            let field = |f: &str| entry.get(f).cloned().flatten().unwrap_or_default();
            assert!(
                field("lost").contains(&format!("@dc{home}#")),
                "at dc{dc}, a write not of the cut-off home was lost: {entry:?}"
            );
            assert!(
                !tally.waited.contains(&field("lost_value")),
                "at dc{dc}, a write acknowledged by WAIT 1 was lost: {entry:?}"
            );
            assert!(entry.contains_key("kept_value") && entry.contains_key("lost_value"));
        }
    }
    (lost, most)
}

/// Five datacenters with writers in every one; the home of some of their users
/// is cut off. The next in line takes those users' writes within the peer
/// timeout, the lease and a second; the cut-off home refuses them. After the
/// heal and the failback everything converges and every acknowledged write is
/// there, but for what the cut-off home acknowledged before its lease ran out
/// and nobody received: each of those that a later write overwrote is in the
/// conflict log with both values. Then a failover where the home had shipped
/// everything (writers stopped before the cut) adds no conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_datacenters_with_writers_everywhere_lose_nothing_silently() {
    let (cluster, tally, probed, home) = writers_everywhere("next-in-line", 305).await;
    let took = probed.unwrap_or_else(|e| panic!("never taken over: {e}\n{}", logs(&cluster)));
    // Peer timeout 1 s, lease 0.5 s, and a second.
    assert!(
        took <= Duration::from_millis(2_500),
        "writes ran again only after {took:?}"
    );
    let (lost, conflicts) = check_acknowledged(&cluster, &tally, home).await;
    eprintln!(
        "taken over after {took:?}; {} increments, {} own keys, {} WAIT-acknowledged sets, {} unknown; {lost} increments lost, {conflicts} conflicts logged",
        tally.increments.values().sum::<u64>(),
        tally.written.len(),
        tally.waited.len(),
        tally.unknown
    );
    assert!(
        lost <= conflicts,
        "{lost} increments lost, {conflicts} logged"
    );
    assert!(!tally.waited.is_empty() && !tally.written.is_empty());

    // Nothing in flight: a clean failover and failback add no conflict.
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for dc in 0..5 {
            v.push(info_u64(&cluster, dc, "conflicts").await);
        }
        v
    };
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user = (0..)
        .map(|i| format!("w{i}"))
        .find(|u| homes.home_of(u) == home)
        .unwrap();
    let (next, key) = (homes.ranking(&user)[1], format!("{{{user}}}:clean"));
    set(&cluster, home, &key, "a").await.unwrap();
    converged(&cluster).await;
    for other in (0..5).filter(|&d| d != home) {
        cluster.cut(home, other);
    }
    until("the next in line to write", || async {
        set(&cluster, next, &key, "b").await.is_ok()
    })
    .await;
    heal_and_resume(&cluster, home, next, &key, "c").await;
    for (dc, &before) in before.iter().enumerate() {
        assert_eq!(
            info_u64(&cluster, dc, "conflicts").await,
            before,
            "at dc{dc}"
        );
        let got: Option<String> = cluster.cmd(dc, &["GET", &key]).await.unwrap();
        assert_eq!(got.as_deref(), Some("c"), "at dc{dc}");
    }
}

/// The same under `reject`: the majority side refuses writes for the cut-off
/// home's users at once, naming the home and the policy; nothing diverges, and
/// every acknowledged write is there after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_datacenters_under_reject_refuse_fast_and_never_diverge() {
    let (cluster, tally, probed, home) = writers_everywhere("reject", 306).await;
    let refused = probed.expect_err("a write for the cut-off home ran elsewhere");
    assert!(
        refused.to_uppercase().contains("TRYAGAIN")
            && refused.contains("dc0")
            && refused.contains("reject"),
        "{refused}"
    );
    let (lost, conflicts) = check_acknowledged(&cluster, &tally, home).await;
    assert_eq!((lost, conflicts), (0, 0));
}
