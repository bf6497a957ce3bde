//! `meridian-benches faults`: a fault run. Three datacenters (the last on a real
//! Redis with AOF) take writes from a client each while proxies, and the Redis
//! server, are killed with SIGKILL and started again; then the run waits for every
//! datacenter to converge and reads back every acknowledged write at every one.
//! Not part of CI: it takes minutes and kills processes on purpose.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meridian_testbed::{Cluster, ClusterSpec, LinkShape, Shape, free_port};
use tokio::time::{Instant, sleep};

use crate::processes::{Guard, tempfile_dir};

/// Settings of the fault run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FaultArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// SIGKILLs during the load (a proxy, or now and then the Redis server).
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Seed of the choice of victims.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// What one datacenter's writer got acknowledged.
type Acked = Vec<String>;

/// Runs the fault run and prints what every datacenter holds of the acknowledged writes.
pub(crate) fn run(args: &FaultArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    crate::binary::runtime()?.block_on(faults(args, binary))
}

async fn faults(args: &FaultArgs, binary: std::path::PathBuf) -> Result<(), String> {
    let dir = tempfile_dir()?;
    let redis_port = free_port().map_err(|e| e.to_string())?;
    let redis_dir = dir.join("redis");
    std::fs::create_dir_all(&redis_dir).map_err(|e| e.to_string())?;
    let mut redis = Some(start_redis(&redis_dir, redis_port)?);
    let mut spec = ClusterSpec::new(binary, 3, Shape::AllToAll);
    spec.name = "faults".into();
    spec.set_links(|_, _| LinkShape {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(1),
        loss: 0.001,
        bandwidth: None,
        cut: false,
    });
    spec.dcs[2].redis = Some(format!("redis://127.0.0.1:{redis_port}/0"));
    let mut cluster = Cluster::start_linked(spec)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "fault run: 3 datacenters (dc2 on Redis with AOF), {} s of writes, {} SIGKILLs",
        args.seconds, args.kills
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|dc| tokio::spawn(writer(cluster.client_addr(dc), dc, stop.clone())))
        .collect();
    let kills = kill_loop(&mut cluster, &mut redis, &redis_dir, redis_port, args).await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked: BTreeMap<usize, Acked> = BTreeMap::new();
    for (dc, w) in writers.into_iter().enumerate() {
        acked.insert(dc, w.await.map_err(|e| e.to_string())?);
    }
    println!("kills: {kills}");
    println!("{}", cluster.emulator_lateness());
    let waited = Instant::now();
    let converged = cluster.wait_converged(Duration::from_secs(180)).await;
    match &converged {
        Ok(applied) => println!(
            "converged {:.1} s after the load: every datacenter applied {applied}",
            waited.elapsed().as_secs_f64()
        ),
        Err(e) => println!("NOT converged after 180 s: {e}"),
    }
    let lost = read_back(&cluster, &acked).await?;
    drop(cluster);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    if lost > 0 || converged.is_err() {
        return Err(format!("{lost} acknowledged writes missing somewhere"));
    }
    Ok(())
}

/// Kills a proxy (or, one time in four, the Redis server) every so often and
/// starts it again; returns what it killed.
async fn kill_loop(
    cluster: &mut Cluster,
    redis: &mut Option<Guard>,
    redis_dir: &std::path::Path,
    redis_port: u16,
    args: &FaultArgs,
) -> Result<String, String> {
    let every = Duration::from_secs(args.seconds) / args.kills.max(1);
    let mut rng = args.seed.max(1);
    let mut killed = BTreeMap::<String, u32>::new();
    for _ in 0..args.kills {
        sleep(every).await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let victim = rng % 4;
        if victim == 3 {
            drop(redis.take());
            sleep(Duration::from_millis(300)).await;
            *redis = Some(start_redis(redis_dir, redis_port)?);
            *killed.entry("redis-server".into()).or_default() += 1;
        } else {
            let dc = victim as usize;
            cluster.kill(dc).map_err(|e| e.to_string())?;
            sleep(Duration::from_millis(300)).await;
            cluster.restart(dc).await.map_err(|e| e.to_string())?;
            *killed.entry(cluster.id(dc).to_owned()).or_default() += 1;
        }
    }
    Ok(killed
        .iter()
        .map(|(who, n)| format!("{who} {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Writes unique keys at one datacenter until told to stop, reconnecting after
/// failures; returns the keys whose writes were acknowledged.
async fn writer(addr: SocketAddr, dc: usize, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Vec::new();
    let mut conn = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = connect(addr).await;
            if conn.is_none() {
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        n += 1;
        let key = format!("{{w{dc}}}:{n}");
        let reply: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(n).query_async(c).await;
        match reply {
            Ok(()) => acked.push(key),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                conn = None;
            }
            // Refused (TRYAGAIN while restoring, say): not acknowledged.
            Err(_) => sleep(Duration::from_millis(10)).await,
        }
    }
    acked
}

async fn connect(addr: SocketAddr) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// Reads every acknowledged key at every datacenter; prints and returns how many
/// are missing in all.
async fn read_back(cluster: &Cluster, acked: &BTreeMap<usize, Acked>) -> Result<u64, String> {
    let all: Vec<&String> = acked.values().flatten().collect();
    println!("acknowledged writes: {}", all.len());
    let mut lost = 0;
    for dc in 0..cluster.len() {
        let mut conn = cluster.connect(dc).await.map_err(|e| e.to_string())?;
        let mut found = 0u64;
        for chunk in all.chunks(1000) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("EXISTS").arg(key.as_str());
            }
            let exists: Vec<i64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            found += exists.iter().filter(|&&e| e == 1).count() as u64;
        }
        let missing = all.len() as u64 - found;
        lost += missing;
        println!("{}: {found} found, {missing} missing", cluster.id(dc));
    }
    Ok(lost)
}

fn start_redis(dir: &std::path::Path, port: u16) -> Result<Guard, String> {
    crate::processes::start_redis(
        dir,
        port,
        &["--appendonly", "yes", "--appendfsync", "always"],
    )
}
