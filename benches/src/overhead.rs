//! `meridian-benches overhead`: what a proxy costs in front of Redis.
//!
//! Starts a redis-server, twemproxy (nutcracker) in front of it, meridian over that
//! Redis and meridian over the embedded store, all on free loopback ports, then runs
//! redis-benchmark against each in turn (alternating targets round by round, so drift
//! in the machine's speed spreads over all of them). For SET and GET, at `-P 1` and
//! `-P 16`, and for a mixed load (80% GET, 20% SET, 1 KB values: two redis-benchmark
//! processes at once, 4 GET clients to each SET client), it prints each target's
//! median over the rounds of: requests per second, p50 and p99, the CPU the proxy and
//! its backend used per request (from `/proc/<pid>/stat`, counted until they are
//! idle again, so work deferred past the run counts), and the ratios to direct
//! Redis and to twemproxy. A last table gives the p50 each proxy adds at one client
//! (`-c 1 -P 1`): what a lone request pays.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_testbed::{free_port, free_ports};

use crate::processes::{Guard, spawn, start_meridian, tempfile_dir};

/// Settings of one benchmark run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OverheadArgs {
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// Random keys (redis-benchmark -r).
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,
    /// Rounds over all targets; the report takes each target's median.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

struct Target {
    name: &'static str,
    port: u16,
    /// The processes whose CPU the target's requests cost: the proxy, if any,
    /// and the Redis behind it.
    pids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU of the target's processes per request, in microseconds.
    cpu_us: f64,
}

/// The loads each round runs against every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Set {
        pipeline: u32,
    },
    Get {
        pipeline: u32,
    },
    /// 80% GET and 20% SET of 1 KB values, no pipelining.
    Mixed,
    /// SET or GET at one client, no pipelining: the latency a lone request pays.
    Lone {
        get: bool,
    },
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::Set { pipeline } => format!("SET -P {pipeline}"),
            Load::Get { pipeline } => format!("GET -P {pipeline}"),
            Load::Mixed => "mixed 80% GET / 20% SET, 1 KB values, -P 1".into(),
            Load::Lone { get } => {
                format!(
                    "one client (-c 1 -P 1): {}",
                    if get { "GET" } else { "SET" }
                )
            }
        }
    }
}

/// CPU used so far by `pids`, together.
fn cpu(pids: &[u32]) -> Duration {
    pids.iter()
        .filter_map(|&pid| meridian_testbed::process_cpu_time(pid))
        .sum()
}

/// Waits until `pids` are idle: two 100 ms windows in a row in which they used at
/// most a clock tick (10 ms) of CPU together, for at most 10 s. Work a proxy
/// defers past the end of a run (its committer storing what it logged) then
/// counts in that run's CPU, and does not fall into the next target's run: the
/// embedded store's committer ran on for up to a second after a `-P 16` SET run,
/// beside direct Redis's next round.
fn settle(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet = 0;
    let mut last = cpu(pids);
    while quiet < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu(pids);
        quiet = match now.saturating_sub(last) <= Duration::from_millis(10) {
            true => quiet + 1,
            false => 0,
        };
        last = now;
    }
}

/// Runs the benchmark and prints its figures.
pub(crate) fn run(args: &OverheadArgs) -> Result<(), String> {
    for tool in ["redis-server", "redis-benchmark"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!(
                "{tool} is not installed (apt-get install redis-server redis-tools)"
            ));
        }
    }
    let binary = crate::binary::meridian()?;
    let dir = tempfile_dir()?;
    let redis_port = free_port().map_err(|e| e.to_string())?;
    let redis = spawn(
        Command::new("redis-server").args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.to_string_lossy(),
        ]),
        redis_port,
    )?;
    let redis_pid = redis.pid();
    let mut targets = vec![Target {
        name: "redis (direct)",
        port: redis_port,
        pids: vec![redis_pid],
    }];
    let mut guards = Vec::new();
    match start_twemproxy(&dir, redis_port)? {
        Some((guard, port)) => {
            targets.push(Target {
                name: "twemproxy + redis",
                port,
                pids: vec![guard.pid(), redis_pid],
            });
            guards.push(guard);
        }
        None => eprintln!(
            "nutcracker (twemproxy) is not installed: its column is left out (apt-get install nutcracker)"
        ),
    }
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    for (name, redis) in [
        ("meridian + redis", Some(redis_url.as_str())),
        ("meridian + embedded", None),
    ] {
        let (guard, port) = start_meridian(&binary, &dir, name, redis)?;
        let mut pids = vec![guard.pid()];
        if redis.is_some() {
            pids.push(redis_pid);
        }
        guards.push(guard);
        targets.push(Target { name, port, pids });
    }

    println!(
        "redis-benchmark -n {} ({} pipelined) -c {} -r {}, {} round(s), targets alternating; CPU: the proxy's and its Redis's per request, until they are idle again\n",
        args.requests,
        pipelined(args.requests, 16),
        args.clients,
        args.keyspace,
        args.rounds
    );
    match std::env::var("MERIDIAN_THREADS") {
        Ok(threads) => println!("meridian: {threads} serving threads (MERIDIAN_THREADS)\n"),
        Err(_) => println!(
            "meridian: its default serving threads, one fewer than the {} cores (MERIDIAN_THREADS sets them)\n",
            std::thread::available_parallelism().map_or(1, usize::from)
        ),
    }
    // The mixed load's GETs find 1 KB values.
    for target in &targets {
        let fill = Run {
            test: &["-t", "set", "-d", "1024"],
            requests: args.keyspace,
            clients: 50,
            pipeline: 16,
        };
        run_benchmark(target, &fill, args)?;
    }
    for load in [
        Load::Set { pipeline: 1 },
        Load::Get { pipeline: 1 },
        Load::Set { pipeline: 16 },
        Load::Get { pipeline: 16 },
        Load::Mixed,
        Load::Lone { get: false },
        Load::Lone { get: true },
    ] {
        let mut results: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..args.rounds {
            for (i, target) in targets.iter().enumerate() {
                results[i].push(measure(target, load, args)?);
            }
        }
        report(load, &targets, &results);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// How many times `--requests` a pipelined run sends. Pipelined requests go 5-10
/// times faster, and at `--requests` alone a `-P 16` run lasted under a second:
/// mostly the proxy's tables growing from empty, its figures moving by a quarter
/// from one run to the next.
const PIPELINED: u64 = 5;

/// One round of `load` against `target`.
fn measure(target: &Target, load: Load, args: &OverheadArgs) -> Result<Figures, String> {
    let n = args.requests;
    let run = |test, requests, clients, pipeline| Run {
        test,
        requests,
        clients,
        pipeline,
    };
    match load {
        Load::Set { pipeline } => run_benchmark(
            target,
            &run(
                &["-t", "set"],
                pipelined(n, pipeline),
                args.clients,
                pipeline,
            ),
            args,
        ),
        Load::Get { pipeline } => run_benchmark(
            target,
            &run(
                &["-t", "get"],
                pipelined(n, pipeline),
                args.clients,
                pipeline,
            ),
            args,
        ),
        Load::Lone { get } => {
            let test: &[&str] = if get { &["-t", "get"] } else { &["-t", "set"] };
            run_benchmark(target, &run(test, n / 10, 1, 1), args)
        }
        Load::Mixed => {
            let gets = args.clients.max(5) * 4 / 5;
            let sets = (args.clients.max(5) / 5).max(1);
            let before = cpu(&target.pids);
            let started = Instant::now();
            let (get, set) = std::thread::scope(|scope| {
                let get = scope.spawn(|| {
                    let gets = run(&["-t", "get", "-d", "1024"], n * 4 / 5, gets, 1);
                    benchmark(target.port, &gets, args)
                });
                let sets = run(&["-t", "set", "-d", "1024"], n / 5, sets, 1);
                let set = benchmark(target.port, &sets, args);
                (
                    get.join()
                        .unwrap_or_else(|_| Err("the GET half panicked".into())),
                    set,
                )
            });
            let (get, set) = (get?, set?);
            let elapsed = started.elapsed().as_secs_f64();
            settle(&target.pids);
            let total = (n * 4 / 5 + n / 5) as f64;
            // Latency: the GETs' and SETs' figures weighted by their shares.
            Ok(Figures {
                rps: total / elapsed,
                p50_ms: 0.8 * get.p50_ms + 0.2 * set.p50_ms,
                p99_ms: get.p99_ms.max(set.p99_ms),
                cpu_us: 1e6 * cpu(&target.pids).saturating_sub(before).as_secs_f64() / total,
            })
        }
    }
}

/// The requests of a run at `pipeline` depth (see [`PIPELINED`]).
fn pipelined(requests: u64, pipeline: u32) -> u64 {
    if pipeline > 1 {
        requests * PIPELINED
    } else {
        requests
    }
}

/// One redis-benchmark invocation: its test arguments (`-t` and any more), and
/// requests, clients and pipeline depth.
struct Run<'a> {
    test: &'a [&'a str],
    requests: u64,
    clients: u32,
    pipeline: u32,
}

/// `run` against `target`, with the CPU its processes used.
fn run_benchmark(target: &Target, run: &Run<'_>, args: &OverheadArgs) -> Result<Figures, String> {
    let before = cpu(&target.pids);
    let mut figures = benchmark(target.port, run, args)?;
    settle(&target.pids);
    let used = cpu(&target.pids).saturating_sub(before);
    figures.cpu_us = 1e6 * used.as_secs_f64() / run.requests as f64;
    Ok(figures)
}

fn report(load: Load, targets: &[Target], results: &[Vec<Figures>]) {
    println!("{}", load.name());
    println!(
        "  {:<22} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "target", "req/s", "p50 ms", "p99 ms", "CPU µs", "vs redis", "vs twem", "p50 added"
    );
    let medians: Vec<Figures> = results.iter().map(|r| median(r.iter().copied())).collect();
    let direct = medians[0];
    let twem = targets
        .iter()
        .position(|t| t.name.starts_with("twemproxy"))
        .map(|i| medians[i]);
    for (target, m) in targets.iter().zip(&medians) {
        let vs_twem = match twem {
            Some(t) => format!("{:.2}x", m.rps / t.rps),
            None => "-".into(),
        };
        println!(
            "  {:<22} {:>10.0} {:>8.3} {:>8.3} {:>9.1} {:>8.2}x {:>9} {:>+8.3}",
            target.name,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.cpu_us,
            m.rps / direct.rps,
            vs_twem,
            m.p50_ms - direct.p50_ms
        );
    }
    println!();
}

fn median(values: impl Iterator<Item = Figures>) -> Figures {
    let mut v: Vec<Figures> = values.collect();
    let pick = |v: &mut Vec<Figures>, key: fn(&Figures) -> f64| {
        v.sort_by(|a, b| key(a).total_cmp(&key(b)));
        v.get(v.len() / 2).map(key).unwrap_or_default()
    };
    Figures {
        rps: pick(&mut v, |f| f.rps),
        p50_ms: pick(&mut v, |f| f.p50_ms),
        p99_ms: pick(&mut v, |f| f.p99_ms),
        cpu_us: pick(&mut v, |f| f.cpu_us),
    }
}

/// One redis-benchmark run of one test; parses its CSV.
fn benchmark(port: u16, run: &Run<'_>, args: &OverheadArgs) -> Result<Figures, String> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--csv"])
        .args(run.test)
        .args([
            "-n",
            &run.requests.to_string(),
            "-c",
            &run.clients.to_string(),
            "-r",
            &args.keyspace.to_string(),
            "-P",
            &run.pipeline.to_string(),
        ])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |test: &str| -> Result<Figures, String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("\"{test}\"")))
            .ok_or_else(|| {
                format!("redis-benchmark printed no {test} row for port {port}:\n{text}")
            })?;
        let cols: Vec<f64> = line
            .split(',')
            .skip(1)
            .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        match cols.as_slice() {
            [rps, _avg, _min, p50, _p95, p99, ..] => Ok(Figures {
                rps: *rps,
                p50_ms: *p50,
                p99_ms: *p99,
                cpu_us: 0.0,
            }),
            _ => Err(format!("unexpected redis-benchmark row {line:?}")),
        }
    };
    let name = if run.test.contains(&"get") {
        "GET"
    } else {
        "SET"
    };
    row(name)
}

fn start_twemproxy(dir: &Path, redis_port: u16) -> Result<Option<(Guard, u16)>, String> {
    if Command::new("nutcracker")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(None);
    }
    let ports = free_ports(2).map_err(|e| e.to_string())?;
    let (port, stats) = (ports[0], ports[1]);
    let conf = dir.join("twemproxy.yml");
    let yaml = format!(
        "bench:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n  servers:\n    - 127.0.0.1:{redis_port}:1\n"
    );
    std::fs::write(&conf, yaml).map_err(|e| format!("writing {}: {e}", conf.display()))?;
    let log = dir.join("twemproxy.log");
    let mut cmd = Command::new("nutcracker");
    cmd.args([
        "-c",
        conf.to_str().unwrap_or_default(),
        "-s",
        &stats.to_string(),
        "-o",
        log.to_str().unwrap_or_default(),
    ]);
    Ok(Some((spawn(&mut cmd, port)?, port)))
}
