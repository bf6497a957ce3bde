//! `meridian`: the geo-replication proxy's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod check;
mod demo;
mod run;

/// mimalloc: writes allocate on the writer thread and free on the committer, a
/// pattern glibc's malloc spends much time on (`malloc_consolidate`,
/// `unlink_chunk`). Five rounds each, alternating with glibc, on a standalone
/// proxy (`redis-benchmark -r 100000 -c 50`): SET -P 1 took 16.9-21.1 µs of CPU
/// a request instead of 20.3-23.5 (embedded) and 20.5-23.1 instead of 23.1-28.1
/// (over Redis, Redis's CPU included); SET -P 16 and GET were the same or a
/// little better.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in `mi_option_t`; the test below
/// checks that it is the option whose default is 1,000 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory the proxy freed stays with it before mimalloc hands it back to
/// the OS. A write's change is allocated by the thread that serves it and freed
/// by the committer once the store holds it, in bulk at each commit; with
/// mimalloc's 1 s delay much of that memory went back to the OS between commits
/// and was faulted in again (zeroed) by the next writes: 180,000-230,000 page
/// faults per million pipelined SETs on the embedded store, 8% of the serving
/// thread's CPU and 7% of the committer's, with TLB shootdowns between them. With
/// 10 s: 24,000-85,000, and the faults left the profile (0.55% of the serving
/// thread). Idle memory still goes back after 10 s.
/// `MIMALLOC_PURGE_DELAY` in the environment overrides it.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Sets the allocator's purge delay (see [`PURGE_DELAY_MS`]); runs first in `main`,
/// before any other thread starts.
fn keep_freed_memory_longer() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores the value of a valid option; it is called
    // before the program starts any thread (mimalloc asks for no concurrent calls).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

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
    /// Start several regions on this machine with measured WAN delays between them,
    /// run a mixed workload, and print replication lag per link and convergence.
    Demo(demo::DemoArgs),
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
        /// Reach datacenter DC at ADDR instead of its topology `peer` address
        /// (`DC=host:port`, repeatable; the testbed's WAN emulator sits there).
        #[arg(long, value_name = "DC=ADDR")]
        dial: Vec<String>,
        /// Shift this proxy's clock for write timestamps by this many
        /// milliseconds (the testbed skews datacenters' clocks).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        clock_offset_ms: i64,
        /// Logged changes not yet in the store before writes and remote applies wait
        /// for it (bounds memory while the store is slow or down).
        #[arg(long, default_value_t = meridian_proxy::DEFAULT_MAX_UNSTORED, value_parser = clap::value_parser!(usize))]
        max_unstored_changes: usize,
        /// Close a log segment past this many bytes (retention removes whole
        /// segments; small segments make it visible in tests).
        #[arg(long, default_value_t = meridian_proxy::DEFAULT_SEGMENT_BYTES, hide = true)]
        log_segment_bytes: u64,
        /// Threads that serve clients and peers [default: one fewer than the
        /// cores, at least one: the writer and committer threads, and often the
        /// database, need a core too].
        #[arg(long, env = "MERIDIAN_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
    },
    /// Create the cluster CA and every datacenter's certificate and key, at the
    /// paths the topology file's [tls] section names.
    Certs {
        /// The topology file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Replace files that exist already.
        #[arg(long)]
        force: bool,
    },
    /// Print the version and the formats this build speaks.
    Version,
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
    keep_freed_memory_longer();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::demo(&args),
        Command::Check { file } => check::run(&file),
        Command::Run {
            config,
            dc,
            log_format,
            dial,
            clock_offset_ms,
            max_unstored_changes,
            log_segment_bytes,
            threads,
        } => run::run(
            &config,
            &dc,
            log_format,
            &run::Extra {
                dial,
                clock_offset_ms,
                max_unstored: max_unstored_changes.max(1),
                log_segment_bytes: log_segment_bytes.max(4096),
                threads: threads.map_or_else(serving_threads, usize::from),
            },
        ),
        Command::Certs { config, force } => certs(&config, force),
        Command::Version => {
            println!("meridian {}", env!("CARGO_PKG_VERSION"));
            println!("session token format: mt2 (reads mt1)");
            println!("link protocol: {}", meridian_proxy::PROTOCOL_VERSION);
            println!("change record format: {}", meridian_proxy::CHANGE_FORMAT);
            ExitCode::SUCCESS
        }
    }
}

/// The multi-threaded runtime the long-running commands use, with `threads`
/// workers (`None`: one per core); the error says why there is none, for the
/// command to report.
fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// The proxy's default number of serving threads: one fewer than the cores, at
/// least one. Its writer, committer and log-sync threads need room beside them,
/// and so does the database when it shares the machine. With as many serving
/// threads as cores, they parked and woke each other all the time: on 2 cores,
/// `redis-benchmark -c 50 -r 100000` cost 18.5 µs of CPU per SET on the embedded
/// store with 2 threads against 15.0 with one (54-56k/s against 73k/s), and 20 µs
/// per GET over Redis, Redis's included, against 11.5-13.6 (52-54k/s against
/// 66-83k/s); pipelined (`-P 16`) one thread did 250k SETs/s against 275-316k.
fn serving_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

/// This program's own path, to start proxies (the testbed runs them as processes).
fn this_binary() -> Result<std::path::PathBuf, String> {
    std::env::current_exe()
        .map_err(|e| format!("cannot find this program's path to start the proxies: {e}"))
}

/// Exit code for output files that cannot be created (EX_CANTCREAT).
const EX_CANTCREAT: u8 = 73;

fn certs(file: &std::path::Path, force: bool) -> ExitCode {
    let topology = match check::load_or_exit(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match meridian_proxy::generate_certs(&topology, force) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meridian certs: {e}");
            ExitCode::from(EX_CANTCREAT)
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option set is mimalloc's purge delay: it starts at that option's
    /// default, 1,000 ms (a newer mimalloc that renumbered its options fails here),
    /// and reads back as set.
    #[test]
    #[allow(unsafe_code)]
    fn the_allocator_keeps_freed_memory_for_the_delay_set() {
        assert!(std::env::var_os("MIMALLOC_PURGE_DELAY").is_none());
        // SAFETY: reads a valid option; no other test touches the allocator's options.
        let before = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            before,
            1_000,
            "option {} is not purge_delay",
            super::MI_OPTION_PURGE_DELAY
        );
        super::keep_freed_memory_longer();
        // SAFETY: as above.
        let after = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, super::PURGE_DELAY_MS);
    }
}
