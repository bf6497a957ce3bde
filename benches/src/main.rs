//! `meridian-benches`: the benchmarks that print meridian's figures.
//!
//! Run them in release mode: `cargo run --release -p meridian-benches -- <name>`.
//! Each starts what it measures as real processes on loopback ports (the `meridian`
//! binary of this workspace, redis-server, twemproxy) and prints its figures.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod binary;
mod overhead;
mod replication;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, result) = match cli.bench {
        Bench::Overhead(args) => ("overhead", overhead::run(&args)),
        Bench::Replication(args) => ("replication", replication::run(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-benches {name}: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}
