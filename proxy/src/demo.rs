//! `meridian demo`: several regions on this machine, each a meridian proxy on the
//! embedded store, linked through the testbed's WAN emulator with measured
//! inter-region delays; a mixed workload from clients in every region, a share of
//! it roaming (on users homed in other regions, so forwarded there); a table of
//! write latency per region (at home, and forwarded to each other home beside the
//! round trip to it), a table of replication visibility lag per link, and whether
//! every region converged with no write lost to last-writer-wins.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use meridian_testbed::{Cluster, ClusterSpec, Preset, Shape};
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval};

use meridian_testbed::visibility::{self, ms};

/// Options of `meridian demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Which regions to emulate.
    #[arg(long, value_enum, default_value_t = PresetArg::Three)]
    preset: PresetArg,
    /// How changes flow between the regions (a star's hub is the first region).
    #[arg(long, value_enum, default_value_t = TopologyArg::AllToAll)]
    topology: TopologyArg,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Operations per second from the client of each region (one third writes).
    #[arg(long, default_value_t = 400)]
    rate: u32,
    /// Fraction of datagrams every link loses (0.001 is a normal day).
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// Fraction of each region's operations on users homed in another region.
    #[arg(long, default_value_t = 0.2)]
    roaming: f64,
    /// Where writes run: at their user's home, or where they arrive (the
    /// multi-leader design home leaders replace, for comparison).
    #[arg(long, value_enum, default_value_t = WritesArg::Home)]
    writes: WritesArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WritesArg {
    Home,
    Local,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PresetArg {
    /// us-east, eu-west, ap-northeast.
    #[value(name = "three-regions")]
    Three,
    /// us-east, us-west, eu-west, ap-northeast, sa-east.
    #[value(name = "five-regions")]
    Five,
    /// The five and ap-southeast.
    #[value(name = "six-regions")]
    Six,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TopologyArg {
    AllToAll,
    Ring,
    Star,
}

pub(crate) fn demo(args: &DemoArgs) -> ExitCode {
    let runtime = match crate::runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("meridian demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the regions of `preset` as processes of this binary.
pub(crate) async fn start_regions(
    preset: Preset,
    shape: Shape,
    loss: f64,
    tweak: impl FnOnce(&mut ClusterSpec),
) -> Result<Cluster, String> {
    let binary = crate::this_binary()?;
    let mut spec = ClusterSpec::preset(binary, preset, shape, loss);
    spec.name = "demo".into();
    tweak(&mut spec);
    Cluster::start_linked(spec).await.map_err(|e| e.to_string())
}

async fn run(args: &DemoArgs) -> Result<bool, String> {
    if !(0.0..1.0).contains(&args.loss) {
        return Err(format!("--loss {} is not a fraction below 1", args.loss));
    }
    if !(0.0..=1.0).contains(&args.roaming) {
        return Err(format!("--roaming {} is not a fraction", args.roaming));
    }
    let preset = match args.preset {
        PresetArg::Three => Preset::ThreeRegions,
        PresetArg::Five => Preset::FiveRegions,
        PresetArg::Six => Preset::SixRegions,
    };
    let cluster = start(args, preset).await?;
    println!(
        "running a mixed workload for {} s: {} operations per second from a client in each region…",
        args.seconds, args.rate
    );
    let (lags, writes) = workload(args, &cluster).await?;
    print_writes(preset.regions(), &writes);
    print_lags(args.topology, preset.regions(), &lags.lags);
    println!("{}", visibility::answer_line(&lags.answer));
    print_stages(&cluster).await?;
    report_convergence(&cluster, args.writes).await
}

/// The CPU time all the proxies have used so far, if it can be read.
fn proxies_cpu(cluster: &Cluster) -> Option<Duration> {
    (0..cluster.len()).map(|dc| cluster.cpu_time(dc)).sum()
}

/// Where each link's lag builds up: how long after a change was made it was
/// shipped (the origin's clock), arrived and was applied (the destination's:
/// the clocks' skew is in these), as p50 / p99 / max in milliseconds.
async fn print_stages(cluster: &Cluster) -> Result<(), String> {
    let mut peer_lines = Vec::new();
    for dc in 0..cluster.len() {
        let info = cluster
            .replication_info(dc)
            .await
            .map_err(|e| e.to_string())?;
        peer_lines.push(info);
    }
    let field = |dc: usize, peer: &str, name: &str| {
        peer_lines[dc]
            .get(&format!("peer_{peer}"))
            .and_then(|line| {
                line.split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            })
            .unwrap_or("-")
            .to_owned()
    };
    println!(
        "
replication stages (ms after the change was made, p50/p99/max: shipped, on the origin's clock; arrived and applied, on the region's, so the demo's clock skew between the two is in them, and a stage earlier than the change reads 0):"
    );
    println!(
        "{:<14} {:<14} {:>22} {:>22} {:>22}",
        "from", "to", "shipped", "arrived", "applied"
    );
    for from in 0..cluster.len() {
        for to in (0..cluster.len()).filter(|&to| to != from) {
            let (f, t) = (cluster.id(from), cluster.id(to));
            println!(
                "{f:<14} {t:<14} {:>22} {:>22} {:>22}",
                field(from, t, "ship_lag_ms"),
                field(to, f, "arrival_lag_ms"),
                field(to, f, "applied_lag_ms")
            );
        }
    }
    Ok(())
}

/// Starts the preset's regions with skewed clocks and says what runs.
async fn start(args: &DemoArgs, preset: Preset) -> Result<Cluster, String> {
    let (shape, shape_name) = match args.topology {
        TopologyArg::AllToAll => (Shape::AllToAll, "all-to-all".to_owned()),
        TopologyArg::Ring => (Shape::Ring, "a ring".to_owned()),
        TopologyArg::Star => (
            Shape::Star {
                hub: 0,
                direct: true,
            },
            format!("a star through {}", preset.regions()[0].id()),
        ),
    };
    let ids: Vec<&str> = preset.regions().iter().map(|r| r.id()).collect();
    println!(
        "meridian demo: {} regions ({}) over {shape_name}, each a proxy on the embedded store",
        ids.len(),
        ids.join(", ")
    );
    // Skewed clocks, as real datacenters have: the hybrid logical clock orders
    // writes regardless.
    let offsets: Vec<i64> = (0..ids.len() as i64).map(|i| (i % 3 - 1) * 20).collect();
    let started = Instant::now();
    let cluster = start_regions(preset, shape, args.loss, |spec| {
        for (dc, offset) in spec.dcs.iter_mut().zip(&offsets) {
            dc.clock_offset_ms = *offset;
        }
        if args.writes == WritesArg::Local {
            spec.homes.writes = Some("local".into());
        }
    })
    .await?;
    println!(
        "started in {:.2} s: links delayed by measured one-way delays, 2% jitter, {}% loss; clocks skewed by {:?} ms",
        started.elapsed().as_secs_f64(),
        args.loss * 100.0,
        offsets
    );
    match args.writes {
        WritesArg::Home => println!(
            "writes run at their user's home region; {:.0}% of each region's operations are on users homed elsewhere (forwarded there)",
            args.roaming * 100.0
        ),
        WritesArg::Local => println!(
            "writes run where they arrive (writes = \"local\"): concurrent writes of a key settle by last-writer-wins"
        ),
    }
    Ok(cluster)
}

/// Runs a client in every region and visibility probes between all of them for
/// the demo's duration; returns the lags and the write latencies measured.
async fn workload(
    args: &DemoArgs,
    cluster: &Cluster,
) -> Result<(visibility::Measured, WriteTable), String> {
    let (stop_tx, stop) = watch::channel(false);
    let all: Vec<usize> = (0..cluster.len()).collect();
    let users = Arc::new(users_by_home(cluster, USERS_PER_REGION)?);
    // The stage lags count from here, not from the links' start.
    for dc in 0..cluster.len() {
        let _: () = cluster
            .cmd(dc, &["MERIDIAN", "RESETSTATS"])
            .await
            .map_err(|e| e.to_string())?;
    }
    let cpu_before = proxies_cpu(cluster);
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for dc in 0..cluster.len() {
        let conn = cluster.connect(dc).await.map_err(|e| e.to_string())?;
        let load = Load {
            region: dc,
            seed: dc as u64,
            rate: args.rate,
            roaming: args.roaming,
            users: users.clone(),
        };
        clients.spawn(client(conn, load, stop.clone()));
    }
    let probes = visibility::measure(cluster, &all, Duration::from_millis(20), stop.clone());
    let timer = async {
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop_tx.send_replace(true);
    };
    let (lags, ()) = tokio::join!(probes, timer);
    let lags = lags?;
    let mut totals = Tally::new(cluster.len())?;
    let mut writes = Vec::new();
    while let Some(done) = clients.join_next().await {
        let (region, tally) = done.map_err(|e| e.to_string())??;
        totals.add(&tally);
        writes.push((region, tally.latency));
    }
    writes.sort_by_key(|(region, _)| *region);
    println!(
        "workload: {} writes ({} forwarded to their home) and {} reads, {} errors",
        totals.writes, totals.forwarded, totals.reads, totals.errors
    );
    if let (Some(before), Some(after)) = (cpu_before, proxies_cpu(cluster)) {
        let cpu = after.saturating_sub(before).as_secs_f64();
        let ops = (totals.writes + totals.reads).max(1) as f64;
        println!(
            "proxies' CPU: {:.0}% of a core each on average, {:.0} µs per client operation (all proxies; the probes' writes and waits are in the CPU, not in the count)",
            100.0 * cpu / started.elapsed().as_secs_f64() / cluster.len() as f64,
            1e6 * cpu / ops
        );
    }
    Ok((lags, writes.into_iter().map(|(_, l)| l).collect()))
}

/// Users of each region's home, by rendezvous hashing over the demo's topology.
fn users_by_home(cluster: &Cluster, per_region: usize) -> Result<Vec<Vec<String>>, String> {
    let topology = cluster.parsed_topology().map_err(|e| e.to_string())?;
    let homes = meridian_proxy::user_homes(&topology).map_err(|e| e.to_string())?;
    let mut users = vec![Vec::new(); cluster.len()];
    for i in 0.. {
        if users.iter().all(|u: &Vec<String>| u.len() >= per_region) {
            break;
        }
        let user = format!("user{i}");
        let home = homes.home_of(&user);
        if users[home].len() < per_region {
            users[home].push(user);
        }
    }
    Ok(users)
}

/// Write latency of one region's client: `[home]`, the region's own entry
/// holding its home writes, the others its writes forwarded to that home.
type WriteLatency = Vec<Histogram<u64>>;
/// Every region's write latency.
type WriteTable = Vec<WriteLatency>;

/// Write latency per region: at home, and forwarded to each other home beside
/// the round trip to it.
fn print_writes(regions: &[meridian_testbed::Region], writes: &WriteTable) {
    println!(
        "\nwrite latency (acknowledged at the client; a forwarded write pays the round trip to its home):"
    );
    println!(
        "{:<14} {:<14} {:>9} {:>8} {:>9} {:>9}",
        "client in", "home", "rtt", "writes", "p50", "p99"
    );
    for (from, latency) in writes.iter().enumerate() {
        for (home, h) in latency.iter().enumerate() {
            if h.is_empty() {
                continue;
            }
            let rtt = match home == from {
                true => 0.0,
                false => 2.0 * meridian_testbed::one_way_ms(regions[from], regions[home]),
            };
            println!(
                "{:<14} {:<14} {:>6.1} ms {:>8} {:>6.2} ms {:>6.2} ms",
                regions[from].id(),
                regions[home].id(),
                rtt,
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
            );
        }
    }
}

/// The lag table: every directed pair of regions, beside its route's one-way delay.
fn print_lags(
    topology: TopologyArg,
    regions: &[meridian_testbed::Region],
    lags: &visibility::LagTable,
) {
    println!(
        "\nreplication visibility lag (written at the origin → applied in the region, as the region's proxy saw it; route: the one-way delay along the topology's path):"
    );
    println!(
        "{:<14} {:<14} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "from", "to", "route", "probes", "p50", "p99", "max"
    );
    for from in 0..regions.len() {
        for to in (0..regions.len()).filter(|&to| to != from) {
            let Some(h) = &lags[from][to] else { continue };
            println!(
                "{:<14} {:<14} {:>6.1} ms {:>8} {:>6.1} ms {:>6.1} ms {:>6.1} ms",
                regions[from].id(),
                regions[to].id(),
                route_ms(topology, regions, from, to),
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max())
            );
        }
    }
}

/// Waits for every region to hold the same data and says so, with the writes
/// last-writer-wins overwrote; `false` (and the logs' tails) when they did not
/// converge, or, with home leaders, when any write was lost that way.
async fn report_convergence(cluster: &Cluster, writes: WritesArg) -> Result<bool, String> {
    let mut conflicts = 0u64;
    for dc in 0..cluster.len() {
        let info = cluster
            .replication_info(dc)
            .await
            .map_err(|e| e.to_string())?;
        conflicts += info
            .get("conflicts")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    println!("\n{}", cluster.emulator_lateness());
    let waited = Instant::now();
    match cluster.wait_converged(Duration::from_secs(60)).await {
        Ok(applied) => {
            let digest = cluster.digest(0).await.map_err(|e| e.to_string())?;
            let keys = digest.split(':').next().unwrap_or("?");
            println!(
                "\nconverged: yes, {:.2} s after the workload stopped: every region applied {} changes ({}) and holds identical data ({keys} keys, digest {digest})",
                waited.elapsed().as_secs_f64(),
                applied.iter().map(|(_, seq)| seq).sum::<u64>(),
                applied
                    .iter()
                    .map(|(dc, n)| format!("{dc} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            println!("writes lost to last-writer-wins: {conflicts}");
            if writes == WritesArg::Home && conflicts > 0 {
                println!("with home leaders no write should be lost that way: this is a defect");
                return Ok(false);
            }
            Ok(true)
        }
        Err(e) => {
            println!("\nconverged: NO: {e}");
            for dc in 0..cluster.len() {
                println!("--- {} ---\n{}", cluster.id(dc), cluster.log_tail(dc, 10));
            }
            Ok(false)
        }
    }
}

/// The one-way delay along the route a change takes from `from` to `to` with
/// every region up: direct in all-to-all, around the ring in region order, through
/// the first region in a star.
fn route_ms(
    topology: TopologyArg,
    regions: &[meridian_testbed::Region],
    from: usize,
    to: usize,
) -> f64 {
    let d = |a: usize, b: usize| meridian_testbed::one_way_ms(regions[a], regions[b]);
    match topology {
        TopologyArg::AllToAll => d(from, to),
        TopologyArg::Ring => {
            let n = regions.len();
            let mut total = 0.0;
            let mut at = from;
            while at != to {
                total += d(at, (at + 1) % n);
                at = (at + 1) % n;
            }
            total
        }
        TopologyArg::Star if from == 0 || to == 0 => d(from, to),
        TopologyArg::Star => d(from, 0) + d(0, to),
    }
}

/// Users per region's home the clients write.
const USERS_PER_REGION: usize = 50;

/// What one region's client does.
#[derive(Debug)]
struct Load {
    region: usize,
    seed: u64,
    rate: u32,
    roaming: f64,
    users: Arc<Vec<Vec<String>>>,
}

#[derive(Debug)]
struct Tally {
    writes: u64,
    forwarded: u64,
    reads: u64,
    errors: u64,
    latency: WriteLatency,
}

impl Tally {
    fn new(regions: usize) -> Result<Tally, String> {
        let latency = (0..regions)
            .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Tally {
            writes: 0,
            forwarded: 0,
            reads: 0,
            errors: 0,
            latency,
        })
    }

    fn add(&mut self, other: &Tally) {
        self.writes += other.writes;
        self.forwarded += other.forwarded;
        self.reads += other.reads;
        self.errors += other.errors;
    }
}

/// One region's client: reads and writes on users' keys at `rate` per second,
/// a `roaming` share of them on users homed in other regions.
async fn client(
    mut conn: MultiplexedConnection,
    load: Load,
    mut stop: watch::Receiver<bool>,
) -> Result<(usize, Tally), String> {
    let regions = load.users.len();
    let mut tally = Tally::new(regions)?;
    let mut state = meridian_testbed::Rng::new(load.seed);
    let mut next = move |n: u64| state.below(n);
    let mut tick = interval(Duration::from_secs(1) / load.rate.max(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok((load.region, tally)),
        }
        let roams = regions > 1 && (next(1_000_000) as f64) < load.roaming * 1_000_000.0;
        let home = match roams {
            true => (load.region + 1 + next(regions as u64 - 1) as usize) % regions,
            false => load.region,
        };
        let homed = &load.users[home];
        let user = format!("{{{}}}", homed[next(homed.len() as u64) as usize]);
        let mut cmd;
        let write = match next(6) {
            0 => {
                cmd = redis::cmd("SET");
                cmd.arg(format!("{user}:name"))
                    .arg(format!("name-{}", next(1000)));
                true
            }
            1 => {
                cmd = redis::cmd("HINCRBY");
                cmd.arg(format!("{user}:cart")).arg("apples").arg(1);
                true
            }
            2 => {
                cmd = redis::cmd("HGETALL");
                cmd.arg(format!("{user}:cart"));
                false
            }
            _ => {
                cmd = redis::cmd("GET");
                cmd.arg(format!("{user}:name"));
                false
            }
        };
        let started = Instant::now();
        match cmd.query_async::<redis::Value>(&mut conn).await {
            Ok(_) if write => {
                tally.writes += 1;
                tally.forwarded += u64::from(home != load.region);
                tally.latency[home].saturating_record(started.elapsed().as_micros() as u64);
            }
            Ok(_) => tally.reads += 1,
            Err(_) => tally.errors += 1,
        }
    }
}
