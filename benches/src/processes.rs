//! Processes the benchmarks start: meridian, redis-server, twemproxy.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_testbed::{TopologyFile, free_ports};

/// A child process stopped on drop.
pub(crate) struct Guard(Child);

impl Guard {
    /// The process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits until it listens on loopback `port`.
pub(crate) fn spawn(cmd: &mut Command, port: u16) -> Result<Guard, String> {
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
    let mut guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = guard.0.try_wait() {
            return Err(format!(
                "{:?} exited with {status} before listening on port {port}",
                cmd.get_program()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{:?} is not listening on port {port} after 30 s",
                cmd.get_program()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(guard)
}

/// Starts a redis-server on loopback `port` keeping its files in `dir`, with
/// `extra` arguments (persistence, say); snapshots are off.
pub(crate) fn start_redis(dir: &Path, port: u16, extra: &[&str]) -> Result<Guard, String> {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args(extra)
    .arg("--dir")
    .arg(dir);
    spawn(&mut cmd, port)
}

/// Starts a one-datacenter meridian named after `name` in `dir`, on the embedded
/// store or the Redis at `redis`; returns it and its client port.
pub(crate) fn start_meridian(
    binary: &Path,
    dir: &Path,
    name: &str,
    redis: Option<&str>,
) -> Result<(Guard, u16), String> {
    let ports = free_ports(3).map_err(|e| e.to_string())?;
    let slug = slug(name);
    let file = dir.join(format!("{slug}.toml"));
    let mut topology = TopologyFile::new("bench");
    topology
        .datacenter("bench", [ports[0], ports[1], ports[2]])
        .data_dir(format!("data-{slug}"))
        .redis(redis);
    topology
        .write(&file)
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    let mut cmd = Command::new(binary);
    cmd.args([
        "run",
        "--config",
        file.to_str().unwrap_or_default(),
        "--dc",
        "bench",
    ])
    .env("MERIDIAN_LOG", "warn");
    Ok((spawn(&mut cmd, ports[0])?, ports[0]))
}

/// The data directory [`start_meridian`] gives a datacenter named `name`.
pub(crate) fn data_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("data-{}", slug(name)))
}

fn slug(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// A scratch directory of this benchmark run.
pub(crate) fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("meridian-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}
