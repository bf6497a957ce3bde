//! Measuring replication visibility lag end to end: a prober writes a numbered key
//! at the origin and publishes the write's session token; a watcher at another
//! datacenter asks that datacenter to wait until it has applied the token
//! (`MERIDIAN WAITFOR`, woken by apply) and reads the key. Lag = when the reply
//! came minus when the prober sent the write. Both run in this process, so they
//! share one clock whatever the datacenters' clock offsets. Watchers do not
//! poll: each costs the system one request per probe it sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Cluster;
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval};

/// One origin's probes: their send times and, once acknowledged, session
/// tokens, indexed by probe number; and how many are acknowledged.
#[derive(Debug)]
pub struct Sent {
    probes: Mutex<Vec<(Instant, Option<String>)>>,
    acknowledged: watch::Sender<u64>,
}

impl Default for Sent {
    fn default() -> Sent {
        Sent {
            probes: Mutex::new(Vec::new()),
            acknowledged: watch::channel(0).0,
        }
    }
}

impl Sent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Option<String>)>> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, at: Instant) -> u64 {
        let mut v = self.lock();
        v.push((at, None));
        v.len() as u64
    }

    fn acknowledge(&self, n: u64, token: String) {
        if let Some(i) = n.checked_sub(1)
            && let Some(probe) = self.lock().get_mut(i as usize)
        {
            probe.1 = Some(token);
        }
        self.acknowledged.send_modify(|a| *a = (*a).max(n));
    }

    fn get(&self, n: u64) -> Option<(Instant, Option<String>)> {
        n.checked_sub(1)
            .and_then(|i| self.lock().get(i as usize).cloned())
    }

    fn count(&self) -> u64 {
        self.lock().len() as u64
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
/// publishing each one's session token once it is acknowledged.
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
        let ((), token): ((), String) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(n)
            .cmd("MERIDIAN")
            .arg("SESSION")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("probe {n} at {origin}: {e}"))?;
        sent.acknowledge(n, token);
    }
}

/// Watches one origin's probes at one datacenter, each in turn, until it has
/// seen the last probe sent before `stop`, recording each probe's lag in
/// microseconds. Gives up `drain` after the stop.
///
/// For probe `k` it asks the datacenter to wait until it has applied `k`'s
/// token, then reads the key: every probe up to the value read became visible
/// between `k`'s arrival and that reply (changes of one origin apply in order),
/// so each is recorded as seen at the reply.
pub async fn watcher(
    mut conn: MultiplexedConnection,
    origin: &str,
    sent: &Sent,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<Histogram<u64>, String> {
    let key = key(origin);
    let mut lags =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    let mut acknowledged = sent.acknowledged.subscribe();
    let mut seen = 0u64;
    let mut deadline: Option<Instant> = None;
    loop {
        let next = seen + 1;
        if let Some((_, Some(token))) = sent.get(next) {
            let wait_ms = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .max(1),
                None => drain.as_millis(),
            };
            let (caught, value): (i64, Option<u64>) = redis::pipe()
                .cmd("MERIDIAN")
                .arg("WAITFOR")
                .arg(&token)
                .arg(wait_ms as u64)
                .cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("watching the probes of {origin}: {e}"))?;
            let now = Instant::now();
            if let Some(newest) = value.filter(|&m| m >= next && caught == 1) {
                for k in next..=newest {
                    if let Some((at, _)) = sent.get(k) {
                        lags.saturating_record(
                            now.saturating_duration_since(at).as_micros() as u64
                        );
                    }
                }
                seen = newest;
            }
        }
        if *stop.borrow_and_update() {
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + drain);
            if seen >= sent.count() || now > deadline {
                return Ok(lags);
            }
        }
        if seen >= *acknowledged.borrow_and_update() {
            tokio::select! {
                _ = acknowledged.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
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
        for (from, origin, probes) in sent.iter().filter(|(from, _, _)| *from != to) {
            let conn = cluster.connect(to).await.map_err(|e| e.to_string())?;
            let (from, origin, probes, stop) =
                (*from, origin.clone(), probes.clone(), stop.clone());
            watchers.spawn(async move {
                let lags = watcher(conn, &origin, &probes, stop, Duration::from_secs(30)).await;
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
