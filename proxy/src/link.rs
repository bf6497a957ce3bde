//! Links between datacenters: QUIC (quinn) with mutual TLS (rustls, ring provider).
//!
//! Every proxy's certificate is signed by the cluster CA and names its datacenter.
//! A server accepts a client only with a certificate from that CA, learns which
//! datacenter the certificate names, and then runs the handshake: the client sends a
//! hello (protocol version, cluster, datacenter, applied version vector); the server
//! checks it against the certificate and the topology and answers with its own hello,
//! or with a refusal that says which check failed. ALPN is `meridian/5`. Every
//! frame on a link, the handshake's included, uses the one codec of [`frame`].

pub mod frame;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meridian_policies::VersionVector;
use meridian_topology::Topology;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use frame::{Frame, FrameError, Hello};

/// The application protocol spoken on links.
pub const ALPN: &[u8] = b"meridian/5";
/// How long a handshake may take, TLS included, before the attempt is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The link protocol version this build speaks (2: one little-endian frame codec
/// for the handshake and replication).
pub const PROTOCOL_VERSION: u16 = 5;

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A certificate or key file could not be read.
    #[error("cannot load {path}: {message}")]
    Load {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The QUIC connection could not be started or failed (TLS refusals included).
    #[error("link to {peer}: {message}")]
    Connection {
        /// The peer address or datacenter.
        peer: String,
        /// What went wrong.
        message: String,
    },
    /// The peer refused the handshake, saying why.
    #[error("{peer} refused the link: {reason}")]
    Refused {
        /// Who refused.
        peer: String,
        /// Their reason.
        reason: String,
    },
    /// This side refused the peer's handshake.
    #[error("refused a link from {peer}: {reason}")]
    Rejected {
        /// The peer, as far as it is known.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The handshake did not complete in time.
    #[error("the handshake with {peer} did not complete within {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// The limit.
        after: Duration,
    },
    /// A malformed, oversized or unexpected handshake frame.
    #[error("bad handshake from {peer}: {message}")]
    Frame {
        /// The peer.
        peer: String,
        /// What is wrong.
        message: String,
    },
}

impl From<FrameError> for LinkError {
    fn from(e: FrameError) -> LinkError {
        let peer = match &e {
            FrameError::Io { peer, .. }
            | FrameError::UnknownType { peer, .. }
            | FrameError::Oversized { peer, .. }
            | FrameError::Malformed { peer, .. } => peer.clone(),
        };
        LinkError::Frame {
            peer,
            message: e.to_string(),
        }
    }
}

/// Who a proxy is, as the handshake tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's name.
    pub cluster: String,
    /// The datacenter.
    pub dc: String,
    /// Its applied version vector.
    pub applied: VersionVector,
    /// Its process, random at each start: a peer that answers with another
    /// incarnation has restarted (and forgotten what it was doing).
    pub incarnation: u64,
}

/// An established link.
#[derive(Debug)]
pub struct Link {
    /// The peer, as its certificate and hello agree.
    pub peer: Identity,
    /// The QUIC connection.
    pub connection: quinn::Connection,
}

/// The TLS side of a proxy's endpoint.
#[derive(Debug, Clone)]
pub struct LinkTls {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    /// What lets this datacenter's endpoint, restarted, reset its old connections.
    restart: Arc<RestartKeys>,
    /// Heartbeat and peer timeout, once [`LinkTls::with_transport`] set them.
    transport: Option<(Duration, Duration)>,
}

/// Keys of a datacenter's endpoint that outlive a restart, derived from its private
/// key (so they are secret). QUIC lets an endpoint that gets packets for a
/// connection it does not know (it restarted) answer with a stateless reset, which
/// the peer checks against a token it was given on that connection and then drops
/// the connection at once. That takes two things to stay the same across the
/// restart: the key of the tokens, and the key by which the endpoint recognises
/// connection IDs it issued (without it, packets for the old connection are
/// dropped unanswered). With keys drawn at random at each start, a peer waited for
/// the connection's idle timeout before dialling again: in the replication
/// benchmark, a receiver that restarted got its first change 2.1-4.4 s after it
/// was back (0.8-1.2 s with these keys, the resumed RTT and prompt redials).
struct RestartKeys {
    reset: ring::hmac::Key,
    connection_ids: u64,
}

impl std::fmt::Debug for RestartKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestartKeys { .. }")
    }
}

impl RestartKeys {
    fn derive(private: &PrivateKeyDer<'_>) -> RestartKeys {
        let derive = |label: &[u8]| {
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            digest.update(label);
            digest.update(private.secret_der());
            digest.finish()
        };
        let reset = derive(b"meridian link: stateless reset key\0");
        let ids = derive(b"meridian link: connection id key\0");
        let mut first = [0; 8];
        first.copy_from_slice(&ids.as_ref()[..8]);
        RestartKeys {
            reset: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref()),
            connection_ids: u64::from_le_bytes(first),
        }
    }

    fn endpoint_config(self: &Arc<Self>) -> quinn::EndpointConfig {
        let keys = self.clone();
        let mut config = quinn::EndpointConfig::new(Arc::new(keys.reset.clone()));
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(
                keys.connection_ids,
            ))
        });
        config
    }
}

impl LinkTls {
    /// Loads the cluster CA and this datacenter's certificate and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<LinkTls, LinkError> {
        let load_err = |path: &Path, e: &dyn std::fmt::Display| LinkError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|i| i.collect())
            .map_err(|e| load_err(ca, &e))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect())
            .map_err(|e| load_err(cert, &e))?;
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| load_err(key, &e))?;
        let restart = Arc::new(RestartKeys::derive(&private));
        let mut roots = rustls::RootCertStore::empty();
        for c in ca_certs {
            roots.add(c).map_err(|e| load_err(ca, &e))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |e: rustls::Error| LinkError::Tls(e.to_string());

        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| LinkError::Tls(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(tls)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(tls)?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        let quic = |e: &dyn std::fmt::Display| LinkError::Tls(e.to_string());
        let server =
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| quic(&e))?;
        let client =
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| quic(&e))?;
        Ok(LinkTls {
            server: quinn::ServerConfig::with_crypto(Arc::new(server)),
            client: quinn::ClientConfig::new(Arc::new(client)),
            restart,
            transport: None,
        })
    }

    /// Sets the transport of every connection: keep-alives every `heartbeat`, a peer
    /// silent for `timeout` is gone, flow-control windows sized for long fat paths
    /// (8 MiB per stream carried 103,000-110,000 changes a second over a 100 ms,
    /// 1%-loss link in the replication benchmark; the receiver reads ahead of its
    /// applies, so a slow apply does not hold the window) and BBR congestion control,
    /// which, unlike loss-based control, keeps its rate through random loss. A packet
    /// counts as lost 64 packets (not 3) after a later one is acknowledged, or after
    /// 9/8 of the RTT: wide-area paths reorder by a millisecond or two, which at tens
    /// of thousands of packets a second is dozens of packets, and each false loss is
    /// a needless retransmission.
    pub fn with_transport(mut self, heartbeat: Duration, timeout: Duration) -> LinkTls {
        let transport = Arc::new(transport(heartbeat, timeout, None));
        self.server.transport_config(transport.clone());
        self.client.transport_config(transport);
        self.transport = Some((heartbeat, timeout));
        self
    }

    /// The client configuration for dialling again a peer whose last connection
    /// measured `rtt`: the new connection starts from that estimate, as RFC 9002
    /// (6.2.2) allows, instead of QUIC's 333 ms for an unknown path. That paces
    /// the handshake's retransmissions: a dial that reaches a peer that is down
    /// repeats its first packet after 3 times the estimate, then twice as long
    /// each time, so a peer back from a restart is reached within about one of
    /// those periods (3 times the RTT, not 1 s or 2 s).
    pub fn resuming(&self, rtt: Duration) -> quinn::ClientConfig {
        let mut client = self.client.clone();
        if let Some((heartbeat, timeout)) = self.transport {
            client.transport_config(Arc::new(transport(heartbeat, timeout, Some(rtt))));
        }
        client
    }

    /// A QUIC endpoint on `addr` that accepts links and can open them.
    pub fn endpoint(&self, addr: SocketAddr) -> Result<quinn::Endpoint, LinkError> {
        let fail = |e: std::io::Error| LinkError::Connection {
            peer: addr.to_string(),
            message: format!("cannot listen: {e}"),
        };
        let socket = udp_socket(addr).map_err(fail)?;
        let mut endpoint = quinn::Endpoint::new(
            self.restart.endpoint_config(),
            Some(self.server.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(fail)?;
        endpoint.set_default_client_config(self.client.clone());
        Ok(endpoint)
    }
}

/// The congestion window a link's connection starts from, where QUIC's default is
/// 240 KB (200 datagrams). Links join datacenters, whose paths carry far more than
/// 1 MiB per round trip (at 100 ms, 1 MiB a round trip is 84 Mbit/s), and quinn
/// paces the first window over the first round trip rather than sending it at once.
/// A new connection starts with a backlog when a datacenter comes back: in the
/// replication benchmark (100 ms, 1% loss, 200,000 changes), the first fifth of a
/// catch-up took 0.59-0.75 s against 0.79-1.09 s, and the whole 101-114k changes/s
/// against 92-100k, with the visibility tails no different.
const INITIAL_WINDOW: u64 = 1 << 20;

/// The transport of every link: see [`LinkTls::with_transport`]; `initial_rtt`, the
/// estimate a connection starts from (see [`LinkTls::resuming`]).
fn transport(
    heartbeat: Duration,
    timeout: Duration,
    initial_rtt: Option<Duration>,
) -> quinn::TransportConfig {
    let mut bbr = quinn::congestion::BbrConfig::default();
    bbr.initial_window(INITIAL_WINDOW);
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(heartbeat))
        .max_idle_timeout(quinn::IdleTimeout::try_from(timeout).ok())
        // Not more: QUIC reassembly closes the whole connection ("too many gaps
        // in stream buffer") when a stream holds too many separate pieces, and
        // with 16 MiB a lossy link whose receiver fell behind hit that in 3 of
        // 10 benchmark runs (0 of 10 with 8 MiB and the read-ahead).
        .stream_receive_window(quinn::VarInt::from_u32(8 << 20))
        .receive_window(quinn::VarInt::from_u32(16 << 20))
        .send_window(32 << 20)
        .packet_threshold(64)
        .congestion_controller_factory(Arc::new(bbr));
    if let Some(rtt) = initial_rtt.filter(|rtt| !rtt.is_zero()) {
        transport.initial_rtt(rtt);
    }
    transport
}

/// Socket buffers asked for the links' UDP socket: bursts at tens of thousands of
/// datagrams per second overflow the kernel's default (about 200 KiB), and each
/// overflow is a loss QUIC must recover from. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket
        .set_recv_buffer_size(SOCKET_BUFFER)
        .and_then(|()| socket.set_send_buffer_size(SOCKET_BUFFER))
    {
        tracing::debug!(error = %e, "cannot enlarge the link socket's buffers");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Opens a link to datacenter `peer_dc` at `addr` and runs the handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer_dc: &str,
    me: &Identity,
    within: Duration,
) -> Result<Link, LinkError> {
    connect_with(endpoint, None, addr, peer_dc, me, within).await
}

/// [`connect`] with a client configuration of its own (see [`LinkTls::resuming`])
/// instead of the endpoint's.
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    config: Option<quinn::ClientConfig>,
    addr: SocketAddr,
    peer_dc: &str,
    me: &Identity,
    within: Duration,
) -> Result<Link, LinkError> {
    tokio::time::timeout(within, connect_now(endpoint, config, addr, peer_dc, me))
        .await
        .unwrap_or_else(|_| {
            Err(LinkError::Timeout {
                peer: peer_dc.to_owned(),
                after: within,
            })
        })
}

async fn connect_now(
    endpoint: &quinn::Endpoint,
    config: Option<quinn::ClientConfig>,
    addr: SocketAddr,
    peer_dc: &str,
    me: &Identity,
) -> Result<Link, LinkError> {
    let fail = |e: &dyn std::fmt::Display| LinkError::Connection {
        peer: peer_dc.to_owned(),
        message: e.to_string(),
    };
    // rustls checks that the server's certificate names `peer_dc`.
    let connection = match config {
        Some(config) => endpoint.connect_with(config, addr, peer_dc),
        None => endpoint.connect(addr, peer_dc),
    }
    .map_err(|e| fail(&e))?
    .await
    .map_err(|e| fail(&e))?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| fail(&e))?;
    write_frame(&mut send, &hello(me))
        .await
        .map_err(|e| fail(&e))?;
    let _ = send.finish();
    let peer = match read_frame(&mut recv, peer_dc).await? {
        Frame::Refused(reason) => {
            return Err(LinkError::Refused {
                peer: peer_dc.to_owned(),
                reason,
            });
        }
        Frame::Hello(Hello {
            version,
            cluster,
            dc,
            applied,
            incarnation,
        }) => {
            if version != PROTOCOL_VERSION || cluster != me.cluster || dc != peer_dc {
                let reason =
                    format!("answered as {dc:?} of cluster {cluster:?} speaking version {version}");
                connection.close(1u32.into(), reason.as_bytes());
                return Err(LinkError::Rejected {
                    peer: peer_dc.to_owned(),
                    reason,
                });
            }
            Identity {
                cluster,
                dc,
                applied,
                incarnation,
            }
        }
        other => {
            return Err(LinkError::Frame {
                peer: peer_dc.to_owned(),
                message: format!("a {} frame instead of a hello", other.name()),
            });
        }
    };
    Ok(Link { peer, connection })
}

/// Accepts one incoming link and runs the handshake, checking the peer against the
/// topology: a datacenter of this cluster that may link with `me`.
pub async fn accept(
    incoming: quinn::Incoming,
    me: &Identity,
    topology: &Topology,
    within: Duration,
) -> Result<Link, LinkError> {
    let remote = incoming.remote_address().to_string();
    // A peer that completes TLS and then sends nothing is not held.
    tokio::time::timeout(within, accept_now(incoming, me, topology))
        .await
        .unwrap_or(Err(LinkError::Timeout {
            peer: remote,
            after: within,
        }))
}

async fn accept_now(
    incoming: quinn::Incoming,
    me: &Identity,
    topology: &Topology,
) -> Result<Link, LinkError> {
    let remote = incoming.remote_address().to_string();
    let fail = |e: &dyn std::fmt::Display| LinkError::Connection {
        peer: remote.clone(),
        message: e.to_string(),
    };
    let connection = incoming.await.map_err(|e| fail(&e))?;
    let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| fail(&e))?;
    let frame = read_frame(&mut recv, &remote).await?;
    let checked = certified_dc(&connection, topology)
        .and_then(|cert_dc| check_hello(frame, &cert_dc, me, topology));
    match checked {
        Ok(peer) => {
            write_frame(&mut send, &hello(me))
                .await
                .map_err(|e| fail(&e))?;
            let _ = send.finish();
            Ok(Link { peer, connection })
        }
        Err(refusal) => {
            let reason = refusal.to_string();
            let _ = write_frame(&mut send, &Frame::Refused(reason.clone())).await;
            let _ = send.finish();
            // Let the refusal reach the peer before the connection goes.
            let _ = send.stopped().await;
            connection.close(1u32.into(), reason.as_bytes());
            Err(LinkError::Rejected {
                peer: remote,
                reason,
            })
        }
    }
}

/// Why this side refuses a peer's handshake; its text is sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("unreadable certificate: {0}")]
    BadCertificate(String),
    /// The certificate names no datacenter of the topology.
    #[error("its certificate names no datacenter of this cluster")]
    UnknownCertificate,
    /// The first frame was not a hello.
    #[error("it sent something other than a hello")]
    NotHello,
    /// Another link protocol.
    #[error("it speaks link protocol version {0}; this proxy speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// Another cluster.
    #[error("it belongs to cluster {theirs:?}; this is cluster {ours:?}")]
    Cluster {
        /// The peer's cluster.
        theirs: String,
        /// This proxy's.
        ours: String,
    },
    /// The hello and the certificate name different datacenters.
    #[error("it claims to be {claimed:?} but its certificate names {certified:?}")]
    Impostor {
        /// The datacenter the hello names.
        claimed: String,
        /// The one the certificate names.
        certified: String,
    },
    /// A datacenter the topology does not have.
    #[error("{0:?} is not a datacenter of this topology")]
    NotInTopology(String),
    /// A pair the topology does not link.
    #[error("the topology has no link between {ours:?} and {theirs:?}")]
    NotLinked {
        /// This datacenter.
        ours: String,
        /// The peer.
        theirs: String,
    },
}

/// The datacenter the client's certificate names.
fn certified_dc(connection: &quinn::Connection, topology: &Topology) -> Result<String, Refusal> {
    let chain = connection
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(Refusal::NoCertificate)?;
    let leaf = chain.first().ok_or(Refusal::NoCertificate)?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
    topology
        .datacenters
        .iter()
        .find(|dc| {
            ServerName::try_from(dc.id.as_str())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .map(|dc| dc.id.clone())
        .ok_or(Refusal::UnknownCertificate)
}

fn check_hello(
    frame: Frame,
    cert_dc: &str,
    me: &Identity,
    topology: &Topology,
) -> Result<Identity, Refusal> {
    let Frame::Hello(Hello {
        version,
        cluster,
        dc,
        applied,
        incarnation,
    }) = frame
    else {
        return Err(Refusal::NotHello);
    };
    if version != PROTOCOL_VERSION {
        return Err(Refusal::Version(version));
    }
    if cluster != me.cluster {
        return Err(Refusal::Cluster {
            theirs: cluster,
            ours: me.cluster.clone(),
        });
    }
    if dc != cert_dc {
        return Err(Refusal::Impostor {
            claimed: dc,
            certified: cert_dc.to_owned(),
        });
    }
    let (Some(a), Some(b)) = (topology.index_of(&me.dc), topology.index_of(&dc)) else {
        return Err(Refusal::NotInTopology(dc));
    };
    if !topology.router.may_link(a, b) {
        return Err(Refusal::NotLinked {
            ours: me.dc.clone(),
            theirs: dc,
        });
    }
    Ok(Identity {
        cluster,
        dc,
        applied,
        incarnation,
    })
}

fn hello(me: &Identity) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: me.cluster.clone(),
        dc: me.dc.clone(),
        applied: me.applied.clone(),
        incarnation: me.incarnation,
    })
}

async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), quinn::WriteError> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    send.write_all(&out).await
}

/// Reads the one handshake frame; only a hello or a refusal is expected there.
async fn read_frame(recv: &mut quinn::RecvStream, peer: &str) -> Result<Frame, LinkError> {
    match frame::read(recv, peer).await? {
        Some(frame @ (Frame::Hello(_) | Frame::Refused(_))) => Ok(frame),
        Some(other) => Err(LinkError::Frame {
            peer: peer.to_owned(),
            message: format!("a {} frame where the handshake belongs", other.name()),
        }),
        None => Err(LinkError::Frame {
            peer: peer.to_owned(),
            message: "the stream ended before the handshake".into(),
        }),
    }
}
