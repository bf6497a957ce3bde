//! A proxy killed with SIGKILL right after acknowledging writes loses none of them.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use support::{Client, Resp, redis_dc_topology, single_dc_topology, start_meridian, start_redis};

#[test]
fn acknowledged_writes_survive_sigkill_and_restart_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    // Not synced per write: the log must still hold every acknowledged write, since
    // a killed process leaves its written pages with the operating system.
    let (topology, addr) = single_dc_topology(dir.path(), "every-10ms");
    kill_and_check(&topology, addr);
}

#[test]
fn acknowledged_writes_survive_sigkill_and_restart_on_the_redis_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis) = start_redis();
    let (topology, addr) = redis_dc_topology(dir.path(), "every-10ms", redis);
    kill_and_check(&topology, addr);
    // The writes reached Redis itself.
    let mut direct = Client::connect(redis).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while direct.cmd(&[b"GET", b"{u10}:k1999"]) == Resp::Nil {
        assert!(
            std::time::Instant::now() < deadline,
            "acknowledged writes never reached redis"
        );
        std::thread::yield_now();
    }
    assert_eq!(
        direct.cmd(&[b"GET", b"{u0}:k1989"]),
        Resp::Bulk(b"v1989".to_vec())
    );
    // Each counter was written many times per commit; Redis holds its last value.
    let counters = |direct: &mut Client| -> i64 {
        (0..17)
            .map(
                |u| match direct.cmd(&[b"GET", format!("{{u{u}}}:counter").as_bytes()]) {
                    Resp::Bulk(b) => String::from_utf8(b).unwrap().parse::<i64>().unwrap(),
                    _ => 0,
                },
            )
            .sum()
    };
    while counters(&mut direct) != 2_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the counters in redis add up to {}, not 2000",
            counters(&mut direct)
        );
        std::thread::yield_now();
    }
}

/// Writes, kills the proxy with SIGKILL once everything is acknowledged, restarts
/// it, and checks every write is there exactly once.
fn kill_and_check(topology: &std::path::Path, addr: std::net::SocketAddr) {
    let mut proxy = start_meridian(topology, addr);
    let mut client = Client::connect(addr).unwrap();
    const N: usize = 2_000;
    for i in 0..N {
        let key = format!("{{u{}}}:k{i}", i % 17);
        client.send(&[b"SET", key.as_bytes(), format!("v{i}").as_bytes()]);
        client.send(&[b"INCR", format!("{{u{}}}:counter", i % 17).as_bytes()]);
    }
    for _ in 0..N * 2 {
        let reply = client.read().unwrap();
        assert!(!matches!(reply, Resp::Error(_)), "{reply:?}");
    }
    // Every write above is acknowledged; kill at once.
    proxy.0.kill().unwrap();
    proxy.0.wait().unwrap();
    drop(client);

    let _proxy = start_meridian(topology, addr);
    let mut client = Client::connect(addr).unwrap();
    for i in 0..N {
        let key = format!("{{u{}}}:k{i}", i % 17);
        assert_eq!(
            client.cmd(&[b"GET", key.as_bytes()]),
            Resp::Bulk(format!("v{i}").into_bytes()),
            "{key}"
        );
    }
    let total: i64 = (0..17)
        .map(
            |u| match client.cmd(&[b"GET", format!("{{u{u}}}:counter").as_bytes()]) {
                Resp::Bulk(b) => String::from_utf8(b).unwrap().parse::<i64>().unwrap(),
                other => panic!("{other:?}"),
            },
        )
        .sum();
    assert_eq!(total, N as i64, "every INCR applied exactly once");
}

#[test]
fn sigterm_finishes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "always");
    let mut proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.cmd(&[b"SET", b"k", b"v"]), Resp::Simple("OK".into()));
    let pid = proxy.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = proxy.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let _proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.cmd(&[b"GET", b"k"]), Resp::Bulk(b"v".to_vec()));
}

/// A connection's pipelined writes run together: one log append for the lot,
/// not one each, and each is still acknowledged with its own reply.
#[test]
fn a_connections_pipelined_writes_run_as_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "every-10ms");
    let _proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    let batches = |client: &mut Client| -> u64 {
        let Resp::Bulk(info) = client.cmd(&[b"INFO", b"stats"]) else {
            panic!("INFO stats")
        };
        let info = String::from_utf8(info).unwrap();
        let line = info.lines().find_map(|l| l.strip_prefix("write_batches:"));
        line.expect("write_batches in INFO stats")
            .trim()
            .parse()
            .unwrap()
    };
    let before = batches(&mut client);
    const N: usize = 200;
    let mut pipeline = Vec::new();
    for i in 0..N {
        let (key, value) = (format!("{{u}}:k{i}"), format!("v{i}"));
        pipeline.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    client.raw(&pipeline);
    for _ in 0..N {
        assert_eq!(client.read().unwrap(), Resp::Simple("OK".into()));
    }
    let taken = batches(&mut client) - before;
    // The pipeline may arrive in a few reads; without running together, each
    // write was a batch.
    assert!(taken <= 10, "{N} pipelined writes took {taken} batches");
    assert_eq!(
        client.cmd(&[b"GET", b"{u}:k199"]),
        Resp::Bulk(b"v199".to_vec())
    );
}
