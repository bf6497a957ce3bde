//! `meridian-benches replication`: replication over one emulated wide-area link.
//!
//! Two datacenters, each a meridian process on the embedded store, joined through
//! the testbed's WAN emulator (by default 100 ms round trip, 1% loss each way).
//! Three figures:
//! - catch-up: the receiver is down while the origin takes a backlog of writes of
//!   100-byte values; once it is back, how many changes per second it receives
//!   and applies (the link's own throughput, without the client path);
//! - streaming: clients write at the origin as fast as they can while the receiver
//!   follows; changes per second until the receiver has applied all of them;
//! - visibility: under a moderate steady load, how long a write at the origin takes
//!   to be applied at the receiver (p50, p99, max), beside the one-way delay.
//!
//! With `--regions <preset>`, instead: the preset's regions all-to-all, every region
//! writing at once, and each link's throughput beside the CPU the proxies used.

use std::time::Duration;

use meridian_testbed::visibility::{self, ms};
use meridian_testbed::{Cluster, ClusterSpec, DcSpec, LinkShape, Shape};
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};

/// Settings of the replication benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReplicationArgs {
    /// Round-trip time of the link, in milliseconds.
    #[arg(long, default_value_t = 100)]
    rtt_ms: u64,
    /// Fraction of datagrams lost in each direction.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Changes written for the throughput figures.
    #[arg(long, default_value_t = 200_000)]
    changes: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Writes per second of the steady load of the visibility figure.
    #[arg(long, default_value_t = 2_000)]
    load: u32,
    /// Seconds of the visibility figure.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Instead of one link: the regions of this preset (three-regions,
    /// five-regions, six-regions), all-to-all with their measured delays and
    /// `--loss`, every region writing `--changes` at once; each link's throughput,
    /// and the CPU the proxies used against the machine's cores.
    #[arg(long)]
    regions: Option<String>,
}

/// Client connections writing at the origin, and commands per pipeline.
const WRITERS: usize = 4;
const PIPELINE: usize = 256;

/// Runs the benchmark and prints its figures.
pub(crate) fn run(args: &ReplicationArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    crate::binary::runtime()?.block_on(measure(args, binary))
}

async fn measure(args: &ReplicationArgs, binary: std::path::PathBuf) -> Result<(), String> {
    if !(0.0..1.0).contains(&args.loss) {
        return Err(format!("--loss {} is not a fraction below 1", args.loss));
    }
    if let Some(preset) = &args.regions {
        return all_writing(args, binary, preset).await;
    }
    let mut spec = one_link(binary, ["origin", "receiver"], args.rtt_ms, args.loss);
    // This measures the replication stream: every write runs at the origin.
    spec.homes.writes = Some("local".into());
    let mut cluster = Cluster::start_linked(spec)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "one emulated link: {} ms round trip, {}% loss each way, 1% jitter; values of {} bytes; both ends on the embedded store; every write runs at the origin (writes = \"local\")",
        args.rtt_ms,
        args.loss * 100.0,
        args.value_size
    );
    let value = vec![b'v'; args.value_size];
    catch_up(&mut cluster, args, &value).await?;
    streaming(&cluster, args, &value).await?;
    println!("throughput phases' {}", cluster.take_emulator_lateness());
    visibility_lag(
        &cluster,
        args,
        Duration::from_millis(args.rtt_ms) / 2,
        value,
    )
    .await?;
    println!("visibility phase's {}", cluster.take_emulator_lateness());
    let info = cluster
        .replication_info(0)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(peer) = info.get("peer_receiver") {
        println!("origin's link to the receiver: {peer}");
    }
    Ok(())
}

/// Catch-up: a backlog written while the receiver is down, then how fast it
/// arrives once the receiver is back.
async fn catch_up(
    cluster: &mut Cluster,
    args: &ReplicationArgs,
    value: &[u8],
) -> Result<(), String> {
    cluster.kill(1).map_err(|e| e.to_string())?;
    let before = origin_seq(cluster).await?;
    let started = Instant::now();
    write_burst(cluster, 0, "backlog", args.changes, value).await?;
    let ingest = started.elapsed();
    let target = before + args.changes;
    cluster.restart(1).await.map_err(|e| e.to_string())?;
    let back = Instant::now();
    let first = wait_applied(cluster, before + 1).await?;
    // A fifth in, the new connection's congestion control is past its start-up.
    let fifth = args.changes / 5;
    let past_start = wait_applied(cluster, before + fifth).await?;
    let done = wait_applied(cluster, target).await?;
    let catch_up = done.duration_since(back);
    let transfer = done.duration_since(first);
    let rest = done.duration_since(past_start);
    println!(
        "catch-up:   {} changes in {:.2} s from the receiver's restart ({:.2} s from its first applied change): {:.0} changes/s (origin took them at {:.0}/s); the first fifth in {:.2} s (the new connection's start-up), the rest at {:.0} changes/s",
        args.changes,
        catch_up.as_secs_f64(),
        transfer.as_secs_f64(),
        args.changes as f64 / transfer.as_secs_f64(),
        args.changes as f64 / ingest.as_secs_f64(),
        past_start.duration_since(first).as_secs_f64(),
        (args.changes - fifth) as f64 / rest.as_secs_f64(),
    );
    Ok(())
}

/// Streaming: writes and replication at once.
async fn streaming(cluster: &Cluster, args: &ReplicationArgs, value: &[u8]) -> Result<(), String> {
    let before = origin_seq(cluster).await?;
    let started = Instant::now();
    write_burst(cluster, 0, "stream", args.changes, value).await?;
    let ingest = started.elapsed();
    wait_applied(cluster, before + args.changes).await?;
    let total = started.elapsed();
    println!(
        "streaming:  {} changes written in {:.2} s ({:.0}/s), all applied at the receiver after {:.2} s: {:.0} changes/s end to end",
        args.changes,
        ingest.as_secs_f64(),
        args.changes as f64 / ingest.as_secs_f64(),
        total.as_secs_f64(),
        args.changes as f64 / total.as_secs_f64()
    );
    Ok(())
}

/// Visibility lag under a steady, moderate load.
async fn visibility_lag(
    cluster: &Cluster,
    args: &ReplicationArgs,
    one_way: Duration,
    value: Vec<u8>,
) -> Result<(), String> {
    let (stop_tx, stop) = watch::channel(false);
    let conn = cluster.connect(0).await.map_err(|e| e.to_string())?;
    let load = tokio::spawn(steady(conn, args.load, value, stop.clone()));
    let probes = visibility::measure(cluster, &[0], Duration::from_millis(10), stop.clone());
    let timer = async {
        sleep(Duration::from_secs(args.seconds)).await;
        stop_tx.send_replace(true);
    };
    let (measured, ()) = tokio::join!(probes, timer);
    let measured = measured?;
    let written = load.await.map_err(|e| e.to_string())??;
    let h = measured.lags[0][1]
        .as_ref()
        .ok_or("the receiver's watcher reported nothing")?;
    let one_way_ms = one_way.as_secs_f64() * 1000.0;
    println!(
        "visibility: {} probes under {} writes/s ({written} written): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; one-way delay {one_way_ms:.1} ms, so p99 is one-way + {:.1} ms",
        h.len(),
        args.load,
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        ms(h.value_at_quantile(0.99)) - one_way_ms
    );
    println!("{}", visibility::answer_line(&measured.answer));
    Ok(())
}

/// Every region of `preset` writes `--changes` at once, all-to-all: how long until
/// every region has applied every other's, so each link's throughput, and the CPU
/// all the proxies used meanwhile against the machine's cores (where that is all
/// of them, the machine is the limit, not the links).
async fn all_writing(
    args: &ReplicationArgs,
    binary: std::path::PathBuf,
    preset: &str,
) -> Result<(), String> {
    let regions = crate::geo::parse_regions(preset).map_err(|e| format!("--regions: {e}"))?;
    let mut spec = ClusterSpec::regions(binary, &regions, Shape::AllToAll, args.loss);
    spec.homes.writes = Some("local".into());
    let cluster = Cluster::start_linked(spec)
        .await
        .map_err(|e| e.to_string())?;
    let n = cluster.len();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "{} regions ({preset}), all-to-all, measured delays, 2% jitter, {}% loss; values of {} bytes; every region writes {} changes at once (writes = \"local\"); {cores} cores",
        n,
        args.loss * 100.0,
        args.value_size,
        args.changes
    );
    let value = vec![b'v'; args.value_size];
    let before = own_seqs(&cluster).await?;
    let cpu = |cluster: &Cluster| -> Option<Duration> { (0..n).map(|i| cluster.cpu_time(i)).sum() };
    let cpu_before = cpu(&cluster);
    let started = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    let cluster = std::sync::Arc::new(cluster);
    for dc in 0..n {
        let (cluster, value, changes) = (cluster.clone(), value.clone(), args.changes);
        // Keys of their own: the links' throughput, not conflicts between regions.
        let tag = format!("all-{dc}-");
        writes.spawn(async move { write_burst(&cluster, dc, &tag, changes, &value).await });
    }
    while let Some(done) = writes.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let written = started.elapsed();
    // Each region's own sequence number after its writes.
    let targets: Vec<u64> = (0..n).map(|dc| before[dc] + args.changes).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    // When each link (from * n + to) had carried all of its origin's changes.
    let mut done_at = vec![None; n * n];
    while done_at.iter().filter(|d| d.is_none()).count() > n {
        for to in 0..n {
            let applied = cluster.applied(to).await.map_err(|e| e.to_string())?;
            for from in (0..n).filter(|&from| from != to) {
                if done_at[from * n + to].is_none()
                    && applied.get(cluster.id(from)) >= targets[from]
                {
                    done_at[from * n + to] = Some(started.elapsed());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(
                "not every region had applied every other's changes after 10 minutes".into(),
            );
        }
        sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    let used = cpu(&cluster)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let rates: Vec<f64> = (0..n)
        .flat_map(|from| (0..n).map(move |to| (from, to)))
        .filter_map(|(from, to)| done_at[from * n + to])
        .map(|took| args.changes as f64 / took.as_secs_f64())
        .collect();
    let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let fastest = rates.iter().copied().fold(0.0, f64::max);
    println!(
        "all writing: {} changes written in {:.2} s ({:.0}/s over all regions); every region had applied every other's after {:.2} s",
        args.changes * n as u64,
        written.as_secs_f64(),
        (args.changes * n as u64) as f64 / written.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "per link, end to end: {slowest:.0} to {fastest:.0} changes/s over the {} links; {:.0} changes applied per second over all regions",
        rates.len(),
        (args.changes * (n * (n - 1)) as u64) as f64 / total.as_secs_f64()
    );
    if let Some(used) = used {
        println!(
            "proxies' CPU meanwhile: {:.2} cores of {cores} ({:.0}% of the machine), {:.1} µs per change written and applied everywhere",
            used.as_secs_f64() / total.as_secs_f64(),
            100.0 * used.as_secs_f64() / total.as_secs_f64() / cores as f64,
            used.as_secs_f64() * 1e6 / (args.changes * n as u64) as f64
        );
    }
    println!("{}", cluster.take_emulator_lateness());
    Ok(())
}

/// Each datacenter's own sequence number: how many changes it has logged.
async fn own_seqs(cluster: &Cluster) -> Result<Vec<u64>, String> {
    let mut all = Vec::with_capacity(cluster.len());
    for dc in 0..cluster.len() {
        let applied = cluster.applied(dc).await.map_err(|e| e.to_string())?;
        all.push(applied.get(cluster.id(dc)));
    }
    Ok(all)
}

/// The origin's own sequence number: how many changes it has logged.
async fn origin_seq(cluster: &Cluster) -> Result<u64, String> {
    let applied = cluster.applied(0).await.map_err(|e| e.to_string())?;
    Ok(applied.get("origin"))
}

/// Waits until the receiver has applied the origin's change `seq`; returns when.
async fn wait_applied(cluster: &Cluster, seq: u64) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let applied = cluster.applied(1).await.map_err(|e| e.to_string())?;
        if applied.get("origin") >= seq {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the receiver had not applied change {seq} after 10 minutes (it has {applied:?})"
            ));
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// Two datacenters joined by one emulated link of `rtt_ms` round trip, 1% of the
/// one-way delay as jitter, losing `loss` of datagrams each way.
pub(crate) fn one_link(
    binary: impl Into<std::path::PathBuf>,
    ids: [&str; 2],
    rtt_ms: u64,
    loss: f64,
) -> ClusterSpec {
    let one_way = Duration::from_millis(rtt_ms) / 2;
    let mut spec = ClusterSpec::new(binary, 2, Shape::AllToAll);
    spec.dcs = ids.into_iter().map(DcSpec::new).collect();
    spec.name = "bench".into();
    spec.set_links(move |_, _| LinkShape {
        delay: one_way,
        jitter: one_way / 100,
        loss,
        bandwidth: None,
        cut: false,
    });
    spec
}

/// Writes `count` SETs of `value` at datacenter `dc` from several pipelined clients,
/// as fast as they can.
async fn write_burst(
    cluster: &Cluster,
    dc: usize,
    tag: &str,
    count: u64,
    value: &[u8],
) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS as u64 {
        let mut conn = cluster.connect(dc).await.map_err(|e| e.to_string())?;
        let share = count / WRITERS as u64 + u64::from(w < count % WRITERS as u64);
        let (tag, value) = (tag.to_owned(), value.to_vec());
        tasks.spawn(async move {
            let mut done = 0;
            while done < share {
                let mut pipe = redis::pipe();
                for _ in 0..PIPELINE.min((share - done) as usize) {
                    pipe.cmd("SET")
                        .arg(format!("{{{tag}{w}-{}}}:v", done % 1000))
                        .arg(&value[..])
                        .ignore();
                    done += 1;
                }
                pipe.query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| format!("writing at dc {dc}: {e}"))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Writes at `rate` per second until `stop`; returns how many.
async fn steady(
    mut conn: MultiplexedConnection,
    rate: u32,
    value: Vec<u8>,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, String> {
    // Writes go in small groups every millisecond, as many clients would send them.
    let per_tick = (rate as f64 / 1000.0).max(0.001);
    let mut tick = interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut owed, mut written) = (0.0f64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(written),
        }
        owed += per_tick;
        if owed < 1.0 {
            continue;
        }
        let mut pipe = redis::pipe();
        while owed >= 1.0 {
            pipe.cmd("SET")
                .arg(format!("{{steady-{}}}:v", written % 1000))
                .arg(&value[..])
                .ignore();
            owed -= 1.0;
            written += 1;
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("steady load at the origin: {e}"))?;
    }
}
