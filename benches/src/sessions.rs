//! `meridian-benches sessions`: the read side of the session guarantees on the
//! three-region preset.
//!
//! Sessions in every region write their own user's keys and read their own and
//! others'; a share of them travels: after one of every few writes such a session
//! moves to another region (a device switch, the token handed over) and reads
//! there at once. Every operation is
//! recorded and the history checker looks for violations of the guarantees. It
//! prints the share of reads served locally without waiting, the latency of the
//! read right after a switch beside the one-way delay from the home, and, in a
//! second run that forwards stale reads at once (`read_wait_ms = 0`), the latency
//! of forwarded reads beside the round trip to the home.
//!
//! `--faults` makes it a soak: links are cut and healed and a region's proxy is
//! SIGKILLed and restarted while the sessions run; sessions that lose their
//! proxy move on to another region with their token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_testbed::history::{self, Kind, Op, Value};
use meridian_testbed::{Cluster, ClusterSpec, Preset, Shape, one_way_ms};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Settings of the sessions benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SessionArgs {
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Sessions per region.
    #[arg(long, default_value_t = 20)]
    sessions: u32,
    /// Operations per second of each session (at most; one at a time).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Fraction of sessions that travel: each moves to another region right after
    /// one of its next three writes, reads there at once, and goes on (moving again
    /// after one of its next three writes there).
    #[arg(long, default_value_t = 0.1)]
    switch: f64,
    /// How many times a travelling session moves (0: as long as the run lasts).
    #[arg(long, default_value_t = 0)]
    moves: u32,
    /// Seconds at the start whose latencies are not recorded (links warming up:
    /// QUIC starts from a cautious round-trip estimate); their operations are
    /// checked all the same.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Fraction of datagrams every link loses.
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// The first run's `read_wait_ms`: a switch read is served locally when the
    /// wait outlasts the one-way delay from the home (up to 100 ms here).
    #[arg(long, default_value_t = 250)]
    read_wait_ms: u64,
    /// Cut links and SIGKILL a proxy during the run (a soak; skips the second run).
    #[arg(long)]
    faults: bool,
}

pub(crate) fn run(args: &SessionArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    crate::binary::runtime()?.block_on(async {
        let first = measure(args, &binary, Some(args.read_wait_ms)).await?;
        first.print(&format!(
            "read_wait_ms = {}: a stale read waits, then is forwarded",
            args.read_wait_ms
        ));
        if !args.faults {
            let second = measure(args, &binary, Some(0)).await?;
            second.print("read_wait_ms = 0: a stale read is forwarded at once");
        }
        Ok(())
    })
}

/// What one run measured.
struct Figures {
    /// Reads by where they were served: locally at once, after a wait, forwarded,
    /// refused (summed over the regions' INFO).
    served: [u64; 4],
    /// Latency of every read.
    reads: Histogram<u64>,
    /// Latency of the read right after a switch, and the same minus the one-way
    /// delay from the user's home to the new region.
    switched: Histogram<u64>,
    switched_over_one_way: Histogram<u64>,
    /// The same, per (home, new region) pair, with the regions' names.
    by_pair: BTreeMap<(usize, usize), Histogram<u64>>,
    names: Vec<String>,
    /// The same, by what the token named: the home only, or other regions too.
    switched_own_only: Histogram<u64>,
    switched_with_others: Histogram<u64>,
    /// Latency of switch reads the new region forwarded at once (with no read
    /// wait, every read slower than 5 ms), minus the round trip to the home.
    forwarded_over_rtt: Histogram<u64>,
    /// The same less the round trip QUIC measured on the link (`rtt_ms` in INFO).
    forwarded_over_quic_rtt: Histogram<u64>,
    checked: usize,
    violations: Vec<history::Violation>,
    errors: u64,
}

impl Figures {
    fn print(&self, title: &str) {
        let total: u64 = self.served.iter().sum();
        let pct = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
        let ms = |us: u64| us as f64 / 1000.0;
        println!("\n{title}:");
        println!(
            "  reads by where they ran: {total} in all; {:.2}% here at once, {:.2}% here after a wait, {:.2}% forwarded, {:.2}% refused",
            pct(self.served[0]),
            pct(self.served[1]),
            pct(self.served[2]),
            pct(self.served[3])
        );
        println!(
            "  every read: p50 {:.2} ms, p99 {:.2} ms ({} reads)",
            ms(self.reads.value_at_quantile(0.5)),
            ms(self.reads.value_at_quantile(0.99)),
            self.reads.len()
        );
        if !self.switched.is_empty() {
            println!(
                "  read right after a switch: p50 {:.1} ms, p99 {:.1} ms; minus the one-way delay from the home: p50 {:.1} ms, p99 {:.1} ms ({} switches)",
                ms(self.switched.value_at_quantile(0.5)),
                ms(self.switched.value_at_quantile(0.99)),
                signed_ms(self.switched_over_one_way.value_at_quantile(0.5)),
                signed_ms(self.switched_over_one_way.value_at_quantile(0.99)),
                self.switched.len()
            );
        }
        for (what, h) in [
            ("the token named the home only", &self.switched_own_only),
            (
                "the token named other regions too",
                &self.switched_with_others,
            ),
        ] {
            if h.is_empty() {
                continue;
            }
            println!(
                "    {what}: minus the one-way delay p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} switches)",
                signed_ms(h.value_at_quantile(0.5)),
                signed_ms(h.value_at_quantile(0.99)),
                signed_ms(h.max()),
                h.len()
            );
        }
        for ((home, to), h) in &self.by_pair {
            println!(
                "    home {} -> read at {}: minus the one-way delay p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} switches)",
                self.names[*home],
                self.names[*to],
                signed_ms(h.value_at_quantile(0.5)),
                signed_ms(h.value_at_quantile(0.99)),
                signed_ms(h.max()),
                h.len()
            );
        }
        if !self.forwarded_over_rtt.is_empty() {
            println!(
                "  switch reads that were forwarded, minus the round trip to the home: p50 {:.1} ms, p99 {:.1} ms ({} reads)",
                signed_ms(self.forwarded_over_rtt.value_at_quantile(0.5)),
                signed_ms(self.forwarded_over_rtt.value_at_quantile(0.99)),
                self.forwarded_over_rtt.len()
            );
            println!(
                "  the same, minus the round trip QUIC measures on the link: p50 {:.1} ms, p99 {:.1} ms",
                signed_ms(self.forwarded_over_quic_rtt.value_at_quantile(0.5)),
                signed_ms(self.forwarded_over_quic_rtt.value_at_quantile(0.99)),
            );
        }
        println!(
            "  history checker: {} operations checked, {} violations; {} operations ended in errors",
            self.checked,
            self.violations.len(),
            self.errors
        );
        for v in self.violations.iter().take(5) {
            println!("    {v}");
        }
    }
}

/// Differences are recorded shifted by [`SHIFT`] µs so they may be negative.
const SHIFT: u64 = 1_000_000;

fn signed_ms(shifted: u64) -> f64 {
    (shifted as f64 - SHIFT as f64) / 1000.0
}

/// Records `value` in the histogram of `key`, made on first use.
fn record_in<K: Ord>(
    map: &mut BTreeMap<K, Histogram<u64>>,
    key: K,
    value: u64,
) -> Result<(), String> {
    match map.entry(key) {
        std::collections::btree_map::Entry::Occupied(mut h) => h.get_mut().saturating_record(value),
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(histogram()?).saturating_record(value)
        }
    }
    Ok(())
}

/// Merges `from`'s histograms into `into`'s.
fn merge_into<K: Ord + Copy>(
    into: &mut BTreeMap<K, Histogram<u64>>,
    from: &BTreeMap<K, Histogram<u64>>,
) -> Result<(), String> {
    for (key, h) in from {
        match into.get_mut(key) {
            Some(all) => all.add(h).map_err(|e| e.to_string())?,
            None => drop(into.insert(*key, h.clone())),
        }
    }
    Ok(())
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())
}

/// One session's record.
struct Session {
    ops: Vec<Op>,
    reads: Histogram<u64>,
    switched: Histogram<u64>,
    switched_over_one_way: Histogram<u64>,
    /// The same, per (home, new region) pair.
    by_pair: BTreeMap<(usize, usize), Histogram<u64>>,
    /// The same, split by what the session's token named: its home only, or other
    /// regions' changes too (what it read of users homed elsewhere).
    switched_own_only: Histogram<u64>,
    switched_with_others: Histogram<u64>,
    forwarded_over_rtt: Histogram<u64>,
    /// Forwarded reads' latency by (region, home).
    forwarded_by_pair: BTreeMap<(usize, usize), Histogram<u64>>,
    errors: u64,
}

async fn measure(
    args: &SessionArgs,
    binary: &std::path::Path,
    read_wait_ms: Option<u64>,
) -> Result<Figures, String> {
    let mut spec = ClusterSpec::preset(binary, Preset::ThreeRegions, Shape::AllToAll, args.loss);
    spec.name = "sessions".into();
    spec.session.read_wait_ms = read_wait_ms;
    if args.faults {
        spec.peer_timeout_ms = Some(1_000);
    }
    let cluster = Arc::new(Mutex::new(
        Cluster::start_linked(spec)
            .await
            .map_err(|e| e.to_string())?,
    ));
    let (n, homes, addrs) = {
        let c = cluster.lock().await;
        let topology = c.parsed_topology().map_err(|e| e.to_string())?;
        let homes = meridian_proxy::user_homes(&topology).map_err(|e| e.to_string())?;
        let addrs: Vec<_> = (0..c.len()).map(|i| c.client_addr(i)).collect();
        (c.len(), homes, addrs)
    };
    let ids: Arc<Vec<String>> = {
        let c = cluster.lock().await;
        Arc::new((0..c.len()).map(|i| c.id(i).to_owned()).collect())
    };
    let regions = Preset::ThreeRegions.regions();
    let sessions = args.sessions * n as u32;
    println!(
        "\nsessions: three regions, {sessions} sessions ({} per region, each on a user homed there) at {} operations/s each for {} s after {} s of warm-up (not in the latencies; the read counts are of the whole run); {:.0}% of the sessions travel, moving to another region after one of every few writes{}",
        args.sessions,
        args.rate,
        args.seconds,
        args.warmup,
        args.switch * 100.0,
        if args.faults {
            "; links cut and a proxy SIGKILLed meanwhile"
        } else {
            ""
        }
    );
    let measured_from = Instant::now() + Duration::from_secs(args.warmup);
    let deadline = measured_from + Duration::from_secs(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    // Session s starts in region s % n, and its user is homed there (users are
    // numbered so that user s's home is that region).
    let users = Arc::new(users_homed_in_turn(&homes, n, sessions));
    for s in 0..sessions {
        let home = homes.home_of(&users[s as usize]);
        let (addrs, args, users) = (addrs.clone(), args.clone(), users.clone());
        let home_id = ids[home].clone();
        tasks.spawn(async move {
            let one_way = |a: usize, b: usize| match a == b {
                true => 0.0,
                false => one_way_ms(regions[a], regions[b]),
            };
            let at_once = read_wait_ms == Some(0);
            let home = (home, home_id.as_str());
            session(
                s,
                sessions,
                &users,
                home,
                &addrs,
                &args,
                (measured_from, deadline),
                at_once,
                one_way,
            )
            .await
        });
    }
    if args.faults {
        faults(&cluster, args.seconds).await?;
    }
    let mut figures = Figures {
        served: [0; 4],
        reads: histogram()?,
        switched: histogram()?,
        switched_over_one_way: histogram()?,
        by_pair: BTreeMap::new(),
        names: regions.iter().map(|r| r.id().to_owned()).collect(),
        switched_own_only: histogram()?,
        switched_with_others: histogram()?,
        forwarded_over_rtt: histogram()?,
        forwarded_over_quic_rtt: histogram()?,
        checked: 0,
        violations: Vec::new(),
        errors: 0,
    };
    let mut all = Vec::new();
    let mut forwarded_by_pair = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let s = done.map_err(|e| e.to_string())??;
        let add = |h: &mut Histogram<u64>, o: &Histogram<u64>| h.add(o).map_err(|e| e.to_string());
        add(&mut figures.reads, &s.reads)?;
        add(&mut figures.switched, &s.switched)?;
        add(&mut figures.switched_over_one_way, &s.switched_over_one_way)?;
        add(&mut figures.forwarded_over_rtt, &s.forwarded_over_rtt)?;
        add(&mut figures.switched_own_only, &s.switched_own_only)?;
        add(&mut figures.switched_with_others, &s.switched_with_others)?;
        merge_into(&mut figures.by_pair, &s.by_pair)?;
        merge_into(&mut forwarded_by_pair, &s.forwarded_by_pair)?;
        figures.errors += s.errors;
        all.extend(s.ops);
    }
    figures.checked = all.len();
    figures.violations = history::check(&all);
    let c = cluster.lock().await;
    for dc in 0..c.len() {
        let info = c.replication_info(dc).await.map_err(|e| e.to_string())?;
        let field = |f: &str| info.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        figures.served[0] += field("session_reads_local");
        figures.served[1] += field("session_reads_waited");
        figures.served[2] += field("session_reads_forwarded");
        figures.served[3] += field("session_reads_refused");
        // Forwarded reads from here, less the round trip QUIC measures to the home.
        for ((from, home), h) in forwarded_by_pair.range((dc, 0)..(dc + 1, 0)) {
            let rtt_us = info
                .get(&format!("peer_{}", c.id(*home)))
                .and_then(|line| {
                    line.split(',')
                        .find_map(|f| f.strip_prefix("rtt_ms="))
                        .and_then(|v| v.parse::<f64>().ok())
                })
                .map(|ms| (ms * 1000.0) as u64);
            if let (Some(rtt), true) = (rtt_us, *from == dc) {
                for v in h.iter_recorded() {
                    figures.forwarded_over_quic_rtt.saturating_record_n(
                        v.value_iterated_to() + SHIFT - rtt.min(SHIFT),
                        v.count_at_value(),
                    );
                }
            }
        }
    }
    c.wait_converged(Duration::from_secs(120))
        .await
        .map_err(|e| format!("the regions did not converge: {e}"))?;
    println!("{}", c.emulator_lateness());
    Ok(figures)
}

/// Cuts a link for 3 s every 10 s, and SIGKILLs and restarts one proxy once.
async fn faults(cluster: &Arc<Mutex<Cluster>>, seconds: u64) -> Result<(), String> {
    let started = Instant::now();
    let mut round = 0usize;
    while started.elapsed() + Duration::from_secs(10) < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (a, b) = (round % 3, (round + 1) % 3);
        cluster.lock().await.cut(a, b);
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.lock().await.heal(a, b);
        if round == 1 {
            let mut c = cluster.lock().await;
            c.kill(2).map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.restart(2).await.map_err(|e| e.to_string())?;
        }
        round += 1;
    }
    Ok(())
}

/// `count` user names, the `s`-th homed at region `s % regions`.
pub(crate) fn users_homed_in_turn(
    homes: &meridian_policies::Rendezvous,
    regions: usize,
    count: u32,
) -> Vec<String> {
    let mut by_home: Vec<Vec<String>> = vec![Vec::new(); regions];
    let per = (count as usize).div_ceil(regions);
    let mut i = 0u64;
    while by_home.iter().any(|u| u.len() < per) {
        let user = format!("u{i}");
        let home = homes.home_of(&user);
        if by_home[home].len() < per {
            by_home[home].push(user);
        }
        i += 1;
    }
    (0..count as usize)
        .map(|s| by_home[s % regions][s / regions].clone())
        .collect()
}

/// One session: its own user's four keys, reads of everybody's, switches.
#[allow(clippy::too_many_arguments)]
async fn session(
    s: u32,
    sessions: u32,
    users: &[String],
    (home, home_id): (usize, &str),
    addrs: &[std::net::SocketAddr],
    args: &SessionArgs,
    (measured_from, deadline): (Instant, Instant),
    forwards_at_once: bool,
    one_way: impl Fn(usize, usize) -> f64,
) -> Result<Session, String> {
    let mut rng = meridian_testbed::Rng::new(u64::from(s));
    let mut next = move |n: u64| rng.below(n);
    let mut record = Session {
        ops: Vec::new(),
        reads: histogram()?,
        switched: histogram()?,
        switched_over_one_way: histogram()?,
        by_pair: BTreeMap::new(),
        switched_own_only: histogram()?,
        switched_with_others: histogram()?,
        forwarded_over_rtt: histogram()?,
        forwarded_by_pair: BTreeMap::new(),
        errors: 0,
    };
    let mut dc = s as usize % addrs.len();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut token = String::new();
    let mut just_switched = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut op = 0u64;
    // Whether this session travels, and after which of its writes it moves next.
    let travels = (next(1_000_000) as f64) < args.switch * 1_000_000.0;
    let mut switch_after = travels.then(|| 1 + next(3));
    let mut moved = 0u32;
    let mut writes = 0u64;
    while Instant::now() < deadline {
        // The read right after a switch goes at once.
        if !just_switched {
            tick.tick().await;
        }
        let Some(c) = conn.as_mut() else {
            conn = meridian_testbed::connect_to(addrs[dc]).await.ok();
            if let (Some(c), false) = (conn.as_mut(), token.is_empty()) {
                let handed: redis::RedisResult<()> = redis::cmd("MERIDIAN")
                    .arg("SESSION")
                    .arg(&token)
                    .query_async(c)
                    .await;
                if handed.is_err() {
                    conn = None;
                }
            }
            if conn.is_none() {
                dc = (dc + 1) % addrs.len();
                just_switched = false;
            }
            continue;
        };
        op += 1;
        let write = !just_switched && next(4) == 0;
        // Every key is written by its own session only (the checker's premise).
        let of = if write || just_switched || next(2) == 0 {
            s
        } else {
            next(u64::from(sessions)) as u32
        };
        let key = format!(
            "{{{}}}:k{}",
            users[of as usize],
            if just_switched { 0 } else { next(2) }
        );
        let mut pipe = redis::pipe();
        if write {
            pipe.cmd("SET")
                .arg(&key)
                .arg(Value { session: s, op }.text());
        } else {
            pipe.cmd("GET").arg(&key);
        }
        pipe.cmd("MERIDIAN").arg("SESSION");
        let before = token.clone();
        let started = Instant::now();
        let reply: redis::RedisResult<(Option<String>, String)> = pipe.query_async(c).await;
        let took = started.elapsed().as_micros() as u64;
        let kind = match (&reply, write) {
            (Ok(_), true) => Kind::Write,
            (Ok((got, _)), false) => Kind::Read(got.as_deref().and_then(Value::parse)),
            (Err(_), true) => Kind::MaybeWrite,
            (Err(_), false) => Kind::Read(None),
        };
        match reply {
            Ok((_, now)) => token = now,
            Err(e) => {
                record.errors += 1;
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    // The proxy is gone: go on at another region with the token.
                    conn = None;
                    dc = (dc + 1) % addrs.len();
                }
                if write {
                    record.ops.push(Op {
                        session: s,
                        op,
                        dc,
                        key,
                        kind,
                    });
                }
                just_switched = false;
                continue;
            }
        }
        if !write && started >= measured_from {
            record.reads.saturating_record(took);
            if just_switched {
                record.switched.saturating_record(took);
                let lag = (one_way(home, dc) * 1000.0) as u64;
                let over = took + SHIFT - lag.min(SHIFT);
                record.switched_over_one_way.saturating_record(over);
                // Did the session carry more than its own writes (reads of users
                // homed elsewhere), which the new region must have too?
                let others = before
                    .parse::<meridian_policies::SessionToken>()
                    .map(|t| t.vector().iter().any(|(origin, _)| origin != home_id))
                    .unwrap_or(false);
                match others {
                    true => record.switched_with_others.saturating_record(over),
                    false => record.switched_own_only.saturating_record(over),
                };
                record_in(&mut record.by_pair, (home, dc), over)?;
                if forwards_at_once && took > 5_000 {
                    let rtt = (2.0 * one_way(dc, home) * 1000.0) as u64;
                    record
                        .forwarded_over_rtt
                        .saturating_record(took + SHIFT - rtt.min(SHIFT));
                    record_in(&mut record.forwarded_by_pair, (dc, home), took)?;
                }
            }
        }
        record.ops.push(Op {
            session: s,
            op,
            dc,
            key,
            kind,
        });
        just_switched = false;
        writes += u64::from(write);
        if write && switch_after == Some(writes) {
            moved += 1;
            switch_after = (args.moves == 0 || moved < args.moves).then(|| writes + 1 + next(3));
            // A device switch: the next read is at another region.
            dc = (dc + 1 + next(addrs.len() as u64 - 1) as usize) % addrs.len();
            conn = None;
            just_switched = true;
        }
    }
    Ok(record)
}
