//! Measuring replication visibility lag end to end: a prober writes a numbered key
//! at the origin and reads its session token back; a watcher at another datacenter
//! asks that datacenter to answer once it has applied the token (`MERIDIAN
//! WAITFOR`, woken by apply). Lag = when the watcher's answer came minus when the
//! prober sent the write. Both run in this process, so they share one clock whatever
//! the datacenters' clock offsets. The watchers block instead of polling, so they
//! load the proxies they measure with one command per probe, not a read every
//! millisecond; their error is one loopback round trip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Cluster;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// The probes one origin sent: when each was sent and the token its write gave,
/// indexed by probe number, and their count, watched.
#[derive(Debug)]
pub struct Sent {
    probes: Mutex<Vec<(Instant, String)>>,
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
    fn push(&self, at: Instant, token: String) {
        let mut v = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        v.push((at, token));
        self.count.send_replace(v.len() as u64);
    }

    fn get(&self, n: u64) -> Option<(Instant, String)> {
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
        let at = Instant::now();
        let ((), token): ((), String) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(n)
            .cmd("MERIDIAN")
            .arg("SESSION")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("probe {n} at {origin}: {e}"))?;
        sent.push(at, token);
    }
}

/// Waits, at one datacenter, for each probe of one origin in turn to be applied
/// there, until it has seen the last probe sent after `stop`; records each probe's
/// lag in microseconds. Gives up `drain` after the stop.
pub async fn watcher(
    mut conn: MultiplexedConnection,
    origin: &Sent,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<Histogram<u64>, String> {
    let mut lags =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    let mut count = origin.count.subscribe();
    let mut seen = 0u64;
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some((at, token)) = origin.get(seen + 1) {
            let left = deadline.map_or(drain, |d| d.saturating_duration_since(Instant::now()));
            let applied: i64 = redis::cmd("MERIDIAN")
                .arg("WAITFOR")
                .arg(&token)
                .arg(left.as_millis().max(1) as u64)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("waiting for probe {}: {e}", seen + 1))?;
            if applied == 0 {
                // Not applied within the drain: the rest will not be either.
                return Ok(lags);
            }
            let lag = Instant::now().saturating_duration_since(at);
            lags.saturating_record(lag.as_micros() as u64);
            seen += 1;
            continue;
        }
        if *stop.borrow_and_update() {
            deadline.get_or_insert(Instant::now() + drain);
            if seen >= origin.count() {
                return Ok(lags);
            }
        }
        tokio::select! {
            _ = count.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

/// Lags of every directed pair of datacenters, `lags[from][to]`.
pub type LagTable = Vec<Vec<Option<Histogram<u64>>>>;

/// Runs probers at every datacenter in `origins` and watchers at every other one
/// until `stop` turns true; returns the lags once the watchers have drained.
pub async fn measure(
    cluster: &Cluster,
    origins: &[usize],
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Result<LagTable, String> {
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
    let mut table: LagTable = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    while let Some(done) = probers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    while let Some(done) = watchers.join_next().await {
        let (from, to, lags) = done.map_err(|e| e.to_string())?;
        table[from][to] = Some(lags?);
    }
    Ok(table)
}

/// Milliseconds, from microseconds.
pub fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}
