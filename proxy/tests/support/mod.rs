//! Helpers for the proxy's integration tests: a small blocking RESP client, free
//! ports, topology files, and real processes (meridian, redis-server) that stop
//! when dropped.
#![allow(dead_code)]

pub mod wan;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A RESP value as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Resp>),
}

/// A blocking Redis client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Resp {
        self.send(args);
        self.read().expect("read a reply")
    }

    /// Sends a command without reading its reply (for pipelining).
    pub fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out).expect("send a command");
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send bytes");
    }

    pub fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Int(rest.parse().expect("integer reply")),
            "$" if rest == "-1" => Resp::Nil,
            "$" => {
                let len: usize = rest.parse().expect("bulk length");
                let mut buf = vec![0; len + 2];
                self.reader.read_exact(&mut buf)?;
                buf.truncate(len);
                Resp::Bulk(buf)
            }
            "*" if rest == "-1" => Resp::Nil,
            "*" => {
                let n: usize = rest.parse().expect("array length");
                Resp::Array((0..n).map(|_| self.read()).collect::<Result<_, _>>()?)
            }
            other => panic!("unexpected reply type {other:?} in {line:?}"),
        })
    }
}

/// A free loopback port for a server the test starts (the testbed's allocator:
/// below the ephemeral range, free for TCP and UDP).
pub fn free_port() -> u16 {
    meridian_testbed::free_port().unwrap()
}

/// Waits until `condition` holds, checking it every few milliseconds, for at most
/// 30 s; `what` names the condition in the failure message.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "gave up after 30 s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `addr` accepts connections.
pub fn wait_listening(addr: SocketAddr, child: &mut Child) {
    eventually(&format!("a listener on {addr}"), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited with {status} before listening on {addr}");
        }
        TcpStream::connect(addr).is_ok()
    });
}

/// Writes a one-datacenter topology file in `dir` on the embedded store and returns
/// its path and client address.
pub fn single_dc_topology(dir: &Path, fsync: &str) -> (PathBuf, SocketAddr) {
    topology_with_backend(dir, fsync, None)
}

/// The same, with the Redis at `redis` behind the proxy.
pub fn redis_dc_topology(dir: &Path, fsync: &str, redis: SocketAddr) -> (PathBuf, SocketAddr) {
    topology_with_backend(dir, fsync, Some(&format!("redis://{redis}/0")))
}

fn topology_with_backend(dir: &Path, fsync: &str, redis: Option<&str>) -> (PathBuf, SocketAddr) {
    let ports = meridian_testbed::free_ports(3).unwrap();
    let mut file = meridian_testbed::TopologyFile::new("test");
    let client = file
        .datacenter("dc1", [ports[0], ports[1], ports[2]])
        .data_dir("data")
        .redis(redis)
        .client;
    file.replication.fsync = Some(fsync.to_owned());
    let path = dir.join("topology.toml");
    file.write(&path).unwrap();
    (path, client)
}

/// A child process killed when dropped.
pub struct Process(pub Child, Option<tempfile::TempDir>);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal to a process (SIGSTOP freezes it as a stalled machine would).
pub fn signal(process: &Process, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// Starts `meridian run` for datacenter dc1 of `topology`.
pub fn start_meridian(topology: &Path, addr: SocketAddr) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["run", "--config", topology.to_str().unwrap(), "--dc", "dc1"])
        .env("MERIDIAN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meridian");
    wait_listening(addr, &mut child);
    Process(child, None)
}

/// Starts a real redis-server on a free loopback port, without persistence.
pub fn start_redis() -> (Process, SocketAddr) {
    let port = free_port();
    (
        redis_server(port, &["--appendonly", "no"]),
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
}

/// Starts redis-server on `port` with an append-only file in `dir` synced on every
/// write, so a restart keeps its data.
pub fn start_redis_persistent(dir: &Path, port: u16) -> Process {
    start_redis_loading_slowly(dir, port, 0)
}

/// The same, taking `key_load_delay_us` microseconds per key when it loads its data
/// at start: it answers LOADING meanwhile, as a Redis with a large data set does.
pub fn start_redis_loading_slowly(dir: &Path, port: u16, key_load_delay_us: u32) -> Process {
    let dir = dir.to_str().unwrap();
    let delay = key_load_delay_us.to_string();
    redis_server(
        port,
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir,
            "--key-load-delay",
            &delay,
        ],
    )
}

/// Starts a real redis-server replicating `primary` (`--replicaof`), and waits
/// until its link to the primary is up.
pub fn start_redis_replica(primary: SocketAddr) -> (Process, SocketAddr) {
    let port = free_port();
    let host = primary.ip().to_string();
    let primary_port = primary.port().to_string();
    let process = redis_server(port, &["--replicaof", &host, &primary_port]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the replica's link to its primary", || {
        let Ok(mut c) = Client::connect(addr) else {
            return false;
        };
        matches!(c.cmd(&[b"INFO", b"replication"]), Resp::Bulk(info)
            if String::from_utf8_lossy(&info).contains("master_link_status:up"))
    });
    (process, addr)
}

/// redis-server on loopback `port`, without snapshots, with `extra` arguments.
/// Unless `extra` names a `--dir`, it works in a fresh directory of its own: a
/// replica's full resync writes an RDB file there, which a later server started in
/// the same directory would load.
fn redis_server(port: u16, extra: &[&str]) -> Process {
    let own_dir = match extra.contains(&"--dir") {
        true => None,
        false => Some(tempfile::tempdir().unwrap()),
    };
    let mut command = Command::new("redis-server");
    if let Some(dir) = &own_dir {
        command.args(["--dir", dir.path().to_str().unwrap()]);
    }
    let mut child = command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect(
            "redis-server must be installed (apt-get install redis-server); .ci/run installs it",
        );
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), &mut child);
    Process(child, own_dir)
}

/// The admin address written in a topology file made by this module.
pub fn admin_addr_of(topology: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(topology).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("admin = "))
        .expect("an admin line");
    line.trim_start_matches("admin = ")
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// One HTTP request; returns the status line and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}
