//! `[[datacenter]]` tables.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::DeValue;

use super::reader::{Report, Table};
use crate::model::{Backend, Datacenter, Endpoint};
use crate::route::MAX_DATACENTERS;

const KEYS: &[&str] = &[
    "id", "client", "peer", "admin", "data_dir", "backend", "weight", "cert", "key",
];
const BACKEND_KEYS: &[&str] = &["kind", "url", "replicas"];

/// A datacenter as read, with where its listeners were written, for the later
/// cross-checks. `None` fields were missing or bad (and reported).
pub(super) struct DcDraft {
    pub(super) id: Option<(String, Range<usize>)>,
    pub(super) listeners: Vec<(&'static str, Endpoint, Range<usize>)>,
    pub(super) data_dir: Option<(PathBuf, Range<usize>)>,
    pub(super) backend: Option<Backend>,
    pub(super) weight: f64,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    complete: bool,
}

impl DcDraft {
    /// The finished datacenter, if nothing was missing or bad. `certs` is the
    /// directory certificates default to.
    pub(super) fn build(self, base: &Path, certs: &Path) -> Option<Datacenter> {
        if !self.complete {
            return None;
        }
        let (id, _) = self.id?;
        let mut listeners = self.listeners.into_iter().map(|(_, e, _)| e);
        let (client, peer, admin) = (listeners.next()?, listeners.next()?, listeners.next()?);
        let data_dir = match self.data_dir {
            Some((dir, _)) => dir,
            None => base.join("data").join(&id),
        };
        Some(Datacenter {
            cert: self.cert.unwrap_or_else(|| certs.join(format!("{id}.pem"))),
            key: self
                .key
                .unwrap_or_else(|| certs.join(format!("{id}-key.pem"))),
            id,
            client,
            peer,
            admin,
            data_dir,
            backend: self.backend?,
            weight: self.weight,
        })
    }
}

/// Reads the `[[datacenter]]` array, at most the first [`MAX_DATACENTERS`] of it
/// (past the limit the file is refused anyway, and checking thousands of entries
/// would take long); returns them and how many entries the array has.
pub(super) fn read_all(
    report: &mut Report<'_>,
    value: &Spanned<DeValue<'_>>,
    base: &Path,
) -> (Vec<DcDraft>, usize) {
    let Some(items) = value.get_ref().as_array() else {
        let found = value.get_ref().type_str();
        report.at(
            &value.span(),
            "datacenter",
            format!("expected [[datacenter]] tables, found {found}"),
        );
        return (Vec::new(), 0);
    };
    let mut drafts = Vec::with_capacity(items.len().min(MAX_DATACENTERS));
    for (i, item) in items.iter().enumerate().take(MAX_DATACENTERS) {
        match item.get_ref().as_table() {
            Some(table) => {
                let name = match table.get("id").and_then(|v| v.get_ref().as_str()) {
                    Some(id) => format!("datacenter {id:?}"),
                    None => format!("datacenter #{}", i + 1),
                };
                let t = Table::new(report, table, item.span(), name, KEYS);
                drafts.push(read_one(report, &t, base));
            }
            None => {
                let found = item.get_ref().type_str();
                report.at(
                    &item.span(),
                    "datacenter",
                    format!("expected a table, found {found}"),
                );
            }
        }
    }
    check_unique_ids(report, &drafts);
    (drafts, items.len())
}

fn read_one(report: &mut Report<'_>, t: &Table<'_, '_>, base: &Path) -> DcDraft {
    let before = report.problems.len();
    let id = t.required_string(report, "id", "").and_then(|(id, span)| {
        if is_valid_id(id) {
            Some((id.to_owned(), span))
        } else {
            let message =
                format!("{id:?} is not a valid id: use 1 to 64 letters, digits, '.', '_' or '-'");
            report.at(&span, &t.key_path("id"), message);
            None
        }
    });
    let mut listeners = Vec::with_capacity(3);
    for key in ["client", "peer", "admin"] {
        let Some((text, span)) = t.required_string(report, key, "") else {
            continue;
        };
        match parse_endpoint(text) {
            Ok(endpoint) => listeners.push((key, endpoint, span)),
            Err(why) => report.at(&span, &t.key_path(key), why),
        }
    }
    let data_dir = t
        .string(report, "data_dir")
        .map(|(dir, span)| (base.join(dir), span));
    let weight = t
        .number(report, "weight", 0.001..=1000.0, "")
        .map_or(1.0, |(w, _)| w);
    let cert = t.string(report, "cert").map(|(p, _)| base.join(p));
    let key = t.string(report, "key").map(|(p, _)| base.join(p));
    let backend = match t.table(report, "backend") {
        Some((table, span)) => {
            let backend = Table::new(report, table, span, t.key_path("backend"), BACKEND_KEYS);
            read_backend(report, &backend)
        }
        None if t.get("backend").is_some() => None,
        None => Some(Backend::Embedded),
    };
    DcDraft {
        id,
        listeners,
        data_dir,
        backend,
        weight,
        cert,
        key,
        complete: report.problems.len() == before,
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn read_backend(report: &mut Report<'_>, t: &Table<'_, '_>) -> Option<Backend> {
    #[derive(Clone, Copy)]
    enum Kind {
        Embedded,
        Redis,
    }
    let kinds = [("embedded", Kind::Embedded), ("redis", Kind::Redis)];
    if t.get("kind").is_none() {
        t.missing(report, "kind", " (\"embedded\" or \"redis\")");
        return None;
    }
    let kind = t.choice(report, "kind", &kinds)?;
    let url = t.string(report, "url");
    let replicas = t.strings(report, "replicas");
    match kind {
        Kind::Embedded => {
            for key in ["url", "replicas"] {
                if let Some(v) = t.get(key) {
                    report.at(
                        &v.span(),
                        &t.key_path(key),
                        "only a redis backend takes this key",
                    );
                }
            }
            Some(Backend::Embedded)
        }
        Kind::Redis => {
            let Some((url, span)) = url else {
                if t.get("url").is_none() {
                    t.missing(report, "url", " (for example \"redis://127.0.0.1:6379/0\")");
                }
                return None;
            };
            let mut ok = check_redis_url(report, &t.key_path("url"), url, &span);
            let mut urls = Vec::new();
            for (i, (replica, span)) in replicas
                .map(|(r, _)| r)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                ok &= check_redis_url(
                    report,
                    &format!("{}[{i}]", t.key_path("replicas")),
                    replica,
                    &span,
                );
                urls.push(replica.to_owned());
            }
            ok.then(|| Backend::Redis {
                url: url.to_owned(),
                replicas: urls,
            })
        }
    }
}

fn check_redis_url(report: &mut Report<'_>, key: &str, url: &str, span: &Range<usize>) -> bool {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"));
    let host_port = rest.map(|r| {
        r.rsplit_once('@')
            .map_or(r, |(_, h)| h)
            .split('/')
            .next()
            .unwrap_or("")
    });
    match host_port.map(parse_endpoint) {
        Some(Ok(_)) => true,
        _ => {
            let message = format!(
                "{url:?} is not a Redis URL: write redis://host:port/db, e.g. \"redis://127.0.0.1:6379/0\""
            );
            report.at(span, key, message);
            false
        }
    }
}

/// Parses `host:port`: an IPv4 address, a bracketed IPv6 address or a DNS name.
pub(super) fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let example = "write host:port, e.g. \"127.0.0.1:7001\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port: {example}"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!(
            "{port:?} in {text:?} is not a port number (0 to 65535)"
        ));
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !name_ok {
        return Err(format!(
            "{host:?} in {text:?} is neither an IP address nor a host name: {example}"
        ));
    }
    Ok(Endpoint {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn check_unique_ids(report: &mut Report<'_>, drafts: &[DcDraft]) {
    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    for (id, span) in drafts.iter().filter_map(|d| d.id.as_ref()) {
        if let Some(first) = seen.get(id.as_str()) {
            let line = report.line_of(first);
            report.at(
                span,
                &format!("datacenter {id:?}.id"),
                format!("duplicate datacenter id {id:?} (first defined on line {line})"),
            );
        } else {
            seen.insert(id, span.clone());
        }
    }
}
