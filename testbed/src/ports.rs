//! The one allocator of loopback ports for servers the testbed, the tests and the
//! benchmarks start.
//!
//! The servers bind their ports later, often in processes of their own, so a port
//! must not be taken in between. Ports the kernel hands out for port 0 (relays',
//! QUIC's and clients' sockets, here and in tests running beside) come from the
//! ephemeral range; these are taken below it, each free for both TCP and UDP, in
//! turn from a counter shared by the process, so neither those sockets nor another
//! cluster of the same test run can get them. Each process starts at its own place
//! in the range, scattered by its process id (processes started together have
//! neighbouring ids), so test binaries running one after another or side by side
//! seldom meet either.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// No free port was found.
#[derive(Debug, thiserror::Error)]
#[error("fewer than {wanted} loopback ports are free for both TCP and UDP in {low}..{high}")]
pub struct PortError {
    /// How many were asked for.
    pub wanted: usize,
    /// The range searched.
    pub low: u16,
    /// Its end (exclusive).
    pub high: u16,
}

/// `n` distinct loopback ports, each free for both TCP and UDP right now.
pub fn free_ports(n: usize) -> Result<Vec<u16>, PortError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = below_ephemeral();
    let span = u32::from(high - low);
    let _ = NEXT.compare_exchange(
        0,
        // Fibonacci hashing: neighbouring ids land far apart.
        std::process::id().wrapping_mul(2_654_435_769) % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    // Hold each port found until all are found, so none is handed out twice.
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let port = low + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let (Ok(t), Ok(u)) = (TcpListener::bind(addr), UdpSocket::bind(addr)) {
            held.push((t, u));
            ports.push(port);
        }
    }
    if ports.len() < n {
        return Err(PortError {
            wanted: n,
            low,
            high,
        });
    }
    Ok(ports)
}

/// One free loopback port (see [`free_ports`]).
pub fn free_port() -> Result<u16, PortError> {
    free_ports(1).map(|p| p[0])
}

/// A port range the kernel does not hand out for port 0.
fn below_ephemeral() -> (u16, u16) {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if first_ephemeral > 12_000 {
        (10_000, first_ephemeral)
    } else {
        // Everything above the privileged ports is ephemeral: no range is safe.
        (20_000, 30_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports = free_ports(8).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
        let (low, high) = below_ephemeral();
        for port in ports {
            assert!((low..high).contains(&port));
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
