//! The admin endpoint: /metrics and /status.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use support::{Client, Resp, admin_addr_of, http, single_dc_topology, start_meridian};

#[test]
fn metrics_and_status_describe_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "never");
    let _proxy = start_meridian(&topology, addr);
    let admin = admin_addr_of(&topology);
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:a", b"1"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:b", b"2"]),
        Resp::Simple("OK".into())
    );
    assert!(matches!(
        client.cmd(&[b"INCR", b"{u}:missing", b"x"]),
        Resp::Error(_)
    ));
    assert_eq!(client.cmd(&[b"GET", b"{u}:a"]), Resp::Bulk(b"1".to_vec()));

    let (status, body) = http(admin, "GET", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "meridian_commands_total{command=\"set\"} 2",
        "meridian_commands_total{command=\"get\"} 1",
        "meridian_command_errors_total{command=\"incr\"} 1",
        "meridian_changes_committed_total 2",
        "meridian_connected_clients 1",
        "meridian_command_latency_seconds_count{command=\"set\"} 2",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    assert!(
        body.contains("meridian_command_latency_seconds{command=\"get\",quantile=\"0.99\"}"),
        "{body}"
    );

    let (status, body) = http(admin, "GET", "/status");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["datacenter"], "dc1");
    assert_eq!(json["backend"], "embedded");
    assert_eq!(json["applied"], "dc1:2");
    // Every worker of a proxy without peers, each idle or busy and without errors.
    let workers = json["workers"].as_array().unwrap();
    for name in ["writer", "committer", "log-sync", "retention", "admin"] {
        let worker = workers
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {workers:?}"));
        let state = worker["state"].as_str().unwrap();
        assert!(["idle", "busy"].contains(&state), "{name} is {state}");
        assert_eq!(worker["errors"], 0, "{worker}");
    }
    assert_eq!(json["metrics"]["meridian_changes_committed_total"], 2.0);
    assert_eq!(json["metrics"]["meridian_commands_total"]["set"], 2.0);

    assert_eq!(http(admin, "GET", "/nope").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        http(admin, "POST", "/metrics").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
}
