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

#[test]
fn reads_of_what_redis_holds_answer_as_redis_does_in_either_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_addr) = start_redis();
    let mut direct = Client::connect(redis_addr).unwrap();
    assert_eq!(
        direct.cmd(&[b"SET", b"{u}:s", b"text"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(direct.cmd(&[b"HSET", b"{u}:h", b"f", b"1"]), Resp::Int(1));
    assert_eq!(direct.cmd(&[b"RPUSH", b"{u}:l", b"a", b"b"]), Resp::Int(2));
    let (topology, addr) = redis_dc_topology(dir.path(), "always", redis_addr);
    let _proxy = start_meridian(&topology, addr);
    // Never written through the proxy: every read goes to Redis and its reply back.
    let reads: [&[&[u8]]; 6] = [
        &[b"GET", b"{u}:s"],
        &[b"GET", b"{u}:missing"],
        &[b"HGETALL", b"{u}:h"],
        &[b"MGET", b"{u}:s", b"{u}:missing"],
        &[b"LRANGE", b"{u}:l", b"0", b"-1"],
        &[b"LLEN", b"{u}:s"],
    ];
    for protocol in [&b"2"[..], b"3"] {
        let asked = |to| raw_replies(to, protocol, &reads);
        let (ours, redis) = (asked(addr), asked(redis_addr));
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&redis),
            "RESP{}",
            String::from_utf8_lossy(protocol)
        );
    }
}

/// The bytes `addr` answers `commands` with on a connection in `protocol`.
fn raw_replies(addr: std::net::SocketAddr, protocol: &[u8], commands: &[&[&[u8]]]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // Each batch ends with an ECHO whose reply marks where the batch's replies end.
    const MARK: &[u8] = b"$14\r\nend-of-replies\r\n";
    let mut run = |commands: &[&[&[u8]]]| {
        let mut out = Vec::new();
        for args in commands
            .iter()
            .chain([&[&b"ECHO"[..], b"end-of-replies"][..]].iter())
        {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for arg in *args {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
        }
        stream
            .write_all(&out)
            .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
        let mut got = Vec::new();
        while !got.ends_with(MARK) {
            let mut buf = [0; 4096];
            let n = stream.read(&mut buf).unwrap_or_else(|e| {
                panic!("reading {addr}'s replies ({} bytes so far): {e}", got.len())
            });
            assert!(n > 0, "{addr} closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
        got.truncate(got.len() - MARK.len());
        got
    };
    run(&[&[b"HELLO", protocol]]);
    run(commands)
}
