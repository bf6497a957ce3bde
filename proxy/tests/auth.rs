//! Clients must AUTH when the topology file names users.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::io::Write;

use support::{Client, Resp, single_dc_topology, start_meridian};

#[test]
fn clients_authenticate_with_the_users_of_the_topology_file() {
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "never");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&topology)
        .unwrap();
    writeln!(
        file,
        "\n[auth]\nusers = {{ default = \"default-secret\", app = \"app-secret-1\" }}"
    )
    .unwrap();
    drop(file);
    let _proxy = start_meridian(&topology, addr);

    let mut client = Client::connect(addr).unwrap();
    assert_eq!(
        client.cmd(&[b"GET", b"k"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        client.cmd(&[b"SET", b"k", b"v"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    let wrong = Resp::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
    assert_eq!(client.cmd(&[b"AUTH", b"nope-nope"]), wrong);
    assert_eq!(
        client.cmd(&[b"AUTH", b"app", b"default-secret"]),
        wrong,
        "passwords belong to their user"
    );
    assert_eq!(
        client.cmd(&[b"AUTH", b"default-secret"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(client.cmd(&[b"SET", b"k", b"v"]), Resp::Simple("OK".into()));

    let mut app = Client::connect(addr).unwrap();
    assert_eq!(
        app.cmd(&[b"AUTH", b"app", b"app-secret-1"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(app.cmd(&[b"GET", b"k"]), Resp::Bulk(b"v".to_vec()));

    let mut hello = Client::connect(addr).unwrap();
    match hello.cmd(&[b"HELLO", b"2", b"AUTH", b"app", b"app-secret-1"]) {
        Resp::Array(items) => assert!(items.contains(&Resp::Bulk(b"proto".to_vec()))),
        other => panic!("{other:?}"),
    }
    assert_eq!(hello.cmd(&[b"GET", b"k"]), Resp::Bulk(b"v".to_vec()));
}
