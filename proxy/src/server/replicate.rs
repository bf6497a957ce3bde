//! Commands about replication: `WAIT` and the `MERIDIAN` family.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use meridian_policies::VersionVector;

use super::Context;
use crate::command;
use crate::resp::Reply;
use meridian_policies::SessionToken;

/// `WAIT numreplicas timeout`: waits until `numreplicas` other datacenters have
/// applied the client's own writes (its session token, wherever its writes ran),
/// or `timeout` milliseconds pass (0: no limit). Replies with how many have.
pub(super) async fn wait(ctx: &Context, args: &[Bytes], token: &VersionVector) -> Reply {
    let (Some(n), Some(timeout)) = (command::parse_i64(&args[1]), command::parse_i64(&args[2]))
    else {
        return command::not_an_integer();
    };
    if timeout < 0 {
        return Reply::error("ERR timeout is negative");
    }
    let Some(repl) = &ctx.replication else {
        return Reply::Integer(0);
    };
    let timeout = (timeout > 0).then(|| Duration::from_millis(timeout as u64));
    let n = n.max(0) as usize;
    Reply::Integer(repl.wait_for(token, n, timeout).await as i64)
}

/// A session token given as an argument, or the error that says why it is not one.
pub(super) fn parse_token(arg: &[u8]) -> Result<SessionToken, Reply> {
    std::str::from_utf8(arg)
        .map_err(|_| "it is not text".to_owned())
        .and_then(|text| text.parse::<SessionToken>().map_err(|e| e.to_string()))
        .map_err(|why| Reply::error(format!("ERR invalid session token: {why}")))
}

/// `MERIDIAN WAITFOR token timeout [TIME]`: waits until this datacenter has
/// applied everything `token` (a session token from any connection, any
/// datacenter) names, or `timeout` milliseconds pass (0: no limit). Replies 1 once
/// it has (with `TIME`: the wall-clock time it saw that, in microseconds since the
/// Unix epoch, so a prober on the same clock can time the change without the
/// reply's way back), 0 on timeout. The connection's own session is left as it
/// was: this is a barrier ("has this region seen that write yet?"), woken by
/// apply, not a poll.
async fn wait_for_token(ctx: &Context, args: &[Bytes]) -> Reply {
    let token = match parse_token(&args[2]) {
        Ok(token) => token,
        Err(error) => return error,
    };
    let timeout = match command::parse_i64(&args[3]) {
        Some(t) if t >= 0 => t as u64,
        Some(_) => return Reply::error("ERR timeout is negative"),
        None => return command::not_an_integer(),
    };
    let timed = match args.get(4) {
        None => false,
        Some(flag) if flag.eq_ignore_ascii_case(b"TIME") => true,
        Some(_) => return Reply::error("ERR syntax error"),
    };
    let mut applied = ctx.engine.watch_applied();
    let caught = applied.wait_for(|a| a.dominates(token.vector()));
    let done = match timeout {
        0 => caught.await.is_ok(),
        ms => matches!(
            tokio::time::timeout(Duration::from_millis(ms), caught).await,
            Ok(Ok(_))
        ),
    };
    Reply::Integer(match (done, timed) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => crate::engine::wall_us() as i64,
    })
}

/// `MERIDIAN DIGEST | APPLIED | LAG | CONFLICTS [count] | RESETSTATS | WAITFOR
/// token timeout [TIME]` (`MERIDIAN SESSION` is the connection's own). RESETSTATS
/// forgets the per-peer stage lags (so a measurement can start after a warm-up).
pub(super) async fn meridian(ctx: &Context, args: &[Bytes]) -> Reply {
    let sub = args[1].to_ascii_uppercase();
    match (sub.as_slice(), args.len()) {
        (b"DIGEST", 2) => {
            let engine = ctx.engine.clone();
            match tokio::task::spawn_blocking(move || engine.digest()).await {
                Ok(Ok((keys, digest))) => Reply::bulk(format!("{keys}:{digest:016x}")),
                Ok(Err(e)) => Reply::error(format!("ERR {e}")),
                Err(e) => Reply::error(format!("ERR {e}")),
            }
        }
        (b"APPLIED", 2) => Reply::bulk(ctx.engine.applied().to_string()),
        (b"LAG", 2) => {
            let mut out = String::new();
            if let Some(repl) = &ctx.replication {
                for lag in repl.lag() {
                    let _ = writeln!(
                        out,
                        "{} applied={} known={} seconds_behind={:.3}",
                        lag.origin, lag.applied, lag.known, lag.seconds_behind
                    );
                }
            }
            Reply::bulk(out)
        }
        (b"CONFLICTS", 2 | 3) => {
            let count = match args.get(2).map(|a| command::parse_i64(a)) {
                None => 10,
                Some(Some(n)) if n >= 0 => n as usize,
                Some(_) => return Reply::error("ERR count must be a non-negative integer"),
            };
            Reply::Array(ctx.engine.conflicts(count).iter().map(conflict).collect())
        }
        (b"RESETSTATS", 2) => {
            for peer in ctx.peers() {
                for stage in [&peer.ship_lag, &peer.arrival_lag, &peer.applied_lag] {
                    stage.reset();
                }
            }
            Reply::OK
        }
        (b"WAITFOR", 4 | 5) => wait_for_token(ctx, args).await,
        (b"DIGEST" | b"APPLIED" | b"LAG" | b"CONFLICTS" | b"RESETSTATS" | b"WAITFOR", _) => {
            Reply::error(format!(
                "ERR wrong number of arguments for 'meridian|{}' command",
                String::from_utf8_lossy(&sub).to_lowercase()
            ))
        }
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try MERIDIAN DIGEST, MERIDIAN APPLIED, MERIDIAN LAG, MERIDIAN CONFLICTS, MERIDIAN RESETSTATS, MERIDIAN WAITFOR or MERIDIAN SESSION.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// One conflict as `MERIDIAN CONFLICTS` gives it: a map of `key`, `found_at_ms`,
/// `kept` and `lost` (each a version `timestamp@origin#seq`) and `kept_value` and
/// `lost_value` (a string, a hash as a flat array of fields and values, or nil
/// for a delete).
fn conflict(c: &crate::engine::conflicts::Conflict) -> Reply {
    use crate::change::Data;
    let value = |v: &Option<crate::change::Value>| match v.as_ref().map(|v| &v.data) {
        None => Reply::Null,
        Some(Data::String(s)) => Reply::Bulk(Bytes::copy_from_slice(s)),
        Some(Data::Hash(h)) => Reply::Array(
            h.iter()
                .flat_map(|(f, v)| [f, v])
                .map(|b| Reply::Bulk(Bytes::copy_from_slice(b)))
                .collect(),
        ),
        Some(Data::Set(members)) => Reply::Array(
            members
                .iter()
                .map(|m| Reply::Bulk(Bytes::copy_from_slice(m)))
                .collect(),
        ),
        Some(Data::List(items)) => Reply::Array(
            items
                .iter()
                .map(|m| Reply::Bulk(Bytes::copy_from_slice(m)))
                .collect(),
        ),
        Some(Data::Zset(set)) => Reply::Array(
            set.iter()
                .flat_map(|(m, score)| {
                    [Reply::Bulk(Bytes::copy_from_slice(m)), Reply::Double(score)]
                })
                .collect(),
        ),
    };
    let field = |name: &str, reply| (Reply::bulk(name.to_owned()), reply);
    Reply::Map(vec![
        field("key", Reply::Bulk(Bytes::copy_from_slice(&c.key))),
        field("found_at_ms", Reply::Integer(c.at_ms as i64)),
        field("kept", Reply::bulk(c.kept.0.to_string())),
        field("kept_value", value(&c.kept.1)),
        field("lost", Reply::bulk(c.lost.0.to_string())),
        field("lost_value", value(&c.lost.1)),
    ])
}
