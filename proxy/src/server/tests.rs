//! The server in this process, on the test's own runtime: the test decides when
//! the proxy's tasks run.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Proxy, ProxyConfig};
use crate::command::UserRule;
use crate::engine::{BackendConfig, Fsync};
use crate::resp::Limits;

fn config(data_dir: &std::path::Path) -> ProxyConfig {
    ProxyConfig {
        dc: "dc1".into(),
        client: "127.0.0.1:0".into(),
        admin: None,
        users: Vec::new(),
        data_dir: data_dir.to_path_buf(),
        backend: BackendConfig::Embedded,
        fsync: Fsync::Every(Duration::from_millis(10)),
        user_rule: UserRule::HashTag,
        limits: Limits::default(),
        max_clients: 100,
        max_output: 64 << 20,
        flush_allowed: true,
        datacenters: 1,
        grace: Duration::from_secs(5),
        replication: None,
        clock_offset_ms: 0,
        max_unstored: crate::engine::DEFAULT_MAX_UNSTORED,
        log_retention: 0,
        log_segment_bytes: crate::engine::DEFAULT_SEGMENT_BYTES,
    }
}

/// Sends `request` and reads until `reply` has come back whole.
async fn round_trip(conn: &mut TcpStream, request: &[u8], reply: &[u8]) {
    conn.write_all(request).await.expect("send");
    let mut got = vec![0; reply.len()];
    conn.read_exact(&mut got).await.expect("reply");
    assert_eq!(got, reply, "{}", String::from_utf8_lossy(&got));
}

/// Writes of several connections that arrive together run as one batch (one log
/// append), each still acknowledged on its own connection. Without the group
/// commit, each connection's task ran its write as a batch of its own.
#[tokio::test]
async fn writes_of_many_connections_arriving_together_run_as_one_batch() {
    const CONNS: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(config(dir.path())).await.expect("start");
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let mut conn = TcpStream::connect(proxy.client_addr())
            .await
            .expect("connect");
        // The connection's task is up and waiting for input.
        round_trip(&mut conn, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n").await;
        conns.push(conn);
    }
    let batches = || proxy.engine().stats().batches.load(Ordering::Relaxed);
    let before = batches();
    // Every request is sent before the proxy's tasks run again: this runtime has
    // one thread, and nothing here awaits until all are sent.
    for (i, conn) in conns.iter().enumerate() {
        let (key, value) = (format!("{{u{i}}}:k"), format!("v{i}"));
        let request = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        );
        assert_eq!(
            conn.try_write(request.as_bytes()).expect("send"),
            request.len()
        );
    }
    for conn in &mut conns {
        let mut got = [0; 5];
        conn.read_exact(&mut got).await.expect("reply");
        assert_eq!(&got, b"+OK\r\n");
    }
    let taken = batches() - before;
    assert!(
        taken <= 2,
        "{CONNS} writes arriving together took {taken} batches"
    );
    let mut check = conns.pop().expect("a connection");
    round_trip(
        &mut check,
        b"*2\r\n$3\r\nGET\r\n$6\r\n{u7}:k\r\n",
        b"$2\r\nv7\r\n",
    )
    .await;
    drop((conns, check));
    proxy.shutdown().await;
}
