//! `meridian-benches geo`: meridian against the designs it replaces, in one run
//! on the same emulated WAN and the same workload.
//!
//! - *global leader*: every write runs in the first region (a classic primary with
//!   asynchronous replicas: here every user is pinned there), reads are local and
//!   carry no session token (an application reading its local replica);
//! - *local*: every region writes locally, last-writer-wins (`writes = "local"`),
//!   reads local, no tokens;
//! - *meridian*: home leaders, and session tokens (handed over when a session
//!   moves to another region).
//!
//! Client sessions in every region work on their own user's keys and on popular
//! shared ones (zipf); a share of them roam to another region every few writes.
//! Every operation is timed by class, recorded for the history checker (session
//! guarantees), and every increment counted, so lost updates are exact. Probes
//! measure each link's visibility lag meanwhile. The figures go to a table on
//! stdout, a JSON file and an SVG report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_testbed::history::{self, Kind, Op, Value};
use meridian_testbed::{Cluster, ClusterSpec, Preset, Region, Shape, floor_one_way_ms, one_way_ms};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Settings of the cross-region benchmark.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub(crate) struct GeoArgs {
    /// The regions: a preset (three-regions, five-regions, six-regions) or region
    /// ids separated by commas (us-east,eu-west).
    #[arg(long, default_value = "three-regions")]
    regions: String,
    /// The topology: all-to-all, ring or star.
    #[arg(long, default_value = "all-to-all")]
    topology: String,
    /// The database behind each region's proxy: embedded, or redis (a
    /// redis-server per region, started by the benchmark).
    #[arg(long, default_value = "embedded")]
    backend: String,
    /// Seconds of load per design, after the warm-up.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of load first, not measured (links warming up).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Client sessions per region.
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// Operations per second of each session (at most: one at a time); 0: a
    /// closed loop, each operation right after the previous one's reply.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Fraction of operations that are reads.
    #[arg(long, default_value_t = 0.7)]
    reads: f64,
    /// Fraction of sessions that roam: each moves to another region after one of
    /// every few writes (with its token, where the design has tokens).
    #[arg(long, default_value_t = 0.15)]
    roaming: f64,
    /// Fraction of operations on popular shared keys rather than the session's own.
    #[arg(long, default_value_t = 0.2)]
    shared: f64,
    /// Zipf exponent of the shared keys' popularity (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Bytes of each value written with SET.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of datagrams every link loses.
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The designs to run, in order: global-leader, local, meridian.
    #[arg(
        long,
        default_value = "global-leader,local,meridian",
        value_delimiter = ','
    )]
    designs: Vec<String>,
    /// Where the reports go: `<out>.json` and `<out>.svg`.
    #[arg(long, default_value = "target/geo-report")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// A design under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Design {
    GlobalLeader,
    Local,
    Meridian,
}

impl Design {
    fn parse(name: &str) -> Result<Design, String> {
        match name {
            "global-leader" => Ok(Design::GlobalLeader),
            "local" => Ok(Design::Local),
            "meridian" => Ok(Design::Meridian),
            other => Err(format!(
                "unknown design '{other}' (global-leader, local or meridian)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Design::GlobalLeader => "global leader",
            Design::Local => "local multi-leader",
            Design::Meridian => "meridian",
        }
    }

    /// Whether sessions carry tokens (and hand them over when they move).
    fn tokens(self) -> bool {
        self == Design::Meridian
    }
}

/// Operation classes, as the table and the report show them.
const CLASSES: [&str; 5] = [
    "home write",
    "forwarded write",
    "local read",
    "read after a move",
    "read of a shared key",
];
const HOME_WRITE: usize = 0;
const FORWARDED_WRITE: usize = 1;
const LOCAL_READ: usize = 2;
const READ_AFTER_MOVE: usize = 3;
const SHARED_READ: usize = 4;

/// One class's latency.
#[derive(Debug, Serialize)]
pub(crate) struct ClassFigures {
    pub(crate) class: &'static str,
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// (latency ms, fraction of operations at or under it), for the CDF.
    pub(crate) cdf: Vec<(f64, f64)>,
}

/// One link's visibility lag.
#[derive(Debug, Serialize)]
pub(crate) struct LagFigures {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) route_one_way_ms: f64,
    pub(crate) floor_one_way_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) probes: u64,
}

/// What one design measured.
#[derive(Debug, Serialize)]
pub(crate) struct DesignFigures {
    pub(crate) design: Design,
    pub(crate) name: &'static str,
    pub(crate) classes: Vec<ClassFigures>,
    pub(crate) lags: Vec<LagFigures>,
    pub(crate) operations: u64,
    pub(crate) throughput_per_s: f64,
    pub(crate) increments_acknowledged: u64,
    pub(crate) lost_updates: u64,
    pub(crate) operations_checked: usize,
    pub(crate) violations: usize,
    pub(crate) violations_by_guarantee: BTreeMap<String, usize>,
    /// The first few violations, in words.
    pub(crate) violation_examples: Vec<String>,
    pub(crate) errors: u64,
    /// The first few errors, as the clients got them.
    pub(crate) error_examples: Vec<String>,
    pub(crate) convergence_ms: f64,
    /// How late the WAN emulator delivered datagrams against their schedule.
    pub(crate) emulator_lateness: meridian_testbed::Lateness,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    command: String,
    settings: GeoArgs,
    regions: Vec<&'static str>,
    designs: Vec<DesignFigures>,
}

pub(crate) fn run(args: &GeoArgs) -> Result<(), String> {
    let regions = parse_regions(&args.regions)?;
    if regions.len() < 2 {
        return Err("the benchmark needs at least two regions".into());
    }
    let shape = match args.topology.as_str() {
        "all-to-all" => Shape::AllToAll,
        "ring" => Shape::Ring,
        "star" => Shape::Star {
            hub: 0,
            direct: false,
        },
        other => {
            return Err(format!(
                "unknown topology '{other}' (all-to-all, ring, star)"
            ));
        }
    };
    let designs = (args.designs.iter())
        .map(|d| Design::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let binary = crate::binary::meridian()?;
    let figures = crate::binary::runtime()?.block_on(async {
        let mut all = Vec::new();
        for design in designs {
            all.push(measure(args, &binary, &regions, shape.clone(), design).await?);
        }
        Ok::<_, String>(all)
    })?;
    print_table(args, &regions, &figures);
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        settings: args.clone(),
        regions: regions.iter().map(|r| r.id()).collect(),
        designs: figures,
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let json = args.out.with_extension("json");
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&json, text).map_err(|e| format!("writing {}: {e}", json.display()))?;
    let svg = args.out.with_extension("svg");
    crate::geo_plot::draw(&svg, &report.regions, &report.designs)?;
    println!("\nreports: {} and {}", json.display(), svg.display());
    Ok(())
}

pub(crate) fn parse_regions(text: &str) -> Result<Vec<Region>, String> {
    match text {
        "three-regions" => Ok(Preset::ThreeRegions.regions().to_vec()),
        "five-regions" => Ok(Preset::FiveRegions.regions().to_vec()),
        "six-regions" => Ok(Preset::SixRegions.regions().to_vec()),
        list => list
            .split(',')
            .map(|id| {
                Preset::SixRegions
                    .regions()
                    .iter()
                    .copied()
                    .find(|r| r.id() == id.trim())
                    .ok_or_else(|| {
                        format!("unknown region '{id}' (us-east, us-west, eu-west, ap-northeast, ap-southeast, sa-east, or a preset)")
                    })
            })
            .collect(),
    }
}

/// The users of the run: sessions' own (`own[s]`, homed under meridian's hashing
/// in session `s`'s first region) and the shared ones.
struct Users {
    own: Vec<String>,
    shared: Vec<String>,
}

fn users(cluster: &Cluster, sessions: usize, shared: usize) -> Result<Users, String> {
    let topology = cluster.parsed_topology().map_err(|e| e.to_string())?;
    let homes = meridian_proxy::user_homes(&topology).map_err(|e| e.to_string())?;
    Ok(Users {
        own: crate::sessions::users_homed_in_turn(&homes, cluster.len(), sessions as u32),
        shared: (0..shared).map(|i| format!("shared{i}")).collect(),
    })
}

/// How many shared users there are.
const SHARED_USERS: usize = 32;

async fn measure(
    args: &GeoArgs,
    binary: &std::path::Path,
    regions: &[Region],
    shape: Shape,
    design: Design,
) -> Result<DesignFigures, String> {
    let n = regions.len();
    let mut spec = ClusterSpec::regions(binary, regions, shape, args.loss);
    spec.name = format!("geo-{design:?}").to_lowercase();
    spec.seed = args.seed;
    let _redis = match args.backend.as_str() {
        "embedded" => Vec::new(),
        "redis" => start_redis(&mut spec)?,
        other => return Err(format!("unknown backend '{other}' (embedded or redis)")),
    };
    if design == Design::Local {
        spec.homes.writes = Some("local".into());
    }
    // Users are known once the topology is: the pins of the global leader need
    // them, so the cluster of that design starts after a look at a first one.
    let sessions = args.clients as usize * n;
    let probe = Cluster::start(ClusterSpec {
        dcs: spec.dcs.clone(),
        ..spec.clone()
    })
    .await
    .map_err(|e| e.to_string())?;
    let users = Arc::new(users(&probe, sessions, SHARED_USERS)?);
    drop(probe);
    if design == Design::GlobalLeader {
        for user in users.own.iter().chain(&users.shared) {
            spec.homes
                .pins
                .insert(user.clone(), regions[0].id().to_owned());
        }
    }
    let cluster = Arc::new(
        Cluster::start_linked(spec)
            .await
            .map_err(|e| e.to_string())?,
    );
    let topology = cluster.parsed_topology().map_err(|e| e.to_string())?;
    let homes = Arc::new(meridian_proxy::user_homes(&topology).map_err(|e| e.to_string())?);
    let addrs: Arc<Vec<_>> = Arc::new((0..n).map(|i| cluster.client_addr(i)).collect());
    if !args.quiet {
        println!(
            "\n{}: {} regions ({}), {} sessions at {} operations/s each for {} s after {} s of warm-up",
            design.name(),
            n,
            regions
                .iter()
                .map(|r| r.id())
                .collect::<Vec<_>>()
                .join(", "),
            sessions,
            args.rate,
            args.seconds,
            args.warmup
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let origins: Vec<usize> = (0..n).collect();
    let lags = {
        let cluster = cluster.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            meridian_testbed::visibility::measure(
                &cluster,
                &origins,
                Duration::from_millis(50),
                stop,
            )
            .await
        })
    };
    let measured_from = Instant::now() + Duration::from_secs(args.warmup);
    let deadline = measured_from + Duration::from_secs(args.seconds);
    let done_ops = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..sessions {
        let ctx = SessionCtx {
            s: s as u32,
            regions: n,
            design,
            users: users.clone(),
            homes: homes.clone(),
            addrs: addrs.clone(),
            args: args.clone(),
            window: (measured_from, deadline),
            done: done_ops.clone(),
        };
        tasks.spawn(session(ctx));
    }
    let progress = (!args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new(args.warmup + args.seconds);
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {bar:40} {pos}/{len} s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    while tasks.len() == sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(bar) = &progress {
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!("{} operations", done_ops.load(Ordering::Relaxed)));
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let mut classes: Vec<Histogram<u64>> = (0..CLASSES.len())
        .map(|_| histogram())
        .collect::<Result<_, _>>()?;
    let mut ops = Vec::new();
    let mut increments: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0;
    let mut error_examples = Vec::new();
    let mut measured_ops = 0;
    while let Some(done) = tasks.join_next().await {
        let record = done.map_err(|e| e.to_string())??;
        for (all, h) in classes.iter_mut().zip(&record.classes) {
            all.add(h).map_err(|e| e.to_string())?;
        }
        for (key, n) in record.increments {
            *increments.entry(key).or_default() += n;
        }
        errors += record.errors;
        if error_examples.len() < 5 {
            error_examples.extend(record.error_examples);
            error_examples.truncate(5);
        }
        measured_ops += record.measured;
        ops.extend(record.ops);
    }
    let _ = stop_tx.send(true);
    let lag_table = lags.await.map_err(|e| e.to_string())??.lags;
    let stopped = Instant::now();
    cluster
        .wait_converged(Duration::from_secs(120))
        .await
        .map_err(|e| format!("{}: the regions did not converge: {e}", design.name()))?;
    let convergence = stopped.elapsed();
    let mut lost = 0;
    let mut c = cluster.connect(0).await.map_err(|e| e.to_string())?;
    for (key, acked) in &increments {
        let value: Option<u64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        lost += acked.saturating_sub(value.unwrap_or(0));
    }
    let violations = history::check(&ops);
    let mut by_guarantee = BTreeMap::new();
    for v in &violations {
        *by_guarantee.entry(v.guarantee.to_string()).or_insert(0) += 1;
    }
    let mut lag_figures = Vec::new();
    for (from, row) in lag_table.iter().enumerate() {
        for (to, h) in row.iter().enumerate() {
            let Some(h) = h.as_ref().filter(|h| !h.is_empty()) else {
                continue;
            };
            lag_figures.push(LagFigures {
                from: regions[from].id().to_owned(),
                to: regions[to].id().to_owned(),
                route_one_way_ms: topology_route_ms(&topology, regions, from, to),
                floor_one_way_ms: floor_one_way_ms(regions[from], regions[to]),
                p50_ms: ms(h.value_at_quantile(0.5)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
                probes: h.len(),
            });
        }
    }
    Ok(DesignFigures {
        design,
        name: design.name(),
        classes: CLASSES
            .iter()
            .zip(&classes)
            .map(|(class, h)| class_figures(class, h))
            .collect(),
        lags: lag_figures,
        operations: measured_ops,
        throughput_per_s: measured_ops as f64 / args.seconds.max(1) as f64,
        increments_acknowledged: increments.values().sum(),
        lost_updates: lost,
        operations_checked: ops.len(),
        violations: violations.len(),
        violations_by_guarantee: by_guarantee,
        violation_examples: violations.iter().take(5).map(|v| v.to_string()).collect(),
        errors,
        error_examples,
        convergence_ms: convergence.as_secs_f64() * 1000.0,
        emulator_lateness: cluster.emulator_lateness(),
    })
}

/// The one-way delay of the route changes take from `from` to `to`: the sum of
/// the links' delays along the topology's path.
fn topology_route_ms(
    topology: &meridian_topology::Topology,
    regions: &[Region],
    from: usize,
    to: usize,
) -> f64 {
    let path = topology.forward_path(
        meridian_topology::DcIdx(from as u8),
        meridian_topology::DcIdx(to as u8),
    );
    match path {
        Some(hops) => hops
            .windows(2)
            .map(|w| one_way_ms(regions[w[0].get()], regions[w[1].get()]))
            .sum(),
        None => one_way_ms(regions[from], regions[to]),
    }
}

/// Starts a redis-server per region for the Redis backend.
fn start_redis(spec: &mut ClusterSpec) -> Result<Vec<crate::processes::Guard>, String> {
    let dir = crate::processes::tempfile_dir()?;
    let ports = meridian_testbed::free_ports(spec.dcs.len()).map_err(|e| e.to_string())?;
    let mut guards = Vec::new();
    for (dc, port) in spec.dcs.iter_mut().zip(ports) {
        let data = dir.join(format!("redis-{}", dc.id));
        std::fs::create_dir_all(&data).map_err(|e| format!("creating {}: {e}", data.display()))?;
        guards.push(crate::processes::start_redis(&data, port, &[])?);
        dc.redis = Some(format!("redis://127.0.0.1:{port}/0"));
    }
    Ok(guards)
}

fn class_figures(class: &'static str, h: &Histogram<u64>) -> ClassFigures {
    let cdf = if h.is_empty() {
        Vec::new()
    } else {
        (0..=200)
            .map(|i| {
                let q = f64::from(i) / 200.0;
                (ms(h.value_at_quantile(q)), q)
            })
            .collect()
    };
    ClassFigures {
        class,
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        cdf,
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())
}

/// What a session needs.
struct SessionCtx {
    s: u32,
    regions: usize,
    design: Design,
    users: Arc<Users>,
    homes: Arc<meridian_policies::Rendezvous>,
    addrs: Arc<Vec<std::net::SocketAddr>>,
    args: GeoArgs,
    window: (Instant, Instant),
    done: Arc<AtomicU64>,
}

/// What a session recorded.
struct SessionRecord {
    classes: Vec<Histogram<u64>>,
    ops: Vec<Op>,
    increments: BTreeMap<String, u64>,
    errors: u64,
    error_examples: Vec<String>,
    measured: u64,
}

impl SessionRecord {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_examples.len() < 3 {
            self.error_examples.push(what);
        }
    }
}

/// A session's connections at its current region: one for everything where the
/// design has tokens, else one for writes and one for reads (an application
/// writing through its primary and reading its local replica).
struct Conns {
    writes: MultiplexedConnection,
    reads: MultiplexedConnection,
}

async fn connect(
    addr: std::net::SocketAddr,
    tokens: bool,
    token: Option<&str>,
) -> Result<Conns, redis::RedisError> {
    let writes = meridian_testbed::connect_to(addr).await?;
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        let mut c = writes.clone();
        let (): () = redis::cmd("MERIDIAN")
            .arg("SESSION")
            .arg(token)
            .query_async(&mut c)
            .await?;
    }
    let reads = match tokens {
        true => writes.clone(),
        false => meridian_testbed::connect_to(addr).await?,
    };
    Ok(Conns { writes, reads })
}

/// A zipf(s) pick among `n` (rank 0 the most popular); uniform when `s` is 0.
fn zipf(rng: &mut meridian_testbed::Rng, n: usize, s: f64) -> usize {
    if s <= 0.0 {
        return rng.below(n as u64) as usize;
    }
    let weights: f64 = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).sum();
    let mut target = rng.unit() * weights;
    for k in 1..=n {
        target -= 1.0 / (k as f64).powf(s);
        if target <= 0.0 {
            return k - 1;
        }
    }
    n - 1
}

async fn session(ctx: SessionCtx) -> Result<SessionRecord, String> {
    let args = &ctx.args;
    // Seeds of neighbouring sessions differ in a few bits: scramble them, so
    // their first draws (whether they roam) are independent.
    let mut seed = (u64::from(ctx.s) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ args.seed;
    seed = (seed ^ (seed >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut rng = meridian_testbed::Rng::new(seed ^ (seed >> 29));
    let mut record = SessionRecord {
        classes: (0..CLASSES.len())
            .map(|_| histogram())
            .collect::<Result<_, _>>()?,
        ops: Vec::new(),
        increments: BTreeMap::new(),
        errors: 0,
        error_examples: Vec::new(),
        measured: 0,
    };
    let own = ctx.users.own[ctx.s as usize].clone();
    let mut region = ctx.s as usize % ctx.regions;
    let tokens = ctx.design.tokens();
    let mut conns: Option<Conns> = None;
    let mut token = String::new();
    let roams = rng.unit() < args.roaming;
    let mut move_after = roams.then(|| 1 + rng.below(3));
    let mut just_moved = false;
    let padding = "x".repeat(args.value_size.saturating_sub(16));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut op = 0u64;
    let (measured_from, deadline) = ctx.window;
    while Instant::now() < deadline {
        // The read right after a move runs at once (a device switch).
        if !just_moved && args.rate > 0 {
            tick.tick().await;
        }
        if conns.is_none() {
            match connect(ctx.addrs[region], tokens, tokens.then_some(token.as_str())).await {
                Ok(c) => conns = Some(c),
                Err(e) => {
                    record.error(format!("connecting to region {region}: {e}"));
                    continue;
                }
            }
        }
        let Some(c) = conns.as_mut() else { continue };
        op += 1;
        let shared = rng.unit() < args.shared;
        let user = match shared {
            true => &ctx.users.shared[zipf(&mut rng, ctx.users.shared.len(), args.zipf)],
            false => &own,
        };
        let read = just_moved || rng.unit() < args.reads;
        let started = Instant::now();
        let measured = started >= measured_from;
        if read {
            let key = format!("{{{user}}}:v");
            let got: redis::RedisResult<Option<String>> =
                redis::cmd("GET").arg(&key).query_async(&mut c.reads).await;
            let took = started.elapsed().as_micros() as u64;
            match got {
                Ok(value) => {
                    let class = if just_moved {
                        READ_AFTER_MOVE
                    } else if shared {
                        SHARED_READ
                    } else {
                        LOCAL_READ
                    };
                    if measured {
                        record.classes[class].saturating_record(took);
                        record.measured += 1;
                    }
                    // The history checker orders one writer's values: only the
                    // session's own keys (it is their one writer) are checked.
                    let value = value.and_then(|v| Value::parse(v.split(':').next().unwrap_or("")));
                    if !shared {
                        record.ops.push(Op {
                            session: ctx.s,
                            op,
                            dc: region,
                            key,
                            kind: Kind::Read(value),
                        });
                    }
                }
                Err(e) => record.error(format!("GET at region {region}: {e}")),
            }
            just_moved = false;
        } else {
            let increment = rng.below(2) == 0;
            let writer = match ctx.design {
                Design::GlobalLeader => 0,
                Design::Local => region,
                Design::Meridian => ctx.homes.home_of(user),
            };
            let class = if writer == region {
                HOME_WRITE
            } else {
                FORWARDED_WRITE
            };
            let (key, result) = if increment {
                let key = format!("{{{user}}}:n");
                let r: redis::RedisResult<i64> = redis::cmd("INCR")
                    .arg(&key)
                    .query_async(&mut c.writes)
                    .await;
                (key, r.map(|_| ()))
            } else {
                let key = format!("{{{user}}}:v");
                let value = Value { session: ctx.s, op };
                let r: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&key)
                    .arg(format!("{}:{padding}", value.text()))
                    .query_async(&mut c.writes)
                    .await;
                (key, r)
            };
            let took = started.elapsed().as_micros() as u64;
            match result {
                Ok(()) => {
                    if measured {
                        record.classes[class].saturating_record(took);
                        record.measured += 1;
                    }
                    if increment {
                        *record.increments.entry(key).or_default() += 1;
                    } else if !shared {
                        record.ops.push(Op {
                            session: ctx.s,
                            op,
                            dc: region,
                            key,
                            kind: Kind::Write,
                        });
                    }
                }
                Err(e) => {
                    record.error(format!("a write at region {region}: {e}"));
                    if !increment && !shared {
                        record.ops.push(Op {
                            session: ctx.s,
                            op,
                            dc: region,
                            key,
                            kind: Kind::MaybeWrite,
                        });
                    }
                }
            }
            // A roaming session moves after some of its writes.
            if let Some(left) = move_after.as_mut() {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    if tokens {
                        let mut w = c.writes.clone();
                        let t: redis::RedisResult<String> = redis::cmd("MERIDIAN")
                            .arg("SESSION")
                            .query_async(&mut w)
                            .await;
                        token = t.unwrap_or_default();
                    }
                    region =
                        (region + 1 + rng.below(ctx.regions as u64 - 1) as usize) % ctx.regions;
                    conns = None;
                    just_moved = true;
                    move_after = Some(1 + rng.below(3));
                }
            }
        }
        ctx.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(record)
}

fn print_table(args: &GeoArgs, regions: &[Region], figures: &[DesignFigures]) {
    println!(
        "\ngeo: {} ({}), {} topology, {} backend; {} sessions per region at {}/s, {:.0}% reads, {:.0}% roaming, {:.0}% on shared keys (zipf {}), {} s per design",
        args.regions,
        regions
            .iter()
            .map(|r| r.id())
            .collect::<Vec<_>>()
            .join(", "),
        args.topology,
        args.backend,
        args.clients,
        args.rate,
        args.reads * 100.0,
        args.roaming * 100.0,
        args.shared * 100.0,
        args.zipf,
        args.seconds
    );
    println!(
        "\n| design | class | ops | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|"
    );
    for d in figures {
        for c in d.classes.iter().filter(|c| c.count > 0) {
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                d.name, c.class, c.count, c.p50_ms, c.p99_ms, c.p999_ms, c.max_ms
            );
        }
    }
    println!(
        "\n| design | ops/s | increments acknowledged | lost updates | session-guarantee violations | errors | convergence after the load |\n|---|---|---|---|---|---|---|"
    );
    for d in figures {
        let kinds: Vec<String> = (d.violations_by_guarantee.iter())
            .map(|(g, n)| format!("{n} {g}"))
            .collect();
        println!(
            "| {} | {:.0} | {} | {} | {} of {} checked{} | {} | {:.0} ms |",
            d.name,
            d.throughput_per_s,
            d.increments_acknowledged,
            d.lost_updates,
            d.violations,
            d.operations_checked,
            match kinds.is_empty() {
                true => String::new(),
                false => format!(" ({})", kinds.join(", ")),
            },
            d.errors,
            d.convergence_ms
        );
    }
    println!();
    for d in figures {
        println!("{}: {}", d.name, d.emulator_lateness);
    }
    for d in figures.iter().filter(|d| !d.error_examples.is_empty()) {
        println!("\n{}: the first errors", d.name);
        for e in &d.error_examples {
            println!("  {e}");
        }
    }
    for d in figures.iter().filter(|d| !d.violation_examples.is_empty()) {
        println!("\n{}: the first violations", d.name);
        for v in &d.violation_examples {
            println!("  {v}");
        }
    }
    println!(
        "\nvisibility lag per link (ms; route: one-way delay along the topology; floor: speed of light in fibre)\n| design | link | route | floor | p50 | p99 | max |\n|---|---|---|---|---|---|---|"
    );
    for d in figures {
        for l in &d.lags {
            println!(
                "| {} | {} -> {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                d.name,
                l.from,
                l.to,
                l.route_one_way_ms,
                l.floor_one_way_ms,
                l.p50_ms,
                l.p99_ms,
                l.max_ms
            );
        }
    }
}
