//! Commands over the whole keyspace: SCAN, KEYS, RANDOMKEY, FLUSHDB and FLUSHALL.
//!
//! FLUSHDB and FLUSHALL (one database, so the same) delete every key this
//! datacenter holds as ordinary deletes made here, one change per user, so every
//! datacenter deletes the same keys. A write another datacenter makes at the
//! same time to a key being deleted is resolved as any concurrent pair is, and a
//! lost one is logged as a conflict. In a cluster of several datacenters they run
//! only with `clients.flush = "allow"`: one command would empty every region.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::Conn;
use crate::command::{self, parse_cursor, scan_options, scan_reply, syntax_error};
use crate::engine::{ScanArgs, ScanPage};
use crate::resp::Reply;

/// Keys one flush change deletes at most.
const FLUSH_CHUNK: usize = 1_000;
/// Keys KEYS and FLUSHDB look at per page.
const PAGE: usize = 10_000;

impl Conn {
    pub(super) async fn scan(&mut self, args: &[Bytes]) -> Reply {
        let cursor = match parse_cursor(&args[1]) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let (count, pattern, type_name) = match scan_options(args, 2, true) {
            Ok(options) => options,
            Err(e) => return e,
        };
        let scan = ScanArgs {
            cursor,
            count,
            pattern,
            type_name,
        };
        match self.ctx.engine.scan(scan).await {
            Ok(page) => scan_reply(
                page.cursor,
                page.keys.into_iter().map(Reply::bulk).collect(),
            ),
            Err(e) => e.reply(),
        }
    }

    pub(super) async fn keys(&mut self, args: &[Bytes]) -> Reply {
        let pattern = (args[1].as_ref() != b"*").then_some(&args[1][..]);
        match self.every_key(pattern).await {
            Ok(keys) => Reply::Array(keys.into_iter().map(Reply::bulk).collect()),
            Err(e) => e,
        }
    }

    pub(super) async fn random_key(&mut self) -> Reply {
        match self.ctx.engine.random_key().await {
            Ok(Some(key)) => Reply::bulk(key),
            Ok(None) => Reply::Null,
            Err(e) => e.reply(),
        }
    }

    /// Every live key matching `pattern`, page by page.
    async fn every_key(&self, pattern: Option<&[u8]>) -> Result<Vec<Vec<u8>>, Reply> {
        let mut keys = Vec::new();
        let mut cursor = 0;
        loop {
            let scan = ScanArgs {
                cursor,
                count: PAGE,
                pattern,
                type_name: None,
            };
            let ScanPage {
                cursor: next,
                keys: page,
            } = self.ctx.engine.scan(scan).await.map_err(|e| e.reply())?;
            keys.extend(page);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    pub(super) async fn flush_db(&mut self, args: &[Bytes]) -> Reply {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        match args.get(1).map(|a| a.to_ascii_uppercase()) {
            None => {}
            Some(mode) if args.len() == 2 && matches!(mode.as_slice(), b"SYNC" | b"ASYNC") => {}
            Some(_) => return syntax_error(),
        }
        if !self.ctx.config.flush_allowed {
            return Reply::error(format!(
                "ERR {name} is refused in a cluster of {} datacenters: it would delete every user's keys in every datacenter. Set flush = \"allow\" under [clients] in the topology file to allow it",
                self.ctx.config.datacenters
            ));
        }
        let keys = match self.every_key(None).await {
            Ok(keys) => keys,
            Err(e) => return e,
        };
        let rule = self.ctx.config.user_rule;
        let mut by_user: BTreeMap<Vec<u8>, Vec<Bytes>> = BTreeMap::new();
        for key in keys {
            by_user
                .entry(rule.user_of(&key).to_vec())
                .or_default()
                .push(Bytes::from(key));
        }
        let Some(crate::command::Kind::Write(del_fn)) = command::lookup(b"DEL").map(|s| s.kind)
        else {
            return Reply::error("ERR DEL is missing from the command table");
        };
        let mut waiting = Vec::new();
        for (user, keys) in by_user {
            for chunk in keys.chunks(FLUSH_CHUNK) {
                let mut del = vec![Bytes::from_static(b"DEL")];
                del.extend_from_slice(chunk);
                let rx = self
                    .ctx
                    .engine
                    .write(del_fn, del, Bytes::from(user.clone()), None)
                    .await;
                waiting.push(rx);
            }
        }
        let me = self.ctx.engine.dc().to_owned();
        for rx in waiting {
            match rx.await {
                Ok(written) if written.reply.is_error() => return written.reply,
                Ok(written) => self.token.advance(&me, written.seq),
                Err(_) => {
                    return Reply::error(
                        "ERR the flush was abandoned by a stopping proxy; some keys may remain",
                    );
                }
            }
        }
        Reply::OK
    }
}
