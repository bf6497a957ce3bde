//! Sticky read replicas: a proxy in front of a real Redis primary with real
//! replicas (`--replicaof`) sends each user's reads to one replica, and never to
//! a replica that has not applied what the session has seen.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::net::SocketAddr;

use support::{Client, Resp, eventually, signal, start_meridian, start_redis, start_redis_replica};

/// A field of `INFO replication`'s `replica_<n>:` line.
fn replica_field(c: &mut Client, n: usize, field: &str) -> u64 {
    replica_value(c, n, field) as u64
}

fn replica_value(c: &mut Client, n: usize, field: &str) -> f64 {
    let Resp::Bulk(info) = c.cmd(&[b"INFO", b"replication"]) else {
        panic!("INFO failed")
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    let line = info
        .lines()
        .find(|l| l.starts_with(&format!("replica_{n}:")))
        .unwrap_or_else(|| panic!("no replica_{n} line in:\n{info}"));
    line.split([':', ','])
        .find_map(|f| f.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

/// Waits until the proxy's memtable is empty: every write is in Redis, and reads
/// go there.
fn all_committed(c: &mut Client) {
    eventually("every write to leave the memtable", || {
        let Resp::Bulk(info) = c.cmd(&[b"INFO", b"replication"]) else {
            return false;
        };
        String::from_utf8_lossy(&info).contains("uncommitted_keys:0\r\n")
    });
}

/// Which of two replicas serves 20 reads of `key` (it must hold `value`), failing
/// unless one serves them all.
fn sticky_replica(c: &mut Client, key: &[u8], value: &[u8]) -> usize {
    let reads = |c: &mut Client| [replica_field(c, 0, "reads"), replica_field(c, 1, "reads")];
    let before = reads(c);
    for _ in 0..20 {
        assert_eq!(c.cmd(&[b"GET", key]), Resp::Bulk(value.to_vec()));
    }
    let after = reads(c);
    let served = [after[0] - before[0], after[1] - before[1]];
    assert!(
        served == [20, 0] || served == [0, 20],
        "20 reads went {served:?} to the replicas (skips {:?}, errors {:?})",
        [replica_field(c, 0, "skips"), replica_field(c, 1, "skips")],
        [replica_field(c, 0, "errors"), replica_field(c, 1, "errors")]
    );
    usize::from(served[1] == 20)
}

fn topology(
    dir: &std::path::Path,
    primary: SocketAddr,
    replicas: &[SocketAddr],
) -> (std::path::PathBuf, SocketAddr) {
    let ports = meridian_testbed::free_ports(3).unwrap();
    let mut file = meridian_testbed::TopologyFile::new("test");
    let urls: Vec<String> = replicas.iter().map(|r| format!("redis://{r}/0")).collect();
    let client = file
        .datacenter("dc1", [ports[0], ports[1], ports[2]])
        .data_dir("data")
        .redis_with_replicas(&format!("redis://{primary}/0"), &urls)
        .client;
    let path = dir.join("topology.toml");
    file.write(&path).unwrap();
    (path, client)
}

#[test]
fn a_users_reads_stick_to_one_replica_and_skip_one_that_lags() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, primary) = start_redis();
    let (_r0, r0) = start_redis_replica(primary);
    let (_r1, r1) = start_redis_replica(primary);
    let (topology, addr) = topology(dir.path(), primary, &[r0, r1]);
    let _proxy = start_meridian(&topology, addr);
    let mut c = Client::connect(addr).unwrap();
    assert_eq!(
        c.cmd(&[b"SET", b"{alice}:k", b"v1"]),
        Resp::Simple("OK".into())
    );
    // Once both replicas have the write, alice's reads go to one of them only.
    eventually("the replicas to have the write", || {
        [r0, r1].iter().all(|r| {
            Client::connect(*r).unwrap().cmd(&[b"GET", b"{alice}:k"]) == Resp::Bulk(b"v1".to_vec())
        })
    });
    all_committed(&mut c);
    let sticky = sticky_replica(&mut c, b"{alice}:k", b"v1");
    // Her replica stops replicating: her next write is not there, and her next
    // read skips it and still returns the write.
    let lagging = [r0, r1][sticky];
    let mut replica = Client::connect(lagging).unwrap();
    assert_eq!(
        replica.cmd(&[b"REPLICAOF", b"NO", b"ONE"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        c.cmd(&[b"SET", b"{alice}:k", b"v2"]),
        Resp::Simple("OK".into())
    );
    all_committed(&mut c);
    for _ in 0..20 {
        assert_eq!(c.cmd(&[b"GET", b"{alice}:k"]), Resp::Bulk(b"v2".to_vec()));
    }
    assert!(
        replica_field(&mut c, sticky, "skips") > 0,
        "the lagging replica was skipped"
    );
    assert_eq!(
        replica.cmd(&[b"GET", b"{alice}:k"]),
        Resp::Bulk(b"v1".to_vec())
    );
}

/// A replica that stops answering (its process frozen with SIGSTOP) costs its
/// users one bounded wait: the read goes on to the next replica, the health check
/// takes the frozen one out of every order (INFO says `up=0`), and when it answers
/// again it gets its users back.
#[test]
fn a_frozen_replica_is_passed_over_and_taken_back_when_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, primary) = start_redis();
    let replicas = [start_redis_replica(primary), start_redis_replica(primary)];
    let (topology, addr) = topology(dir.path(), primary, &[replicas[0].1, replicas[1].1]);
    let _proxy = start_meridian(&topology, addr);
    let mut c = Client::connect(addr).unwrap();
    assert_eq!(
        c.cmd(&[b"SET", b"{bob}:k", b"v1"]),
        Resp::Simple("OK".into())
    );
    eventually("the replicas to have the write", || {
        replicas.iter().all(|(_, r)| {
            Client::connect(*r).unwrap().cmd(&[b"GET", b"{bob}:k"]) == Resp::Bulk(b"v1".to_vec())
        })
    });
    all_committed(&mut c);
    let sticky = sticky_replica(&mut c, b"{bob}:k", b"v1");
    let other = 1 - sticky;
    signal(&replicas[sticky].0, "STOP");
    // Without a bound on the replica's answer, this read would wait for as long
    // as the replica stays frozen (the client gives up after 30 s).
    let before = replica_field(&mut c, other, "reads");
    for _ in 0..20 {
        assert_eq!(c.cmd(&[b"GET", b"{bob}:k"]), Resp::Bulk(b"v1".to_vec()));
    }
    assert!(replica_field(&mut c, sticky, "errors") > 0);
    assert_eq!(replica_field(&mut c, other, "reads") - before, 20);
    eventually("the health check to find the frozen replica", || {
        replica_field(&mut c, sticky, "up") == 0
    });
    signal(&replicas[sticky].0, "CONT");
    eventually(
        "the health check to find the replica answering again",
        || replica_field(&mut c, sticky, "up") == 1,
    );
    assert_eq!(sticky_replica(&mut c, b"{bob}:k", b"v1"), sticky);
}
