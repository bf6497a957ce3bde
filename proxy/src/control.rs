//! Control: the datacenters agree by Raft on which of them serve as homes.
//!
//! The agreed state is [`meridian_policies::Epochs`]; this module runs it through
//! openraft (a maintained Raft implementation: durable log and vote, leader
//! election, snapshots), over the links the proxies already have, and keeps it in
//! `data_dir/control.redb`. Every datacenter of the topology is a voter (node id:
//! its index in the topology); each initialises the same membership on first
//! start, which openraft allows.
//!
//! openraft rather than the `raft` crate: it is async on tokio like the rest of
//! the proxy, its RPCs map onto request/response streams as forwarded writes do,
//! and it checks a storage implementation with its own test suite.
//!
//! - [`Control::propose`] appends a command: on the leader directly, elsewhere
//!   sent to the leader.
//! - A reporter proposes this datacenter's view of which peers it cannot hear
//!   from whenever that view changes (and again every few seconds while it
//!   differs from what the agreed state holds).
//! - [`Control::epochs`] watches the agreed state as this datacenter has applied it.

mod network;
mod store;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meridian_policies::{EpochCommand, Epochs};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{EmptyNode, Raft};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use network::{BoxFuture, Transport};

/// A datacenter's node id: its index in the topology.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The agreement's types: commands of the home epochs, answered with the epoch
    /// after them.
    pub Agreement:
        D = EpochCommand,
        R = u64,
        NodeId = NodeId,
        Node = EmptyNode,
        Entry = openraft::Entry<Agreement>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of the agreement.
pub type Entry = openraft::Entry<Agreement>;

/// Timing of the agreement, from the topology's peer timeout.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Leader heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for this long (at least; up to twice) starts
    /// an election.
    pub election: Duration,
}

impl Timing {
    /// Heartbeats every tenth of the peer timeout (at least 50 ms), elections after
    /// half of it (at least 500 ms): a leader lost with its datacenter is replaced
    /// within about the time the others take to notice the datacenter is gone.
    pub fn for_peer_timeout(peer_timeout: Duration) -> Timing {
        Timing {
            heartbeat: (peer_timeout / 10).max(Duration::from_millis(50)),
            election: (peer_timeout / 2).max(Duration::from_millis(500)),
        }
    }
}

/// Why the agreement could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Its store could not be opened.
    #[error("{0}")]
    Store(String),
    /// openraft refused to start.
    #[error("the home agreement could not start: {0}")]
    Raft(String),
}

/// Why a command was not agreed.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// No leader is known (an election is under way, or no majority is reachable).
    #[error(
        "no leader of the home agreement is known (no majority reachable, or an election under way)"
    )]
    NoLeader,
    /// The leader could not be reached, or failed.
    #[error("the home agreement's leader failed: {0}")]
    Failed(String),
}

/// This datacenter's member of the agreement.
pub struct Control {
    me: NodeId,
    n: usize,
    raft: Raft<Agreement>,
    epochs: watch::Receiver<Epochs>,
    transport: Arc<dyn Transport>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("me", &self.me)
            .field("members", &self.n)
            .field("leader", &self.leader())
            .field("epochs", &*self.epochs.borrow())
            .finish()
    }
}

impl Control {
    /// Starts this datacenter's member (`me` of `n`), keeping its state in
    /// `data_dir/control.redb` and calling the others through `transport`.
    pub async fn start(
        me: usize,
        n: usize,
        data_dir: &Path,
        timing: Timing,
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Control>, ControlError> {
        let store =
            store::Store::open(&data_dir.join("control.redb")).map_err(ControlError::Store)?;
        let (published, epochs) = watch::channel(Epochs::new(n));
        let machine = store::StateMachine::open(store.clone(), n, published)
            .map_err(|e| ControlError::Store(e.to_string()))?;
        let config = openraft::Config {
            cluster_name: "meridian-homes".into(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election.as_millis() as u64,
            election_timeout_max: 2 * timing.election.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControlError::Raft(e.to_string()))?;
        let network = network::Factory {
            transport: transport.clone(),
        };
        let raft = Raft::new(me as NodeId, Arc::new(config), network, store, machine)
            .await
            .map_err(|e| ControlError::Raft(e.to_string()))?;
        let members: BTreeSet<NodeId> = (0..n as NodeId).collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(members = n, "the home agreement starts"),
            // Already a member of a running agreement: what initialising is for.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(ControlError::Raft(e.to_string())),
        }
        Ok(Arc::new(Control {
            me: me as NodeId,
            n,
            raft,
            epochs,
            transport,
        }))
    }

    /// The agreed home epochs as applied here.
    pub fn epochs(&self) -> watch::Receiver<Epochs> {
        self.epochs.clone()
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<usize> {
        self.raft
            .metrics()
            .borrow()
            .current_leader
            .map(|id| id as usize)
    }

    /// Appends `command` to the agreed log; returns the epoch after it.
    pub async fn propose(&self, command: EpochCommand) -> Result<u64, ProposeError> {
        match self.raft.client_write(command.clone()).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                match forward.leader_id {
                    Some(leader) if leader != self.me => {
                        network::propose_at(self.transport.as_ref(), leader as usize, command).await
                    }
                    _ => Err(ProposeError::NoLeader),
                }
            }
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// Appends `command` if this datacenter leads; never passes it on (a proposal
    /// that arrives here was already sent to who the sender took for the leader).
    async fn propose_here(&self, command: EpochCommand) -> Result<u64, ProposeError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ProposeError::NoLeader)
            }
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// Answers an agreement request another datacenter sent here.
    pub async fn answer(&self, request: &[u8]) -> Vec<u8> {
        network::answer(self, request).await
    }

    /// Proposes `unreachable` as this datacenter's report whenever it differs
    /// from the one the agreed state holds, until `stopped`; with each, how far
    /// this datacenter has applied each unreachable one (`applied_of`).
    pub async fn report(
        self: Arc<Self>,
        mut unreachable: watch::Receiver<BTreeSet<usize>>,
        applied_of: impl Fn(usize) -> u64 + Send + 'static,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut epochs = self.epochs();
        loop {
            let view = unreachable.borrow_and_update().clone();
            let (agreed, out) = {
                let e = epochs.borrow_and_update();
                (
                    e.report(self.me as usize).cloned(),
                    e.awaits_report(self.me as usize),
                )
            };
            let mut failed = false;
            // Out and silent since: report again, even the same view, to return.
            if agreed.as_ref() != Some(&view) || out {
                let applied = view.iter().map(|&d| (d, applied_of(d))).collect();
                let command = EpochCommand::Report {
                    from: self.me as usize,
                    unreachable: view,
                    applied,
                };
                if let Err(e) = self.propose(command).await {
                    tracing::debug!(error = %e, "could not report which peers this datacenter hears");
                    failed = true;
                }
            }
            // Again when the view or the agreed state changes; soon after a
            // proposal failed (a leader being elected); every few seconds anyway.
            let again = match failed {
                true => Duration::from_millis(100),
                false => Duration::from_secs(2),
            };
            tokio::select! {
                _ = unreachable.changed() => {}
                _ = epochs.changed() => {}
                _ = tokio::time::sleep(again) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// How many datacenters take part.
    pub fn members(&self) -> usize {
        self.n
    }

    /// Stops this member.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
