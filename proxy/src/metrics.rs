//! One registry of what a proxy measures, and its three renderings.
//!
//! Everything measured is collected into [`Family`]s at the moment it is shown
//! (see `server::observe`): a family has a Prometheus name, a help line, a kind,
//! and, when INFO shows it, its INFO field and section. `/metrics` renders them as
//! Prometheus text ([`prometheus`]), INFO renders its sections from the same
//! families ([`info_section`]), and `/status` includes them as JSON ([`json`]).
//! The counters themselves live where they are counted (atomics in the engine and
//! the replication state); latency histograms live in [`CommandStats`] and
//! [`Latency`].

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::command::table::COMMANDS;

/// What a family counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Latency quantiles.
    Summary,
}

/// The INFO section a family is shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// `# Clients`.
    Clients,
    /// `# Stats`.
    Stats,
    /// `# Replication`, one line per family.
    Replication,
    /// `# Replication`, one `peer_<dc>:` line per peer, a field per family.
    Peer,
    /// `# Replication`, one `origin_<dc>:` line per origin, a field per family.
    Origin,
    /// `# Replication`, one `replica_<n>:` line per Redis read replica (in the
    /// topology's order), a field per family.
    Replica,
}

/// How INFO writes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InfoFormat {
    /// A whole number.
    Integer,
    /// `up` when non-zero, else `down`.
    UpDown,
    /// Seconds as milliseconds with one decimal.
    Millis,
    /// Seconds with three decimals.
    Seconds,
}

/// Where INFO shows a family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Info {
    pub(crate) section: Section,
    pub(crate) field: &'static str,
    pub(crate) format: InfoFormat,
}

/// A value of one sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A counter's or gauge's value.
    Number(f64),
    /// Latency quantiles (p50, p99, p99.9) and the maximum, in seconds, and the count.
    Quantiles {
        q: [(f64, f64); 3],
        max: f64,
        count: u64,
    },
}

/// One metric: its description and its samples (one per label value, or one).
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) kind: Kind,
    pub(crate) info: Option<Info>,
    /// The label's name, for families with one sample per peer, origin, command.
    pub(crate) label: Option<&'static str>,
    pub(crate) samples: Vec<(String, Value)>,
}

impl Family {
    /// A family of one unlabelled value.
    pub(crate) fn single(name: &'static str, help: &'static str, kind: Kind, value: f64) -> Family {
        Family {
            name,
            help,
            kind,
            info: None,
            label: None,
            samples: vec![(String::new(), Value::Number(value))],
        }
    }

    /// A family of one value per `label`.
    pub(crate) fn labelled(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        label: &'static str,
        samples: impl IntoIterator<Item = (String, f64)>,
    ) -> Family {
        Family {
            name,
            help,
            kind,
            info: None,
            label: Some(label),
            samples: samples
                .into_iter()
                .map(|(l, v)| (l, Value::Number(v)))
                .collect(),
        }
    }

    /// A family of quantiles per `label` (a label without measurements has none).
    pub(crate) fn summaries(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        samples: impl IntoIterator<Item = (String, Option<Value>)>,
    ) -> Family {
        Family {
            name,
            help,
            kind: Kind::Summary,
            info: None,
            label: Some(label),
            samples: samples
                .into_iter()
                .filter_map(|(l, v)| Some((l, v?)))
                .collect(),
        }
    }

    /// Shows the family in INFO as `field` of `section`.
    pub(crate) fn in_info(
        mut self,
        section: Section,
        field: &'static str,
        format: InfoFormat,
    ) -> Family {
        self.info = Some(Info {
            section,
            field,
            format,
        });
        self
    }

    /// Its value when it has a single sample.
    fn single_value(&self) -> Option<f64> {
        match self.samples.as_slice() {
            [(_, Value::Number(v))] if self.label.is_none() => Some(*v),
            _ => None,
        }
    }
}

/// The Prometheus text of `families`.
pub(crate) fn prometheus(families: &[Family]) -> String {
    let mut out = String::with_capacity(16 << 10);
    for f in families {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        };
        let _ = write!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}\n",
            f.name, f.help, f.name
        );
        for (label, value) in &f.samples {
            let labels = match f.label {
                Some(name) => format!("{name}=\"{label}\""),
                None => String::new(),
            };
            match value {
                Value::Number(v) if labels.is_empty() => {
                    let _ = writeln!(out, "{} {v}", f.name);
                }
                Value::Number(v) => {
                    let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
                }
                Value::Quantiles { q, max, count } => {
                    let sep = if labels.is_empty() { "" } else { "," };
                    for (quantile, secs) in q {
                        let _ = writeln!(
                            out,
                            "{}{{{labels}{sep}quantile=\"{quantile}\"}} {secs}",
                            f.name
                        );
                    }
                    let _ = writeln!(out, "{}_count{{{labels}}} {count}", f.name);
                    let _ = writeln!(out, "{}_max{{{labels}}} {max}", f.name);
                }
            }
        }
    }
    out
}

fn info_value(value: f64, format: InfoFormat) -> String {
    match format {
        InfoFormat::Integer => format!("{}", value as u64),
        InfoFormat::UpDown => if value != 0.0 { "up" } else { "down" }.to_owned(),
        InfoFormat::Millis => format!("{:.1}", value * 1000.0),
        InfoFormat::Seconds => format!("{value:.3}"),
    }
}

/// The INFO lines of `section`, from the families shown there, in their order.
pub(crate) fn info_section(families: &[Family], section: Section) -> String {
    let mut out = String::new();
    let shown = families
        .iter()
        .filter_map(|f| f.info.filter(|i| i.section == section).map(|i| (f, i)));
    match section {
        Section::Peer | Section::Origin | Section::Replica => {
            let prefix = match section {
                Section::Peer => "peer",
                Section::Origin => "origin",
                _ => "replica",
            };
            // One line per label value, a field per family, in family order.
            let mut lines: Vec<(String, Vec<String>)> = Vec::new();
            for (f, info) in shown {
                for (label, value) in &f.samples {
                    let shown = match value {
                        Value::Number(v) => info_value(*v, info.format),
                        // Quantiles as p50/p99/max.
                        Value::Quantiles { q, max, .. } => [q[0].1, q[1].1, *max]
                            .map(|v| info_value(v, info.format))
                            .join("/"),
                    };
                    let field = format!("{}={shown}", info.field);
                    match lines.iter_mut().find(|(l, _)| l == label) {
                        Some((_, fields)) => fields.push(field),
                        None => lines.push((label.clone(), vec![field])),
                    }
                }
            }
            for (label, fields) in lines {
                let _ = write!(out, "{prefix}_{label}:{}\r\n", fields.join(","));
            }
        }
        _ => {
            for (f, info) in shown {
                if let Some(v) = f.single_value() {
                    let _ = write!(out, "{}:{}\r\n", info.field, info_value(v, info.format));
                }
            }
        }
    }
    out
}

/// `families` as JSON: each name maps to its value, or to `{label: value}`.
pub(crate) fn json(families: &[Family]) -> serde_json::Value {
    let value = |v: &Value| match v {
        Value::Number(n) => serde_json::json!(n),
        Value::Quantiles { q, max, count } => serde_json::json!({
            "p50_seconds": q[0].1, "p99_seconds": q[1].1, "p999_seconds": q[2].1,
            "max_seconds": max, "count": count,
        }),
    };
    let mut map = serde_json::Map::new();
    for f in families {
        let entry = match f.label {
            None => f
                .samples
                .first()
                .map_or(serde_json::Value::Null, |(_, v)| value(v)),
            Some(_) => serde_json::Value::Object(
                f.samples
                    .iter()
                    .map(|(l, v)| (l.clone(), value(v)))
                    .collect(),
            ),
        };
        map.insert(f.name.to_owned(), entry);
    }
    serde_json::Value::Object(map)
}

/// Latencies are kept in microseconds, from 1 µs to 60 s, at 3 significant digits.
fn histogram() -> Mutex<Histogram<u64>> {
    Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
    )
}

fn record(h: &Mutex<Histogram<u64>>, took: Duration) {
    let micros = (took.as_micros() as u64).clamp(1, 60_000_000);
    if let Ok(mut h) = h.lock() {
        let _ = h.record(micros);
    }
}

/// A histogram's quantiles, or `None` while it is empty.
fn quantiles(h: &Mutex<Histogram<u64>>) -> Option<Value> {
    let h = h.lock().ok()?;
    if h.is_empty() {
        return None;
    }
    let at = |q: f64| (q, h.value_at_quantile(q) as f64 / 1e6);
    Some(Value::Quantiles {
        q: [at(0.5), at(0.99), at(0.999)],
        max: h.max() as f64 / 1e6,
        count: h.len(),
    })
}

/// Per-command statistics, indexed like the command table.
#[derive(Debug)]
pub(crate) struct CommandStats {
    calls: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    latency: Vec<Mutex<Histogram<u64>>>,
    /// Commands that are not in the table.
    pub(crate) unknown: AtomicU64,
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

impl CommandStats {
    /// Records one call of command `index` that took `took`.
    pub(crate) fn record(&self, index: usize, took: Duration, error: bool) {
        let Some(calls) = self.calls.get(index) else {
            return;
        };
        calls.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors[index].fetch_add(1, Ordering::Relaxed);
        }
        record(&self.latency[index], took);
    }

    /// The families of these statistics.
    pub(crate) fn families(&self) -> [Family; 3] {
        let names = || COMMANDS.iter().map(|s| s.name.to_lowercase());
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let calls = names()
            .zip(self.calls.iter().map(load))
            .chain([("unknown".to_owned(), load(&self.unknown))]);
        let mut latency = Family::labelled(
            "meridian_command_latency_seconds",
            "Time from a command's arrival to its reply.",
            Kind::Summary,
            "command",
            [],
        );
        latency.samples = names()
            .zip(&self.latency)
            .filter_map(|(name, h)| Some((name, quantiles(h)?)))
            .collect();
        [
            Family::labelled(
                "meridian_commands_total",
                "Commands executed, by command.",
                Kind::Counter,
                "command",
                calls,
            ),
            Family::labelled(
                "meridian_command_errors_total",
                "Commands answered with an error, by command.",
                Kind::Counter,
                "command",
                names().zip(self.errors.iter().map(load)),
            ),
            latency,
        ]
    }
}

/// A latency histogram: backend commits, forwarded requests.
#[derive(Debug)]
pub(crate) struct Latency {
    histogram: Mutex<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: histogram(),
        }
    }
}

impl Latency {
    /// Records one measurement.
    pub(crate) fn record(&self, took: Duration) {
        record(&self.histogram, took);
    }

    /// Forgets every measurement.
    pub(crate) fn reset(&self) {
        self.histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
    }

    /// Their quantiles, maximum and count (`None` while there are none).
    pub(crate) fn quantiles(&self) -> Option<Value> {
        quantiles(&self.histogram)
    }

    /// The family `name` of these measurements (none while there are none).
    pub(crate) fn family(&self, name: &'static str, help: &'static str) -> Family {
        let mut f = Family::single(name, help, Kind::Summary, 0.0);
        f.samples = quantiles(&self.histogram)
            .map(|q| (String::new(), q))
            .into_iter()
            .collect();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_family_renders_alike_in_prometheus_info_and_json() {
        let families = vec![
            Family::single("m_up_total", "Ups.", Kind::Counter, 3.0).in_info(
                Section::Stats,
                "ups",
                InfoFormat::Integer,
            ),
            Family::labelled(
                "m_peer_rtt_seconds",
                "RTT.",
                Kind::Gauge,
                "peer",
                [("a".to_owned(), 0.0125), ("b".to_owned(), 0.5)],
            )
            .in_info(Section::Peer, "rtt_ms", InfoFormat::Millis),
            Family::labelled(
                "m_peer_up",
                "Up.",
                Kind::Gauge,
                "peer",
                [("a".to_owned(), 1.0), ("b".to_owned(), 0.0)],
            )
            .in_info(Section::Peer, "state", InfoFormat::UpDown),
        ];
        let text = prometheus(&families);
        assert!(
            text.contains("# TYPE m_up_total counter\nm_up_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("m_peer_rtt_seconds{peer=\"a\"} 0.0125\n"),
            "{text}"
        );
        assert_eq!(info_section(&families, Section::Stats), "ups:3\r\n");
        assert_eq!(
            info_section(&families, Section::Peer),
            "peer_a:rtt_ms=12.5,state=up\r\npeer_b:rtt_ms=500.0,state=down\r\n"
        );
        let json = json(&families);
        assert_eq!(json["m_up_total"], 3.0);
        assert_eq!(json["m_peer_up"]["b"], 0.0);
    }
}
