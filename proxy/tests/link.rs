//! Links over real QUIC with mutual TLS: who is accepted, who is refused and why.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::Path;
use std::time::Duration;

use meridian_policies::VersionVector;
use meridian_proxy::{
    HANDSHAKE_TIMEOUT, Identity, Link, LinkError, LinkTls, accept_link, connect_link,
    generate_certs,
};
use meridian_topology::Topology;

/// A star around `a` without fallback: b and c may not link to each other.
fn topology(dir: &Path, cluster: &str) -> Topology {
    let mut file = meridian_testbed::TopologyFile::new(cluster);
    file.cluster.topology = Some("star".into());
    file.cluster.hub = Some("a".into());
    file.cluster.star_fallback = Some("none".into());
    file.tls = Some(meridian_testbed::TlsSection {
        ca: "pki/ca.pem".into(),
    });
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        file.datacenter(id, [7001 + i as u16, 7101 + i as u16, 7201 + i as u16]);
    }
    let t = Topology::parse(&file.to_toml(), "test.toml", dir).unwrap();
    generate_certs(&t, false).unwrap();
    t
}

fn tls(t: &Topology, dc: &str) -> LinkTls {
    let d = t.dc(t.index_of(dc).unwrap());
    LinkTls::load(&t.tls.ca, &d.cert, &d.key).unwrap()
}

fn identity(cluster: &str, dc: &str, seq: u64) -> Identity {
    let mut applied = VersionVector::new();
    applied.advance(dc, seq);
    Identity {
        cluster: cluster.into(),
        dc: dc.into(),
        applied,
        incarnation: seq,
    }
}

/// Runs one link attempt: `client` (with `client_tls`) dials `server`.
async fn attempt(
    topology: &Topology,
    server: &str,
    client_tls: &LinkTls,
    client_id: Identity,
) -> (Result<Link, LinkError>, Result<Link, LinkError>) {
    let server_ep = tls(topology, server)
        .endpoint("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let client_ep = client_tls.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server_ep.local_addr().unwrap();
    let me = identity(&topology.cluster_name, server, 7);
    let accepting = {
        let topology = topology.clone();
        tokio::spawn(async move {
            let incoming = server_ep.accept().await.expect("an incoming connection");
            accept_link(incoming, &me, &topology, HANDSHAKE_TIMEOUT).await
        })
    };
    let client = connect_link(&client_ep, addr, server, &client_id, HANDSHAKE_TIMEOUT).await;
    (client, accepting.await.unwrap())
}

#[tokio::test]
async fn a_permitted_link_exchanges_identities() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), "shop");
    let (client, server) = attempt(&t, "a", &tls(&t, "b"), identity("shop", "b", 3)).await;
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!(client.peer, identity("shop", "a", 7));
    assert_eq!(server.peer, identity("shop", "b", 3));
}

#[tokio::test]
async fn a_pair_without_an_edge_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), "shop");
    let (client, server) = attempt(&t, "b", &tls(&t, "c"), identity("shop", "c", 1)).await;
    match client {
        Err(LinkError::Refused { peer, reason }) => {
            assert_eq!(peer, "b");
            assert!(
                reason.contains("no link between \"b\" and \"c\""),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(server, Err(LinkError::Rejected { .. })));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), "shop");
    let impostor = topology(other.path(), "shop");
    let (client, server) = attempt(&t, "a", &tls(&impostor, "b"), identity("shop", "b", 1)).await;
    let message = client.unwrap_err().to_string();
    assert!(
        message.contains("certificate") || message.contains("UnknownIssuer"),
        "{message}"
    );
    assert!(server.is_err());
}

#[tokio::test]
async fn another_cluster_or_a_false_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), "shop");
    let (client, _) = attempt(&t, "a", &tls(&t, "b"), identity("bank", "b", 1)).await;
    match client {
        Err(LinkError::Refused { reason, .. }) => {
            assert!(reason.contains("cluster \"bank\""), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // b's certificate, but a hello that claims to be c.
    let (client, _) = attempt(&t, "a", &tls(&t, "b"), identity("shop", "c", 1)).await;
    match client {
        Err(LinkError::Refused { reason, .. }) => {
            assert!(
                reason.contains("claims to be \"c\" but its certificate names \"b\""),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_completes_tls_and_says_nothing_is_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), "shop");
    let server_ep = tls(&t, "a")
        .endpoint("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let client_ep = tls(&t, "b")
        .endpoint("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let addr = server_ep.local_addr().unwrap();
    let me = identity("shop", "a", 1);
    let accepting = {
        let t = t.clone();
        tokio::spawn(async move {
            let incoming = server_ep.accept().await.expect("an incoming connection");
            let started = std::time::Instant::now();
            let result = accept_link(incoming, &me, &t, Duration::from_millis(300)).await;
            (result, started.elapsed())
        })
    };
    // TLS completes, then the client sends no hello.
    let silent = client_ep.connect(addr, "a").unwrap().await.unwrap();
    let (result, took) = accepting.await.unwrap();
    match result {
        Err(LinkError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(silent);
}

/// A datacenter that crashed and came back on its address resets the connections
/// of its previous run as soon as their packets reach it, so its peers dial again
/// at once instead of waiting out the idle timeout (here a minute).
#[test]
fn a_restarted_endpoint_resets_the_connections_of_its_previous_run() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), "shop");
    // Datacenter `dc`'s endpoint on `addr`, driven by `runtime`.
    let endpoint = |runtime: &tokio::runtime::Runtime, dc: &str, addr: &str| {
        let _guard = runtime.enter();
        tls(&t, dc)
            .with_transport(Duration::from_millis(200), Duration::from_secs(60))
            .endpoint(addr.parse().unwrap())
            .unwrap()
    };
    let client_rt = tokio::runtime::Runtime::new().unwrap();
    let client_ep = endpoint(&client_rt, "b", "127.0.0.1:0");
    // The first run of `a`, on a runtime of its own: dropping the runtime stops it
    // dead, with no close sent, as a crash would.
    let first_run = tokio::runtime::Runtime::new().unwrap();
    let server_ep = endpoint(&first_run, "a", "127.0.0.1:0");
    let addr = server_ep.local_addr().unwrap();
    let accepted = {
        let t = t.clone();
        first_run.spawn(async move {
            let incoming = server_ep.accept().await.expect("an incoming connection");
            accept_link(incoming, &identity("shop", "a", 1), &t, HANDSHAKE_TIMEOUT).await
        })
    };
    let link = client_rt
        .block_on(connect_link(
            &client_ep,
            addr,
            "a",
            &identity("shop", "b", 1),
            HANDSHAKE_TIMEOUT,
        ))
        .unwrap();
    let server_link = first_run.block_on(accepted).unwrap().unwrap();
    drop(first_run);
    // Its connection goes only now, with nothing left to send a close.
    drop(server_link);

    let second_run = tokio::runtime::Runtime::new().unwrap();
    let _restarted = endpoint(&second_run, "a", &addr.to_string());
    let closed = client_rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), link.connection.closed()).await
    });
    match closed {
        Ok(quinn::ConnectionError::Reset) => {}
        other => panic!("the old connection was not reset: {other:?}"),
    }
}
