//! A client whose replies outgrow the output buffer limit is closed, as Redis closes
//! a client over its `client-output-buffer-limit`, counted, and nobody else notices.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use support::{Client, Resp, start_meridian};

#[test]
fn a_reply_over_the_output_limit_closes_its_client_only() {
    let dir = tempfile::tempdir().unwrap();
    let ports = meridian_testbed::free_ports(3).unwrap();
    let mut file = meridian_testbed::TopologyFile::new("test");
    let addr = file
        .datacenter("dc1", [ports[0], ports[1], ports[2]])
        .data_dir("data")
        .client;
    file.clients = Some(meridian_testbed::ClientsSection {
        output_buffer_limit: Some("1MiB".into()),
        flush: None,
    });
    let topology = dir.path().join("topology.toml");
    file.write(&topology).unwrap();
    let _proxy = start_meridian(&topology, addr);

    let mut client = Client::connect(addr).unwrap();
    let value = vec![b'v'; 400 << 10];
    assert_eq!(
        client.cmd(&[b"SET", b"{u}:big", &value]),
        Resp::Simple("OK".into())
    );
    // Two copies fit under the limit.
    match client.cmd(&[b"MGET", b"{u}:big", b"{u}:big"]) {
        Resp::Array(items) => assert_eq!(items.len(), 2),
        other => panic!("{other:?}"),
    }
    // Four copies do not: the connection is closed without a reply.
    client.send(&[b"MGET", b"{u}:big", b"{u}:big", b"{u}:big", b"{u}:big"]);
    assert!(client.read().is_err(), "the client was not closed");

    let mut other = Client::connect(addr).unwrap();
    match other.cmd(&[b"INFO", b"stats"]) {
        Resp::Bulk(text) => assert!(
            String::from_utf8_lossy(&text)
                .contains("client_output_buffer_limit_disconnections:1\r\n"),
            "{}",
            String::from_utf8_lossy(&text)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(other.cmd(&[b"STRLEN", b"{u}:big"]), Resp::Int(400 << 10));
}
