//! One client connection: read, parse, execute in order, reply.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::{Context, info};
use crate::command::{self, Kind, Spec};
use crate::resp::{Protocol, Reply, RequestParser};

/// Replies are written out once this much is encoded, even mid-pipeline.
const OUT_FLUSH: usize = 1 << 20;
/// Most pipelined commands executed as one group.
const MAX_PIPELINE: usize = 1024;

/// A read waiting to run with the reads next to it.
struct QueuedRead {
    index: usize,
    spec: &'static Spec,
    f: command::DataFn,
    args: Vec<Bytes>,
    started: Instant,
}

/// A reply that is known, or a write whose reply is still coming.
enum Pending {
    Ready(Reply),
    Write {
        rx: oneshot::Receiver<Reply>,
        started: Instant,
        index: usize,
    },
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
                if !more {
                    break;
                }
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

    /// Executes pipelined commands in order; consecutive valid reads run as one group.
    async fn execute_all(&mut self, batch: Vec<Vec<Bytes>>) -> Next {
        let mut reads: Vec<QueuedRead> = Vec::new();
        for args in batch {
            if let Some((index, spec)) = command::lookup_indexed(&args[0]) {
                if let (Kind::Read(f), true) = (spec.kind, self.authenticated) {
                    let valid = spec.arity_ok(args.len())
                        && command::user_of_command(spec, &args, self.ctx.config.user_rule).is_ok();
                    if valid {
                        self.ctx.total_commands.fetch_add(1, Ordering::Relaxed);
                        reads.push(QueuedRead {
                            index,
                            spec,
                            f,
                            args,
                            started: Instant::now(),
                        });
                        continue;
                    }
                }
            }
            self.run_reads(&mut reads).await;
            if self.execute(args).await == Next::Close {
                return Next::Close;
            }
        }
        self.run_reads(&mut reads).await;
        Next::Continue
    }

    /// Runs queued reads after this connection's earlier writes.
    async fn run_reads(&mut self, reads: &mut Vec<QueuedRead>) {
        if reads.is_empty() {
            return;
        }
        self.settle().await;
        let group: Vec<(&Spec, command::DataFn, &[Bytes])> = reads
            .iter()
            .map(|r| (r.spec, r.f, r.args.as_slice()))
            .collect();
        let allowed = (self.ctx.config.max_output as usize)
            .saturating_sub(self.pending_bytes.saturating_add(self.out.len()));
        let replies = self.ctx.engine.read_many(&group, allowed).await;
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
            if let Pending::Ready(reply) = pending {
                reply.encode(self.protocol, &mut self.out);
            }
        }
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Waits for this connection's queued writes, so what follows sees them.
    async fn settle(&mut self) {
        for pending in self.pending.iter_mut() {
            if let Pending::Write { rx, started, index } = pending {
                let reply = rx.await.unwrap_or_else(|_| {
                    Reply::error(
                        "ERR the write was abandoned by a stopping proxy; its outcome is unknown",
                    )
                });
                self.ctx
                    .commands
                    .record(*index, started.elapsed(), reply.is_error());
                self.pending_bytes = self.pending_bytes.saturating_add(reply.size());
                *pending = Pending::Ready(reply);
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
            self.reply(command::unknown_command(&args));
            return Next::Continue;
        };
        let started = Instant::now();
        if !self.authenticated && !matches!(spec.name, "AUTH" | "HELLO" | "QUIT") {
            self.ctx.commands.record(index, started.elapsed(), true);
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
                self.reply(reply);
                return Next::Continue;
            }
        };
        match spec.kind {
            Kind::Write(f) => {
                let rx = self
                    .ctx
                    .engine
                    .write(f, args, user.unwrap_or_default())
                    .await;
                self.pending
                    .push_back(Pending::Write { rx, started, index });
                Next::Continue
            }
            Kind::Read(f) => {
                self.settle().await;
                let reply = self.ctx.engine.read(spec, f, &args).await;
                self.ctx
                    .commands
                    .record(index, started.elapsed(), reply.is_error());
                self.reply(reply);
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
            "DBSIZE" => match self.ctx.engine.key_count().await {
                Ok(n) => Reply::Integer(n as i64),
                Err(e) => e.reply(),
            },
            "WAIT" => {
                // A wait that may never end ends with its client.
                tokio::select! {
                    reply = super::replicate::wait(&self.ctx, args) => reply,
                    () = gone(&self.stream) => return Next::Close,
                }
            }
            "MERIDIAN" => super::replicate::meridian(&self.ctx, args).await,
            _ => command::unknown_command(args),
        };
        self.reply(reply);
        Next::Continue
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

/// Compares secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
