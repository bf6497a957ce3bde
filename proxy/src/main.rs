//! `meridian`: the geo-replication proxy's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod check;
mod run;

/// Exit code for a configuration that is wrong (BSD sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code for an input file that cannot be read (EX_NOINPUT).
const EX_NOINPUT: u8 = 66;
/// Exit code for a failure at run time, such as a port in use (EX_SOFTWARE).
const EX_SOFTWARE: u8 = 70;

/// Meridian: one proxy per datacenter, routing each user's writes to its home
/// datacenter and replicating every change to the others.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a topology file and print its replication plan.
    Check {
        /// The topology file (TOML).
        file: PathBuf,
    },
    /// Run the proxy of one datacenter.
    Run {
        /// The topology file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The id of the datacenter this proxy serves.
        #[arg(long)]
        dc: String,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Print the version and the formats this build speaks.
    Version,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Compare Redis direct, twemproxy, meridian over Redis and meridian over the
    /// embedded store under redis-benchmark (needs redis-server, redis-benchmark and,
    /// for the twemproxy column, nutcracker).
    Overhead(bench::OverheadArgs),
}

/// How logs are written to standard error.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check::run(&file),
        Command::Run {
            config,
            dc,
            log_format,
        } => run::run(&config, &dc, log_format),
        Command::Bench(BenchCommand::Overhead(args)) => bench::overhead(&args),
        Command::Version => {
            println!("meridian {}", env!("CARGO_PKG_VERSION"));
            println!("session token format: mt1");
            println!(
                "change record format: {}",
                meridian_proxy::change::CHANGE_FORMAT
            );
            ExitCode::SUCCESS
        }
    }
}
