//! `meridian-benches failover`: failover and failback cycles under load.
//!
//! Three datacenters under `on_home_down = "next-in-line"`, each with a client
//! incrementing one counter of a user homed at the first. Each cycle cuts the
//! home off from the others, times how long until the next in line takes the
//! user's writes (write unavailability), heals, and times how long until the home
//! writes them itself again (failback). At the end it compares the counter with
//! the increments acknowledged, and counts conflicts and epochs: what the home
//! acknowledged in a cut before its lease ran out is overwritten by the next in
//! line, and every such loss must be in the conflict log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_testbed::{Cluster, ClusterSpec, LinkShape, Shape};
use tokio::time::Instant;

/// Settings of the failover benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FailoverArgs {
    /// Failover and failback cycles.
    #[arg(long, default_value_t = 20)]
    cycles: u32,
    /// The peer timeout (the lease is half of it).
    #[arg(long, default_value_t = 1_000)]
    peer_timeout_ms: u64,
    /// One-way delay of every link, in milliseconds.
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Fraction of datagrams every link loses.
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
}

pub(crate) fn run(args: &FailoverArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    crate::binary::runtime()?.block_on(measure(args, &binary))
}

/// SET at datacenter `dc`: whether it succeeded.
async fn set(cluster: &Cluster, dc: usize, key: &str, value: &str) -> bool {
    cluster.cmd::<()>(dc, &["SET", key, value]).await.is_ok()
}

/// A numeric INFO replication field (0 when missing).
async fn info(cluster: &Cluster, dc: usize, field: &str) -> u64 {
    cluster
        .replication_info(dc)
        .await
        .ok()
        .and_then(|i| i.get(field).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Polls `f` every 5 ms until it holds (at most 60 s); how long that took.
async fn timed<F, Fut>(what: &str, mut f: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !f().await {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("{what}: not within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

async fn measure(args: &FailoverArgs, binary: &std::path::Path) -> Result<(), String> {
    let mut spec = ClusterSpec::new(binary, 3, Shape::AllToAll);
    spec.name = "failover".into();
    spec.peer_timeout_ms = Some(args.peer_timeout_ms);
    spec.homes.on_home_down = Some("next-in-line".into());
    let (delay, loss) = (Duration::from_millis(args.delay_ms), args.loss);
    spec.set_links(|_, _| LinkShape {
        loss,
        ..LinkShape::delay(delay)
    });
    let cluster = Arc::new(
        Cluster::start_linked(spec)
            .await
            .map_err(|e| e.to_string())?,
    );
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let user = (0..)
        .map(|i| format!("f{i}"))
        .find(|u| homes.home_of(u) == 0)
        .unwrap_or_default();
    let next = homes.ranking(&user)[1];
    let key = format!("{{{user}}}:n");
    // The probe of who writes: a key of the same user, apart from the counter.
    let probe = format!("{{{user}}}:probe");
    timed("the home to write", || set(&cluster, 0, &probe, "0")).await?;
    println!(
        "\nfailover: three datacenters, {} ms one way, {}% loss, peer timeout {} ms (lease {} ms); a client at each increments one counter of a user homed at dc0 (next in line {}); {} cycles of cutting dc0 off and healing it",
        args.delay_ms,
        args.loss * 100.0,
        args.peer_timeout_ms,
        args.peer_timeout_ms / 2,
        cluster.id(next),
        args.cycles
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for dc in 0..3 {
        let (cluster, key, stop) = (cluster.clone(), key.clone(), stop.clone());
        writers.spawn(async move { increments(&cluster, dc, &key, &stop).await });
    }
    let ms = |d: Duration| d.as_micros() as u64;
    let histogram =
        || Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string());
    let (mut unavailable, mut failback) = (histogram()?, histogram()?);
    for cycle in 0..args.cycles {
        cluster.cut(0, 1);
        cluster.cut(0, 2);
        let took = timed("the next in line to write", || {
            set(&cluster, next, &probe, "taken")
        })
        .await?;
        unavailable.saturating_record(ms(took));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = info(&cluster, 0, "failbacks").await;
        cluster.heal(0, 1);
        cluster.heal(0, 2);
        let back = timed("the home to resume", || async {
            info(&cluster, 0, "failbacks").await > before
        })
        .await?;
        failback.saturating_record(ms(back));
        println!(
            "  cycle {:>2}: writes ran again {:>7.1} ms after the cut; the home resumed {:>7.1} ms after the heal",
            cycle + 1,
            took.as_secs_f64() * 1e3,
            back.as_secs_f64() * 1e3
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut unknown) = (0u64, 0u64);
    while let Some(done) = writers.join_next().await {
        let (a, u) = done.map_err(|e| e.to_string())?;
        acked += a;
        unknown += u;
    }
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .map_err(|e| format!("the datacenters did not converge: {e}"))?;
    println!("{}", cluster.emulator_lateness());
    let counter: Option<String> = cluster
        .cmd(0, &["GET", &key])
        .await
        .map_err(|e| e.to_string())?;
    let counter: u64 = counter.and_then(|c| c.parse().ok()).unwrap_or(0);
    let (mut conflicts, mut epoch) = (0, 0);
    for dc in 0..3 {
        conflicts = conflicts.max(info(&cluster, dc, "conflicts").await);
        epoch = epoch.max(info(&cluster, dc, "home_epoch").await);
    }
    let pct = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "write unavailability after the cut: p50 {:.1} ms, max {:.1} ms (target: the peer timeout + 1 s = {} ms)",
        pct(&unavailable, 0.5),
        pct(&unavailable, 1.0),
        args.peer_timeout_ms + 1_000
    );
    println!(
        "failback after the heal: p50 {:.1} ms, max {:.1} ms",
        pct(&failback, 0.5),
        pct(&failback, 1.0)
    );
    let lost = acked.saturating_sub(counter);
    println!(
        "{acked} increments acknowledged, {unknown} of unknown outcome; the counter holds {counter}: {lost} acknowledged increments lost (made by the cut-off home before its lease ran out), {conflicts} conflicts logged; epoch {epoch}"
    );
    if counter > acked + unknown {
        return Err(format!(
            "the counter holds {counter}, more than was ever sent"
        ));
    }
    if lost > conflicts {
        return Err(format!(
            "{lost} acknowledged increments lost but only {conflicts} conflicts logged: a silent loss"
        ));
    }
    Ok(())
}

/// Increments `key` at `dc` until `stop`; the increments acknowledged and those
/// of unknown outcome.
async fn increments(cluster: &Cluster, dc: usize, key: &str, stop: &AtomicBool) -> (u64, u64) {
    let (mut acked, mut unknown) = (0, 0);
    let Ok(mut c) = cluster.connect(dc).await else {
        return (0, 0);
    };
    while !stop.load(Ordering::Relaxed) {
        let r: redis::RedisResult<i64> = redis::cmd("INCR").arg(key).query_async(&mut c).await;
        match r {
            Ok(_) => acked += 1,
            Err(e) if e.to_string().contains("may or may not") => unknown += 1,
            Err(e) if e.is_io_error() || e.is_timeout() => {
                unknown += 1;
                match cluster.connect(dc).await {
                    Ok(conn) => c = conn,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    (acked, unknown)
}
