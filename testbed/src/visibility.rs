//! Measuring replication visibility lag end to end: a prober writes a numbered key
//! at the origin, a watcher at another datacenter reads it until the number shows
//! up there. Lag = when the watcher first read it minus when the prober sent it.
//! Both run in this process, so they share one clock whatever the datacenters'
//! clock offsets; the watcher polls every millisecond, which bounds the error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Cluster;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};

/// Send times of one origin's probes, indexed by probe number.
#[derive(Debug, Default)]
pub struct Sent(Mutex<Vec<Instant>>);

impl Sent {
    fn push(&self, at: Instant) -> u64 {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.push(at);
        v.len() as u64
    }

    fn get(&self, n: u64) -> Option<Instant> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        n.checked_sub(1).and_then(|i| v.get(i as usize).copied())
    }

    fn count(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
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

/// Writes probe 1, 2, ... at `origin` every `every` until `stop` turns true.
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
        let n = sent.push(Instant::now());
        redis::cmd("SET")
            .arg(&key)
            .arg(n)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("probe {n} at {origin}: {e}"))?;
    }
}

/// Reads the probe keys of `origins` at one datacenter, in one pipeline per poll,
/// until it has seen the last probe of each sent after `stop`, recording each new
/// probe's lag in microseconds per origin. Gives up `drain` after the stop.
pub async fn watcher(
    mut conn: MultiplexedConnection,
    origins: Vec<(String, Arc<Sent>)>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<Vec<Histogram<u64>>, String> {
    let keys: Vec<String> = origins.iter().map(|(origin, _)| key(origin)).collect();
    let mut lags = Vec::new();
    for _ in &origins {
        lags.push(
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?,
        );
    }
    let mut seen = vec![0u64; origins.len()];
    let mut deadline: Option<Instant> = None;
    loop {
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("GET").arg(key);
        }
        let values: Vec<Option<u64>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("reading the probes: {e}"))?;
        let now = Instant::now();
        for (i, value) in values.into_iter().enumerate() {
            if let Some(n) = value.filter(|&n| n > seen[i]) {
                if let Some(at) = origins[i].1.get(n) {
                    lags[i].saturating_record(now.saturating_duration_since(at).as_micros() as u64);
                }
                seen[i] = n;
            }
        }
        if *stop.borrow_and_update() {
            let deadline = *deadline.get_or_insert(now + drain);
            let done = origins
                .iter()
                .zip(&seen)
                .all(|((_, sent), &s)| s >= sent.count());
            if done || now > deadline {
                return Ok(lags);
            }
        }
        sleep(Duration::from_millis(1)).await;
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
        let watched: Vec<(usize, String, Arc<Sent>)> = sent
            .iter()
            .filter(|(from, _, _)| *from != to)
            .cloned()
            .collect();
        if watched.is_empty() {
            continue;
        }
        let conn = cluster.connect(to).await.map_err(|e| e.to_string())?;
        let stop = stop.clone();
        watchers.spawn(async move {
            let list = watched
                .iter()
                .map(|(_, o, s)| (o.clone(), s.clone()))
                .collect();
            let lags = watcher(conn, list, stop, Duration::from_secs(30)).await;
            (
                to,
                watched
                    .into_iter()
                    .map(|(from, _, _)| from)
                    .collect::<Vec<_>>(),
                lags,
            )
        });
    }
    let mut table: LagTable = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    while let Some(done) = probers.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    while let Some(done) = watchers.join_next().await {
        let (to, froms, lags) = done.map_err(|e| e.to_string())?;
        for (from, h) in froms.into_iter().zip(lags?) {
            table[from][to] = Some(h);
        }
    }
    Ok(table)
}

/// Milliseconds, from microseconds.
pub fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}
