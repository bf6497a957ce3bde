//! A Redis backend that goes down and comes back: clients get clear errors meanwhile,
//! the proxy stays up and reconnects.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use support::{
    Client, Resp, eventually, free_port, redis_dc_topology, start_meridian,
    start_redis_loading_slowly, start_redis_persistent,
};

#[test]
fn a_redis_restart_gives_clear_errors_then_service_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut redis = start_redis_persistent(redis_dir.path(), port);
    let (_proxy, mut client) = proxy_with_a_write(dir.path(), redis_addr);
    // Wait until the write is in Redis itself, so the outage cannot lose it, and
    // the proxy holds nothing of it in memory any more (its checkpoint is done).
    wait_until_redis_holds(redis_addr, b"{u}:k", b"before");
    eventually("the proxy to hold no uncommitted keys", || {
        match client.cmd(&[b"INFO", b"replication"]) {
            Resp::Bulk(text) => String::from_utf8_lossy(&text).contains("uncommitted_keys:0\r\n"),
            _ => false,
        }
    });

    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    // Reads and writes that need Redis's state get a clear error naming the backend.
    for cmd in [&[&b"GET"[..], b"{u}:k"][..], &[b"INCR", b"{u}:n"]] {
        match client.cmd(cmd) {
            Resp::Error(e) => assert!(
                e.contains("redis backend") && e.contains(&port.to_string()),
                "{e}"
            ),
            other => panic!("{other:?} while redis is down"),
        }
    }
    // A plain SET needs no state: it is logged, acknowledged, and held until Redis is back.
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:other", b"held"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        client.cmd(&[b"GET", b"{u}:other"]),
        Resp::Bulk(b"held".to_vec()),
        "served from the proxy's memory"
    );

    let _redis = start_redis_persistent(redis_dir.path(), port);
    // Reads fail with a clear error until the proxy has reconnected.
    eventually("the proxy to read from redis again", || {
        match client.cmd(&[b"GET", b"{u}:k"]) {
            Resp::Bulk(v) => {
                assert_eq!(v, b"before");
                true
            }
            Resp::Error(_) => false,
            other => panic!("{other:?} after redis came back"),
        }
    });
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:k", b"after"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        client.cmd(&[b"GET", b"{u}:k"]),
        Resp::Bulk(b"after".to_vec())
    );
    // The write held during the outage reached Redis itself.
    wait_until_redis_holds(redis_addr, b"{u}:other", b"held");
}

#[test]
fn a_redis_loading_its_data_after_a_restart_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut redis = start_redis_persistent(redis_dir.path(), port);
    // A data set that takes about three seconds to load at half a millisecond a key.
    let mut direct = Client::connect(redis_addr).unwrap();
    let fill = b"for i=1,6000 do redis.call('set','other:'..i,'v') end";
    assert_eq!(direct.cmd(&[b"EVAL", fill, b"0"]), Resp::Nil);
    let (_proxy, mut client) = proxy_with_a_write(dir.path(), redis_addr);
    wait_until_redis_holds(redis_addr, b"{u}:k", b"before");

    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    let _redis = start_redis_loading_slowly(redis_dir.path(), port, 500);
    let mut probe = Client::connect(redis_addr).unwrap();
    assert!(
        matches!(probe.cmd(&[b"PING"]), Resp::Error(e) if e.starts_with("LOADING")),
        "redis is not loading: the test needs a slower load"
    );
    // Written while Redis loads: acknowledged, and stored once Redis is ready.
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:during", b"loading"]),
        Resp::Simple("OK".into())
    );
    wait_until_redis_holds(redis_addr, b"{u}:during", b"loading");
    // Writes were never stopped: a write after the load is stored too.
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:k", b"after"]),
        Resp::Simple("OK".into())
    );
    wait_until_redis_holds(redis_addr, b"{u}:k", b"after");
    assert_eq!(
        client.cmd(&[b"GET", b"{u}:k"]),
        Resp::Bulk(b"after".to_vec())
    );
}

/// A proxy over the Redis at `redis`, and a client that has written `{u}:k = before`.
fn proxy_with_a_write(
    dir: &std::path::Path,
    redis: std::net::SocketAddr,
) -> (support::Process, Client) {
    let (topology, addr) = redis_dc_topology(dir, "always", redis);
    let proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:k", b"before"]),
        Resp::Simple("OK".into())
    );
    (proxy, client)
}

/// Waits until the Redis at `addr` itself holds `value` at `key`.
fn wait_until_redis_holds(addr: std::net::SocketAddr, key: &[u8], value: &[u8]) {
    let mut direct = Client::connect(addr).unwrap();
    let what = format!("redis to hold {}", String::from_utf8_lossy(key));
    eventually(&what, || {
        direct.cmd(&[b"GET", key]) == Resp::Bulk(value.to_vec())
    });
}
