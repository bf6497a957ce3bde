//! A Redis backend fronted with data meridian did not write: commands that only
//! test existence or replace a key behave on other types as Redis does.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use support::{Client, Resp, redis_dc_topology, start_meridian, start_redis};

#[test]
fn del_and_set_nx_xx_work_on_types_meridian_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_addr) = start_redis();
    let mut direct = Client::connect(redis_addr).unwrap();
    assert_eq!(direct.cmd(&[b"SADD", b"{u}:set", b"a", b"b"]), Resp::Int(2));
    assert_eq!(direct.cmd(&[b"RPUSH", b"{u}:list", b"x"]), Resp::Int(1));
    let (topology, addr) = redis_dc_topology(dir.path(), "always", redis_addr);
    let _proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    // Redis: 1, the set is gone.
    assert_eq!(client.cmd(&[b"DEL", b"{u}:set"]), Resp::Int(1));
    // Redis: NX does nothing to an existing list; XX replaces it with a string.
    assert_eq!(client.cmd(&[b"SET", b"{u}:list", b"v", b"NX"]), Resp::Nil);
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:list", b"v", b"XX"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        client.cmd(&[b"GET", b"{u}:list"]),
        Resp::Bulk(b"v".to_vec())
    );
    assert_eq!(client.cmd(&[b"EXISTS", b"{u}:set"]), Resp::Int(0));
    support::eventually("redis to hold the replaced key", || {
        direct.cmd(&[b"TYPE", b"{u}:list"]) == Resp::Simple("string".into())
            && direct.cmd(&[b"EXISTS", b"{u}:set"]) == Resp::Int(0)
    });
}
