//! What a topology does, for a person: the delivery tree of each origin's changes,
//! with hop counts and, where `[links]` gives delays, when each datacenter sees them.

use std::fmt;
use std::time::Duration;

use crate::model::{Backend, Topology};
use crate::route::{DcIdx, DcSet};

/// How a change from one origin reaches one datacenter.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// The datacenter that sends it here.
    pub from: DcIdx,
    /// The receiving datacenter.
    pub to: DcIdx,
    /// Hops from the origin.
    pub hops: u32,
    /// Time from the origin along the route, if every link on it has a delay.
    pub routed: Option<Duration>,
    /// The delay of a direct origin-to-here link, if `[links]` gives one.
    pub direct: Option<Duration>,
}

/// The delivery tree of every origin, with every datacenter live.
#[derive(Debug, Clone)]
pub struct Plan<'t> {
    topology: &'t Topology,
    /// Per origin (in datacenter order), the arrivals in delivery order.
    pub trees: Vec<Vec<Arrival>>,
}

impl<'t> Plan<'t> {
    /// Works out the plan of `topology`.
    pub fn of(topology: &'t Topology) -> Plan<'t> {
        let n = topology.datacenters.len();
        let trees = (0..n as u8)
            .map(DcIdx)
            .map(|origin| tree(topology, origin))
            .collect();
        Plan { topology, trees }
    }
}

fn tree(t: &Topology, origin: DcIdx) -> Vec<Arrival> {
    let live = DcSet::all(t.datacenters.len());
    let delay = |a, b| t.link(a, b).map(|l| l.delay);
    let mut arrived_at: Vec<Option<Duration>> = vec![None; t.datacenters.len()];
    arrived_at[origin.get()] = Some(Duration::ZERO);
    let mut arrivals = Vec::new();
    for send in t
        .router
        .flood(origin, live)
        .sends
        .into_iter()
        .filter(|s| s.accepted)
    {
        let routed = arrived_at[send.from.get()]
            .zip(delay(send.from, send.to))
            .map(|(a, d)| a + d);
        arrived_at[send.to.get()] = routed;
        arrivals.push(Arrival {
            from: send.from,
            to: send.to,
            hops: send.hops,
            routed,
            direct: delay(origin, send.to),
        });
    }
    arrivals
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_secs_f64() * 1_000.0)
}

impl fmt::Display for Plan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.topology;
        let name = |i: DcIdx| t.dc(i).id.as_str();
        let width = t.datacenters.iter().map(|d| d.id.len()).max().unwrap_or(0);
        writeln!(
            f,
            "cluster {:?}: {} over {} datacenter(s)",
            t.cluster_name,
            t.kind,
            t.datacenters.len()
        )?;
        writeln!(f, "\ndatacenters:")?;
        for dc in &t.datacenters {
            let backend = match &dc.backend {
                Backend::Embedded => format!("embedded store in {}", dc.data_dir.display()),
                Backend::Redis { url, replicas } => {
                    format!("redis {url} (+{} replica(s))", replicas.len())
                }
            };
            writeln!(
                f,
                "  {:width$}  client {}  peer {}  admin {}  {backend}",
                dc.id, dc.client, dc.peer, dc.admin
            )?;
        }
        let edges = t.router.edges();
        writeln!(f, "\nreplication edges ({}):", edges.len())?;
        for (a, b) in edges {
            let delay = t
                .link(a, b)
                .map_or_else(|| "delay not given".to_owned(), |l| ms(l.delay));
            writeln!(f, "  {:width$} -> {:width$}  {delay}", name(a), name(b))?;
        }
        for (origin, arrivals) in self.trees.iter().enumerate() {
            writeln!(f, "\nchanges from {}:", name(DcIdx(origin as u8)))?;
            if arrivals.is_empty() {
                writeln!(f, "  (no other datacenters)")?;
            }
            for a in arrivals {
                let indent = "  ".repeat(a.hops as usize);
                let hop = format!("{indent}{} -> {}", name(a.from), name(a.to));
                let when = a.routed.map_or_else(|| "time unknown".to_owned(), ms);
                let direct = match (a.direct, a.hops) {
                    (Some(d), hops) if hops > 1 => format!("  (direct link: {})", ms(d)),
                    _ => String::new(),
                };
                writeln!(
                    f,
                    "{hop:w$}  hop {}  {when}{direct}",
                    a.hops,
                    w = 2 * width + 10
                )?;
            }
        }
        Ok(())
    }
}
