//! `[homes]`, `[session]`, `[replication]`, `[tls]`, `[links]` and the ring order.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::Ids;
use super::reader::{Report, Table};
use crate::model::{
    ClientSettings, DefaultHome, FlushPolicy, Follow, FsyncPolicy, Homes, Link, OnHomeDown,
    OnStale, ReplicationSettings, SessionScope, SessionSettings, TlsSettings, UserKey, Writes,
};
use crate::route::DcIdx;

const HOMES_KEYS: &[&str] = &[
    "user",
    "default",
    "pins",
    "on_home_down",
    "writes",
    "follow",
];
const FOLLOW_KEYS: &[&str] = &["share", "min_writes", "window_ms", "min_interval_ms"];
const SESSION_KEYS: &[&str] = &[
    "read_wait_ms",
    "on_stale",
    "scope",
    "session_ttl_ms",
    "max_users",
];
const CLIENTS_KEYS: &[&str] = &["output_buffer_limit", "flush"];
const REPLICATION_KEYS: &[&str] = &["fsync", "log_retention", "heartbeat_ms", "peer_timeout_ms"];
const TLS_KEYS: &[&str] = &["ca"];
const LINK_KEYS: &[&str] = &["delay_ms", "jitter_ms", "loss"];
const AUTH_KEYS: &[&str] = &["users"];

/// The default CA path, relative to the topology file.
const DEFAULT_CA: &str = "certs/ca.pem";
const MIB: u64 = 1 << 20;

/// The optional section `key` of the root, as a table to read (empty when absent).
fn section<'t, 'i>(
    report: &mut Report<'_>,
    root: &Table<'t, 'i>,
    key: &str,
    allowed: &'static [&'static str],
) -> Option<Table<'t, 'i>> {
    let (table, span) = root.table(report, key)?;
    Some(Table::new(report, table, span, key.to_owned(), allowed))
}

pub(super) fn ring_order(
    report: &mut Report<'_>,
    t: &Table<'_, '_>,
    ids: &Ids,
    n: usize,
) -> Option<Vec<DcIdx>> {
    let Some((names, span)) = t.strings(report, "ring") else {
        return (t.get("ring").is_none()).then(|| (0..n as u8).map(DcIdx).collect());
    };
    let mut order = Vec::with_capacity(names.len());
    let mut seen = vec![false; n];
    let mut ok = true;
    for (name, name_span) in names {
        match ids.resolve(report, "cluster.ring", name, &name_span) {
            Some(idx) if seen[idx.get()] => {
                report.at(
                    &name_span,
                    "cluster.ring",
                    format!("the ring lists {name:?} twice; each datacenter must appear once"),
                );
                ok = false;
            }
            Some(idx) => {
                seen[idx.get()] = true;
                order.push(idx);
            }
            None => ok = false,
        }
    }
    let missing: Vec<String> = ids
        .names
        .iter()
        .filter(|id| ids.index.get(*id).is_some_and(|i| !seen[i.get()]))
        .map(|id| format!("{id:?}"))
        .collect();
    if !missing.is_empty() {
        report.at(
            &span,
            "cluster.ring",
            format!(
                "the ring misses {}; each datacenter must appear once",
                missing.join(", ")
            ),
        );
        ok = false;
    }
    ok.then_some(order)
}

pub(super) fn homes(report: &mut Report<'_>, root: &Table<'_, '_>, ids: &Ids) -> Option<Homes> {
    let mut homes = Homes {
        user: UserKey::HashTag,
        pins: Vec::new(),
        on_home_down: OnHomeDown::Reject,
        writes: Writes::Home,
        follow: None,
        default: DefaultHome::Rendezvous,
    };
    if root.get("homes").is_none() {
        return Some(homes);
    }
    let t = section(report, root, "homes", HOMES_KEYS)?;
    let before = report.problems.len();
    let users = [("hash-tag", UserKey::HashTag), ("prefix", UserKey::Prefix)];
    homes.user = t.choice(report, "user", &users).unwrap_or(UserKey::HashTag);
    let defaults = [
        ("rendezvous", DefaultHome::Rendezvous),
        ("first-write", DefaultHome::FirstWrite),
    ];
    homes.default = t.choice(report, "default", &defaults).unwrap_or_default();
    let policies = [
        ("reject", OnHomeDown::Reject),
        ("next-in-line", OnHomeDown::NextInLine),
    ];
    homes.on_home_down = t
        .choice(report, "on_home_down", &policies)
        .unwrap_or(OnHomeDown::Reject);
    if let (OnHomeDown::NextInLine, Some(value)) = (homes.on_home_down, t.get("on_home_down"))
        && ids.names.len() < 3
    {
        report.at(
            &value.span(),
            "homes.on_home_down",
            format!(
                "\"next-in-line\" needs at least three datacenters, and this topology has {}: a takeover must be agreed by a majority, and with two datacenters neither side of a cut is a majority without the other, so the next in line could never take over; use \"reject\"",
                ids.names.len()
            ),
        );
    }
    let writes = [("home", Writes::Home), ("local", Writes::Local)];
    homes.writes = t.choice(report, "writes", &writes).unwrap_or(Writes::Home);
    if let Some((pins, _)) = t.table(report, "pins") {
        for (user, dc) in pins.iter() {
            let key = format!("homes.pins.{:?}", user.get_ref());
            let Some(name) = dc.get_ref().as_str() else {
                report.at(
                    &dc.span(),
                    &key,
                    format!(
                        "expected a datacenter id, found {}",
                        dc.get_ref().type_str()
                    ),
                );
                continue;
            };
            if let Some(idx) = ids.resolve(report, &key, name, &dc.span()) {
                homes.pins.push((user.get_ref().to_string(), idx));
            }
        }
    }
    homes.follow = follow(report, &t);
    if homes.default == DefaultHome::FirstWrite
        && homes.writes == Writes::Local
        && let Some(value) = t.get("default")
    {
        report.at(
            &value.span(),
            "homes.default",
            "\"first-write\" places users at homes, and with writes = \"local\" there are none",
        );
    }
    if homes.follow.is_some() && homes.writes == Writes::Local {
        let span = t.get("follow").map(|v| v.span()).unwrap_or_default();
        report.at(
            &span,
            "homes.follow",
            "homes follow their users only where writes run at homes; with writes = \"local\" there are none to move",
        );
    }
    (report.problems.len() == before).then_some(homes)
}

/// `[homes] follow`: `true` (the defaults), `false`, or a table of settings.
fn follow(report: &mut Report<'_>, homes: &Table<'_, '_>) -> Option<Follow> {
    let value = homes.get("follow")?;
    if let Some(on) = value.get_ref().as_bool() {
        return on.then(Follow::default);
    }
    let (table, span) = homes.table(report, "follow")?;
    let t = Table::new(report, table, span, "homes.follow".into(), FOLLOW_KEYS);
    let mut follow = Follow::default();
    if let Some((share, _)) = t.number(report, "share", 0.51..=1.0, "") {
        follow.share_milli = (share * 1000.0).round() as u32;
    }
    if let Some((n, _)) = t.integer(report, "min_writes", 1..=1_000_000, " writes") {
        follow.min_writes = n as u32;
    }
    if let Some((ms, _)) = t.integer(report, "window_ms", 100..=86_400_000, " ms") {
        follow.window = Duration::from_millis(ms as u64);
    }
    if let Some((ms, _)) = t.integer(report, "min_interval_ms", 0..=604_800_000, " ms") {
        follow.min_interval = Duration::from_millis(ms as u64);
    }
    if follow.min_interval < follow.window {
        let at = t.get("min_interval_ms").unwrap_or(value);
        report.at(
            &at.span(),
            "homes.follow.min_interval_ms",
            format!(
                "{} ms is shorter than the window ({} ms): a user's new home must see a whole window of its traffic before it may move the user on",
                follow.min_interval.as_millis(),
                follow.window.as_millis()
            ),
        );
    }
    Some(follow)
}

pub(super) fn session(report: &mut Report<'_>, root: &Table<'_, '_>) -> Option<SessionSettings> {
    let mut session = SessionSettings {
        read_wait: Duration::from_millis(100),
        on_stale: OnStale::Forward,
        scope: SessionScope::Connection,
        ttl: Duration::from_secs(3_600),
        max_users: 1_000_000,
    };
    if root.get("session").is_none() {
        return Some(session);
    }
    let t = section(report, root, "session", SESSION_KEYS)?;
    if let Some((ms, _)) = t.integer(report, "read_wait_ms", 0..=60_000, " ms") {
        session.read_wait = Duration::from_millis(ms as u64);
    }
    let scopes = [
        ("connection", SessionScope::Connection),
        ("user", SessionScope::User),
    ];
    session.scope = t
        .choice(report, "scope", &scopes)
        .unwrap_or(SessionScope::Connection);
    if let Some((ms, _)) = t.integer(report, "session_ttl_ms", 1_000..=604_800_000, " ms") {
        session.ttl = Duration::from_millis(ms as u64);
    }
    if let Some((n, _)) = t.integer(report, "max_users", 1..=100_000_000, " users") {
        session.max_users = n as u64;
    }
    let policies = [
        ("forward", OnStale::Forward),
        ("wait", OnStale::Wait),
        ("error", OnStale::Error),
    ];
    session.on_stale = t
        .choice(report, "on_stale", &policies)
        .unwrap_or(OnStale::Forward);
    Some(session)
}

pub(super) fn clients(report: &mut Report<'_>, root: &Table<'_, '_>) -> Option<ClientSettings> {
    let mut clients = ClientSettings {
        output_buffer_limit: 512 * MIB,
        flush: FlushPolicy::Refuse,
    };
    if root.get("clients").is_none() {
        return Some(clients);
    }
    let t = section(report, root, "clients", CLIENTS_KEYS)?;
    let policies = [
        ("refuse", FlushPolicy::Refuse),
        ("allow", FlushPolicy::Allow),
    ];
    if t.get("flush").is_some() {
        clients.flush = t.choice(report, "flush", &policies)?;
    }
    let Some((text, span)) = t.string(report, "output_buffer_limit") else {
        return Some(clients);
    };
    match parse_size(text) {
        Some(bytes) if bytes >= 64 << 10 => clients.output_buffer_limit = bytes,
        Some(_) => {
            let message = format!("{text:?} is too small: allow at least 64KiB");
            report.at(&span, "clients.output_buffer_limit", message);
            return None;
        }
        None => {
            let message =
                format!("{text:?} is not a size: write a number and a unit, e.g. \"256MiB\"");
            report.at(&span, "clients.output_buffer_limit", message);
            return None;
        }
    }
    Some(clients)
}

pub(super) fn replication(
    report: &mut Report<'_>,
    root: &Table<'_, '_>,
) -> Option<ReplicationSettings> {
    let mut settings = ReplicationSettings {
        fsync: FsyncPolicy::Every(Duration::from_millis(10)),
        log_retention_bytes: 1 << 30,
        heartbeat: Duration::from_millis(500),
        peer_timeout: Duration::from_secs(3),
    };
    if root.get("replication").is_none() {
        return Some(settings);
    }
    let t = section(report, root, "replication", REPLICATION_KEYS)?;
    let before = report.problems.len();
    if let Some((text, span)) = t.string(report, "fsync") {
        match parse_fsync(text) {
            Some(policy) => settings.fsync = policy,
            None => report.at(&span, "replication.fsync", format!("{text:?} is not \"always\", \"never\" or \"every-<N>ms\" with N from 1 to 10000")),
        }
    }
    if let Some((text, span)) = t.string(report, "log_retention") {
        match parse_size(text) {
            Some(bytes) if bytes >= MIB => settings.log_retention_bytes = bytes,
            Some(_) => report.at(
                &span,
                "replication.log_retention",
                format!("{text:?} is too small: keep at least 1MiB of log"),
            ),
            None => report.at(
                &span,
                "replication.log_retention",
                format!(
                    "{text:?} is not a size: write a number and a unit, e.g. \"512MiB\" or \"1GiB\""
                ),
            ),
        }
    }
    if let Some((ms, _)) = t.integer(report, "heartbeat_ms", 10..=60_000, " ms") {
        settings.heartbeat = Duration::from_millis(ms as u64);
    }
    if let Some((ms, span)) = t.integer(report, "peer_timeout_ms", 100..=600_000, " ms") {
        settings.peer_timeout = Duration::from_millis(ms as u64);
        if settings.peer_timeout < 2 * settings.heartbeat {
            report.at(
                &span,
                "replication.peer_timeout_ms",
                format!(
                    "{ms} ms is less than two heartbeats ({} ms each): a live peer would be declared down",
                    settings.heartbeat.as_millis()
                ),
            );
        }
    }
    (report.problems.len() == before).then_some(settings)
}

fn parse_fsync(text: &str) -> Option<FsyncPolicy> {
    match text {
        "always" => Some(FsyncPolicy::Always),
        "never" => Some(FsyncPolicy::Never),
        _ => {
            let ms: u64 = text
                .strip_prefix("every-")?
                .strip_suffix("ms")?
                .parse()
                .ok()?;
            (1..=10_000)
                .contains(&ms)
                .then(|| FsyncPolicy::Every(Duration::from_millis(ms)))
        }
    }
}

/// `"512MiB"`, `"1GiB"`, `"10GB"`, `"4096B"`: a number and a binary or decimal unit.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

pub(super) fn tls(report: &mut Report<'_>, root: &Table<'_, '_>, base: &Path) -> TlsSettings {
    let ca = root
        .get("tls")
        .and_then(|_| section(report, root, "tls", TLS_KEYS))
        .and_then(|t| t.string(report, "ca"))
        .map_or(DEFAULT_CA, |(ca, _)| ca);
    TlsSettings { ca: base.join(ca) }
}

/// `[auth] users = { name = "password" }`: who may connect. `default` is the user of
/// a one-argument `AUTH password`.
pub(super) fn auth(report: &mut Report<'_>, root: &Table<'_, '_>) -> Option<Vec<(String, String)>> {
    if root.get("auth").is_none() {
        return Some(Vec::new());
    }
    let t = section(report, root, "auth", AUTH_KEYS)?;
    let before = report.problems.len();
    let mut users = Vec::new();
    match t.table(report, "users") {
        Some((table, span)) => {
            for (name, password) in table.iter() {
                let key = format!("auth.users.{:?}", name.get_ref());
                match password.get_ref().as_str() {
                    Some(p) if p.len() >= 8 => {
                        users.push((name.get_ref().to_string(), p.to_owned()))
                    }
                    Some(_) => report.at(
                        &password.span(),
                        &key,
                        "a password needs at least 8 characters",
                    ),
                    None => report.at(
                        &password.span(),
                        &key,
                        format!(
                            "expected a password string, found {}",
                            password.get_ref().type_str()
                        ),
                    ),
                }
            }
            if table.is_empty() {
                report.at(
                    &span,
                    "auth.users",
                    "no users: give at least one, or leave [auth] out to accept every client",
                );
            }
        }
        None if t.get("users").is_none() => t.missing(
            report,
            "users",
            " (users = { default = \"a-long-password\" })",
        ),
        None => {}
    }
    (report.problems.len() == before).then_some(users)
}

pub(super) fn links(report: &mut Report<'_>, root: &Table<'_, '_>, ids: &Ids) -> Option<Vec<Link>> {
    let mut links = Vec::new();
    if root.get("links").is_none() {
        return Some(links);
    }
    let (table, _) = root.table(report, "links")?;
    let before = report.problems.len();
    let mut seen: HashMap<(DcIdx, DcIdx), usize> = HashMap::new();
    for (name, value) in table.iter() {
        let key = format!("links.{:?}", name.get_ref());
        let Some((a, b)) = name.get_ref().split_once('/') else {
            report.at(
                &name.span(),
                &key,
                "a link is named \"<datacenter>/<datacenter>\"",
            );
            continue;
        };
        let (a, b) = (
            ids.resolve(report, &key, a, &name.span()),
            ids.resolve(report, &key, b, &name.span()),
        );
        let Some(spec) = value.get_ref().as_table() else {
            report.at(
                &value.span(),
                &key,
                format!(
                    "expected a table like {{ delay_ms = 30 }}, found {}",
                    value.get_ref().type_str()
                ),
            );
            continue;
        };
        let t = Table::new(report, spec, value.span(), key.clone(), LINK_KEYS);
        let delay = t.number(report, "delay_ms", 0.0..=10_000.0, " ms");
        if t.get("delay_ms").is_none() {
            t.missing(report, "delay_ms", " (the one-way delay in milliseconds)");
        }
        let jitter = t
            .number(report, "jitter_ms", 0.0..=1_000.0, " ms")
            .map_or(0.0, |(j, _)| j);
        let loss = t
            .number(report, "loss", 0.0..=1.0, "")
            .map_or(0.0, |(l, _)| l);
        let (Some(a), Some(b), Some((delay, _))) = (a, b, delay) else {
            continue;
        };
        if a == b {
            report.at(&name.span(), &key, "a link joins two different datacenters");
            continue;
        }
        let pair = (a.min(b), a.max(b));
        if let Some(line) = seen.get(&pair) {
            report.at(
                &name.span(),
                &key,
                format!("the link between these datacenters is already given on line {line}"),
            );
            continue;
        }
        seen.insert(pair, report.line_of(&name.span()));
        let ms = |v: f64| Duration::from_micros((v * 1_000.0).round() as u64);
        links.push(Link {
            a,
            b,
            delay: ms(delay),
            jitter: ms(jitter),
            loss,
        });
    }
    (report.problems.len() == before).then_some(links)
}
