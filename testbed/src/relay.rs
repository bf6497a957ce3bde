//! One emulated wide-area link: a UDP relay between a near end and a far end.
//!
//! The near end sends to [`Relay::addr`]; the relay forwards to the far end from a
//! socket of its own, and sends the far end's answers back to the near end. Each
//! direction has its own [`LinkShape`]: one-way delay, jitter (a uniform extra delay,
//! so datagrams reorder as on a real path), loss, an optional bandwidth cap, and
//! whether the link is cut. Shapes can change while the relay runs.
//!
//! Each direction runs on two threads of its own, off any async runtime: one
//! receives (woken by the kernel the moment a datagram arrives) and decides each
//! datagram's fate; one sends each when it is due. In one process with clients,
//! probes and proxies competing for the cores, a relay task on the runtime could
//! read a datagram late, and that delay, which no real network adds, was invisible
//! to the lateness the relay reports.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket};
use tokio::sync::watch;

use crate::rng::Rng;

/// Datagrams queued in one direction before further ones are dropped, as a router
/// with a full buffer drops them.
const QUEUE: usize = 65_536;
/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

/// How one direction of a link treats datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkShape {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter), drawn per datagram.
    pub jitter: Duration,
    /// Fraction of datagrams dropped, 0 to 1.
    pub loss: f64,
    /// Bandwidth cap in bytes per second (`None`: unlimited).
    pub bandwidth: Option<u64>,
    /// Whether the link is cut: every datagram is dropped.
    pub cut: bool,
}

impl LinkShape {
    /// A link with only a one-way delay.
    pub fn delay(delay: Duration) -> LinkShape {
        LinkShape {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth: None,
            cut: false,
        }
    }
}

/// One direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the near end to the far end.
    Forward,
    /// From the far end back to the near end.
    Backward,
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A loopback UDP socket could not be bound.
    #[error("the WAN emulator could not bind a UDP socket on 127.0.0.1: {0}")]
    Bind(#[from] std::io::Error),
}

/// Counts of one direction.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams delivered.
    pub delivered: AtomicU64,
    /// Datagrams dropped by the loss rate.
    pub lost: AtomicU64,
    /// Datagrams dropped because the link was cut.
    pub cut: AtomicU64,
    /// Datagrams dropped because the queue was full.
    pub overflow: AtomicU64,
    /// How late each datagram sent on left against its schedule (delay plus
    /// jitter), in microseconds: the emulator's own error.
    lateness: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl RelayStats {
    fn late_by(&self, late: std::time::Duration) {
        let mut h = self.lateness.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_none() {
            *h = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok();
        }
        if let Some(h) = h.as_mut() {
            h.saturating_record(late.as_micros().max(1) as u64);
        }
    }

    /// How late delivered datagrams left against their schedule, in microseconds
    /// (`None` before the first).
    pub fn lateness(&self) -> Option<hdrhistogram::Histogram<u64>> {
        self.lateness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The same, and starts counting afresh (for a figure of one phase of a run).
    pub fn take_lateness(&self) -> Option<hdrhistogram::Histogram<u64>> {
        self.lateness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// A running emulated link; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shapes: [watch::Sender<LinkShape>; 2],
    stats: [Arc<RelayStats>; 2],
    /// Tells the receiving threads to stop (the sending ones follow).
    stop: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Relay {
    /// Starts a relay to `far` on loopback, with a shape per direction. `seed` makes
    /// loss and jitter reproducible.
    pub async fn start(
        far: SocketAddr,
        forward: LinkShape,
        backward: LinkShape,
        seed: u64,
    ) -> Result<Relay, RelayError> {
        let near_side = loopback_socket()?;
        let far_side = loopback_socket()?;
        let addr = near_side
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("the relay's socket has no IP address"))?;
        let shapes = [watch::Sender::new(forward), watch::Sender::new(backward)];
        let stats = [
            Arc::new(RelayStats::default()),
            Arc::new(RelayStats::default()),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let (near_peer_tx, near_peer) = watch::channel(None);

        // Forward: what the near end sends goes out of the far-side socket to `far`.
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        spawn_delivery(
            rx,
            far_side.try_clone()?,
            watch::channel(Some(far)).1,
            stats[0].clone(),
        )?;
        let receiver = Receiver {
            socket: near_side.try_clone()?.into(),
            shape: shapes[0].subscribe(),
            queue: tx,
            stats: stats[0].clone(),
            rng: Rng::new(seed),
            stop: stop.clone(),
        };
        spawn_receiver(receiver, Some(near_peer_tx))?;

        // Backward: the far end's answers go out of the near-side socket to the near end.
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        spawn_delivery(rx, near_side, near_peer, stats[1].clone())?;
        let receiver = Receiver {
            socket: far_side.into(),
            shape: shapes[1].subscribe(),
            queue: tx,
            stats: stats[1].clone(),
            rng: Rng::new(seed.rotate_left(32)),
            stop: stop.clone(),
        };
        spawn_receiver(receiver, None)?;

        Ok(Relay {
            addr,
            shapes,
            stats,
            stop,
        })
    }

    /// Where the near end sends.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes one direction's shape; datagrams already on their way keep theirs.
    pub fn set(&self, direction: Direction, shape: LinkShape) {
        self.shapes[direction as usize].send_replace(shape);
    }

    /// The current shape of one direction.
    pub fn shape(&self, direction: Direction) -> LinkShape {
        *self.shapes[direction as usize].borrow()
    }

    /// Cuts both directions.
    pub fn cut(&self) {
        self.set_cut(true);
    }

    /// Heals both directions.
    pub fn heal(&self) {
        self.set_cut(false);
    }

    fn set_cut(&self, cut: bool) {
        for shape in &self.shapes {
            shape.send_modify(|s| s.cut = cut);
        }
    }

    /// The counts of one direction.
    pub fn stats(&self, direction: Direction) -> &RelayStats {
        &self.stats[direction as usize]
    }
}

/// A UDP socket on a free loopback port with buffers for bursts: the kernel's
/// default (about 200 KiB) overflows at tens of thousands of datagrams per second,
/// and losses the emulator did not choose would distort the link's shape. The
/// kernel caps the request at `net.core.rmem_max` / `wmem_max`. Blocking, with a
/// read timeout so a receiving thread notices its relay is gone; sends do not wait
/// ([`libc::MSG_DONTWAIT`]).
fn loopback_socket() -> std::io::Result<Socket> {
    use socket2::{Domain, Protocol, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.set_read_timeout(Some(STOP_CHECK))?;
    Ok(socket)
}

/// Socket buffers asked for each relay socket.
const SOCKET_BUFFER: usize = 4 << 20;
/// How often an idle receiving thread looks whether its relay was dropped.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Receives one direction's datagrams and decides each one's fate and arrival time.
struct Receiver {
    socket: std::net::UdpSocket,
    shape: watch::Receiver<LinkShape>,
    queue: std::sync::mpsc::SyncSender<(Instant, Vec<u8>)>,
    stats: Arc<RelayStats>,
    rng: Rng,
    stop: Arc<AtomicBool>,
}

/// Whether the emulator's threads run at real-time priority: `None` until one has
/// asked. Asked for by each relay thread as it starts.
static REALTIME: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether the emulator's threads got real-time priority (`false` also before any
/// relay started).
pub fn realtime() -> bool {
    REALTIME.get().copied().unwrap_or(false)
}

/// Puts the calling relay thread at the lowest real-time priority (first in,
/// first out) when the system allows it. A network does not wait for the hosts'
/// CPUs; an emulator thread that does (the proxies under test keep both cores of
/// a small machine busy at full load) delivers late, and its lateness is counted
/// as the link's. Real-time threads run as soon as they are woken, ahead of any
/// ordinary thread; these only ever wait for a datagram or its due time, so they
/// cannot take a core from the others for long (and the kernel keeps a share of
/// every second for ordinary threads regardless). Without the permission
/// (`CAP_SYS_NICE`) they run as ordinary threads, and the lateness shows it.
fn ask_realtime() {
    use thread_priority::unix::{
        RealtimeThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let ok = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .is_ok();
    let _ = REALTIME.set(ok);
}

/// Starts the thread that receives one direction's datagrams. `peer`: where to
/// record the sender's address (the near end, for answers).
fn spawn_receiver(
    receiver: Receiver,
    peer: Option<watch::Sender<Option<SocketAddr>>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("wan-receive".into())
        .spawn(move || {
            ask_realtime();
            receiver.run(peer)
        })
        .map(drop)
}

impl Receiver {
    fn run(mut self, peer: Option<watch::Sender<Option<SocketAddr>>>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // When the (bandwidth-capped) link finishes sending what it has taken.
        let mut free_at = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let (len, from) = match self.socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(_) => return,
            };
            let now = Instant::now();
            if let Some(peer) = &peer {
                peer.send_if_modified(|p| {
                    let changed = *p != Some(from);
                    *p = Some(from);
                    changed
                });
            }
            let shape = *self.shape.borrow();
            if shape.cut {
                self.stats.cut.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Draw both numbers for every datagram, so one setting does not shift the other's sequence.
            let (loss_draw, jitter_draw) = (self.rng.unit(), self.rng.unit());
            if loss_draw < shape.loss {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let departs = match shape.bandwidth {
                Some(rate) if rate > 0 => {
                    free_at = free_at.max(now) + Duration::from_secs_f64(len as f64 / rate as f64);
                    free_at
                }
                _ => now,
            };
            let due = departs + shape.delay + shape.jitter.mul_f64(jitter_draw);
            match self.queue.try_send((due, buf[..len].to_vec())) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    self.stats.overflow.fetch_add(1, Ordering::Relaxed);
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// Starts the thread that sends one direction's datagrams when they are due.
fn spawn_delivery(
    queue: std::sync::mpsc::Receiver<(Instant, Vec<u8>)>,
    socket: Socket,
    to: watch::Receiver<Option<SocketAddr>>,
    stats: Arc<RelayStats>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("wan-relay".into())
        .spawn(move || {
            ask_realtime();
            deliver(queue, socket, to, stats)
        })
        .map(drop)
}

/// Sends each queued datagram when it is due, earliest first (ties in arrival
/// order), until the receiving side is gone. A thread of its own, waiting with
/// the operating system's timer: the runtime's timers fire on a millisecond
/// wheel, which made every datagram up to a millisecond late.
fn deliver(
    queue: std::sync::mpsc::Receiver<(Instant, Vec<u8>)>,
    socket: Socket,
    to: watch::Receiver<Option<SocketAddr>>,
    stats: Arc<RelayStats>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut pending: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        let wait = pending
            .peek()
            .map(|Reverse((due, _, _))| due.saturating_duration_since(now));
        let item = match wait {
            Some(Duration::ZERO) => Err(RecvTimeoutError::Timeout),
            Some(wait) => queue.recv_timeout(wait),
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match item {
            Ok((due, bytes)) => {
                pending.push(Reverse((due, seq, bytes)));
                seq += 1;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        while pending
            .peek()
            .is_some_and(|Reverse((due, _, _))| *due <= now)
        {
            let Some(Reverse((due, _, bytes))) = pending.pop() else {
                break;
            };
            let target = *to.borrow();
            if let Some(target) = target {
                stats.late_by(Instant::now().saturating_duration_since(due));
                // A full socket buffer drops the datagram, as a real network would.
                let sent =
                    socket.send_to_with_flags(&bytes, &SockAddr::from(target), libc::MSG_DONTWAIT);
                if sent.is_ok() {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
