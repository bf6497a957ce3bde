//! Measuring replication visibility lag end to end: a prober writes a numbered key
//! at the origin and reads its session token back; a watcher at another datacenter
//! asks that datacenter to answer once it has applied the token (`MERIDIAN
//! WAITFOR ... TIME`, woken by apply), and the answer says when the datacenter saw
//! it applied. Lag = that time minus when the prober sent the write, both read
//! from the machine's wall clock, which every process here shares whatever the
//! datacenters' clock offsets (those skew their timestamps, not the wall clock).
//! The reply's way back to the watcher is kept out of the lag (on a loaded
//! machine it is the instrument's own delay, up to milliseconds), and measured
//! apart. The watchers block instead of polling, so they load the proxies they
//! measure with one command per probe, not a read every millisecond.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Cluster;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// One probe: when it was sent, on the runtime's clock and on the wall clock (in
/// microseconds since the Unix epoch), and the token its write gave.
#[derive(Debug, Clone)]
struct Probe {
    at: Instant,
    wall_us: u64,
    token: String,
}

/// The probes one origin sent, indexed by probe number, and their count, watched.
#[derive(Debug)]
pub struct Sent {
    probes: Mutex<Vec<Probe>>,
    count: watch::Sender<u64>,
}

impl Default for Sent {
    fn default() -> Self {
        Sent {
            probes: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        }
    }
}

impl Sent {
    fn push(&self, probe: Probe) {
        let mut v = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        v.push(probe);
        self.count.send_replace(v.len() as u64);
    }

    fn get(&self, n: u64) -> Option<Probe> {
        let v = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        n.checked_sub(1).and_then(|i| v.get(i as usize).cloned())
    }

    fn count(&self) -> u64 {
        *self.count.borrow()
    }
}

/// The user whose key `origin`'s probes write: pinned to `origin` in every
/// topology the testbed writes, so probes run there and measure its replication.
pub fn probe_user(origin: &str) -> String {
    format!("probe-{origin}")
}

/// The probe key of `origin`: a user of its own, so probes never conflict.
fn key(origin: &str) -> String {
    format!("{{{}}}:n", probe_user(origin))
}

/// Writes probe 1, 2, ... at `origin` every `every` until `stop` turns true,
/// recording each one's send time and the token its write gave.
pub async fn prober(
    mut conn: MultiplexedConnection,
    origin: String,
    every: Duration,
    sent: Arc<Sent>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let key = key(&origin);
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let n = sent.count() + 1;
        let (at, wall_us) = (Instant::now(), wall_us());
        let ((), token): ((), String) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(n)
            .cmd("MERIDIAN")
            .arg("SESSION")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("probe {n} at {origin}: {e}"))?;
        sent.push(Probe { at, wall_us, token });
    }
}

/// Waits, at one datacenter, for each probe of one origin in turn to be applied
/// there, until it has seen the last probe sent after `stop`; records each probe's
/// lag in microseconds, and apart how long the answer then took to reach the
/// watcher. Gives up `drain` after the stop.
pub async fn watcher(
    mut conn: MultiplexedConnection,
    origin: &Sent,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<Lags, String> {
    let histogram = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3);
    let mut lags = histogram().map_err(|e| e.to_string())?;
    let mut answer = histogram().map_err(|e| e.to_string())?;
    let mut count = origin.count.subscribe();
    let mut seen = 0u64;
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(probe) = origin.get(seen + 1) {
            let left = deadline.map_or(drain, |d| d.saturating_duration_since(Instant::now()));
            let applied_us: u64 = redis::cmd("MERIDIAN")
                .arg("WAITFOR")
                .arg(&probe.token)
                .arg(left.as_millis().max(1) as u64)
                .arg("TIME")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("waiting for probe {}: {e}", seen + 1))?;
            if applied_us == 0 {
                // Not applied within the drain: the rest will not be either.
                return Ok(Lags { lags, answer });
            }
            let lag = applied_us.saturating_sub(probe.wall_us);
            let seen_after = Instant::now().saturating_duration_since(probe.at);
            lags.saturating_record(lag);
            answer.saturating_record((seen_after.as_micros() as u64).saturating_sub(lag));
            seen += 1;
            continue;
        }
        if *stop.borrow_and_update() {
            deadline.get_or_insert(Instant::now() + drain);
            if seen >= origin.count() {
                return Ok(Lags { lags, answer });
            }
        }
        tokio::select! {
            _ = count.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

/// The wall clock in microseconds since the Unix epoch.
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One watcher's figures, in microseconds.
#[derive(Debug)]
pub struct Lags {
    /// Each probe's lag: sent at the origin → applied in the watcher's datacenter.
    pub lags: Histogram<u64>,
    /// How long each answer took from the datacenter to the watcher (not in `lags`).
    pub answer: Histogram<u64>,
}

/// Lags of every directed pair of datacenters, `lags[from][to]`.
pub type LagTable = Vec<Vec<Option<Histogram<u64>>>>;

/// What [`measure`] found.
#[derive(Debug)]
pub struct Measured {
    /// Each link's lags.
    pub lags: LagTable,
    /// How long the answers took to reach the watchers, all links together: the
    /// instrument's own delay, kept out of the lags.
    pub answer: Histogram<u64>,
}

/// Runs probers at every datacenter in `origins` and watchers at every other one
/// until `stop` turns true; returns the lags once the watchers have drained.
pub async fn measure(
    cluster: &Cluster,
    origins: &[usize],
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Result<Measured, String> {
    let n = cluster.len();
    let mut probers = tokio::task::JoinSet::new();
    let mut sent = Vec::new();
    for &from in origins {
        let probes = Arc::new(Sent::default());
        let origin = cluster.id(from).to_owned();
        let conn = cluster.connect(from).await.map_err(|e| e.to_string())?;
        probers.spawn(prober(
            conn,
            origin.clone(),
            every,
            probes.clone(),
            stop.clone(),
        ));
        sent.push((from, origin, probes));
    }
    let mut watchers = tokio::task::JoinSet::new();
    for to in 0..n {
        for (from, _, probes) in sent.iter().filter(|(from, _, _)| *from != to) {
            let conn = cluster.connect(to).await.map_err(|e| e.to_string())?;
            let (from, probes, stop) = (*from, probes.clone(), stop.clone());
            watchers.spawn(async move {
                let lags = watcher(conn, &probes, stop, Duration::from_secs(30)).await;
                (from, to, lags)
            });
        }
    }
    let mut lags: LagTable = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut answer =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    while let Some(done) = probers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    while let Some(done) = watchers.join_next().await {
        let (from, to, found) = done.map_err(|e| e.to_string())?;
        let found = found?;
        answer.add(&found.answer).map_err(|e| e.to_string())?;
        lags[from][to] = Some(found.lags);
    }
    Ok(Measured { lags, answer })
}

/// The line that says how long the watchers' answers took (kept out of the lags).
pub fn answer_line(answer: &Histogram<u64>) -> String {
    format!(
        "the watchers' answers took (the instrument's delay, not in the lags): p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms over {} probes",
        ms(answer.value_at_quantile(0.5)),
        ms(answer.value_at_quantile(0.99)),
        ms(answer.max()),
        answer.len()
    )
}

/// Milliseconds, from microseconds.
pub fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}
