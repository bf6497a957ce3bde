//! `meridian-benches forward`: what home leaders cost a write.
//!
//! Two figures, each from meridian processes joined through the testbed's WAN
//! emulator:
//! - latency, on the three-region preset: a client in each region writes (INCR,
//!   one at a time) users homed in its own region and users homed in each other
//!   region. Home writes are compared with the same writes when every region
//!   writes locally (`writes = "local"`, no routing at all), and forwarded writes
//!   with the round trip to their home: the preset's, and the one QUIC measures on
//!   the link (which includes the emulator's own timer overhead);
//! - throughput, over one emulated link (100 ms round trip, 1% loss by default):
//!   clients at one datacenter pipeline SETs of users homed at the other, as fast
//!   as the replies come back; writes acknowledged per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_testbed::{Cluster, ClusterSpec, Preset, Shape};
use tokio::time::Instant;

/// Settings of the forwarding benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ForwardArgs {
    /// Seconds each latency run writes.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Writes per second of each region's client in the latency runs.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Fraction of datagrams every link of the three regions loses.
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// Round trip of the throughput link, in milliseconds.
    #[arg(long, default_value_t = 100)]
    rtt_ms: u64,
    /// Loss of the throughput link, each way.
    #[arg(long, default_value_t = 0.01)]
    link_loss: f64,
    /// Client connections of the throughput run.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Commands per pipeline of the throughput run.
    #[arg(long, default_value_t = 64)]
    pipeline: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 10)]
    throughput_seconds: u64,
}

pub(crate) fn run(args: &ForwardArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    crate::binary::runtime()?.block_on(async {
        latency(args, &binary).await?;
        throughput(args, &binary).await
    })
}

/// The first `n` users `u0`, `u1`, ... homed at each datacenter of `cluster`.
fn users_by_home(cluster: &Cluster, n: usize) -> Result<Vec<Vec<String>>, String> {
    let topology = cluster.parsed_topology().map_err(|e| e.to_string())?;
    let homes = meridian_proxy::user_homes(&topology).map_err(|e| e.to_string())?;
    let mut users = vec![Vec::new(); cluster.len()];
    let mut i = 0u64;
    while users.iter().any(|u: &Vec<String>| u.len() < n) {
        let user = format!("u{i}");
        let home = homes.home_of(&user);
        if users[home].len() < n {
            users[home].push(user);
        }
        i += 1;
    }
    Ok(users)
}

/// Clients of each region writing users of each other home in the latency runs.
const FORWARDING_CLIENTS: usize = 4;

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

/// Runs the three regions with writes at home or local; returns, per client
/// region, the latency of writes to users homed at each region.
async fn latency_run(
    args: &ForwardArgs,
    binary: &std::path::Path,
    local: bool,
    forwarded: bool,
) -> Result<(Vec<Vec<Histogram<u64>>>, Vec<Vec<f64>>), String> {
    let mut spec = ClusterSpec::preset(binary, Preset::ThreeRegions, Shape::AllToAll, args.loss);
    spec.name = "forward".into();
    if local {
        spec.homes.writes = Some("local".into());
    }
    let cluster = Cluster::start_linked(spec)
        .await
        .map_err(|e| e.to_string())?;
    let users = Arc::new(users_by_home(&cluster, 20)?);
    let n = cluster.len();
    // Warm every link first (connections made, congestion windows open); while
    // the links are still being made a home may answer TRYAGAIN.
    for dc in 0..n {
        let mut c = cluster.connect(dc).await.map_err(|e| e.to_string())?;
        for homed in users.iter() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let reply = redis::cmd("INCR")
                    .arg(format!("{{{}}}:warm", homed[0]))
                    .query_async::<i64>(&mut c)
                    .await;
                match reply {
                    Ok(_) => break,
                    Err(e) if e.code() == Some("TRYAGAIN") && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => return Err(format!("warming up: {e}")),
                }
            }
        }
    }
    // Per region, one client for users homed there and a few for each other home
    // (a forwarded write waits a round trip, so fewer of them fit in the run).
    let mut tasks = tokio::task::JoinSet::new();
    for dc in 0..n {
        for home in 0..n {
            let clients = match (home == dc, forwarded) {
                (true, _) => 1,
                (false, true) => FORWARDING_CLIENTS,
                (false, false) => 0,
            };
            for k in 0..clients {
                let mut c = cluster.connect(dc).await.map_err(|e| e.to_string())?;
                let (users, seconds, rate) = (users.clone(), args.seconds, args.rate);
                tasks.spawn(async move {
                    let mut h = histogram()?;
                    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let end = Instant::now() + Duration::from_secs(seconds);
                    let mut i = k;
                    while Instant::now() < end {
                        tick.tick().await;
                        let user = &users[home][i % users[home].len()];
                        let started = Instant::now();
                        redis::cmd("INCR")
                            .arg(format!("{{{user}}}:n"))
                            .query_async::<i64>(&mut c)
                            .await
                            .map_err(|e| format!("INCR from region {dc}: {e}"))?;
                        h.saturating_record(started.elapsed().as_micros() as u64);
                        i += FORWARDING_CLIENTS;
                    }
                    Ok::<_, String>((dc, home, h))
                });
            }
        }
    }
    let mut table: Vec<Vec<Histogram<u64>>> = (0..n)
        .map(|_| (0..n).map(|_| histogram()).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()?;
    while let Some(done) = tasks.join_next().await {
        let (dc, home, h) = done.map_err(|e| e.to_string())??;
        table[dc][home].add(h).map_err(|e| e.to_string())?;
    }
    // What QUIC measures of each link's round trip, emulator included.
    let mut rtts = vec![vec![0.0; n]; n];
    for (dc, row) in rtts.iter_mut().enumerate() {
        let info = cluster
            .replication_info(dc)
            .await
            .map_err(|e| e.to_string())?;
        for (peer, rtt) in row.iter_mut().enumerate() {
            let line = info.get(&format!("peer_{}", cluster.id(peer)));
            *rtt = line
                .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("rtt_ms=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        }
    }
    println!("{}", cluster.emulator_lateness());
    Ok((table, rtts))
}

async fn latency(args: &ForwardArgs, binary: &std::path::Path) -> Result<(), String> {
    let regions = Preset::ThreeRegions.regions();
    println!(
        "latency: three regions, all-to-all, {}% loss, 2% jitter; in each region, one client INCRs users homed there and {FORWARDING_CLIENTS} INCR users of each other home, one at a time, at most {} per second each, for {} s",
        args.loss * 100.0,
        args.rate,
        args.seconds
    );
    let (homes, rtts) = latency_run(args, binary, false, true).await?;
    // The routing's cost: the home clients alone, with and without it.
    let (local, _) = latency_run(args, binary, true, false).await?;
    let (routed, _) = latency_run(args, binary, false, false).await?;
    println!(
        "\n{:<14} {:<14} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "client in", "home", "rtt", "quic rtt", "writes", "p50", "p99", "p50-rtt", "p99-rtt"
    );
    for (from, row) in homes.iter().enumerate() {
        for (home, h) in row.iter().enumerate() {
            if h.is_empty() {
                continue;
            }
            let rtt = match from == home {
                true => 0.0,
                false => 2.0 * meridian_testbed::one_way_ms(regions[from], regions[home]),
            };
            let (p50, p99) = (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)));
            println!(
                "{:<14} {:<14} {:>7.1} ms {:>7.1} ms {:>8} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms",
                regions[from].id(),
                regions[home].id(),
                rtt,
                rtts[from][home],
                h.len(),
                p50,
                p99,
                p50 - rtt,
                p99 - rtt
            );
        }
    }
    println!(
        "\nhome writes, the home clients alone, against the same writes with no routing at all (writes = \"local\"):"
    );
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>12}",
        "region", "local p50", "home p50", "local p99", "home p99"
    );
    for (dc, region) in regions.iter().enumerate() {
        let (l, h) = (&local[dc][dc], &routed[dc][dc]);
        println!(
            "{:<14} {:>9.3} ms {:>9.3} ms {:>9.3} ms {:>9.3} ms",
            region.id(),
            ms(l.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.5)),
            ms(l.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.99)),
        );
    }
    Ok(())
}

async fn throughput(args: &ForwardArgs, binary: &std::path::Path) -> Result<(), String> {
    let spec =
        crate::replication::one_link(binary, ["sender", "home"], args.rtt_ms, args.link_loss);
    let cluster = Cluster::start_linked(spec)
        .await
        .map_err(|e| e.to_string())?;
    let users = Arc::new(users_by_home(&cluster, 1_000)?);
    println!(
        "\nthroughput: one link, {} ms round trip, {}% loss each way; {} clients at one datacenter pipeline {} SETs (100-byte values) of users homed at the other, for {} s",
        args.rtt_ms,
        args.link_loss * 100.0,
        args.clients,
        args.pipeline,
        args.throughput_seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let value = vec![b'v'; 100];
    for client in 0..args.clients {
        let mut c = cluster.connect(0).await.map_err(|e| e.to_string())?;
        let (users, stop, done, value) = (users.clone(), stop.clone(), done.clone(), value.clone());
        let measuring = measuring.clone();
        let pipeline = args.pipeline;
        tasks.spawn(async move {
            let mut latency = histogram()?;
            let mut i = client * 7919;
            while !stop.load(Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for _ in 0..pipeline {
                    let user = &users[1][i % users[1].len()];
                    pipe.cmd("SET")
                        .arg(format!("{{{user}}}:v{}", i % 16))
                        .arg(&value[..])
                        .ignore();
                    i += 1;
                }
                let (started, measured) = (Instant::now(), measuring.load(Ordering::Relaxed));
                pipe.query_async::<()>(&mut c)
                    .await
                    .map_err(|e| format!("a forwarded pipeline: {e}"))?;
                if measured {
                    latency.saturating_record(started.elapsed().as_micros() as u64);
                }
                done.fetch_add(pipeline as u64, Ordering::Relaxed);
            }
            Ok::<_, String>(latency)
        });
    }
    // Measure after a warm-up second, over the run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let (from, started) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.throughput_seconds)).await;
    let (to, took) = (done.load(Ordering::Relaxed), started.elapsed());
    stop.store(true, Ordering::Relaxed);
    let mut latency = histogram()?;
    while let Some(finished) = tasks.join_next().await {
        latency
            .add(finished.map_err(|e| e.to_string())??)
            .map_err(|e| e.to_string())?;
    }
    let writes = to - from;
    println!(
        "{} writes acknowledged in {:.1} s (after a second of warm-up): {:.0} forwarded writes/s; pipeline round trip p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        writes,
        took.as_secs_f64(),
        writes as f64 / took.as_secs_f64(),
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.max())
    );
    let info = cluster
        .replication_info(0)
        .await
        .map_err(|e| e.to_string())?;
    let requests: f64 = info
        .get("forward_requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    println!(
        "{requests} requests carried them: {:.1} writes per request",
        done.load(Ordering::Relaxed) as f64 / requests.max(1.0)
    );
    let applied = cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", cluster.emulator_lateness());
    println!(
        "every write ran at the home: changes by origin {applied} (the sender originated {})",
        applied.get("sender")
    );
    Ok(())
}
