//! One client connection: read, parse, execute in order, reply.

mod home;
mod keyspace;
pub(super) mod transaction;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use meridian_policies::{Overtaken, SessionMark, SessionToken, VersionVector, WriteRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::{Context, info};
use crate::command::{self, Kind, Spec};
use crate::engine::{WriteSession, Written};
use crate::link::frame::ForwardReply;
use crate::replication::{ForwardError, ReadPlace};
use crate::resp::{Protocol, Reply, RequestParser};

/// Replies are written out once this much is encoded, even mid-pipeline.
const OUT_FLUSH: usize = 1 << 20;
/// Most pipelined commands executed as one group.
const MAX_PIPELINE: usize = 1024;
/// A group of writes for one home is sent once its arguments pass this size.
const GROUP_BYTES: usize = 8 << 20;

/// A read waiting to run with the reads next to it.
struct QueuedRead {
    index: usize,
    spec: &'static Spec,
    f: command::DataFn,
    args: Vec<Bytes>,
    user: Bytes,
    started: Instant,
}

/// A reply that is known, or a write whose reply is still coming.
enum Pending {
    Ready(Reply),
    /// The replies of a group of forwarded writes, once they came.
    Many(Vec<Reply>),
    Write {
        rx: oneshot::Receiver<Written>,
        started: Instant,
        index: usize,
        user: Bytes,
    },
    /// Writes forwarded to their home together: one reply each.
    Forwarded {
        rx: oneshot::Receiver<Forwarded>,
        started: Instant,
        indices: Vec<usize>,
        users: Vec<Bytes>,
    },
}

/// What a forwarded group came to, and the session epoch it ran in last (a
/// home may have had it sent again in a newer one).
type Forwarded = (Result<ForwardReply, ForwardError>, Option<u64>);

/// Consecutive writes of this connection for one home, not yet sent.
struct Group {
    home: usize,
    commands: Vec<Vec<Bytes>>,
    indices: Vec<usize>,
    users: Vec<Bytes>,
    bytes: usize,
    started: Instant,
}

/// A write to run: one command, or a transaction.
enum Work {
    One(command::DataFn, Vec<Bytes>),
    Transaction(crate::engine::Transaction),
}

/// What the connection does after a command.
#[derive(PartialEq)]
enum Next {
    Continue,
    Close,
}

pub(super) struct Conn {
    ctx: Arc<Context>,
    stream: TcpStream,
    peer: SocketAddr,
    pub(super) id: u64,
    pub(super) name: Option<Bytes>,
    pub(super) protocol: Protocol,
    /// Whether the client may run commands (always, when no users are configured).
    authenticated: bool,
    parser: RequestParser,
    pending: VecDeque<Pending>,
    /// About how many bytes the replies in `pending` take.
    pending_bytes: usize,
    out: BytesMut,
    /// The session token: every write this connection made, and tokens handed to it.
    token: VersionVector,
    /// The session this connection writes for, and its epoch (see `SessionFence`):
    /// its own at first, the handed one's (in a later epoch) once it takes up a token.
    mark: SessionMark,
    /// Whether the session may be going on elsewhere (its token was read out or
    /// handed in): then its writes here raise the fence too.
    shared: bool,
    /// The client went away while its forwarded writes were out: nothing more of
    /// what it sent runs.
    gone: bool,
    /// Writes for a home elsewhere, gathered to travel together.
    group: Option<Group>,
    /// Whether a forwarded group's replies are still coming.
    forwarding: bool,
    /// The transaction being queued, after `MULTI`.
    multi: Option<transaction::Multi>,
    /// The keys `WATCH`ed for the next transaction.
    watched: transaction::Watched,
    /// Writes queued to run together that may not have run yet (see
    /// `Engine::write_deferred`).
    unrun: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // However the connection ends, the writes it queued run.
        self.run_writes();
    }
}

/// Resolves once the client has closed its connection (or it failed). While the
/// client has sent more, which cannot be read before the current command is
/// answered, it looks again every 50 ms.
async fn gone(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match stream.peek(&mut byte).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Tells a client it cannot be served, and closes.
pub(super) async fn refuse(mut stream: TcpStream, message: &str) {
    let mut out = BytesMut::new();
    Reply::error(message).encode(Protocol::Resp2, &mut out);
    let _ = stream.write_all(&out).await;
}

pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    ctx: Arc<Context>,
    stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    ctx.clients.fetch_add(1, Ordering::Relaxed);
    ctx.total_connections.fetch_add(1, Ordering::Relaxed);
    let limits = ctx.config.limits;
    let mut conn = Conn {
        ctx: ctx.clone(),
        stream,
        peer,
        id,
        name: None,
        protocol: Protocol::Resp2,
        authenticated: ctx.config.users.is_empty(),
        parser: RequestParser::new(limits),
        pending: VecDeque::new(),
        pending_bytes: 0,
        out: BytesMut::with_capacity(16 << 10),
        token: VersionVector::new(),
        mark: SessionMark {
            id: new_session_id(id),
            epoch: 0,
        },
        shared: false,
        gone: false,
        group: None,
        forwarding: false,
        multi: None,
        watched: transaction::Watched::default(),
        unrun: false,
    };
    if let Err(e) = conn.run(stopped).await {
        tracing::debug!(error = %e, "client connection ended");
    }
    ctx.clients.fetch_sub(1, Ordering::Relaxed);
}

impl Conn {
    async fn run(&mut self, mut stopped: watch::Receiver<bool>) -> std::io::Result<()> {
        let mut buf = BytesMut::with_capacity(16 << 10);
        loop {
            loop {
                // Take what has arrived (up to a bound), then execute it together, so
                // runs of pipelined reads reach the backend as one pipeline.
                let mut batch = Vec::new();
                let mut protocol_error = None;
                while batch.len() < MAX_PIPELINE {
                    match self.parser.next(&mut buf) {
                        Ok(Some(args)) if args.is_empty() => continue,
                        Ok(Some(args)) => batch.push(args),
                        Ok(None) => break,
                        Err(e) => {
                            protocol_error = Some(e);
                            break;
                        }
                    }
                }
                let more = batch.len() == MAX_PIPELINE;
                if self.execute_all(batch).await == Next::Close {
                    return self.flush().await;
                }
                if self.over_output_limit() {
                    return Ok(());
                }
                if let Some(e) = protocol_error {
                    // The stream cannot be resynchronised: answer and close, as Redis does.
                    self.reply(Reply::error(format!("ERR {e}")));
                    return self.flush().await;
                }
                if self.out.len() >= OUT_FLUSH || more {
                    self.flush().await?;
                }
                // Writes gathered for a home wait one WAN round trip once sent: take
                // the rest of a pipeline the client has already written first, so
                // they travel together.
                let gathering = self.group.is_some();
                if more || (gathering && self.more_arrived(&mut buf).await) {
                    continue;
                }
                break;
            }
            self.flush().await?;
            if *stopped.borrow() {
                return Ok(());
            }
            let read = tokio::select! {
                read = self.stream.read_buf(&mut buf) => read?,
                _ = stopped.changed() => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// Whether more of the client's input was already there to read (taken into
    /// `buf`), after letting other tasks run once.
    async fn more_arrived(&mut self, buf: &mut BytesMut) -> bool {
        tokio::task::yield_now().await;
        matches!(self.stream.try_read_buf(buf), Ok(n) if n > 0)
    }

    /// Executes pipelined commands in order; consecutive valid reads run as one group.
    async fn execute_all(&mut self, batch: Vec<Vec<Bytes>>) -> Next {
        let mut reads: Vec<QueuedRead> = Vec::new();
        // The batch's reads arrived together: one clock reading starts them all
        // (a reading per command was 4% of the proxy's CPU under pipelined GETs).
        let arrived = Instant::now();
        for args in batch {
            if self.gone {
                return Next::Close;
            }
            if !self.in_multi()
                && let Some((index, spec)) = command::lookup_indexed(&args[0])
                && let (Kind::Read(f), true) = (spec.kind, self.authenticated)
                && spec.arity_ok(args.len())
                && let Ok(user) = command::user_of_command(spec, &args, self.ctx.config.user_rule)
            {
                self.ctx.total_commands.fetch_add(1, Ordering::Relaxed);
                reads.push(QueuedRead {
                    index,
                    spec,
                    f,
                    args,
                    user: user.unwrap_or_default(),
                    started: arrived,
                });
                continue;
            }
            self.run_reads(&mut reads).await;
            if self.execute(args).await == Next::Close {
                return Next::Close;
            }
        }
        self.run_reads(&mut reads).await;
        Next::Continue
    }

    /// Runs queued reads after this connection's earlier writes, where the
    /// session's token allows (here once this datacenter has applied it), and
    /// records what they observed in the token.
    async fn run_reads(&mut self, reads: &mut Vec<QueuedRead>) {
        if reads.is_empty() {
            return;
        }
        self.settle().await;
        if let Some(repl) = self.ctx.replication.clone() {
            // In user scope, the reads follow what the users' sessions saw.
            for read in reads.iter() {
                if let Some(seen) = repl.user_token(&read.user) {
                    self.token.merge(&seen);
                }
            }
            match repl.place_reads(&self.token).await {
                ReadPlace::Here => {}
                ReadPlace::At(dc) => return self.forward_reads(&repl, dc, reads).await,
                ReadPlace::Refused(why) => {
                    for read in reads.drain(..) {
                        let took = read.started.elapsed();
                        self.ctx.commands.record(read.index, took, true);
                        self.reply(Reply::Error(why.clone()));
                    }
                    return;
                }
            }
        }
        let group: Vec<(&Spec, command::DataFn, &[Bytes])> = reads
            .iter()
            .map(|r| (r.spec, r.f, r.args.as_slice()))
            .collect();
        let allowed = (self.ctx.config.max_output as usize)
            .saturating_sub(self.pending_bytes.saturating_add(self.out.len()));
        let replies = self
            .ctx
            .engine
            .read_many_as(&group, allowed, &reads[0].user, &self.token)
            .await;
        if let Some(repl) = &self.ctx.replication {
            for read in reads.iter() {
                let seen = repl.observed(std::slice::from_ref(&read.user));
                repl.remember(&read.user, &seen);
                self.token.merge(&seen);
            }
        }
        // Their replies came together too.
        let done = Instant::now();
        for (read, reply) in reads.drain(..).zip(replies) {
            let took = done.saturating_duration_since(read.started);
            self.ctx.commands.record(read.index, took, reply.is_error());
            self.reply(reply);
        }
    }

    /// Sends reads to datacenter `dc`, which has applied the session's token, and
    /// answers with its replies.
    async fn forward_reads(
        &mut self,
        repl: &Arc<crate::replication::Replication>,
        dc: usize,
        reads: &mut Vec<QueuedRead>,
    ) {
        let protocol = if self.protocol == Protocol::Resp3 {
            3
        } else {
            2
        };
        let commands = reads.iter().map(|r| r.args.clone()).collect();
        let request = repl.request(dc, protocol, &self.token, commands, None);
        let outcome = match repl.forward(&request).await {
            // A read changes nothing: unlike a write's, its outcome does not matter.
            Err(ForwardError::Unknown { home, why }) => {
                let message = format!(
                    "TRYAGAIN the read was sent to {home}, which has applied what this session has seen, and no reply came ({why}); send it again"
                );
                for read in reads.drain(..) {
                    self.ctx
                        .commands
                        .record(read.index, read.started.elapsed(), true);
                    self.reply(Reply::error(message.clone()));
                }
                return;
            }
            outcome => outcome,
        };
        let users: Vec<Bytes> = reads.iter().map(|r| r.user.clone()).collect();
        let replies = forwarded_replies(
            outcome,
            reads.len(),
            &mut self.token,
            Some(repl.as_ref()),
            &users,
        );
        for (read, reply) in reads.drain(..).zip(replies) {
            self.ctx
                .commands
                .record(read.index, read.started.elapsed(), reply.is_error());
            self.reply(reply);
        }
    }

    /// Whether the replies waiting to be sent are over the output buffer limit: the
    /// connection is then closed without them, as Redis closes a client over its
    /// `client-output-buffer-limit`, and counted.
    fn over_output_limit(&mut self) -> bool {
        let waiting = self.pending_bytes.saturating_add(self.out.len());
        if (waiting as u64) <= self.ctx.config.max_output {
            return false;
        }
        self.ctx
            .output_limit_disconnections
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client = self.id,
            peer = %self.peer,
            bytes = waiting,
            limit = self.ctx.config.max_output,
            "closing a client whose replies are over the output buffer limit"
        );
        self.pending.clear();
        self.pending_bytes = 0;
        true
    }

    /// Encodes every settled reply and writes them out.
    async fn flush(&mut self) -> std::io::Result<()> {
        self.settle().await;
        if self.over_output_limit() {
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        self.pending_bytes = 0;
        for pending in self.pending.drain(..) {
            match pending {
                Pending::Ready(reply) => reply.encode(self.protocol, &mut self.out),
                Pending::Many(replies) => replies
                    .iter()
                    .for_each(|r| r.encode(self.protocol, &mut self.out)),
                Pending::Write { .. } | Pending::Forwarded { .. } => {}
            }
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends the gathered writes, then waits for every queued write of this
    /// connection (and absorbs their tokens), so what follows sees them.
    async fn settle(&mut self) {
        if self.unrun {
            // Group commit: the other connections with requests ready queue their
            // writes first, and one batch (one log append) takes them all.
            tokio::task::yield_now().await;
        }
        self.run_writes();
        self.send_group();
        let me = self.ctx.engine.dc().to_owned();
        let mut client_gone = false;
        for pending in self.pending.iter_mut() {
            match pending {
                Pending::Write {
                    rx,
                    started,
                    index,
                    user,
                } => {
                    let reply = match rx.await {
                        Ok(written) => {
                            self.token.advance(&me, written.seq);
                            if let Some(repl) = &self.ctx.replication {
                                let mut seen = VersionVector::new();
                                seen.advance(&me, written.seq);
                                repl.remember(user, &seen);
                            }
                            written.reply
                        }
                        Err(_) => Reply::error(
                            "ERR the write was abandoned by a stopping proxy; its outcome is unknown",
                        ),
                    };
                    self.ctx
                        .commands
                        .record(*index, started.elapsed(), reply.is_error());
                    self.pending_bytes = self.pending_bytes.saturating_add(reply.size());
                    *pending = Pending::Ready(reply);
                }
                Pending::Forwarded {
                    rx,
                    started,
                    indices,
                    users,
                } => {
                    let received = tokio::select! {
                        received = &mut *rx => Some(received),
                        () = gone(&self.stream) => None,
                    };
                    let Some(received) = received else {
                        client_gone = true;
                        break;
                    };
                    let (outcome, epoch) = received.unwrap_or_else(|_| {
                        let outcome = Err(ForwardError::Unknown {
                            home: "the home".into(),
                            why: "the forwarding task stopped".into(),
                        });
                        (outcome, None)
                    });
                    if let Some(epoch) = epoch {
                        self.mark.epoch = self.mark.epoch.max(epoch);
                    }
                    if let Err(ForwardError::Unknown { .. }) = &outcome {
                        // The writes may still reach their home: the next ones go
                        // in a later epoch, which fences them off there.
                        self.mark.epoch += 1;
                    }
                    let replies = forwarded_replies(
                        outcome,
                        indices.len(),
                        &mut self.token,
                        self.ctx.replication.as_deref(),
                        users,
                    );
                    if let Some(epoch) = replies.iter().filter_map(overtaken_epoch).max() {
                        // Another connection took up this session's token: write
                        // in its epoch from now on.
                        self.mark.epoch = self.mark.epoch.max(epoch);
                    }
                    for (index, reply) in indices.iter().zip(&replies) {
                        self.ctx
                            .commands
                            .record(*index, started.elapsed(), reply.is_error());
                        self.pending_bytes = self.pending_bytes.saturating_add(reply.size());
                    }
                    *pending = Pending::Many(replies);
                }
                Pending::Ready(_) | Pending::Many(_) => {}
            }
        }
        self.forwarding = false;
        if client_gone {
            // Its writes are given up. Dropping their receivers tells the
            // forwarding tasks not to send them again should a home refuse them as
            // overtaken; nothing more of what the client sent runs.
            self.gone = true;
            self.pending.clear();
            self.group = None;
        }
    }

    /// Runs the writes this connection queued to run together.
    fn run_writes(&mut self) {
        if std::mem::take(&mut self.unrun) {
            self.ctx.engine.run_writes();
        }
    }

    /// Sends the gathered writes to their home, in a task of their own.
    fn send_group(&mut self) {
        let (Some(group), Some(repl)) = (self.group.take(), self.ctx.replication.clone()) else {
            return;
        };
        let protocol = if self.protocol == Protocol::Resp3 {
            3
        } else {
            2
        };
        let request = repl.request(
            group.home,
            protocol,
            &self.token,
            group.commands,
            Some(self.mark),
        );
        let (tx, rx) = oneshot::channel::<Forwarded>();
        tokio::spawn(async move {
            let mut request = request;
            let mut again = 0;
            let outcome = loop {
                let outcome = repl.forward(&request).await;
                // A home refused every write as overtaken: another connection took
                // up this session's token and wrote there. This client still
                // waits for them, so they are not given up: send them again in
                // the newer epoch (a new request, run once like any other).
                if let Ok(reply) = &outcome
                    && let Some(epoch) = all_overtaken(reply)
                    && !tx.is_closed()
                    && again < MAX_AGAIN
                {
                    request = repl.in_epoch(&request, epoch);
                    again += 1;
                    continue;
                }
                break outcome;
            };
            if let Ok(reply) = &outcome {
                repl.until_visible(&reply.token).await;
            }
            let epoch = request.session.map(|(_, epoch)| epoch);
            let _ = tx.send((outcome, epoch));
        });
        self.pending.push_back(Pending::Forwarded {
            rx,
            started: group.started,
            indices: group.indices,
            users: group.users,
        });
        self.forwarding = true;
    }

    /// Queues a write of `user` where it runs: here, gathered for its home, or
    /// refused when its home cannot be reached.
    async fn write(&mut self, work: Work, user: Bytes, index: usize, started: Instant) {
        let route = match &self.ctx.replication {
            // A transaction of keyless commands runs here.
            Some(_) if user.is_empty() => WriteRoute::Here,
            Some(repl) => {
                // In user scope, the write follows what the user's sessions saw.
                if let Some(seen) = repl.user_token(&user) {
                    self.token.merge(&seen);
                }
                repl.route_waiting(&user).await
            }
            None => WriteRoute::Here,
        };
        match route {
            WriteRoute::Here => {
                // After writes at other homes, this one waits to be ordered after them.
                if self.group.is_some() || self.forwarding {
                    self.settle().await;
                }
                if let Some(repl) = &self.ctx.replication
                    && !self.ctx.engine.covers(&self.token)
                    && let Err(behind) = repl.caught_up(&self.token, repl.token_wait()).await
                {
                    self.ctx.commands.record(index, started.elapsed(), true);
                    self.reply(Reply::Error(behind));
                    return;
                }
                if let Some(repl) = &self.ctx.replication
                    && !user.is_empty()
                {
                    repl.note_home_write(&user, repl.me());
                }
                let session = self.shared.then_some(WriteSession {
                    mark: self.mark,
                    forwarded: false,
                });
                let engine = &self.ctx.engine;
                let rx = match work {
                    Work::One(f, args) => {
                        self.unrun = true;
                        (engine.write_deferred(f, args, user.clone(), session)).await
                    }
                    Work::Transaction(t) => engine.transaction(t, user.clone(), session).await,
                };
                self.pending.push_back(Pending::Write {
                    rx,
                    started,
                    index,
                    user,
                });
            }
            WriteRoute::Forward { home } => {
                // A user that moved is written at its new home once it has
                // applied the move: the request's token says so.
                if let Some((from, seq)) =
                    (self.ctx.replication.as_ref()).and_then(|r| r.placed_since(&user))
                {
                    self.token.advance(&from, seq);
                }
                if self.group.as_ref().is_some_and(|g| g.home != home) {
                    self.send_group();
                }
                if self.group.is_none() {
                    // A group starts after every earlier write has its reply: its
                    // token then names them all, and the home orders it after them.
                    self.settle().await;
                    self.group = Some(Group {
                        home,
                        commands: Vec::new(),
                        indices: Vec::new(),
                        users: Vec::new(),
                        bytes: 0,
                        started,
                    });
                }
                let args = match work {
                    Work::One(_, args) => args,
                    Work::Transaction(t) => transaction::to_forwarded(&t),
                };
                if let Some(group) = self.group.as_mut() {
                    group.bytes += args.iter().map(Bytes::len).sum::<usize>();
                    group.commands.push(args);
                    group.indices.push(index);
                    group.users.push(user);
                    if group.bytes >= GROUP_BYTES || group.commands.len() >= MAX_PIPELINE {
                        self.send_group();
                    }
                }
            }
            WriteRoute::Unavailable { home, why } => {
                self.send_group();
                let message = self
                    .ctx
                    .replication
                    .as_ref()
                    .map_or_else(String::new, |r| r.unavailable_message(&user, home, why));
                self.ctx.commands.record(index, started.elapsed(), true);
                self.reply(Reply::error(message));
            }
            WriteRoute::HomeUnreachable { home, for_ms } => {
                self.send_group();
                let (home, policy) = match &self.ctx.replication {
                    Some(r) => (r.dc_id(home).to_owned(), r.on_home_down_text()),
                    None => (String::new(), String::new()),
                };
                self.ctx.commands.record(index, started.elapsed(), true);
                self.reply(Reply::error(format!(
                    "TRYAGAIN {home}, the home of user '{}', has been unreachable from {} for {for_ms} ms ({policy})",
                    String::from_utf8_lossy(&user),
                    self.ctx.config.dc
                )));
            }
        }
    }

    fn reply(&mut self, reply: Reply) {
        self.pending_bytes = match reply {
            Reply::OverLimit => usize::MAX,
            _ => self.pending_bytes.saturating_add(reply.size()),
        };
        self.pending.push_back(Pending::Ready(reply));
    }

    async fn execute(&mut self, args: Vec<Bytes>) -> Next {
        self.ctx.total_commands.fetch_add(1, Ordering::Relaxed);
        let Some((index, spec)) = command::lookup_indexed(&args[0]) else {
            self.ctx.commands.unknown.fetch_add(1, Ordering::Relaxed);
            self.fail_multi();
            self.reply(command::unknown_command(&args));
            return Next::Continue;
        };
        let started = Instant::now();
        if !self.authenticated && !matches!(spec.name, "AUTH" | "HELLO" | "QUIT") {
            self.ctx.commands.record(index, started.elapsed(), true);
            self.fail_multi();
            self.reply(Reply::error("NOAUTH Authentication required."));
            return Next::Continue;
        }
        let checked = if spec.arity_ok(args.len()) {
            command::user_of_command(spec, &args, self.ctx.config.user_rule)
        } else {
            Err(command::arity_error(spec.name))
        };
        let user = match checked {
            Ok(user) => user,
            Err(reply) => {
                self.ctx.commands.record(index, started.elapsed(), true);
                if spec.name != "WATCH" {
                    self.fail_multi();
                }
                self.reply(reply);
                return Next::Continue;
            }
        };
        let transactional = matches!(
            spec.name,
            "MULTI" | "EXEC" | "DISCARD" | "WATCH" | "UNWATCH"
        );
        if self.in_multi() && !transactional && spec.name != "QUIT" {
            self.queue_in_multi(spec, args, user);
            return Next::Continue;
        }
        match spec.kind {
            Kind::Server if transactional => {
                let next = self.transaction_command(spec, &args, index, started).await;
                // An EXEC that ran is counted with its reply.
                if let Some(Pending::Ready(reply)) = self.pending.back() {
                    let error = reply.is_error();
                    self.ctx.commands.record(index, started.elapsed(), error);
                }
                next
            }
            Kind::Write(f) => {
                self.write(Work::One(f, args), user.unwrap_or_default(), index, started)
                    .await;
                Next::Continue
            }
            Kind::Read(f) => {
                let mut read = vec![QueuedRead {
                    index,
                    spec,
                    f,
                    args,
                    user: user.unwrap_or_default(),
                    started,
                }];
                self.run_reads(&mut read).await;
                Next::Continue
            }
            Kind::Server => {
                self.settle().await;
                let next = self.server_command(spec, &args).await;
                let error = matches!(self.pending.back(), Some(Pending::Ready(r)) if r.is_error());
                self.ctx.commands.record(index, started.elapsed(), error);
                next
            }
        }
    }

    async fn server_command(&mut self, spec: &Spec, args: &[Bytes]) -> Next {
        let reply = match spec.name {
            "PING" => match args.len() {
                1 => Reply::Simple("PONG"),
                2 => Reply::bulk(args[1].clone()),
                _ => command::arity_error("ping"),
            },
            "ECHO" => Reply::bulk(args[1].clone()),
            "TIME" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Reply::Array(vec![
                    Reply::bulk(now.as_secs().to_string().into_bytes()),
                    Reply::bulk(now.subsec_micros().to_string().into_bytes()),
                ])
            }
            "QUIT" => {
                self.reply(Reply::OK);
                return Next::Close;
            }
            "SELECT" => match command::parse_i64(&args[1]) {
                Some(0) => Reply::OK,
                Some(_) => Reply::error("ERR DB index is out of range"),
                None => command::not_an_integer(),
            },
            "AUTH" => self.auth(args),
            "HELLO" => self.hello(args),
            "CLIENT" => self.client(args),
            "COMMAND" => info::command(args),
            "INFO" => {
                let keys = if info::shows(args.get(1), "keyspace") {
                    self.ctx.engine.key_count().await
                } else {
                    Ok(0)
                };
                Reply::Verbatim(info::info(&self.ctx, args.get(1), keys))
            }
            "SCAN" => self.scan(args).await,
            "KEYS" => self.keys(args).await,
            "RANDOMKEY" => self.random_key().await,
            "FLUSHDB" | "FLUSHALL" => self.flush_db(args).await,
            "DBSIZE" => match self.ctx.engine.key_count().await {
                Ok(n) => Reply::Integer(n as i64),
                Err(e) => e.reply(),
            },
            "WAIT" => {
                // A wait that may never end ends with its client.
                tokio::select! {
                    reply = super::replicate::wait(&self.ctx, args, &self.token) => reply,
                    () = gone(&self.stream) => return Next::Close,
                }
            }
            "MERIDIAN" if args[1].eq_ignore_ascii_case(b"SESSION") => self.session(args),
            "MERIDIAN" if args[1].eq_ignore_ascii_case(b"HOME") => self.home(args).await,
            "MERIDIAN" => super::replicate::meridian(&self.ctx, args).await,
            _ => command::unknown_command(args),
        };
        self.reply(reply);
        Next::Continue
    }

    /// `MERIDIAN SESSION` returns the session token; `MERIDIAN SESSION <token>`
    /// merges a token from another connection or device into this one.
    fn session(&mut self, args: &[Bytes]) -> Reply {
        match args.len() {
            2 => {
                self.shared = true;
                let token = SessionToken {
                    vector: self.token.clone(),
                    mark: Some(self.mark),
                };
                Reply::bulk(token.to_string())
            }
            3 => match super::replicate::parse_token(&args[2]) {
                Ok(token) => {
                    self.token.merge(token.vector());
                    if let Some(mark) = token.mark {
                        // A later epoch of the session: its writes from before the
                        // hand-over cannot land after this connection's.
                        let mine = (mark.id == self.mark.id).then_some(self.mark.epoch);
                        self.mark = SessionMark {
                            id: mark.id,
                            epoch: mine.unwrap_or(0).max(mark.epoch.saturating_add(1)),
                        };
                    }
                    self.shared = true;
                    Reply::OK
                }
                Err(error) => error,
            },
            _ => command::arity_error("meridian|session"),
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut protocol = self.protocol;
        if let Some(version) = args.get(1) {
            protocol = match command::parse_i64(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
                None => {
                    return Reply::error("ERR Protocol version is not an integer or out of range");
                }
            };
        }
        let mut i = 2;
        while i < args.len() {
            match args[i].to_ascii_uppercase().as_slice() {
                b"SETNAME" if i + 1 < args.len() => {
                    self.name = Some(args[i + 1].clone());
                    i += 2;
                }
                b"AUTH" if i + 2 < args.len() => {
                    if let Reply::Error(e) = self.check_password(Some(&args[i + 1]), &args[i + 2]) {
                        return Reply::Error(e);
                    }
                    i += 3;
                }
                _ => {
                    return Reply::error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&args[i])
                    ));
                }
            }
        }
        if !self.authenticated {
            return Reply::error(
                "NOAUTH HELLO must be called with the client's AUTH user and password",
            );
        }
        self.protocol = protocol;
        let proto = if protocol == Protocol::Resp3 { 3 } else { 2 };
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk("7.0.0")),
            (Reply::bulk("proto"), Reply::Integer(proto)),
            (Reply::bulk("id"), Reply::Integer(self.id as i64)),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk("master")),
            (Reply::bulk("modules"), Reply::Array(vec![])),
            (
                Reply::bulk("meridian"),
                Reply::bulk(env!("CARGO_PKG_VERSION")),
            ),
            (
                Reply::bulk("datacenter"),
                Reply::bulk(self.ctx.config.dc.clone()),
            ),
        ])
    }

    /// `AUTH password` (user `default`) or `AUTH user password`.
    fn auth(&mut self, args: &[Bytes]) -> Reply {
        if self.ctx.config.users.is_empty() {
            return Reply::error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        }
        match args {
            [_, password] => self.check_password(None, password),
            [_, user, password] => self.check_password(Some(user), password),
            _ => Reply::error("ERR syntax error"),
        }
    }

    fn check_password(&mut self, user: Option<&Bytes>, password: &[u8]) -> Reply {
        let user = user.map_or(&b"default"[..], |u| &u[..]);
        let ok = self
            .ctx
            .config
            .users
            .iter()
            .any(|(name, pass)| name.as_bytes() == user && same(pass.as_bytes(), password));
        if ok {
            self.authenticated = true;
            Reply::OK
        } else {
            Reply::error("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = args[1].to_ascii_uppercase();
        match (sub.as_slice(), args.len()) {
            (b"SETNAME", 3) => {
                if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                    return Reply::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::OK
            }
            (b"GETNAME", 2) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            (b"ID", 2) => Reply::Integer(self.id as i64),
            (b"INFO", 2) => Reply::Verbatim(self.client_line()),
            (b"SETINFO", 4) => Reply::OK,
            (b"SETNAME" | b"GETNAME" | b"ID" | b"INFO" | b"SETINFO", _) => Reply::error(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                String::from_utf8_lossy(&sub).to_lowercase()
            )),
            _ => Reply::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }

    fn client_line(&self) -> String {
        let name = self
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let resp = if self.protocol == Protocol::Resp3 {
            3
        } else {
            2
        };
        format!(
            "id={} addr={} laddr={} name={name} db=0 resp={resp}\n",
            self.id, self.peer, self.ctx.addr
        )
    }
}

/// The replies of a forwarded group (the home's, byte for byte, or one error
/// each), absorbing what the home says the session has seen into `token` (and,
/// in user scope, into the tokens of `users`).
fn forwarded_replies(
    outcome: Result<ForwardReply, ForwardError>,
    n: usize,
    token: &mut VersionVector,
    repl: Option<&crate::replication::Replication>,
    users: &[Bytes],
) -> Vec<Reply> {
    let reply = match outcome {
        Ok(reply) if reply.replies.len() == n => reply,
        Ok(reply) => {
            let why = format!(
                "ERR the home answered {} replies to {n} writes; their outcome is unknown",
                reply.replies.len()
            );
            return vec![Reply::error(why); n];
        }
        Err(e) => return vec![Reply::error(e.to_string()); n],
    };
    match VersionVector::decode(&reply.token) {
        Ok(seen) => {
            token.merge(&seen);
            if let Some(repl) = repl {
                users.iter().for_each(|user| repl.remember(user, &seen));
            }
        }
        Err(e) => tracing::warn!(error = %e, "a home answered with a damaged session token"),
    }
    reply.replies.into_iter().map(Reply::Encoded).collect()
}

/// How many times a forwarded group is sent again in a newer session epoch
/// before its refusals are the client's answer.
const MAX_AGAIN: u32 = 3;

/// The session epoch named when a home refused every write of a forwarded group
/// as overtaken (see `SessionFence`).
fn all_overtaken(reply: &ForwardReply) -> Option<u64> {
    let mut newest = None;
    for encoded in &reply.replies {
        let epoch = overtaken_epoch(&Reply::Encoded(encoded.clone()))?;
        newest = newest.max(Some(epoch));
    }
    newest
}

/// The session epoch a forwarded write's refusal names (see `SessionFence`).
fn overtaken_epoch(reply: &Reply) -> Option<u64> {
    let Reply::Encoded(bytes) = reply else {
        return None;
    };
    let text = std::str::from_utf8(bytes.strip_prefix(b"-")?).ok()?;
    Overtaken::from_error(text.trim_end())
}

/// A random id for a new session: the hasher's random keys, the time and the
/// connection's number.
fn new_session_id(conn: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(conn);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Compares secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
