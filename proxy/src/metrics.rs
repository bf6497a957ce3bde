//! Counters and latency histograms, rendered in Prometheus text format.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::command::table::COMMANDS;

/// Latencies are kept in microseconds, from 1 µs to 60 s, at 3 significant digits.
fn histogram() -> Mutex<Histogram<u64>> {
    Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
    )
}

/// Per-command statistics, indexed like the command table.
#[derive(Debug)]
pub struct CommandStats {
    calls: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    latency: Vec<Mutex<Histogram<u64>>>,
    /// Commands that are not in the table.
    pub unknown: AtomicU64,
}

/// Latency of backend commits (the committer's transactions).
#[derive(Debug)]
pub struct BackendStats {
    commits: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats {
            calls: COMMANDS.iter().map(|_| AtomicU64::new(0)).collect(),
            errors: COMMANDS.iter().map(|_| AtomicU64::new(0)).collect(),
            latency: COMMANDS.iter().map(|_| histogram()).collect(),
            unknown: AtomicU64::new(0),
        }
    }
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            commits: AtomicU64::new(0),
            latency: histogram(),
        }
    }
}

fn record(h: &Mutex<Histogram<u64>>, took: Duration) {
    let micros = (took.as_micros() as u64).clamp(1, 60_000_000);
    if let Ok(mut h) = h.lock() {
        let _ = h.record(micros);
    }
}

impl CommandStats {
    /// Records one call of command `index` that took `took`.
    pub fn record(&self, index: usize, took: Duration, error: bool) {
        let Some(calls) = self.calls.get(index) else {
            return;
        };
        calls.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors[index].fetch_add(1, Ordering::Relaxed);
        }
        record(&self.latency[index], took);
    }

    /// Appends the Prometheus text of these statistics.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP meridian_commands_total Commands executed, by command.\n# TYPE meridian_commands_total counter\n");
        for (spec, calls) in COMMANDS.iter().zip(&self.calls) {
            let _ = writeln!(
                out,
                "meridian_commands_total{{command=\"{}\"}} {}",
                spec.name.to_lowercase(),
                calls.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "meridian_commands_total{{command=\"unknown\"}} {}",
            self.unknown.load(Ordering::Relaxed)
        );
        out.push_str("# HELP meridian_command_errors_total Commands answered with an error, by command.\n# TYPE meridian_command_errors_total counter\n");
        for (spec, errors) in COMMANDS.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "meridian_command_errors_total{{command=\"{}\"}} {}",
                spec.name.to_lowercase(),
                errors.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP meridian_command_latency_seconds Time from a command's arrival to its reply.\n# TYPE meridian_command_latency_seconds summary\n");
        for (spec, h) in COMMANDS.iter().zip(&self.latency) {
            summary(
                out,
                "meridian_command_latency_seconds",
                &format!("command=\"{}\",", spec.name.to_lowercase()),
                h,
            );
        }
    }
}

impl BackendStats {
    /// Records one backend commit.
    pub fn record(&self, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        record(&self.latency, took);
    }

    /// Appends the Prometheus text of these statistics.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP meridian_backend_commit_seconds Time of one backend transaction (a batch of changes).\n# TYPE meridian_backend_commit_seconds summary\n");
        summary(out, "meridian_backend_commit_seconds", "", &self.latency);
    }
}

fn summary(out: &mut String, name: &str, labels: &str, h: &Mutex<Histogram<u64>>) {
    let Ok(h) = h.lock() else { return };
    if h.is_empty() {
        return;
    }
    for q in [0.5, 0.99, 0.999] {
        let secs = h.value_at_quantile(q) as f64 / 1e6;
        let _ = writeln!(out, "{name}{{{labels}quantile=\"{q}\"}} {secs}");
    }
    let _ = writeln!(
        out,
        "{name}_count{{{}}} {}",
        labels.trim_end_matches(','),
        h.len()
    );
    let _ = writeln!(
        out,
        "{name}_max{{{}}} {}",
        labels.trim_end_matches(','),
        h.max() as f64 / 1e6
    );
}
