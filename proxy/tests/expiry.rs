//! Active expiry: keys whose TTL has passed are deleted, not only hidden, so
//! DBSIZE and INFO keyspace count as Redis's do; with several datacenters the
//! user's home deletes them and the deletion replicates.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use meridian_testbed::{ClusterSpec, Shape};
use support::wan::{converged, lossy, start, until};
use support::{
    Client, Resp, eventually, redis_dc_topology, single_dc_topology, start_meridian, start_redis,
};

/// `db0:...` of INFO keyspace, as (keys, expires, avg_ttl); `None` with no keys.
fn keyspace(client: &mut Client) -> Option<(u64, u64, u64)> {
    let Resp::Bulk(info) = client.cmd(&[b"INFO", b"keyspace"]) else {
        panic!("INFO keyspace");
    };
    let text = String::from_utf8(info).unwrap();
    let line = text.lines().find(|l| l.starts_with("db0:"))?;
    let field = |name: &str| {
        line.trim_start_matches("db0:")
            .split(',')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    Some((field("keys"), field("expires"), field("avg_ttl")))
}

/// Keys set with a short TTL disappear from DBSIZE on their own; INFO keyspace
/// counts keys with a TTL and their average remaining TTL, as Redis does.
fn expires_actively(redis_backend: bool) {
    let dir = tempfile::tempdir().unwrap();
    let _redis;
    let (topology, addr) = match redis_backend {
        true => {
            let (process, redis) = start_redis();
            _redis = process;
            redis_dc_topology(dir.path(), "never", redis)
        }
        false => single_dc_topology(dir.path(), "never"),
    };
    let _proxy = start_meridian(&topology, addr);
    let mut c = Client::connect(addr).unwrap();
    for key in [&b"{e}:a"[..], b"{e}:b", b"{e}:c"] {
        assert_eq!(
            c.cmd(&[b"SET", key, b"v", b"PX", b"300"]),
            Resp::Simple("OK".into())
        );
    }
    assert_eq!(
        c.cmd(&[b"SET", b"{e}:long", b"v", b"EX", b"1000"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        c.cmd(&[b"SET", b"{e}:plain", b"v"]),
        Resp::Simple("OK".into())
    );
    let (keys, expires, avg_ttl) = keyspace(&mut c).unwrap();
    assert_eq!((keys, expires), (5, 4));
    assert!(avg_ttl > 0 && avg_ttl <= 250_300, "avg_ttl {avg_ttl}");
    eventually("the expired keys to be deleted", || {
        c.cmd(&[b"DBSIZE"]) == Resp::Int(2)
    });
    let (keys, expires, avg_ttl) = keyspace(&mut c).unwrap();
    assert_eq!((keys, expires), (2, 1));
    assert!(
        avg_ttl > 990_000 && avg_ttl <= 1_000_000,
        "avg_ttl {avg_ttl}"
    );
    // A TTL removed (PERSIST) or replaced by a plain SET leaves nothing to expire.
    assert_eq!(c.cmd(&[b"PERSIST", b"{e}:long"]), Resp::Int(1));
    assert_eq!(keyspace(&mut c).unwrap().1, 0);
    if let Resp::Bulk(stats) = c.cmd(&[b"INFO", b"stats"]) {
        let stats = String::from_utf8(stats).unwrap();
        assert!(stats.contains("expired_keys:"), "{stats}");
    }
}

#[test]
fn expired_keys_are_deleted_on_the_embedded_store() {
    expires_actively(false);
}

#[test]
fn expired_keys_are_deleted_on_the_redis_backend() {
    expires_actively(true);
}

/// Two datacenters: a key of a user homed at dc0 set with a short TTL at dc1
/// (forwarded home) is deleted at dc0 and the deletion reaches dc1; dc1 deletes
/// nothing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_deletes_expired_keys_and_the_deletion_replicates() {
    let mut spec = ClusterSpec::new(env!("CARGO_BIN_EXE_meridian"), 2, Shape::AllToAll);
    spec.set_links(lossy);
    spec.seed = 501;
    let cluster = start(spec).await;
    let homes = meridian_proxy::user_homes(&cluster.parsed_topology().unwrap()).unwrap();
    let user = (0..)
        .map(|i| format!("x{i}"))
        .find(|u| homes.home_of(u) == 0)
        .unwrap();
    for i in 0..10 {
        let key = format!("{{{user}}}:{i}");
        let (): () = cluster
            .cmd(1, &["SET", &key, "v", "PX", "200"])
            .await
            .unwrap();
    }
    converged(&cluster).await;
    for dc in 0..2 {
        until("the expired keys to be gone", || async {
            cluster.cmd::<u64>(dc, &["DBSIZE"]).await.unwrap() == 0
        })
        .await;
    }
    converged(&cluster).await;
    let expired = |dc| {
        let cluster = &cluster;
        async move {
            let info = cluster.cmd::<String>(dc, &["INFO", "stats"]).await.unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("expired_keys:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap()
        }
    };
    assert_eq!(expired(0).await, 10, "the home deletes them");
    assert_eq!(
        expired(1).await,
        0,
        "the other datacenter deletes nothing itself"
    );
}
