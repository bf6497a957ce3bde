//! The home agreement over the links: each of its requests travels on a stream of
//! its own toward its datacenter (through the forwarding path's relays where the
//! topology has no direct link), and this datacenter's reports of which peers it
//! cannot hear from follow the links' state.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use meridian_topology::DcIdx;
use tokio::sync::watch;

use crate::control::{Control, ControlError, Timing, Transport};
use crate::link::frame::{self, AgreementRequest, Frame};
use crate::replication::Replication;

/// How long after start a peer never linked counts as unreachable (at least the
/// peer timeout): the datacenters of a cluster started together link within it,
/// so a slow start is not taken for an outage, and one that stays down is taken
/// out after it.
const START_GRACE: Duration = Duration::from_secs(10);

/// How long one agreement request waits for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Replication {
    /// Starts this datacenter's member of the home agreement and its reporter.
    pub async fn start_agreement(
        self: &Arc<Self>,
        data_dir: &Path,
        stopped: watch::Receiver<bool>,
    ) -> Result<Arc<Control>, ControlError> {
        let n = self.topology().datacenters.len();
        let timing = Timing::for_peer_timeout(self.topology().replication.peer_timeout);
        let transport = Arc::new(LinkTransport(Arc::downgrade(self)));
        let control = Control::start(self.config.me.get(), n, data_dir, timing, transport).await?;
        let _ = self.control.set(control.clone());
        let unreachable = self.unreachable_watch(stopped.clone());
        let reporter = control.clone();
        let weak = Arc::downgrade(self);
        let applied_of = move |dc: usize| {
            weak.upgrade()
                .map_or(0, |repl| repl.engine.applied_of(repl.dc_id(dc)))
        };
        let reports_stopped = stopped.clone();
        self.engine
            .workers()
            .spawn("agreement-reports", None, |worker| {
                worker.set(crate::workers::State::Idle);
                reporter.report(unreachable, applied_of, reports_stopped)
            });
        let (repl, follower) = (self.clone(), control.clone());
        self.engine.workers().spawn("failover", None, |worker| {
            worker.set(crate::workers::State::Idle);
            repl.follow_epochs(follower, stopped)
        });
        Ok(control)
    }

    /// What happens to a user's writes while its home is out.
    pub fn on_home_down(&self) -> meridian_topology::OnHomeDown {
        self.topology().homes.on_home_down
    }

    /// What happens meanwhile, for an error message.
    pub fn on_home_down_text(&self) -> String {
        match self.on_home_down() {
            meridian_topology::OnHomeDown::Reject => {
                "on_home_down = \"reject\": its users' writes are refused until it is back".into()
            }
            meridian_topology::OnHomeDown::NextInLine => {
                "on_home_down = \"next-in-line\": the next in line takes them once a majority agrees the home is out".into()
            }
        }
    }

    /// The home agreement, when this proxy takes part in one.
    pub fn control(&self) -> Option<&Arc<Control>> {
        self.control.get()
    }

    /// The datacenters this one cannot hear from, kept up to date from the links.
    ///
    /// A datacenter counts once its link is down and no beat has come from it for
    /// the peer timeout: a link that fails early (an error, a restart) does not
    /// shorten the silence the home lease relies on ([`super::lease`]). A link never
    /// up since this proxy started counts only after the start-up grace: at
    /// start-up every link is still being made.
    fn unreachable_watch(
        self: &Arc<Self>,
        mut stopped: watch::Receiver<bool>,
    ) -> watch::Receiver<BTreeSet<usize>> {
        let n = self.topology().datacenters.len();
        let me = self.config.me.get();
        let silence = self.topology().replication.peer_timeout;
        let start_grace = silence.max(START_GRACE);
        let weak = Arc::downgrade(self);
        // The view now, and when it next changes with no link changing.
        let view = move |live: meridian_topology::DcSet| {
            let mut unreachable = BTreeSet::new();
            let mut recheck: Option<tokio::time::Instant> = None;
            let Some(repl) = weak.upgrade() else {
                return (unreachable, recheck);
            };
            let now = std::time::Instant::now();
            let mut later = |at: std::time::Instant| {
                let at = tokio::time::Instant::from_std(at);
                recheck = Some(recheck.map_or(at, |r| r.min(at)));
            };
            for d in (0..n).filter(|&d| d != me && !live.contains(DcIdx(d as u8))) {
                let status = repl.peer_status(repl.dc_id(d));
                // When it counts: the peer timeout after its last beat; at once if
                // its link was up and no beat came (it echoed none from here
                // either); the start-up grace after start if it never linked.
                let due = match status.last_heard() {
                    Some(heard) => heard + silence,
                    None if status.ever_up() => now,
                    None => repl.started + start_grace,
                };
                match due <= now {
                    true => {
                        unreachable.insert(d);
                    }
                    false => later(due),
                }
            }
            (unreachable, recheck)
        };
        let (first, mut recheck) = view(self.live());
        let (tx, rx) = watch::channel(first);
        let mut live = self.live.subscribe();
        tokio::spawn(async move {
            loop {
                let wake = async {
                    match recheck {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = live.changed() => if changed.is_err() { return },
                    () = wake => {}
                    _ = stopped.changed() => return,
                }
                let (now, next) = view(*live.borrow_and_update());
                recheck = next;
                tx.send_if_modified(|current| {
                    let changed = *current != now;
                    *current = now;
                    changed
                });
            }
        });
        rx
    }

    /// Sends an agreement request toward datacenter `to` and waits for its reply.
    async fn agreement_call(&self, to: usize, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let to_id = self.dc_id(to).to_owned();
        let hop = self
            .first_hop(DcIdx(to as u8))
            .ok_or_else(|| format!("no path from {} to {to_id}", self.dc()))?;
        let hop_id = self.id(hop).to_owned();
        let (connection, _) = self
            .peer_status(&hop_id)
            .connection()
            .ok_or_else(|| format!("the link to {hop_id} is down"))?;
        let mut encoded = Vec::new();
        Frame::Agreement(AgreementRequest { to: to_id, body }).encode(&mut encoded);
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&encoded).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            match frame::read(&mut recv, &hop_id).await {
                Ok(Some(Frame::AgreementReply(reply))) => Ok(reply),
                Ok(Some(other)) => Err(format!(
                    "{hop_id} answered an agreement request with a {} frame",
                    other.name()
                )),
                Ok(None) => Err(format!("{hop_id} gave no reply")),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no reply from {hop_id} within {REQUEST_TIMEOUT:?}"))?
    }

    /// Answers an agreement request that arrived here: this datacenter's member
    /// answers it, or it is passed on toward its datacenter. `None`: no reply to
    /// give (no member here, or the next hop failed).
    pub(super) async fn answer_agreement(&self, request: AgreementRequest) -> Option<Vec<u8>> {
        if request.to == self.dc() {
            return Some(self.control.get()?.answer(&request.body).await);
        }
        let to = self.topology().index_of(&request.to)?;
        match self.agreement_call(to.get(), request.body).await {
            Ok(reply) => Some(reply),
            Err(why) => {
                tracing::debug!(to = %request.to, %why, "could not pass on an agreement request");
                None
            }
        }
    }
}

/// The agreement's transport over this proxy's links (a weak handle: the links
/// hold the agreement, not the other way round).
#[derive(Debug)]
struct LinkTransport(Weak<Replication>);

impl Transport for LinkTransport {
    fn call(
        &self,
        to: usize,
        request: Vec<u8>,
    ) -> crate::control::BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let repl = self.0.upgrade().ok_or("the proxy is stopping")?;
            repl.agreement_call(to, request).await
        })
    }
}
