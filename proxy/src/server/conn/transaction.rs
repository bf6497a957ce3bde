//! `MULTI`/`EXEC`/`DISCARD`/`WATCH`/`UNWATCH` on a connection, as Redis defines
//! them, for the keys of one user.
//!
//! The commands queued after `MULTI` run where the user's writes run (its home),
//! in the writer, in order and with nothing else between them, and their effects
//! are one change: one log record, applied whole in every datacenter. A command
//! refused while queuing (unknown, wrong arity, another user's keys, a connection
//! command) makes `EXEC` answer `EXECABORT`; an error while running is that
//! command's reply and the others still run, as in Redis.
//!
//! `WATCH` records the version of each key (the change that last wrote it, here);
//! `EXEC` runs nothing and answers the null array when one of them has another
//! version at the home by then. A key written to the value it had still counts as
//! touched, as in Redis.

use std::time::Instant;

use bytes::Bytes;

use super::{Conn, Next, Work};
use crate::command::{self, Kind, Spec};
use crate::engine::Transaction;
use crate::resp::Reply;

/// The name a transaction travels under to its home: not a command clients can
/// send (it is in no table).
pub(crate) const FORWARDED: &[u8] = b"MERIDIAN.TRANSACTION";

/// A transaction being queued, after `MULTI`.
#[derive(Default)]
pub(super) struct Multi {
    transaction: Transaction,
    /// The user whose keys it touches, once a command named one.
    user: Option<Bytes>,
    /// A command was refused while queuing: `EXEC` aborts.
    failed: bool,
}

/// The keys `WATCH`ed on a connection, and their user.
#[derive(Default)]
pub(super) struct Watched {
    keys: Vec<(Vec<u8>, Option<meridian_policies::Version>)>,
    user: Option<Bytes>,
}

/// The CROSSSLOT error for a transaction touching two users.
fn two_users(first: &[u8], other: &[u8]) -> Reply {
    Reply::error(format!(
        "CROSSSLOT Keys in request belong to different users ('{}' and '{}'); a transaction may only touch one user's keys",
        String::from_utf8_lossy(first),
        String::from_utf8_lossy(other)
    ))
}

impl Conn {
    /// Whether a transaction is being queued.
    pub(super) fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// A command was refused while a transaction is being queued: `EXEC` aborts.
    pub(super) fn fail_multi(&mut self) {
        if let Some(multi) = self.multi.as_mut() {
            multi.failed = true;
        }
    }

    /// Queues a command of a transaction; `user` is the user its keys name.
    pub(super) fn queue_in_multi(&mut self, spec: &Spec, args: Vec<Bytes>, user: Option<Bytes>) {
        let f = match spec.kind {
            Kind::Read(f) | Kind::Write(f) => f,
            Kind::Server => {
                self.fail_multi();
                self.reply(Reply::error(format!(
                    "ERR {} is not allowed inside a transaction on meridian: only data commands are",
                    spec.name
                )));
                return;
            }
        };
        let Some(multi) = self.multi.as_mut() else {
            return;
        };
        if let Some(user) = user {
            let first = multi.user.as_ref().or(self.watched.user.as_ref());
            if let Some(first) = first
                && *first != user
            {
                let refused = two_users(first, &user);
                multi.failed = true;
                self.reply(refused);
                return;
            }
            multi.user = Some(user);
        }
        multi.transaction.commands.push((f, args));
        self.reply(Reply::Simple("QUEUED"));
    }

    /// The transaction commands themselves.
    pub(super) async fn transaction_command(
        &mut self,
        spec: &Spec,
        args: &[Bytes],
        index: usize,
        started: Instant,
    ) -> Next {
        let reply = match spec.name {
            "MULTI" if self.multi.is_some() => Reply::error("ERR MULTI calls can not be nested"),
            "MULTI" => {
                self.multi = Some(Multi::default());
                Reply::OK
            }
            "DISCARD" => match self.multi.take() {
                None => Reply::error("ERR DISCARD without MULTI"),
                Some(_) => {
                    self.watched = Watched::default();
                    Reply::OK
                }
            },
            "UNWATCH" => {
                self.watched = Watched::default();
                Reply::OK
            }
            "WATCH" if self.multi.is_some() => {
                Reply::error("ERR WATCH inside MULTI is not allowed")
            }
            "WATCH" => self.watch(spec, args).await,
            "EXEC" => {
                let Some(multi) = self.multi.take() else {
                    self.reply(Reply::error("ERR EXEC without MULTI"));
                    return Next::Continue;
                };
                let watched = std::mem::take(&mut self.watched);
                if multi.failed {
                    Reply::error("EXECABORT Transaction discarded because of previous errors.")
                } else {
                    let user = multi.user.or(watched.user).unwrap_or_default();
                    let mut transaction = multi.transaction;
                    transaction.watched = watched.keys;
                    self.write(Work::Transaction(transaction), user, index, started)
                        .await;
                    return Next::Continue;
                }
            }
            _ => command::unknown_command(args),
        };
        self.reply(reply);
        Next::Continue
    }

    /// `WATCH key...`: records each key's version as of now, after this
    /// connection's earlier writes.
    async fn watch(&mut self, spec: &Spec, args: &[Bytes]) -> Reply {
        let user = match command::user_of_command(spec, args, self.ctx.config.user_rule) {
            Ok(user) => user.unwrap_or_default(),
            Err(reply) => return reply,
        };
        if let Some(first) = &self.watched.user
            && *first != user
        {
            return two_users(first, &user);
        }
        self.settle().await;
        let keys: Vec<Vec<u8>> = args[1..].iter().map(|k| k.to_vec()).collect();
        match self.ctx.engine.versions(keys.clone()).await {
            Ok(versions) => {
                self.watched.user = Some(user);
                self.watched.keys.extend(keys.into_iter().zip(versions));
                Reply::OK
            }
            Err(reply) => reply,
        }
    }
}

/// A transaction as one forwarded command: the marker, the number of watched
/// keys, each key and its version (empty: never written), then each command as
/// its argument count and arguments.
pub(crate) fn to_forwarded(transaction: &Transaction) -> Vec<Bytes> {
    let mut args = vec![
        Bytes::from_static(FORWARDED),
        Bytes::from(transaction.watched.len().to_string()),
    ];
    for (key, version) in &transaction.watched {
        args.push(Bytes::copy_from_slice(key));
        args.push(Bytes::from(
            version.as_ref().map_or_else(Vec::new, |v| v.to_bytes()),
        ));
    }
    for (_, command) in &transaction.commands {
        args.push(Bytes::from(command.len().to_string()));
        args.extend(command.iter().cloned());
    }
    args
}

/// Reads a forwarded transaction back (see [`to_forwarded`]); the error says
/// what is malformed.
pub(crate) fn from_forwarded(args: &[Bytes]) -> Result<Transaction, String> {
    fn count(arg: Option<&Bytes>, what: &str) -> Result<usize, String> {
        arg.and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("a forwarded transaction has no valid {what}"))
    }
    let mut rest = args.get(1..).unwrap_or_default().iter();
    let mut transaction = Transaction::default();
    for _ in 0..count(rest.next(), "count of watched keys")? {
        let (Some(key), Some(version)) = (rest.next(), rest.next()) else {
            return Err("a forwarded transaction ends inside its watched keys".into());
        };
        let version = match version.is_empty() {
            true => None,
            false => Some(
                meridian_policies::Version::decode(version)
                    .map_err(|e| format!("a forwarded transaction has a bad version: {e}"))?,
            ),
        };
        transaction.watched.push((key.to_vec(), version));
    }
    while let Some(argc) = rest.next() {
        let argc = count(Some(argc), "argument count")?;
        let command: Vec<Bytes> = rest.by_ref().take(argc).cloned().collect();
        if argc == 0 || command.len() != argc {
            return Err("a forwarded transaction ends inside a command".into());
        }
        let spec = command::lookup(&command[0])
            .filter(|spec| spec.arity_ok(argc))
            .ok_or_else(|| "a forwarded transaction holds an invalid command".to_owned())?;
        let (Kind::Read(f) | Kind::Write(f)) = spec.kind else {
            return Err(format!(
                "a forwarded transaction holds {}, not a data command",
                spec.name
            ));
        };
        transaction.commands.push((f, command));
    }
    Ok(transaction)
}
