//! `meridian-benches travel`: travelling users, with homes that follow them and
//! with rendezvous homes alone.
//!
//! Three regions of the preset, each a meridian process, linked through the
//! testbed's WAN emulator. Every user has one client, which starts in a random
//! region, writes (INCR) at a steady rate, and halfway through travels to another
//! region for good. Each half has a settling time (not measured: the home may
//! follow meanwhile) and a measured time. The run is made twice: homes fixed by
//! rendezvous hashing, and `[homes] follow` on. For each measured time: the share
//! of writes executed at their user's home for a client in the same region
//! (from the proxies' `home_writes_local` and `home_writes_forwarded`), the write
//! latency distribution seen by the clients, and the moves made.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_testbed::{Cluster, ClusterSpec, FollowSection, Preset, Rng, Shape};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Settings of the travelling-users benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TravelArgs {
    /// Users (one client each).
    #[arg(long, default_value_t = 60)]
    users: usize,
    /// Writes per second of each user.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Seconds after each start or trip before measuring (the home may follow).
    #[arg(long, default_value_t = 15)]
    settle: u64,
    /// Seconds measured in each half.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Fraction of datagrams every link loses.
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// Seed of where users start and travel to.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What one measured time gave.
struct Figures {
    at_home: u64,
    forwarded: u64,
    latency: Histogram<u64>,
    /// Moves during the whole half (settling included).
    moves: u64,
}

pub(crate) fn run(args: &TravelArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    crate::binary::runtime()?.block_on(async {
        println!(
            "travelling users on three regions: {} users, {} writes/s each; each half {} s settling + {} s measured; loss {}",
            args.users, args.rate, args.settle, args.seconds, args.loss
        );
        println!(
            "{:<22} {:<28} {:>9} {:>9} {:>9} {:>9} {:>6}",
            "homes", "half", "at home", "p50 ms", "p99 ms", "max ms", "moves"
        );
        let mut lateness = Vec::new();
        for follow in [false, true] {
            let (halves, late) = one_run(args, &binary, follow).await?;
            lateness.push(late);
            let homes = if follow {
                "follow (default rule)"
            } else {
                "rendezvous only"
            };
            for (half, f) in ["from the start", "after the trip"].iter().zip(halves) {
                let total = f.at_home + f.forwarded;
                let share = f.at_home as f64 / total.max(1) as f64;
                println!(
                    "{homes:<22} {half:<28} {:>8.1}% {:>9.1} {:>9.1} {:>9.1} {:>6}",
                    share * 100.0,
                    f.latency.value_at_quantile(0.5) as f64 / 1000.0,
                    f.latency.value_at_quantile(0.99) as f64 / 1000.0,
                    f.latency.max() as f64 / 1000.0,
                    f.moves
                );
            }
        }
        for (homes, late) in ["rendezvous only", "follow"].iter().zip(lateness) {
            println!("{homes}: {late}");
        }
        Ok(())
    })
}

/// Sums a counter of `INFO replication` over the regions.
async fn total(cluster: &Cluster, field: &str) -> Result<u64, String> {
    let mut sum = 0;
    for dc in 0..cluster.len() {
        let info = cluster
            .replication_info(dc)
            .await
            .map_err(|e| e.to_string())?;
        sum += info
            .get(field)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(sum)
}

/// The counters a measured time is the difference of.
async fn counters(cluster: &Cluster) -> Result<[u64; 3], String> {
    Ok([
        total(cluster, "home_writes_local").await?,
        total(cluster, "home_writes_forwarded").await?,
        total(cluster, "home_moves").await?,
    ])
}

async fn one_run(
    args: &TravelArgs,
    binary: &std::path::Path,
    follow: bool,
) -> Result<(Vec<Figures>, meridian_testbed::Lateness), String> {
    let mut spec = ClusterSpec::preset(binary, Preset::ThreeRegions, Shape::AllToAll, args.loss);
    spec.name = "travel".into();
    spec.seed = args.seed;
    if follow {
        // The default rule, with the least time between moves shortened so the
        // trip halfway through may move a user that already moved at the start.
        let interval = (args.settle + args.seconds) * 1_000 / 2;
        spec.homes.follow = Some(FollowSection {
            min_interval_ms: Some(interval.max(10_000)),
            ..FollowSection::default()
        });
    }
    let cluster = Arc::new(
        Cluster::start_linked(spec)
            .await
            .map_err(|e| e.to_string())?,
    );
    let n = cluster.len();
    let mut rng = Rng::new(args.seed);
    let starts: Vec<usize> = (0..args.users)
        .map(|_| rng.below(n as u64) as usize)
        .collect();
    let trips: Vec<usize> = starts
        .iter()
        .map(|&s| (s + 1 + rng.below(n as u64 - 1) as usize) % n)
        .collect();
    let mut figures = Vec::new();
    for half in 0..2 {
        let regions = if half == 0 { &starts } else { &trips };
        let at_start = counters(&cluster).await?;
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let latency = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for (u, &region) in regions.iter().enumerate() {
            let mut c = cluster.connect(region).await.map_err(|e| e.to_string())?;
            let key = format!("{{t{u}}}:n");
            let (measuring, stop, latency) = (measuring.clone(), stop.clone(), latency.clone());
            let period = Duration::from_secs(1) / args.rate.max(1);
            tasks.spawn(async move {
                let mut next = Instant::now();
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
                while !stop.load(Ordering::Relaxed) {
                    next += period;
                    let started = Instant::now();
                    let reply: redis::RedisResult<i64> =
                        redis::cmd("INCR").arg(&key).query_async(&mut c).await;
                    if reply.is_ok()
                        && measuring.load(Ordering::Relaxed)
                        && let Some(h) = local.as_mut()
                    {
                        let _ = h.record(started.elapsed().as_micros().max(1) as u64);
                    }
                    tokio::time::sleep_until(next).await;
                }
                if let Some(h) = local {
                    let _ = latency.lock().await.add(&h);
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let before = counters(&cluster).await?;
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        let after = counters(&cluster).await?;
        stop.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        let latency = latency.lock().await.clone();
        figures.push(Figures {
            at_home: after[0] - before[0],
            forwarded: after[1] - before[1],
            latency,
            moves: after[2] - at_start[2],
        });
    }
    Ok((figures, cluster.emulator_lateness()))
}
