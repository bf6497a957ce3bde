//! The WAN emulator on real loopback UDP sockets. Delays are checked as lower bounds
//! (the relay can never deliver early); absence is proven with a marker datagram that
//! follows on a FIFO link, never by waiting.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meridian_testbed::{Direction, LinkShape, Relay};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

const PATIENCE: Duration = Duration::from_secs(20);

struct Ends {
    near: UdpSocket,
    far: UdpSocket,
    relay: Relay,
}

async fn link(forward: LinkShape, backward: LinkShape) -> Ends {
    let far = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = Relay::start(far.local_addr().unwrap(), forward, backward, 7)
        .await
        .unwrap();
    let near = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    Ends { near, far, relay }
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (len, from) = timeout(PATIENCE, socket.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    buf.truncate(len);
    (buf, from)
}

fn number(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().unwrap())
}

#[tokio::test]
async fn each_direction_is_delayed_by_its_own_shape() {
    let ends = link(
        LinkShape::delay(Duration::from_millis(40)),
        LinkShape::delay(Duration::from_millis(15)),
    )
    .await;
    let sent = Instant::now();
    ends.near.send_to(b"ping", ends.relay.addr()).await.unwrap();
    let (bytes, relay_far_side) = recv(&ends.far).await;
    assert_eq!(bytes, b"ping");
    assert!(
        sent.elapsed() >= Duration::from_millis(40),
        "arrived after {:?}",
        sent.elapsed()
    );

    let answered = Instant::now();
    ends.far.send_to(b"pong", relay_far_side).await.unwrap();
    let (bytes, from) = recv(&ends.near).await;
    assert_eq!((bytes.as_slice(), from), (&b"pong"[..], ends.relay.addr()));
    assert!(
        answered.elapsed() >= Duration::from_millis(15),
        "answered after {:?}",
        answered.elapsed()
    );
    assert_eq!(
        ends.relay
            .stats(Direction::Forward)
            .delivered
            .load(Ordering::Relaxed),
        1
    );
    // Each delivered datagram's lateness against its schedule is recorded (not
    // bounded here: it depends on the machine; benchmarks print it).
    for direction in [Direction::Forward, Direction::Backward] {
        let late = ends.relay.stats(direction).lateness().expect("lateness");
        assert_eq!(late.len(), 1);
        assert!(late.max() < 20_000_000, "{} µs late", late.max());
    }
}

#[tokio::test]
async fn without_jitter_a_link_keeps_order_and_with_jitter_it_reorders() {
    let steady = link(
        LinkShape::delay(Duration::from_millis(5)),
        LinkShape::delay(Duration::ZERO),
    )
    .await;
    for i in 0u32..200 {
        steady
            .near
            .send_to(&i.to_be_bytes(), steady.relay.addr())
            .await
            .unwrap();
    }
    for i in 0u32..200 {
        assert_eq!(number(&recv(&steady.far).await.0), i);
    }

    let shaky = LinkShape {
        jitter: Duration::from_millis(40),
        ..LinkShape::delay(Duration::from_millis(5))
    };
    let jittery = link(shaky, LinkShape::delay(Duration::ZERO)).await;
    for i in 0u32..200 {
        jittery
            .near
            .send_to(&i.to_be_bytes(), jittery.relay.addr())
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..200 {
        order.push(number(&recv(&jittery.far).await.0));
    }
    assert_eq!(
        order.iter().copied().collect::<HashSet<_>>().len(),
        200,
        "every datagram arrives once"
    );
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(
        inversions > 0,
        "40 ms of jitter over back-to-back datagrams must reorder some"
    );
}

#[tokio::test]
async fn loss_drops_the_configured_share_reproducibly() {
    let lossy = LinkShape {
        loss: 0.3,
        ..LinkShape::delay(Duration::ZERO)
    };
    let ends = link(lossy, LinkShape::delay(Duration::ZERO)).await;
    // In chunks that the relay has accounted for and the far end has read, so no
    // kernel socket buffer overflows (that would be loss the relay did not choose).
    let stats = ends.relay.stats(Direction::Forward);
    let accounted = || stats.delivered.load(Ordering::Relaxed) + stats.lost.load(Ordering::Relaxed);
    let mut received = 0u64;
    for chunk in 0u32..10 {
        for i in chunk * 100..(chunk + 1) * 100 {
            ends.near
                .send_to(&i.to_be_bytes(), ends.relay.addr())
                .await
                .unwrap();
        }
        let deadline = Instant::now() + PATIENCE;
        while accounted() < u64::from((chunk + 1) * 100) {
            assert!(
                Instant::now() < deadline,
                "the relay never accounted for chunk {chunk}"
            );
            tokio::task::yield_now().await;
        }
        while received < stats.delivered.load(Ordering::Relaxed) {
            let n = number(&recv(&ends.far).await.0);
            assert!(n < (chunk + 1) * 100, "datagram {n} arrived early");
            received += 1;
        }
    }
    let lost = stats.lost.load(Ordering::Relaxed);
    assert_eq!(received + lost, 1_000);
    assert!((230..=370).contains(&lost), "lost {lost} of 1000 at 30%");
}

#[tokio::test]
async fn a_cut_link_drops_everything_until_healed() {
    let ends = link(
        LinkShape::delay(Duration::from_millis(2)),
        LinkShape::delay(Duration::ZERO),
    )
    .await;
    ends.relay.cut();
    ends.near
        .send_to(b"while cut", ends.relay.addr())
        .await
        .unwrap();
    // The relay counts the drop; wait on that, then heal.
    let deadline = Instant::now() + PATIENCE;
    while ends
        .relay
        .stats(Direction::Forward)
        .cut
        .load(Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "the cut datagram was never seen");
        tokio::task::yield_now().await;
    }
    ends.relay.heal();
    ends.near
        .send_to(b"after heal", ends.relay.addr())
        .await
        .unwrap();
    assert_eq!(
        recv(&ends.far).await.0,
        b"after heal",
        "nothing sent while cut arrives"
    );
}

#[tokio::test]
async fn a_bandwidth_cap_serialises_datagrams() {
    let capped = LinkShape {
        bandwidth: Some(100_000),
        ..LinkShape::delay(Duration::ZERO)
    };
    let ends = link(capped, LinkShape::delay(Duration::ZERO)).await;
    let started = Instant::now();
    for _ in 0..10 {
        ends.near
            .send_to(&[0u8; 1_000], ends.relay.addr())
            .await
            .unwrap();
    }
    for _ in 0..10 {
        recv(&ends.far).await;
    }
    // 10 kB at 100 kB/s takes at least 100 ms to send.
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "took {:?}",
        started.elapsed()
    );
}
