//! INFO and COMMAND replies.

use std::fmt::Write as _;

use bytes::Bytes;

use super::Context;
use crate::command::table::{COMMANDS, Kind};
use crate::metrics::Section;
use crate::resp::Reply;

/// Whether `INFO [section]` shows section `name`.
pub(super) fn shows(section: Option<&Bytes>, name: &str) -> bool {
    match section
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .as_deref()
    {
        None | Some("all" | "default" | "everything") => true,
        Some(wanted) => wanted == name,
    }
}

/// The INFO text: sections server, clients, stats, replication, keyspace.
pub(super) fn info(
    ctx: &Context,
    section: Option<&Bytes>,
    keys: Result<u64, crate::engine::BackendError>,
) -> String {
    let show = |name: &str| shows(section, name);
    let mut out = String::new();
    if show("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:7.0.0\r\nmeridian_version:{}\r\nredis_mode:standalone\r\ndatacenter:{}\r\n\
             process_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            ctx.config.dc,
            std::process::id(),
            ctx.addr.port(),
            ctx.started.elapsed().as_secs()
        );
    }
    let families = super::observe::collect(ctx);
    let section = |s| crate::metrics::info_section(&families, s);
    if show("clients") {
        let _ = write!(
            out,
            "# Clients\r\n{}maxclients:{}\r\n\r\n",
            section(Section::Clients),
            ctx.config.max_clients
        );
    }
    if show("stats") {
        let _ = write!(out, "# Stats\r\n{}\r\n", section(Section::Stats));
    }
    if show("replication") {
        let _ = write!(
            out,
            "# Replication\r\nrole:master\r\ndatacenter:{}\r\napplied:{}\r\n{}{}{}{}\r\n",
            ctx.config.dc,
            ctx.engine.applied(),
            section(Section::Replication),
            section(Section::Peer),
            section(Section::Origin),
            section(Section::Replica),
        );
    }
    if show("keyspace") {
        out.push_str("# Keyspace\r\n");
        if let Ok(keys @ 1..) = keys {
            let (expires, avg_ttl) = ctx.engine.expiry_stats();
            let expires = expires.min(keys);
            let _ = write!(
                out,
                "db0:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n"
            );
        }
        out.push_str("\r\n");
    }
    out
}

/// COMMAND, COMMAND COUNT, COMMAND INFO name..., COMMAND DOCS.
pub(super) fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|s| s.to_ascii_uppercase()) else {
        return Reply::Array(COMMANDS.iter().map(entry).collect());
    };
    match sub.as_slice() {
        b"COUNT" => Reply::Integer(COMMANDS.len() as i64),
        b"DOCS" => Reply::Array(vec![]),
        b"INFO" => Reply::Array(
            args[2..]
                .iter()
                .map(|name| crate::command::lookup(name).map_or(Reply::Null, entry))
                .collect(),
        ),
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

fn entry(spec: &crate::command::Spec) -> Reply {
    let flags = match spec.kind {
        Kind::Read(_) => vec!["readonly", "fast"],
        Kind::Write(_) => vec!["write", "denyoom"],
        Kind::Server => vec!["fast"],
    };
    Reply::Array(vec![
        Reply::bulk(spec.name.to_ascii_lowercase()),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Array(flags.into_iter().map(Reply::Simple).collect()),
        Reply::Integer(spec.first_key as i64),
        Reply::Integer(i64::from(spec.last_key)),
        Reply::Integer(spec.step as i64),
    ])
}
