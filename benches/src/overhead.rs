//! `meridian-benches overhead`: what a proxy costs in front of Redis.
//!
//! Starts a redis-server, twemproxy (nutcracker) in front of it, meridian over that
//! Redis and meridian over the embedded store, all on free loopback ports, then runs
//! redis-benchmark against each in turn (alternating targets round by round, so drift
//! in the machine's speed spreads over all of them) and prints requests per second,
//! p50 and p99 for each, with its ratio to direct Redis.

use std::path::Path;
use std::process::{Command, Stdio};

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
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
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
    let _redis = spawn(
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
    let mut targets = vec![Target {
        name: "redis (direct)",
        port: redis_port,
    }];
    let mut guards = Vec::new();
    match start_twemproxy(&dir, redis_port)? {
        Some((guard, port)) => {
            guards.push(guard);
            targets.push(Target {
                name: "twemproxy + redis",
                port,
            });
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
        guards.push(guard);
        targets.push(Target { name, port });
    }

    println!(
        "redis-benchmark -t set,get -n {} -c {} -r {}, {} round(s), targets alternating\n",
        args.requests, args.clients, args.keyspace, args.rounds
    );
    for pipeline in [1u32, 16] {
        let mut results: Vec<Vec<(Figures, Figures)>> =
            targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..args.rounds {
            for (i, target) in targets.iter().enumerate() {
                results[i].push(benchmark(target.port, pipeline, args)?);
            }
        }
        report(pipeline, &targets, &results);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn report(pipeline: u32, targets: &[Target], results: &[Vec<(Figures, Figures)>]) {
    println!("-P {pipeline}");
    println!(
        "  {:<22} {:>12} {:>9} {:>9} {:>7}   {:>12} {:>9} {:>9} {:>7}",
        "target",
        "SET req/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "GET req/s",
        "p50 ms",
        "p99 ms",
        "ratio"
    );
    let medians: Vec<(Figures, Figures)> = results
        .iter()
        .map(|r| (median(r.iter().map(|x| x.0)), median(r.iter().map(|x| x.1))))
        .collect();
    let (direct_set, direct_get) = medians[0];
    for (target, (set, get)) in targets.iter().zip(&medians) {
        println!(
            "  {:<22} {:>12.0} {:>9.3} {:>9.3} {:>6.2}x   {:>12.0} {:>9.3} {:>9.3} {:>6.2}x",
            target.name,
            set.rps,
            set.p50_ms,
            set.p99_ms,
            set.rps / direct_set.rps,
            get.rps,
            get.p50_ms,
            get.p99_ms,
            get.rps / direct_get.rps
        );
    }
    println!();
}

fn median(values: impl Iterator<Item = Figures>) -> Figures {
    let mut v: Vec<Figures> = values.collect();
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// One redis-benchmark run of SET and GET; parses its CSV.
fn benchmark(port: u16, pipeline: u32, args: &OverheadArgs) -> Result<(Figures, Figures), String> {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "--csv",
        ])
        .args([
            "-n",
            &args.requests.to_string(),
            "-c",
            &args.clients.to_string(),
            "-r",
            &args.keyspace.to_string(),
            "-P",
            &pipeline.to_string(),
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
            }),
            _ => Err(format!("unexpected redis-benchmark row {line:?}")),
        }
    };
    Ok((row("SET")?, row("GET")?))
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
