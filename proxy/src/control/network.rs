//! The agreement's messages between datacenters.
//!
//! Each Raft RPC, and each proposal sent to the leader, is one request and one
//! reply, carried by a [`Transport`]: between proxies, a stream of its own on the
//! QUIC link toward the target (relayed along the topology's forwarding path
//! where there is no direct link), like a forwarded write. Requests and replies
//! are JSON: small, rare, and readable in a capture.

use std::future::Future;
use std::pin::Pin;

use meridian_policies::EpochCommand;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, EmptyNode};
use serde::{Deserialize, Serialize};

use super::{Agreement, Control, NodeId, ProposeError};

/// A boxed future (the transport is a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries one agreement request to datacenter `to` and brings its reply back.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `request` to datacenter `to`; the reply, or why there is none.
    fn call(&self, to: usize, request: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, String>>;
}

/// A request of the agreement.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftCall {
    /// Raft's RequestVote.
    Vote(VoteRequest<NodeId>),
    /// Raft's AppendEntries.
    Append(AppendEntriesRequest<Agreement>),
    /// Raft's InstallSnapshot (one chunk).
    Snapshot(InstallSnapshotRequest<Agreement>),
    /// A command for the leader to append.
    Propose(EpochCommand),
}

/// The reply to a [`RaftCall`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
enum RaftAnswer {
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Propose(Result<u64, ProposeError>),
    /// The request could not be read.
    Refused(String),
}

/// Opens a [`Network`] per peer.
#[derive(Debug)]
pub(super) struct Factory {
    pub(super) transport: std::sync::Arc<dyn Transport>,
}

impl RaftNetworkFactory<Agreement> for Factory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, _node: &EmptyNode) -> Network {
        Network {
            transport: self.transport.clone(),
            target: target as usize,
        }
    }
}

/// Raft's view of one peer.
#[derive(Debug)]
pub(super) struct Network {
    transport: std::sync::Arc<dyn Transport>,
    target: usize,
}

/// A failure to reach the peer: openraft backs off and tries again.
fn unreachable<E: std::error::Error>(why: String) -> RPCError<NodeId, EmptyNode, E> {
    RPCError::Unreachable(Unreachable::from(AnyError::error(why)))
}

/// A reply that makes no sense.
fn garbled<E: std::error::Error>(why: String) -> RPCError<NodeId, EmptyNode, E> {
    RPCError::Network(NetworkError::from(AnyError::error(why)))
}

impl Network {
    /// The peer's own answer, its error as a remote one (openraft's error type).
    #[allow(clippy::result_large_err)]
    fn remote<T, E: std::error::Error>(
        &self,
        result: Result<T, E>,
    ) -> Result<T, RPCError<NodeId, EmptyNode, E>> {
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target as NodeId, e)))
    }

    async fn call(&self, call: &RaftCall) -> Result<RaftAnswer, String> {
        let request = serde_json::to_vec(call).map_err(|e| e.to_string())?;
        let reply = self.transport.call(self.target, request).await?;
        serde_json::from_slice(&reply).map_err(|e| format!("an unreadable reply: {e}"))
    }
}

impl RaftNetwork<Agreement> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Agreement>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, EmptyNode, RaftError<NodeId>>> {
        match self
            .call(&RaftCall::Append(rpc))
            .await
            .map_err(unreachable)?
        {
            RaftAnswer::Append(result) => self.remote(result),
            other => Err(garbled(format!("{other:?} answered an append"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Agreement>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, EmptyNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(&RaftCall::Snapshot(rpc))
            .await
            .map_err(unreachable)?
        {
            RaftAnswer::Snapshot(result) => self.remote(result),
            other => Err(garbled(format!("{other:?} answered a snapshot"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, EmptyNode, RaftError<NodeId>>> {
        match self.call(&RaftCall::Vote(rpc)).await.map_err(unreachable)? {
            RaftAnswer::Vote(result) => self.remote(result),
            other => Err(garbled(format!("{other:?} answered a vote"))),
        }
    }
}

/// Sends `command` to the leader `leader` to append.
pub(super) async fn propose_at(
    transport: &dyn Transport,
    leader: usize,
    command: EpochCommand,
) -> Result<u64, ProposeError> {
    let request = serde_json::to_vec(&RaftCall::Propose(command))
        .map_err(|e| ProposeError::Failed(e.to_string()))?;
    let reply = transport
        .call(leader, request)
        .await
        .map_err(ProposeError::Failed)?;
    match serde_json::from_slice(&reply) {
        Ok(RaftAnswer::Propose(result)) => result,
        Ok(other) => Err(ProposeError::Failed(format!(
            "{other:?} answered a proposal"
        ))),
        Err(e) => Err(ProposeError::Failed(format!("an unreadable reply: {e}"))),
    }
}

/// Runs a request another datacenter sent here and encodes the reply.
pub(super) async fn answer(control: &Control, request: &[u8]) -> Vec<u8> {
    let answer = match serde_json::from_slice::<RaftCall>(request) {
        Ok(RaftCall::Vote(rpc)) => RaftAnswer::Vote(control.raft.vote(rpc).await),
        Ok(RaftCall::Append(rpc)) => RaftAnswer::Append(control.raft.append_entries(rpc).await),
        Ok(RaftCall::Snapshot(rpc)) => {
            RaftAnswer::Snapshot(control.raft.install_snapshot(rpc).await)
        }
        // Only from a datacenter that took this one for the leader: proposed here
        // again, it is forwarded once more if leadership moved meanwhile.
        Ok(RaftCall::Propose(command)) => RaftAnswer::Propose(control.propose_here(command).await),
        Err(e) => RaftAnswer::Refused(format!("an unreadable agreement request: {e}")),
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}
