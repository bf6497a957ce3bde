//! Topology files for the testbed, the tests and the benchmarks, built from typed
//! values and written by the TOML serializer: the one place outside the topology
//! crate that knows the file's shape.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A topology file.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyFile {
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[[datacenter]]`, in order.
    #[serde(rename = "datacenter")]
    pub datacenters: Vec<DatacenterEntry>,
    /// `[homes]`.
    #[serde(skip_serializing_if = "HomesSection::is_empty")]
    pub homes: HomesSection,
    /// `[session]`.
    #[serde(skip_serializing_if = "SessionSection::is_empty")]
    pub session: SessionSection,
    /// `[clients]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<ClientsSection>,
    /// `[replication]`.
    #[serde(skip_serializing_if = "ReplicationSection::is_empty")]
    pub replication: ReplicationSection,
    /// `[tls]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSection {
    /// The cluster's name.
    pub name: String,
    /// `all-to-all`, `ring` or `star` (absent: the default, all-to-all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
    /// The star's hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// `direct` or `none`, for a star.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub star_fallback: Option<String>,
}

/// One `[[datacenter]]`.
#[derive(Debug, Clone, Serialize)]
pub struct DatacenterEntry {
    /// Its id.
    pub id: String,
    /// Where clients reach it.
    pub client: SocketAddr,
    /// Where peers reach it.
    pub peer: SocketAddr,
    /// Its admin endpoint.
    pub admin: SocketAddr,
    /// Its data directory, relative to the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Its database.
    pub backend: BackendEntry,
}

/// A datacenter's database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendEntry {
    /// The embedded store.
    Embedded,
    /// A Redis server.
    Redis {
        /// `redis://host:port/db`.
        url: String,
        /// Its read replicas, same form.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        replicas: Vec<String>,
    },
}

/// `[homes]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HomesSection {
    /// `home` (the default) or `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
    /// `reject` (the default) or `next-in-line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_home_down: Option<String>,
    /// Users pinned to a datacenter.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pins: std::collections::BTreeMap<String, String>,
    /// `rendezvous` (the default) or `first-write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// `[homes.follow]`: homes follow their users (absent: they do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowSection>,
}

/// `[homes.follow]`: when a user's home moves to where its writes come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FollowSection {
    /// The share of the window's writes the new home must send (0.51 to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// The fewest writes in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_writes: Option<u32>,
    /// How far back writes count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The least time between two moves of one user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_interval_ms: Option<u64>,
}

impl HomesSection {
    fn is_empty(&self) -> bool {
        self.writes.is_none()
            && self.on_home_down.is_none()
            && self.pins.is_empty()
            && self.follow.is_none()
            && self.default.is_none()
    }
}

/// `[session]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionSection {
    /// How long a read, or a write's home, waits to catch up with a session's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_wait_ms: Option<u64>,
    /// `forward`, `wait` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_stale: Option<String>,
    /// `connection` or `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl SessionSection {
    fn is_empty(&self) -> bool {
        self.read_wait_ms.is_none() && self.on_stale.is_none() && self.scope.is_none()
    }
}

/// `[clients]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientsSection {
    /// The most reply bytes a connection may have waiting (`"512MiB"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_buffer_limit: Option<String>,
    /// Whether FLUSHDB and FLUSHALL run in a cluster (`"refuse"`, `"allow"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush: Option<String>,
}

/// `[replication]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationSection {
    /// The log's fsync policy (`always`, `every-10ms`, `never`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<String>,
    /// The most log kept for peers (`64MiB`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention: Option<String>,
    /// How often an idle link sends a heartbeat, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// How long a silent peer is taken for down, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_timeout_ms: Option<u64>,
}

impl ReplicationSection {
    fn is_empty(&self) -> bool {
        self.fsync.is_none()
            && self.log_retention.is_none()
            && self.heartbeat_ms.is_none()
            && self.peer_timeout_ms.is_none()
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Serialize)]
pub struct TlsSection {
    /// The cluster CA's certificate, relative to the file.
    pub ca: PathBuf,
}

impl TopologyFile {
    /// A cluster named `name` with no datacenters yet.
    pub fn new(name: &str) -> TopologyFile {
        TopologyFile {
            cluster: ClusterSection {
                name: name.to_owned(),
                topology: None,
                hub: None,
                star_fallback: None,
            },
            datacenters: Vec::new(),
            homes: HomesSection::default(),
            session: SessionSection::default(),
            clients: None,
            replication: ReplicationSection::default(),
            tls: None,
        }
    }

    /// Adds a datacenter listening on loopback ports for clients, peers and its
    /// admin endpoint.
    pub fn datacenter(
        &mut self,
        id: &str,
        [client, peer, admin]: [u16; 3],
    ) -> &mut DatacenterEntry {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        self.datacenters.push(DatacenterEntry {
            id: id.to_owned(),
            client: loopback(client),
            peer: loopback(peer),
            admin: loopback(admin),
            data_dir: None,
            backend: BackendEntry::Embedded,
        });
        let last = self.datacenters.len() - 1;
        &mut self.datacenters[last]
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        // Plain strings, numbers and tables: serialising them cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Writes the file at `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_toml())
    }
}

impl DatacenterEntry {
    /// Puts a Redis server with read replicas behind the datacenter.
    pub fn redis_with_replicas(&mut self, url: &str, replicas: &[String]) -> &mut Self {
        self.backend = BackendEntry::Redis {
            url: url.to_owned(),
            replicas: replicas.to_vec(),
        };
        self
    }

    /// Gives the datacenter's Redis backend read replicas (nothing on the
    /// embedded store).
    pub fn replicas(&mut self, urls: &[String]) -> &mut Self {
        if let BackendEntry::Redis { replicas, .. } = &mut self.backend {
            *replicas = urls.to_vec();
        }
        self
    }

    /// Sets the data directory.
    pub fn data_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Puts a Redis server behind the datacenter (`None`: the embedded store).
    pub fn redis(&mut self, url: Option<&str>) -> &mut Self {
        self.backend = match url {
            Some(url) => BackendEntry::Redis {
                url: url.to_owned(),
                replicas: Vec::new(),
            },
            None => BackendEntry::Embedded,
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_sections_the_topology_file_has() {
        let mut file = TopologyFile::new("shop");
        file.cluster.topology = Some("star".into());
        file.cluster.hub = Some("a".into());
        file.datacenter("a", [7001, 7101, 7201]).data_dir("data/a");
        file.datacenter("b", [7002, 7102, 7202])
            .redis(Some("redis://127.0.0.1:6379/0"));
        file.replication.fsync = Some("always".into());
        file.tls = Some(TlsSection {
            ca: "certs/ca.pem".into(),
        });
        let text = file.to_toml();
        let value: toml::Table = text.parse().unwrap();
        assert_eq!(value["cluster"]["hub"].as_str(), Some("a"));
        let dcs = value["datacenter"].as_array().unwrap();
        assert_eq!(dcs[0]["client"].as_str(), Some("127.0.0.1:7001"));
        assert_eq!(dcs[0]["backend"]["kind"].as_str(), Some("embedded"));
        assert_eq!(
            dcs[1]["backend"]["url"].as_str(),
            Some("redis://127.0.0.1:6379/0")
        );
        assert!(dcs[1].get("data_dir").is_none());
        assert_eq!(value["replication"]["fsync"].as_str(), Some("always"));
        assert_eq!(value["tls"]["ca"].as_str(), Some("certs/ca.pem"));
        // And the topology crate reads it as the cluster described.
        let dir = std::env::temp_dir();
        let topology = meridian_topology::Topology::parse(&text, "built.toml", &dir)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(topology.datacenters.len(), 2);
        assert_eq!(topology.cluster_name, "shop");
    }
}
