//! The home's side of forwarding: each request a peer opens a stream for is
//! executed here (once, see [`super::window`]) or passed on toward its home.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use meridian_policies::{SessionMark, VersionVector};
use meridian_topology::{DcIdx, UserKey};

use super::window::{self, Begin};
use crate::command::{self, Kind, UserRule};
use crate::engine::WriteSession;
use crate::link::frame::{self, ForwardReply, ForwardRequest, Frame};
use crate::replication::{Replication, StreamError};
use crate::resp::{Protocol, Reply};

/// Answers the requests `peer` sends on `connection` until it closes.
pub(in crate::replication) async fn run(
    repl: Arc<Replication>,
    peer: DcIdx,
    connection: quinn::Connection,
) -> Result<(), StreamError> {
    let peer_id = repl.id(peer).to_owned();
    loop {
        let (send, recv) = connection
            .accept_bi()
            .await
            .map_err(|source| StreamError::Accept {
                peer: peer_id.clone(),
                source,
            })?;
        // Each request runs on: a link that drops does not stop a write half done,
        // and its reply waits in the window for the resend.
        let (repl, peer_id) = (repl.clone(), peer_id.clone());
        let workers = repl.engine.workers().clone();
        workers.track(async move {
            if let Err(why) = answer(&repl, &peer_id, send, recv).await {
                tracing::debug!(peer = %peer_id, %why, "a forwarded request was not answered");
                repl.peer_status(&peer_id).forward.error(&why);
            }
        });
    }
}

async fn answer(
    repl: &Replication,
    peer: &str,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), String> {
    let request = match frame::read(&mut recv, peer).await {
        Ok(Some(Frame::Forward(request))) => request,
        Ok(Some(Frame::Agreement(request))) => {
            let Some(reply) = repl.answer_agreement(request).await else {
                return Ok(());
            };
            let mut out = Vec::new();
            Frame::AgreementReply(reply).encode(&mut out);
            send.write_all(&out).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            return Ok(());
        }
        Ok(Some(other)) => return Err(format!("a {} frame opened a stream", other.name())),
        Ok(None) => return Err("an empty stream".into()),
        Err(e) => return Err(e.to_string()),
    };
    let reply = repl.answer(request).await;
    let mut out = Vec::new();
    Frame::ForwardReply(reply).encode(&mut out);
    send.write_all(&out).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    Ok(())
}

/// The same error for each of `n` commands, encoded.
fn all_failed(n: usize, protocol: Protocol, message: &str) -> ForwardReply {
    let mut out = BytesMut::new();
    Reply::error(message).encode(protocol, &mut out);
    let one = out.freeze();
    ForwardReply {
        replies: vec![one; n],
        token: Bytes::new(),
    }
}

/// Whether every command of `request` is a read.
fn is_read_only(request: &ForwardRequest) -> bool {
    request.commands.iter().all(|args| {
        args.first()
            .and_then(|name| command::lookup(name))
            .is_some_and(|spec| matches!(spec.kind, Kind::Read(_)))
    })
}

/// The user a forwarded write (or transaction) writes, when it names one.
fn forwarded_user(args: &[Bytes], rule: UserRule) -> Option<Bytes> {
    let name = args.first()?;
    if name.as_ref() == crate::server::FORWARDED_TRANSACTION {
        let transaction = crate::server::transaction_from_forwarded(args).ok()?;
        return (transaction.commands.iter()).find_map(|(_, command)| {
            let spec = command::lookup(&command[0])?;
            command::user_of_command(spec, command, rule).ok().flatten()
        });
    }
    let spec = command::lookup(name)?;
    command::user_of_command(spec, args, rule).ok().flatten()
}

/// How keys name users in this cluster.
fn user_rule(repl: &Replication) -> UserRule {
    match repl.topology().homes.user {
        UserKey::HashTag => UserRule::HashTag,
        UserKey::Prefix => UserRule::Prefix,
    }
}

fn protocol(code: u8) -> Protocol {
    if code == 3 {
        Protocol::Resp3
    } else {
        Protocol::Resp2
    }
}

impl Replication {
    /// Answers a forwarded request: executes it when this is its home (once), or
    /// passes it on toward its home.
    async fn answer(&self, request: ForwardRequest) -> ForwardReply {
        let n = request.commands.len();
        let proto = protocol(request.protocol);
        if request.home != self.dc() {
            self.forwarding
                .stats
                .relayed
                .fetch_add(1, Ordering::Relaxed);
            return match self.forward(&request).await {
                Ok(reply) => reply,
                Err(e) => all_failed(n, proto, &e.to_string()),
            };
        }
        if is_read_only(&request) {
            // Reads change nothing: one run twice is harmless, nothing to remember.
            return self.execute_reads(request).await;
        }
        let f = &self.forwarding;
        match f.window.begin(&request.id, Instant::now()) {
            Begin::New(slot) => {
                let reply = self.execute(request).await;
                slot.send_replace(Some(reply.clone()));
                reply
            }
            Begin::Done(reply) => {
                f.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                reply
            }
            Begin::Running(slot) => {
                f.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                window::wait(slot).await.unwrap_or_else(|| {
                    all_failed(
                        n,
                        proto,
                        "ERR the first copy of this request ended without a reply; it may or may not have been applied",
                    )
                })
            }
        }
    }

    /// Waits until this datacenter has applied the request's session token (up to
    /// the token wait); else the reply refusing every command, saying why.
    async fn admit(&self, request: &ForwardRequest) -> Result<(), ForwardReply> {
        let n = request.commands.len();
        let proto = protocol(request.protocol);
        let token = VersionVector::decode(&request.token)
            .map_err(|e| all_failed(n, proto, &format!("ERR bad session token: {e}")))?;
        self.caught_up(&token, self.forwarding.token_wait)
            .await
            .map_err(|behind| all_failed(n, proto, &behind))
    }

    /// Executes a request's writes here, as local writes, once this datacenter
    /// has applied what the session had seen.
    async fn execute(&self, request: ForwardRequest) -> ForwardReply {
        let n = request.commands.len();
        let proto = protocol(request.protocol);
        if let Err(refused) = self.admit(&request).await {
            return refused;
        }
        let rule = user_rule(self);
        if let Some(onward) = self.moved_on(&request, rule) {
            // Its user moved from here: the new home runs it, once it has
            // applied the move (the token says so).
            let stats = &self.following.stats;
            stats.passed_on.fetch_add(n as u64, Ordering::Relaxed);
            return match self.forward(&onward).await {
                Ok(reply) => reply,
                Err(e) => all_failed(n, proto, &e.to_string()),
            };
        }
        let from = self.topology().index_of(&request.id.from);
        let session = request.session.map(|(id, epoch)| WriteSession {
            mark: SessionMark { id, epoch },
            forwarded: true,
        });
        let mut queued = Vec::with_capacity(n);
        for args in request.commands {
            queued.push(self.queue_write(args, rule, from, session).await);
        }
        let mut replies = Vec::with_capacity(n);
        let mut newest = 0;
        for queued in queued {
            let reply = match queued {
                Ok(rx) => match rx.await {
                    Ok(written) => {
                        newest = newest.max(written.seq);
                        written.reply
                    }
                    Err(_) => Reply::error("ERR the write was abandoned by a stopping proxy"),
                },
                Err(reply) => reply,
            };
            let mut out = BytesMut::new();
            reply.encode(proto, &mut out);
            replies.push(out.freeze());
        }
        self.forwarding
            .stats
            .served
            .fetch_add(n as u64, Ordering::Relaxed);
        let mut seen = VersionVector::new();
        seen.advance(self.dc(), newest);
        ForwardReply {
            replies,
            token: Bytes::from(seen.to_bytes()),
        }
    }

    /// Runs a session's forwarded reads here, once this datacenter has applied
    /// what the session had seen; the token says what they observed.
    async fn execute_reads(&self, request: ForwardRequest) -> ForwardReply {
        let n = request.commands.len();
        let proto = protocol(request.protocol);
        if let Err(refused) = self.admit(&request).await {
            return refused;
        }
        let rule = user_rule(self);
        let mut reads = Vec::with_capacity(n);
        let mut users = Vec::with_capacity(n);
        for args in &request.commands {
            let spec = args.first().and_then(|name| command::lookup(name));
            let (Some(spec), true) = (spec, spec.is_some_and(|s| s.arity_ok(args.len()))) else {
                return all_failed(n, proto, "ERR a forwarded read is not a valid read");
            };
            let (Kind::Read(f), Ok(user)) = (spec.kind, command::user_of_command(spec, args, rule))
            else {
                return all_failed(n, proto, "ERR a forwarded read is not a valid read");
            };
            users.push(user.unwrap_or_default());
            reads.push((spec, f, args.as_slice()));
        }
        // Read replicas serve them only once they have applied what the
        // session has seen, as for the session's reads here.
        let token = VersionVector::decode(&request.token).unwrap_or_default();
        let user = users.first().map_or(&b""[..], |u| u.as_ref());
        let replies = (self.engine)
            .read_many_as(&reads, usize::MAX, user, &token)
            .await;
        let seen = self.observed(&users);
        ForwardReply {
            replies: replies
                .into_iter()
                .map(|reply| {
                    let mut out = BytesMut::new();
                    reply.encode(proto, &mut out);
                    out.freeze()
                })
                .collect(),
            token: Bytes::from(seen.to_bytes()),
        }
    }

    /// The request to send on when every user it writes has moved from here to
    /// one new home: addressed there, its token holding the move, so the new
    /// home runs it only once it knows it is the home.
    fn moved_on(&self, request: &ForwardRequest, rule: UserRule) -> Option<ForwardRequest> {
        let mut to: Option<usize> = None;
        let mut token = VersionVector::decode(&request.token).ok()?;
        for args in &request.commands {
            let user = forwarded_user(args, rule)?;
            let (from, seq) = self.placed_since(&user)?;
            let meridian_policies::WriteRoute::Forward { home } = self.route(&user) else {
                return None;
            };
            if to.is_some_and(|t| t != home) {
                return None;
            }
            to = Some(home);
            token.advance(&from, seq);
        }
        let mut onward = request.clone();
        onward.home = self.id(DcIdx(to? as u8)).to_owned();
        onward.token = Bytes::from(token.to_bytes());
        Some(onward)
    }

    /// Queues one forwarded write with the engine, after the checks a client's
    /// own write passes; a write that fails them gets its error. `from`: the
    /// datacenter of the client that sent it; `session`: its session, whose fence
    /// it passes.
    async fn queue_write(
        &self,
        args: Vec<Bytes>,
        rule: UserRule,
        from: Option<DcIdx>,
        session: Option<WriteSession>,
    ) -> Result<tokio::sync::oneshot::Receiver<crate::engine::Written>, Reply> {
        let Some(name) = args.first() else {
            return Err(Reply::error("ERR empty command"));
        };
        if name.eq_ignore_ascii_case(b"MERIDIAN")
            && args.len() == 4
            && args[1].eq_ignore_ascii_case(b"HOME")
        {
            // A move by hand, sent to the datacenter that writes the user.
            let to = self.index_of(&String::from_utf8_lossy(&args[3]));
            let Some(to) = to else {
                return Err(Reply::error("ERR unknown datacenter"));
            };
            let reply = match self.move_user(&args[2], to, "operator").await {
                Ok(done) => Reply::bulk(done),
                Err(why) => Reply::error(why),
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let seq = self.engine.applied().get(self.dc());
            let _ = tx.send(crate::engine::Written { reply, seq });
            return Ok(rx);
        }
        if name.as_ref() == crate::server::FORWARDED_TRANSACTION {
            let transaction = crate::server::transaction_from_forwarded(&args)
                .map_err(|why| Reply::error(format!("ERR {why}")))?;
            let mut user: Option<Bytes> = None;
            for (_, command) in &transaction.commands {
                let spec = command::lookup(&command[0])
                    .ok_or_else(|| command::unknown_command(command))?;
                if let Some(this) = command::user_of_command(spec, command, rule)? {
                    if user.as_ref().is_some_and(|u| *u != this) {
                        return Err(Reply::error(
                            "CROSSSLOT a forwarded transaction touches two users' keys",
                        ));
                    }
                    user = Some(this);
                }
            }
            let user = user.unwrap_or_else(|| {
                let keys = transaction.watched.first().map(|(k, _)| k.as_slice());
                Bytes::copy_from_slice(keys.map_or(&b""[..], |k| rule.user_of(k)))
            });
            self.may_write_here(&user).await?;
            if let Some(from) = from {
                self.note_home_write(&user, from.get());
            }
            return Ok(self.engine.transaction(transaction, user, session).await);
        }
        let Some(spec) = command::lookup(name) else {
            return Err(command::unknown_command(&args));
        };
        let Kind::Write(f) = spec.kind else {
            return Err(Reply::error(format!(
                "ERR {} is not a write; only writes are forwarded",
                spec.name
            )));
        };
        if !spec.arity_ok(args.len()) {
            return Err(command::arity_error(spec.name));
        }
        let user = command::user_of_command(spec, &args, rule)?.unwrap_or_default();
        self.may_write_here(&user).await?;
        if let Some(from) = from {
            self.note_home_write(&user, from.get());
        }
        Ok(self.engine.write(f, args, user, session).await)
    }

    /// Whether this datacenter writes `user`'s data now; the error to answer if not.
    async fn may_write_here(&self, user: &[u8]) -> Result<(), Reply> {
        match self.route_waiting(user).await {
            meridian_policies::WriteRoute::Here => Ok(()),
            meridian_policies::WriteRoute::Unavailable { home, why } => {
                Err(Reply::error(self.unavailable_message(user, home, why)))
            }
            meridian_policies::WriteRoute::Forward { home }
            | meridian_policies::WriteRoute::HomeUnreachable { home, .. } => {
                Err(Reply::error(format!(
                    "TRYAGAIN this write's user is written at {}, not at {}: the datacenters see homes differently (a failover under way, or topology files that differ)",
                    self.id(DcIdx(home as u8)),
                    self.dc()
                )))
            }
        }
    }

    /// Waits up to `wait` for this datacenter to have applied `token`; the error
    /// says what is missing.
    pub async fn caught_up(
        &self,
        token: &VersionVector,
        wait: std::time::Duration,
    ) -> Result<(), String> {
        let mut applied = self.engine.watch_applied();
        let covered = applied.wait_for(|a| a.dominates(token));
        if let Ok(Ok(_)) = tokio::time::timeout(wait, covered).await {
            return Ok(());
        }
        let have = self.engine.applied();
        let missing: Vec<String> = token
            .iter()
            .filter(|(dc, seq)| have.get(dc) < *seq)
            .map(|(dc, seq)| format!("{dc} up to #{seq} (have #{})", have.get(dc)))
            .collect();
        Err(format!(
            "TRYAGAIN {} has not yet applied what this session has seen: {} (waited {} ms)",
            self.dc(),
            missing.join(", "),
            wait.as_millis()
        ))
    }
}
