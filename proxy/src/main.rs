//! `meridian`: the geo-replication proxy's command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;

/// Exit code for a configuration that is wrong (BSD sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code for an input file that cannot be read (EX_NOINPUT).
const EX_NOINPUT: u8 = 66;

/// Meridian: one proxy per datacenter, routing each user's writes to its home
/// datacenter and replicating every change to the others.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about, disable_version_flag = false)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a topology file and print its replication plan.
    Check {
        /// The topology file (TOML).
        file: std::path::PathBuf,
    },
    /// Print the version and the formats this build speaks.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check::run(&file),
        Command::Version => {
            println!("meridian {}", env!("CARGO_PKG_VERSION"));
            println!("session token format: mt1");
            ExitCode::SUCCESS
        }
    }
}
