//! From the text of a topology file to a checked [`Topology`], or every problem in it.

mod datacenter;
mod reader;
mod sections;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use toml::de::DeTable;

use crate::error::{ConfigErrors, Location, Problem};
use crate::model::{Endpoint, Topology, TopologyKind};
use crate::route::{DcIdx, MAX_DATACENTERS, Router, StarFallback};
use datacenter::DcDraft;
use reader::{Report, Table, suggest};

const ROOT_KEYS: &[&str] = &[
    "cluster",
    "datacenter",
    "homes",
    "session",
    "clients",
    "replication",
    "tls",
    "auth",
    "links",
];
const CLUSTER_KEYS: &[&str] = &["name", "topology", "ring", "hub", "star_fallback"];

impl Topology {
    /// Parses the text of a topology file. `file` names it in messages; relative paths
    /// in it are resolved against `base_dir` (the file's directory). Reports every
    /// problem found, not just the first.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Topology, ConfigErrors> {
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(err) => {
                let location = err.span().map(|span| Location::of(text, span.start));
                let message = format!("not valid TOML: {}", err.message().trim_end());
                let problems = vec![Problem {
                    location,
                    key: String::new(),
                    message,
                }];
                return Err(ConfigErrors {
                    file: file.to_owned(),
                    problems,
                });
            }
        };
        let mut report = Report::new(text);
        let root_table = Table::new(&mut report, root.get_ref(), 0..0, String::new(), ROOT_KEYS);
        let topology = read(&mut report, &root_table, base_dir);
        match topology {
            Some(t) if report.problems.is_empty() => Ok(t),
            _ => {
                let mut problems = report.problems;
                problems.sort_by_key(|p| p.location);
                Err(ConfigErrors {
                    file: file.to_owned(),
                    problems,
                })
            }
        }
    }
}

/// The datacenter ids read so far, for checking references to them.
pub(crate) struct Ids {
    index: HashMap<String, DcIdx>,
    names: Vec<String>,
}

impl Ids {
    fn new(drafts: &[DcDraft]) -> Ids {
        let mut index = HashMap::new();
        let mut names = Vec::new();
        for (i, draft) in drafts.iter().enumerate() {
            if let Some((id, _)) = &draft.id {
                if !index.contains_key(id) {
                    index.insert(id.clone(), DcIdx(i.min(MAX_DATACENTERS - 1) as u8));
                    names.push(id.clone());
                }
            }
        }
        Ids { index, names }
    }

    /// The datacenter called `name`, or a report that there is none.
    pub(crate) fn resolve(
        &self,
        report: &mut Report<'_>,
        key: &str,
        name: &str,
        span: &Range<usize>,
    ) -> Option<DcIdx> {
        if let Some(&idx) = self.index.get(name) {
            return Some(idx);
        }
        let hint = match suggest(name, self.names.iter().map(String::as_str)) {
            Some(close) => format!("did you mean {close:?}?"),
            None => format!("the datacenters are {}", self.names.join(", ")),
        };
        report.at(span, key, format!("{name:?} is not a datacenter; {hint}"));
        None
    }
}

fn read(report: &mut Report<'_>, root: &Table<'_, '_>, base: &Path) -> Option<Topology> {
    let (drafts, total) = match root.get("datacenter") {
        Some(value) => datacenter::read_all(report, value, base),
        None => (Vec::new(), 0),
    };
    if total == 0 {
        report.whole(
            "datacenter",
            "the file defines no datacenters: add at least one [[datacenter]] table",
        );
    } else if total > MAX_DATACENTERS {
        let span = root.get("datacenter").map(|v| v.span()).unwrap_or_default();
        report.at(
            &span,
            "datacenter",
            format!(
                "{total} datacenters, more than the limit of {MAX_DATACENTERS} (only the first {MAX_DATACENTERS} were checked)"
            ),
        );
    }
    check_listeners(report, &drafts);
    check_data_dirs(report, &drafts);
    let ids = Ids::new(&drafts);
    let n = drafts.len().min(MAX_DATACENTERS);

    let cluster = read_cluster(report, root, &ids, n);
    let homes = sections::homes(report, root, &ids);
    let session = sections::session(report, root);
    let clients = sections::clients(report, root);
    let replication = sections::replication(report, root);
    let tls = sections::tls(report, root, base);
    let users = sections::auth(report, root);
    let links = sections::links(report, root, &ids);

    let (cluster_name, kind, star_fallback) = cluster?;
    let certs_dir = tls.ca.parent().map(Path::to_path_buf).unwrap_or_default();
    let datacenters: Vec<_> = drafts
        .into_iter()
        .map(|d| d.build(base, &certs_dir))
        .collect::<Option<_>>()?;
    if datacenters.is_empty() || datacenters.len() > MAX_DATACENTERS {
        return None;
    }
    let router = match &kind {
        TopologyKind::AllToAll => Router::all_to_all(n),
        TopologyKind::Ring(order) => Router::ring(order.clone()),
        TopologyKind::Star { hub } => Router::star(n, *hub, star_fallback),
    };
    Some(Topology {
        cluster_name,
        kind,
        star_fallback,
        datacenters,
        homes: homes?,
        session: session?,
        clients: clients?,
        replication: replication?,
        tls,
        users: users?,
        links: links?,
        router,
    })
}

/// The longest cluster name, in bytes: it travels in every link's handshake.
pub const MAX_CLUSTER_NAME: usize = 255;

/// The `topology` key's values.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    AllToAll,
    Ring,
    Star,
}

const SHAPES: [(&str, Shape); 3] = [
    ("all-to-all", Shape::AllToAll),
    ("ring", Shape::Ring),
    ("star", Shape::Star),
];

fn read_cluster(
    report: &mut Report<'_>,
    root: &Table<'_, '_>,
    ids: &Ids,
    n: usize,
) -> Option<(String, TopologyKind, StarFallback)> {
    let Some((table, span)) = root.table(report, "cluster") else {
        if root.get("cluster").is_none() {
            report.whole(
                "cluster",
                "missing the [cluster] table (it needs at least name = \"...\")",
            );
        }
        return None;
    };
    let t = Table::new(report, table, span, "cluster".into(), CLUSTER_KEYS);
    let name = t.required_string(
        report,
        "name",
        " (the cluster's name; peers of other clusters are refused)",
    );
    let name = name.and_then(|(name, span)| {
        if name.trim().is_empty() {
            report.at(&span, "cluster.name", "the cluster name must not be empty");
            return None;
        }
        if name.len() > MAX_CLUSTER_NAME {
            let message = format!(
                "the cluster name is {} bytes long, more than the limit of {MAX_CLUSTER_NAME}",
                name.len()
            );
            report.at(&span, "cluster.name", message);
            return None;
        }
        Some(name.to_owned())
    });
    let shape = match t.get("topology") {
        Some(_) => t.choice(report, "topology", &SHAPES),
        None => Some(Shape::AllToAll),
    };
    let fallbacks = [
        ("direct", StarFallback::Direct),
        ("none", StarFallback::None),
    ];
    let fallback = t
        .choice(report, "star_fallback", &fallbacks)
        .unwrap_or(StarFallback::Direct);
    if let Some(shape) = shape {
        check_shape_keys(report, &t, shape);
    }
    let kind = topology_kind(report, &t, shape?, ids, n);
    Some((name?, kind?, fallback))
}

/// Keys that belong to another topology than the one chosen are errors.
fn check_shape_keys(report: &mut Report<'_>, t: &Table<'_, '_>, shape: Shape) {
    for (key, applies) in [
        ("ring", Shape::Ring),
        ("hub", Shape::Star),
        ("star_fallback", Shape::Star),
    ] {
        if let Some(v) = t.get(key)
            && shape != applies
        {
            let kind = SHAPES.iter().find(|s| s.1 == applies).map_or("", |s| s.0);
            report.at(
                &v.span(),
                &t.key_path(key),
                format!("only applies when topology = {kind:?}"),
            );
        }
    }
}

/// The topology with what its shape needs: the ring's order, the star's hub.
fn topology_kind(
    report: &mut Report<'_>,
    t: &Table<'_, '_>,
    shape: Shape,
    ids: &Ids,
    n: usize,
) -> Option<TopologyKind> {
    Some(match shape {
        Shape::AllToAll => TopologyKind::AllToAll,
        Shape::Ring => TopologyKind::Ring(sections::ring_order(report, t, ids, n)?),
        Shape::Star => {
            let hub = t.required_string(
                report,
                "hub",
                " (a star needs the datacenter every change passes through)",
            );
            let (hub, span) = hub?;
            TopologyKind::Star {
                hub: ids.resolve(report, "cluster.hub", hub, &span)?,
            }
        }
    })
}

/// Two listeners may not share an address: one of them would fail to bind.
/// A listener seen: its address, its key path, where it was written.
type Listener<'a> = (&'a Endpoint, String, Range<usize>);

fn check_listeners(report: &mut Report<'_>, drafts: &[DcDraft]) {
    // By port: only listeners on one port can clash, so each check is short.
    let mut seen: HashMap<u16, Vec<Listener<'_>>> = HashMap::new();
    for draft in drafts {
        let dc = draft.id.as_ref().map_or("?", |(id, _)| id.as_str());
        for (key, endpoint, span) in &draft.listeners {
            if endpoint.port == 0 {
                continue;
            }
            let on_port = seen.entry(endpoint.port).or_default();
            let clash = on_port.iter().find(|(other, _, _)| {
                other.host == endpoint.host
                    || is_wildcard(&other.host)
                    || is_wildcard(&endpoint.host)
            });
            let name = format!("datacenter {dc:?}.{key}");
            if let Some((other, other_name, other_span)) = clash {
                let line = report.line_of(other_span);
                let message = format!(
                    "{endpoint} clashes with {other} of {other_name} (line {line}): two listeners cannot share an address"
                );
                report.at(span, &name, message);
            } else {
                on_port.push((endpoint, name, span.clone()));
            }
        }
    }
}

fn is_wildcard(host: &str) -> bool {
    host == "0.0.0.0" || host == "::"
}

/// Two proxies sharing a data directory would corrupt each other's log.
fn check_data_dirs(report: &mut Report<'_>, drafts: &[DcDraft]) {
    let mut seen: HashMap<&Path, (&str, Range<usize>)> = HashMap::new();
    for draft in drafts {
        let (Some((dir, span)), Some((id, _))) = (&draft.data_dir, &draft.id) else {
            continue;
        };
        if let Some((other, other_span)) = seen.get(dir.as_path()) {
            let line = report.line_of(other_span);
            let message = format!(
                "{} is also the data_dir of {other:?} (line {line}): each datacenter needs its own",
                dir.display()
            );
            report.at(span, &format!("datacenter {id:?}.data_dir"), message);
        } else {
            seen.insert(dir, (id, span.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
