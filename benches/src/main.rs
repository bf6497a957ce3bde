//! `meridian-benches`: the benchmarks that print meridian's figures.
//!
//! Run them in release mode: `cargo run --release -p meridian-benches -- <name>`.
//! Each starts what it measures as real processes on loopback ports (the `meridian`
//! binary of this workspace, redis-server, twemproxy) and prints its figures.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod binary;
mod failover;
mod faults;
mod forward;
mod geo;
mod geo_plot;
mod multikey;
mod overhead;
mod processes;
mod replication;
mod sessions;
mod travel;
mod values;

/// Exit code for a benchmark that could not run (EX_SOFTWARE).
const EX_SOFTWARE: u8 = 70;

/// Meridian's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "meridian-benches", version, about)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Compare Redis direct, twemproxy, meridian over Redis and meridian over the
    /// embedded store under redis-benchmark (needs redis-server, redis-benchmark and,
    /// for the twemproxy column, nutcracker).
    Overhead(overhead::OverheadArgs),
    /// Replication over one emulated link (100 ms round trip, 1% loss by default):
    /// catch-up and streaming throughput, and visibility lag under a steady load.
    Replication(replication::ReplicationArgs),
    /// Home leaders: write latency at home and forwarded on the three-region
    /// preset (against no routing and against the round trip), and forwarded-write
    /// throughput over one 100 ms, 1% loss link.
    Forward(forward::ForwardArgs),
    /// Session reads on three regions: reads served locally, the read right after
    /// a device switch, forwarded stale reads, and the history checker's verdict
    /// (`--faults`: a soak with cut links and a SIGKILLed proxy).
    Sessions(sessions::SessionArgs),
    /// One MSET and DEL of many keys (10k, 80k, 200k): how long each takes, how
    /// long another client's write waits meanwhile, and the store's bytes per byte.
    Multikey(multikey::MultikeyArgs),
    /// A fault run (not part of CI): three datacenters under load while proxies
    /// and a Redis backend are SIGKILLed; then every acknowledged write is looked
    /// for at every datacenter.
    Faults(faults::FaultArgs),
    /// Failover under load (not part of CI): cycles of cutting a home off until
    /// the next in line writes for its users and healing it until it resumes;
    /// write unavailability, failback time, and whether every lost write is in
    /// the conflict log.
    Failover(failover::FailoverArgs),
    /// The cross-region benchmark: meridian against a single global leader and
    /// local multi-leader writes, on one emulated WAN and one workload; a table,
    /// a JSON file and an SVG report.
    Geo(geo::GeoArgs),
    /// Travelling users on three regions: the share of writes executed at their
    /// home and the write latency, with homes that follow their users and with
    /// rendezvous homes alone.
    Travel(travel::TravelArgs),
    /// What a small change to a big value costs: log bytes per change and changes
    /// per second for sets, hashes, lists and sorted sets of 10 to 100,000 elements.
    Values(values::ValuesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, result) = match cli.bench {
        Bench::Overhead(args) => ("overhead", overhead::run(&args)),
        Bench::Replication(args) => ("replication", replication::run(&args)),
        Bench::Multikey(args) => ("multikey", multikey::run(&args)),
        Bench::Forward(args) => ("forward", forward::run(&args)),
        Bench::Sessions(args) => ("sessions", sessions::run(&args)),
        Bench::Faults(args) => ("faults", faults::run(&args)),
        Bench::Failover(args) => ("failover", failover::run(&args)),
        Bench::Geo(args) => ("geo", geo::run(&args)),
        Bench::Values(args) => ("values", values::run(&args)),
        Bench::Travel(args) => ("travel", travel::run(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-benches {name}: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}
