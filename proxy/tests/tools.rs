//! Real Redis tools against the proxy, and hostile clients.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::{Client, Resp, single_dc_topology, start_meridian};

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} must be installed (apt-get install redis-tools): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_cli_and_redis_benchmark_work_against_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "every-10ms");
    let _proxy = start_meridian(&topology, addr);
    let port = addr.port().to_string();
    let cli = |args: &[&str]| tool("redis-cli", &[&["-p", port.as_str()], args].concat());
    assert_eq!(cli(&["SET", "{u1}:greeting", "hello world"]), "OK\n");
    assert_eq!(cli(&["GET", "{u1}:greeting"]), "hello world\n");
    assert_eq!(cli(&["HSET", "{u1}:h", "a", "1"]), "1\n");
    // Not a terminal: redis-cli prints a RESP3 map as "field value" lines (an array would be two lines).
    assert_eq!(cli(&["-3", "HGETALL", "{u1}:h"]), "a 1\n");
    assert_eq!(cli(&["PING"]), "PONG\n");

    let report = tool(
        "redis-benchmark",
        &[
            "-p", &port, "-t", "set,get", "-n", "2000", "-c", "8", "-P", "4", "-q",
        ],
    );
    for test in ["SET", "GET"] {
        let line = report
            .split(['\r', '\n'])
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{test}:")) && l.contains("requests per second"))
            .unwrap_or_else(|| panic!("no {test} line in\n{report}"));
        assert!(line.contains("requests per second"), "{line}");
    }
    let mut client = Client::connect(addr).unwrap();
    // redis-benchmark's SETs were stored: 3-byte payloads (its -d default) under its fixed key.
    assert_eq!(client.cmd(&[b"STRLEN", b"key:__rand_int__"]), Resp::Int(3));
}

#[test]
fn hostile_clients_get_errors_and_do_not_disturb_others() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "never");
    let _proxy = start_meridian(&topology, addr);

    // A client that declares a huge bulk string is refused from the header alone.
    let mut huge = TcpStream::connect(addr).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    huge.write_all(b"*2\r\n$3\r\nGET\r\n$9999999999\r\n")
        .unwrap();
    let mut reply = String::new();
    huge.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply, "-ERR Protocol error: invalid bulk length\r\n",
        "answered and closed"
    );

    // A slowloris client holds half a command open; others are served meanwhile.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nab")
        .unwrap();
    let mut other = Client::connect(addr).unwrap();
    assert_eq!(other.cmd(&[b"SET", b"k", b"v"]), Resp::Simple("OK".into()));

    // Garbage gets a protocol error, not a crash.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    garbage.write_all(b"*1\r\n\xff\xfe\x00garbage\r\n").unwrap();
    let mut reply = String::new();
    let _ = garbage.read_to_string(&mut reply);
    assert!(
        reply.starts_with("-ERR Protocol error: expected '$'"),
        "{reply:?}"
    );

    // The slow client's command completes when the rest arrives.
    slow.write_all(&[b'x'; 98]).unwrap();
    slow.write_all(b"\r\n").unwrap();
    let mut buf = [0u8; 5];
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+OK\r\n");
    assert_eq!(other.cmd(&[b"STRLEN", b"k"]), Resp::Int(100));
}
