//! The cluster harness: N meridian proxies, each its own process, from a generated
//! topology (a temporary directory, free loopback ports, fresh certificates), with
//! every pair of datacenters wired through a [`Relay`].
//!
//! The datacenter listed first of a pair dials the other; it is told to dial the
//! relay instead of the peer (`meridian run --dial`), so the relay's near end is the
//! first datacenter and its far end the second. Tests and tools write and read
//! through ordinary Redis connections, cut and heal links, kill a proxy with SIGKILL
//! and start it again on the same data, and compare what every datacenter holds
//! (`MERIDIAN DIGEST`) once all have applied the same changes (`MERIDIAN APPLIED`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meridian_policies::VersionVector;
use redis::aio::MultiplexedConnection;
use tokio::time::{Instant, sleep};

use crate::ports::{PortError, free_ports};
use crate::presets::{Preset, one_way_ms};

/// Times digests that differ at one applied vector are taken again before that
/// is a divergence (see [`Cluster::wait_converged`]).
const DIGEST_TRIES: usize = 3;
use crate::relay::{Direction, LinkShape, Relay, RelayError};
use crate::topology_file::{HomesSection, SessionSection, TlsSection, TopologyFile};

/// How changes flow between the datacenters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Every datacenter sends its own changes to every other.
    AllToAll,
    /// Around the ring, in the order of the datacenters.
    Ring,
    /// Through the hub (a datacenter's index); `direct`: leaves send to each other
    /// while the hub is down.
    Star {
        /// The hub's index.
        hub: usize,
        /// `star_fallback = "direct"` rather than `"none"`.
        direct: bool,
    },
}

/// How late the WAN emulator delivered datagrams against their schedule (the
/// delay and jitter it was asked for): the instrument's own error, printed beside
/// every figure measured through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Lateness {
    /// Datagrams delivered.
    pub datagrams: u64,
    /// Milliseconds late at the median, the 99th percentile and worst.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Whether the emulator's threads ran at real-time priority (see
    /// the relay module).
    pub realtime: bool,
}

impl Lateness {
    /// The lateness p99 past which a run's latency figures are not to be trusted.
    pub const TRUSTED_P99_MS: f64 = 1.0;

    fn of(h: Option<hdrhistogram::Histogram<u64>>) -> Lateness {
        let Some(h) = h else {
            return Lateness {
                realtime: crate::relay::realtime(),
                ..Lateness::default()
            };
        };
        let ms = |us: u64| us as f64 / 1000.0;
        Lateness {
            datagrams: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            realtime: crate::relay::realtime(),
        }
    }

    /// Whether the emulator kept its schedule well enough (p99 within
    /// [`Lateness::TRUSTED_P99_MS`]).
    pub fn trusted(&self) -> bool {
        self.p99_ms <= Self::TRUSTED_P99_MS
    }
}

impl std::fmt::Display for Lateness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "emulator lateness (how late the WAN emulator delivered datagrams against their schedule): p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms over {} datagrams, {}",
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.datagrams,
            if self.realtime {
                "its threads at real-time priority"
            } else {
                "its threads at ordinary priority (real-time was refused)"
            }
        )?;
        if !self.trusted() {
            write!(
                f,
                "; NOT TRUSTWORTHY: p99 over {} ms, the emulator could not keep up and its lateness is in the figures",
                Self::TRUSTED_P99_MS
            )?;
        }
        Ok(())
    }
}

/// One datacenter to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcSpec {
    /// Its id.
    pub id: String,
    /// Its clock's offset from the machine's, in milliseconds.
    pub clock_offset_ms: i64,
    /// A Redis URL to use as its backend (`None`: the embedded store).
    pub redis: Option<String>,
    /// Read replicas of that Redis (URLs).
    pub replicas: Vec<String>,
    /// Further `meridian run` arguments.
    pub extra_args: Vec<String>,
}

impl DcSpec {
    /// A datacenter on the embedded store, its clock unskewed.
    pub fn new(id: impl Into<String>) -> DcSpec {
        DcSpec {
            id: id.into(),
            clock_offset_ms: 0,
            redis: None,
            replicas: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `meridian` binary.
    pub binary: PathBuf,
    /// Cluster name.
    pub name: String,
    /// The datacenters, in topology order.
    pub dcs: Vec<DcSpec>,
    /// How changes flow.
    pub shape: Shape,
    /// The emulated link from datacenter `i` to datacenter `j` (one direction) is
    /// `links[i][j]`.
    pub links: Vec<Vec<LinkShape>>,
    /// The topology's `fsync` policy.
    pub fsync: String,
    /// The topology's `log_retention` (`None`: its default).
    pub log_retention: Option<String>,
    /// Seed for the relays' loss and jitter.
    pub seed: u64,
    /// The topology's `[homes]`: where writes run, pins.
    pub homes: HomesSection,
    /// The topology's `heartbeat_ms` and `peer_timeout_ms` (`None`: their defaults).
    pub heartbeat_ms: Option<u64>,
    pub peer_timeout_ms: Option<u64>,
    /// The topology's `[session]` (`read_wait_ms`, `on_stale`; unset: defaults).
    pub session: SessionSection,
    /// The topology's `[clients]` (`None`: its defaults).
    pub clients: Option<crate::ClientsSection>,
}

impl ClusterSpec {
    /// `n` datacenters named `dc0`, `dc1`, ... with the given shape and links.
    pub fn new(binary: impl Into<PathBuf>, n: usize, shape: Shape) -> ClusterSpec {
        ClusterSpec {
            binary: binary.into(),
            name: "testbed".into(),
            dcs: (0..n).map(|i| DcSpec::new(format!("dc{i}"))).collect(),
            shape,
            links: vec![vec![LinkShape::delay(Duration::from_millis(5)); n]; n],
            fsync: "every-10ms".into(),
            log_retention: None,
            seed: 1,
            homes: HomesSection::default(),
            heartbeat_ms: None,
            peer_timeout_ms: None,
            session: SessionSection::default(),
            clients: None,
        }
    }

    /// The regions of `preset`, each link delayed by the measured one-way delay with
    /// 2% of it as jitter (see shared/wan-presets.md), losing `loss` of datagrams.
    pub fn preset(
        binary: impl Into<PathBuf>,
        preset: Preset,
        shape: Shape,
        loss: f64,
    ) -> ClusterSpec {
        ClusterSpec::regions(binary, preset.regions(), shape, loss)
    }

    /// A datacenter per region, each link with its pair's measured one-way delay,
    /// 2% jitter and `loss`.
    pub fn regions(
        binary: impl Into<PathBuf>,
        regions: &[crate::Region],
        shape: Shape,
        loss: f64,
    ) -> ClusterSpec {
        let mut spec = ClusterSpec::new(binary, regions.len(), shape);
        spec.dcs = regions.iter().map(|r| DcSpec::new(r.id())).collect();
        spec.set_links(|i, j| {
            let one_way = Duration::from_secs_f64(one_way_ms(regions[i], regions[j]) / 1000.0);
            LinkShape {
                delay: one_way,
                jitter: one_way / 50,
                loss,
                bandwidth: None,
                cut: false,
            }
        });
        spec
    }

    /// Sets every link: `link(i, j)` shapes the direction from `i` to `j`.
    pub fn set_links(&mut self, link: impl Fn(usize, usize) -> LinkShape) {
        let n = self.dcs.len();
        self.links = (0..n)
            .map(|i| (0..n).map(|j| link(i, j)).collect())
            .collect();
    }
}

/// What went wrong in the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A relay could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// No free ports for the proxies.
    #[error(transparent)]
    Ports(#[from] PortError),
    /// A proxy did not start or answer.
    #[error("datacenter {dc}: {message}\n--- last lines of its log ---\n{log}")]
    Proxy {
        /// The datacenter.
        dc: String,
        /// What happened.
        message: String,
        /// The tail of its log.
        log: String,
    },
    /// A condition was not reached in time.
    #[error("{0}")]
    Timeout(String),
    /// A Redis command failed.
    #[error("datacenter {dc}: {source}")]
    Redis {
        /// The datacenter.
        dc: String,
        /// The error.
        source: redis::RedisError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// A Redis connection to a proxy at `addr` that waits long for replies (a
/// forwarded write may wait for its link to come back).
pub async fn connect_to(addr: SocketAddr) -> Result<MultiplexedConnection, redis::RedisError> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One datacenter of the cluster.
#[derive(Debug)]
struct Dc {
    id: String,
    client: SocketAddr,
    admin: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// The CPU time process `pid` has used so far (user and system, from
/// `/proc/<pid>/stat`), or `None` where that cannot be read (gone, not Linux).
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (in parentheses, which may hold
    // spaces): utime and stime are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports them in USER_HZ, which is 100 on every architecture it
    // exposes to user space.
    Some(Duration::from_millis(ticks * 10))
}

/// A running cluster; every proxy is killed when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    dir: tempfile::TempDir,
    topology: PathBuf,
    dcs: Vec<Dc>,
    /// Relay of each pair (i, j), i < j; its near end is i.
    relays: BTreeMap<(usize, usize), Relay>,
}

/// The loopback ports of one datacenter's listeners.
#[derive(Debug, Clone, Copy)]
struct DcPorts {
    client: u16,
    admin: u16,
    peer: u16,
}

fn dc_ports(n: usize) -> Result<Vec<DcPorts>, PortError> {
    let ports = free_ports(3 * n)?;
    Ok(ports
        .chunks_exact(3)
        .map(|p| DcPorts {
            client: p[0],
            admin: p[1],
            peer: p[2],
        })
        .collect())
}

fn topology_file(spec: &ClusterSpec, ports: &[DcPorts]) -> TopologyFile {
    let mut file = TopologyFile::new(&spec.name);
    let id = |i: usize| spec.dcs[i].id.clone();
    match &spec.shape {
        Shape::AllToAll => file.cluster.topology = Some("all-to-all".into()),
        Shape::Ring => file.cluster.topology = Some("ring".into()),
        Shape::Star { hub, direct } => {
            file.cluster.topology = Some("star".into());
            file.cluster.hub = Some(id(*hub));
            file.cluster.star_fallback = Some(if *direct { "direct" } else { "none" }.into());
        }
    }
    for (dc, p) in spec.dcs.iter().zip(ports) {
        file.datacenter(&dc.id, [p.client, p.peer, p.admin])
            .data_dir(Path::new("data").join(&dc.id))
            .redis(dc.redis.as_deref())
            .replicas(&dc.replicas);
    }
    file.replication.fsync = Some(spec.fsync.clone());
    file.replication.log_retention = spec.log_retention.clone();
    file.replication.heartbeat_ms = spec.heartbeat_ms;
    file.replication.peer_timeout_ms = spec.peer_timeout_ms;
    file.homes = spec.homes.clone();
    for dc in &spec.dcs {
        file.homes
            .pins
            .entry(crate::visibility::probe_user(&dc.id))
            .or_insert_with(|| dc.id.clone());
    }
    file.session = spec.session.clone();
    file.clients = spec.clients.clone();
    file.tls = Some(TlsSection {
        ca: "certs/ca.pem".into(),
    });
    file
}

/// Runs `meridian certs` for the topology.
fn make_certs(binary: &Path, topology: &Path) -> Result<(), HarnessError> {
    let certs = Command::new(binary)
        .args(["certs", "--config"])
        .arg(topology)
        .output()
        .map_err(io(format!("running {} certs", binary.display())))?;
    if certs.status.success() {
        return Ok(());
    }
    Err(HarnessError::Io {
        what: "meridian certs".into(),
        source: std::io::Error::other(String::from_utf8_lossy(&certs.stderr).into_owned()),
    })
}

/// A relay for each pair (i, j), i < j; its far end is j's peer port.
async fn start_relays(
    spec: &ClusterSpec,
    ports: &[DcPorts],
) -> Result<BTreeMap<(usize, usize), Relay>, HarnessError> {
    let mut relays = BTreeMap::new();
    for i in 0..ports.len() {
        for (j, p) in ports.iter().enumerate().skip(i + 1) {
            let far = SocketAddr::from(([127, 0, 0, 1], p.peer));
            let seed = spec.seed ^ ((i as u64) << 32 | j as u64);
            let relay = Relay::start(far, spec.links[i][j], spec.links[j][i], seed).await?;
            relays.insert((i, j), relay);
        }
    }
    Ok(relays)
}

/// Datacenter `i` as the harness runs it: its addresses, and its command line,
/// which dials each later datacenter through their relay.
fn dc(
    spec: &ClusterSpec,
    i: usize,
    ports: &DcPorts,
    topology: &Path,
    relays: &BTreeMap<(usize, usize), Relay>,
    dir: &Path,
) -> Dc {
    let dc = &spec.dcs[i];
    let mut args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        topology.display().to_string(),
        "--dc".to_owned(),
        dc.id.clone(),
        format!("--clock-offset-ms={}", dc.clock_offset_ms),
    ];
    for j in i + 1..spec.dcs.len() {
        args.push("--dial".into());
        args.push(format!("{}={}", spec.dcs[j].id, relays[&(i, j)].addr()));
    }
    args.extend(dc.extra_args.iter().cloned());
    Dc {
        id: dc.id.clone(),
        client: SocketAddr::from(([127, 0, 0, 1], ports.client)),
        admin: SocketAddr::from(([127, 0, 0, 1], ports.admin)),
        args,
        log: dir.join(format!("{}.log", dc.id)),
        child: None,
    }
}

/// Serving threads (`MERIDIAN_THREADS`) each of `n` proxies gets: the machine's cores shared among them,
/// at least one. The emulated regions share one machine; with a worker per core in
/// each, the workers of one proxy woke each other to steal its tasks and took the
/// cores from the other proxies and the emulator: five regions on 2 cores used
/// 12-13% of a core per proxy at one operation per second, 10% with one worker.
fn workers_per_proxy(n: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / n.max(1)).max(1).to_string()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Generates the topology and certificates, starts the relays and every proxy,
    /// and waits until each answers PING.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, HarnessError> {
        let n = spec.dcs.len();
        let dir = tempfile::Builder::new()
            .prefix("meridian-testbed-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let ports = dc_ports(n)?;
        let topology = dir.path().join("topology.toml");
        topology_file(&spec, &ports)
            .write(&topology)
            .map_err(io(format!("writing {}", topology.display())))?;
        make_certs(&spec.binary, &topology)?;
        let relays = start_relays(&spec, &ports).await?;
        let dcs = (0..n)
            .map(|i| dc(&spec, i, &ports[i], &topology, &relays, dir.path()))
            .collect();
        let mut cluster = Cluster {
            spec,
            dir,
            topology,
            dcs,
            relays,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// Starts the cluster and waits until every link of its topology is up, for a
    /// workload that should measure the links, not their start-up.
    pub async fn start_linked(spec: ClusterSpec) -> Result<Cluster, HarnessError> {
        let cluster = Cluster::start(spec).await?;
        cluster.wait_linked(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), HarnessError> {
        let workers = workers_per_proxy(self.dcs.len());
        let dc = &mut self.dcs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&dc.log)
            .map_err(io(format!("opening {}", dc.log.display())))?;
        let mut command = Command::new(&self.spec.binary);
        if std::env::var_os("MERIDIAN_THREADS").is_none() {
            command.env("MERIDIAN_THREADS", workers);
        }
        let child = command
            .args(&dc.args)
            .current_dir(self.dir.path())
            .env(
                "MERIDIAN_LOG",
                std::env::var("MERIDIAN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {}", self.spec.binary.display())))?;
        dc.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<(), HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dc = &mut self.dcs[i];
            if let Some(child) = dc.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                dc.child = None;
                return Err(self.proxy_error(i, format!("exited at start-up ({status})")));
            }
            if let Ok(mut c) = self.connect(i).await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.proxy_error(i, "did not answer PING within 30 s".into()));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn proxy_error(&self, i: usize, message: String) -> HarnessError {
        HarnessError::Proxy {
            dc: self.dcs[i].id.clone(),
            message,
            log: tail(&self.dcs[i].log, 30),
        }
    }

    /// The number of datacenters.
    pub fn len(&self) -> usize {
        self.dcs.len()
    }

    /// Whether the cluster has no datacenter (never, once started).
    pub fn is_empty(&self) -> bool {
        self.dcs.is_empty()
    }

    /// A datacenter's id.
    pub fn id(&self, i: usize) -> &str {
        &self.dcs[i].id
    }

    /// Where applications reach datacenter `i`.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.dcs[i].client
    }

    /// Datacenter `i`'s admin endpoint (`/metrics`, `/status`).
    pub fn admin_addr(&self, i: usize) -> SocketAddr {
        self.dcs[i].admin
    }

    /// The generated topology file.
    pub fn topology(&self) -> &Path {
        &self.topology
    }

    /// The cluster's topology, parsed as every proxy of it parses it.
    pub fn parsed_topology(&self) -> Result<meridian_topology::Topology, HarnessError> {
        let text = std::fs::read_to_string(&self.topology)
            .map_err(io(format!("reading {}", self.topology.display())))?;
        meridian_topology::Topology::parse(&text, &self.topology.display().to_string(), self.dir())
            .map_err(|e| HarnessError::Io {
                what: format!("parsing {}", self.topology.display()),
                source: std::io::Error::other(e.to_string()),
            })
    }

    /// The cluster's directory (topology, certificates, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Datacenter `i`'s data directory (its replication log and store).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("data").join(&self.dcs[i].id)
    }

    /// The last lines of datacenter `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.dcs[i].log, lines)
    }

    /// Whether datacenter `i`'s proxy is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.dcs[i].child.is_some()
    }

    /// The CPU time datacenter `i`'s proxy has used so far (user and system, from
    /// `/proc/<pid>/stat`), or `None` where that cannot be read (not running, not
    /// Linux).
    pub fn cpu_time(&self, i: usize) -> Option<Duration> {
        process_cpu_time(self.dcs[i].child.as_ref()?.id())
    }

    /// A new Redis connection to datacenter `i`.
    pub async fn connect(&self, i: usize) -> Result<MultiplexedConnection, HarnessError> {
        let dc = &self.dcs[i];
        let redis_err = |source| HarnessError::Redis {
            dc: dc.id.clone(),
            source,
        };
        connect_to(dc.client).await.map_err(redis_err)
    }

    /// Runs one command at datacenter `i` on a new connection.
    pub async fn cmd<T: redis::FromRedisValue>(
        &self,
        i: usize,
        args: &[&str],
    ) -> Result<T, HarnessError> {
        let mut c = self.connect(i).await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c)
            .await
            .map_err(|source| HarnessError::Redis {
                dc: self.dcs[i].id.clone(),
                source,
            })
    }

    /// Datacenter `i`'s applied version vector.
    pub async fn applied(&self, i: usize) -> Result<VersionVector, HarnessError> {
        let text: String = self.cmd(i, &["MERIDIAN", "APPLIED"]).await?;
        text.parse().map_err(|e| HarnessError::Proxy {
            dc: self.dcs[i].id.clone(),
            message: format!("MERIDIAN APPLIED answered {text:?}, not a version vector: {e}"),
            log: String::new(),
        })
    }

    /// A digest of datacenter `i`'s data (`keys:hash`).
    pub async fn digest(&self, i: usize) -> Result<String, HarnessError> {
        self.cmd(i, &["MERIDIAN", "DIGEST"]).await
    }

    /// `INFO replication` of datacenter `i`, as `field -> value`.
    pub async fn replication_info(
        &self,
        i: usize,
    ) -> Result<BTreeMap<String, String>, HarnessError> {
        let text: String = self.cmd(i, &["INFO", "replication"]).await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect())
    }

    /// Waits until every running datacenter has every link of its topology up.
    /// A workload started before that measures the links' start-up: the first
    /// changes wait at their origin for the link and arrive hundreds of
    /// milliseconds late.
    pub async fn wait_linked(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        for i in (0..self.len()).filter(|&i| self.is_running(i)) {
            loop {
                let info = self.replication_info(i).await?;
                let down: Vec<&str> = info
                    .iter()
                    .filter(|(k, v)| k.starts_with("peer_") && !v.contains("state=up"))
                    .map(|(k, _)| &k["peer_".len()..])
                    .collect();
                let peers = info.keys().filter(|k| k.starts_with("peer_")).count();
                if peers > 0 && down.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(HarnessError::Timeout(format!(
                        "{}: links not up after {timeout:?}: {down:?}",
                        self.id(i)
                    )));
                }
                sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// Waits until every running datacenter has applied every change any running
    /// datacenter has applied, then checks that their digests agree. Returns the
    /// common applied vector. Digests taken while a new change landed (a home
    /// deleting a key that just expired, say) are taken again, and so, a few
    /// times, are digests that differ at one applied vector (a key expired
    /// between them): only data that keeps differing is a divergence.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<VersionVector, HarnessError> {
        let deadline = Instant::now() + timeout;
        // Digests taken at one applied vector that differed, so far.
        let mut differed = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let max = self.wait_applied(left).await?;
            let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
            let mut digests = Vec::new();
            for &i in &running {
                digests.push((self.id(i).to_owned(), self.digest(i).await?));
            }
            if digests.windows(2).all(|w| w[0].1 == w[1].1) {
                return Ok(max);
            }
            let mut moved = false;
            for &i in &running {
                moved |= self.applied(i).await? != max;
            }
            // A digest leaves out keys past their expiry at the moment it is taken,
            // so a key expiring between two datacenters' digests makes them differ
            // once: data that still differs at one applied vector after a few
            // tries does differ.
            differed += usize::from(!moved);
            if differed > DIGEST_TRIES || Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!(
                    "every datacenter applied {max} but their data differ: {digests:?}"
                )));
            }
            if !moved {
                sleep(Duration::from_millis(25)).await;
            }
        }
    }

    /// Waits until every running datacenter has applied every change any running
    /// datacenter has applied; returns the common applied vector.
    pub async fn wait_applied(&self, timeout: Duration) -> Result<VersionVector, HarnessError> {
        let deadline = Instant::now() + timeout;
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        loop {
            let mut vectors = Vec::new();
            for &i in &running {
                vectors.push(self.applied(i).await?);
            }
            let mut max = VersionVector::new();
            for v in &vectors {
                max.merge(v);
            }
            if vectors.iter().all(|v| *v == max) {
                return Ok(max);
            }
            if Instant::now() > deadline {
                let table: Vec<String> = running
                    .iter()
                    .zip(&vectors)
                    .map(|(&i, v)| format!("{}: {v}", self.id(i)))
                    .collect();
                return Err(HarnessError::Timeout(format!(
                    "not converged after {timeout:?}; applied vectors: {}",
                    table.join("; ")
                )));
            }
            sleep(Duration::from_millis(25)).await;
        }
    }

    /// The relay between datacenters `a` and `b` (either order).
    pub fn relay(&self, a: usize, b: usize) -> &Relay {
        &self.relays[&(a.min(b), a.max(b))]
    }

    /// Sets the shape of the link from `a` to `b` (one direction).
    pub fn set_link(&self, a: usize, b: usize, shape: LinkShape) {
        let direction = if a < b {
            Direction::Forward
        } else {
            Direction::Backward
        };
        self.relay(a, b).set(direction, shape);
    }

    /// How late the emulator delivered datagrams against their schedule, over
    /// every link and direction so far.
    pub fn emulator_lateness(&self) -> Lateness {
        self.lateness_by(crate::RelayStats::lateness)
    }

    /// The same since the last call (or the start), counting afresh from now: the
    /// emulator's lateness in one phase of a run.
    pub fn take_emulator_lateness(&self) -> Lateness {
        self.lateness_by(crate::RelayStats::take_lateness)
    }

    fn lateness_by(
        &self,
        of: impl Fn(&crate::RelayStats) -> Option<hdrhistogram::Histogram<u64>>,
    ) -> Lateness {
        let mut all: Option<hdrhistogram::Histogram<u64>> = None;
        for relay in self.relays.values() {
            for direction in [crate::Direction::Forward, crate::Direction::Backward] {
                let Some(h) = of(relay.stats(direction)) else {
                    continue;
                };
                match all.as_mut() {
                    Some(all) => {
                        let _ = all.add(&h);
                    }
                    None => all = Some(h),
                }
            }
        }
        Lateness::of(all)
    }

    /// Cuts the link between `a` and `b`, both directions.
    pub fn cut(&self, a: usize, b: usize) {
        self.relay(a, b).cut();
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&self, a: usize, b: usize) {
        self.relay(a, b).heal();
    }

    /// Kills datacenter `i`'s proxy with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        if let Some(mut child) = self.dcs[i].child.take() {
            child.kill().map_err(io("killing a proxy"))?;
            child.wait().map_err(io("reaping a proxy"))?;
        }
        Ok(())
    }

    /// Starts datacenter `i`'s proxy again on its data and waits until it answers.
    pub async fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.kill(i)?;
        self.spawn(i)?;
        self.wait_ready(i).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for dc in &mut self.dcs {
            if let Some(mut child) = dc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `MERIDIAN_KEEP_LOGS=<dir>`: the logs of a failed run, to read afterwards
        // (of every run with `MERIDIAN_KEEP_ALL_LOGS=1` too, as for the demo).
        let wanted =
            std::thread::panicking() || std::env::var_os("MERIDIAN_KEEP_ALL_LOGS").is_some();
        if wanted && let Some(keep) = std::env::var_os("MERIDIAN_KEEP_LOGS") {
            let to = PathBuf::from(keep).join(self.dir.path().file_name().unwrap_or_default());
            if std::fs::create_dir_all(&to).is_ok() {
                for dc in &self.dcs {
                    if let Some(name) = dc.log.file_name() {
                        let _ = std::fs::copy(&dc.log, to.join(name));
                    }
                }
                eprintln!("logs kept in {}", to.display());
            }
        }
    }
}
