//! A change the Redis backend refuses (here: a key its ACL does not let the proxy
//! write) is reported and skipped; it does not stop the other writes.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use support::{Client, Resp, eventually, redis_dc_topology, start_meridian, start_redis};

/// Lets the proxy (Redis's default user) write the keys of user u and its
/// metadata, nothing else.
fn allow_only_user_u(redis: &mut Client) {
    let acl: [&[u8]; 6] = [
        b"ACL",
        b"SETUSER",
        b"default",
        b"resetkeys",
        b"~{u}*",
        b"~__meridian:meta",
    ];
    assert_eq!(redis.cmd(&acl), Resp::Simple("OK".into()));
}

#[test]
fn a_change_redis_refuses_is_reported_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_addr) = start_redis();
    let mut direct = Client::connect(redis_addr).unwrap();
    // The proxy may write the keys of user u and its metadata, nothing else.
    allow_only_user_u(&mut direct);
    let (topology, addr) = redis_dc_topology(dir.path(), "always", redis_addr);
    let _proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    // One pipeline: the refused write sits between two others.
    for (key, value) in [
        (&b"{u}:a"[..], &b"1"[..]),
        (b"{blocked}:x", b"1"),
        (b"{u}:b", b"2"),
    ] {
        client.send(&[b"SET", key, value]);
    }
    for _ in 0..3 {
        assert_eq!(client.read().unwrap(), Resp::Simple("OK".into()));
    }
    let holds = |direct: &mut Client, key: &[u8], value: &[u8]| {
        direct.cmd(&[b"GET", key]) == Resp::Bulk(value.to_vec())
    };
    eventually("redis to hold the writes around the refused one", || {
        holds(&mut direct, b"{u}:a", b"1") && holds(&mut direct, b"{u}:b", b"2")
    });
    // Writes go on.
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:c", b"3"]),
        Resp::Simple("OK".into())
    );
    eventually("redis to hold a later write", || {
        holds(&mut direct, b"{u}:c", b"3")
    });
    // And the refusal is counted.
    eventually("the refusal to be counted", || {
        match client.cmd(&[b"INFO", b"replication"]) {
            Resp::Bulk(text) => {
                String::from_utf8_lossy(&text).contains("changes_refused_by_backend:1\r\n")
            }
            _ => false,
        }
    });
}

#[test]
fn a_refused_change_met_again_at_start_up_is_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_addr) = start_redis();
    let mut direct = Client::connect(redis_addr).unwrap();
    let (topology, addr) = redis_dc_topology(dir.path(), "always", redis_addr);
    let proxy = start_meridian(&topology, addr);
    // Redis takes no writes for now: what the proxy acknowledges stays in its log.
    assert_eq!(
        direct.cmd(&[b"CLIENT", b"PAUSE", b"30000", b"WRITE"]),
        Resp::Simple("OK".into())
    );
    let mut client = Client::connect(addr).unwrap();
    for (key, value) in [(&b"{blocked}:x"[..], &b"1"[..]), (b"{u}:y", b"2")] {
        assert_eq!(client.cmd(&[b"SET", key, value]), Resp::Simple("OK".into()));
    }
    drop(proxy); // SIGKILL, before anything reached Redis.
    assert_eq!(
        direct.cmd(&[b"CLIENT", b"UNPAUSE"]),
        Resp::Simple("OK".into())
    );
    allow_only_user_u(&mut direct);
    // Replaying the log meets the refusal: the proxy starts anyway, and the other
    // write reaches Redis.
    let _proxy = start_meridian(&topology, addr);
    eventually("the replayed write to reach redis", || {
        direct.cmd(&[b"GET", b"{u}:y"]) == Resp::Bulk(b"2".to_vec())
    });
}
