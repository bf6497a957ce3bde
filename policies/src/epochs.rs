//! Home epochs: which datacenters serve as homes, agreed by a majority.
//!
//! This is the state machine the datacenters replicate with Raft (the proxy runs
//! the Raft; this module only decides). Every change of it starts a new epoch.
//! Datacenters are numbered as in the topology (the rendezvous order's indices).
//!
//! - Each datacenter reports which others it cannot hear from
//!   ([`Command::Report`]). Once a majority of all datacenters, the suspect not
//!   counted, report one unreachable, it is taken **out** of service: its users'
//!   writes go to the next datacenter in each user's rendezvous order that is in
//!   service ([`Epochs::writer`]).
//! - An out datacenter that reports again (so it reaches the majority that runs
//!   the agreement) and that fewer than a majority still suspect is **returning**:
//!   nobody takes its users' writes while each datacenter in service says, by
//!   [`Command::Released`], up to which of its own changes it wrote for them. The
//!   returning datacenter applies those, then asks to [`Command::Resume`], which
//!   the state accepts once every datacenter in service has released.
//!
//! A partition that leaves no majority anywhere takes nobody out: the reports of
//! a minority never add up to a majority. The state does not see clocks or links:
//! fencing a cut-off home (it stops writing before anyone takes over) is the
//! proxy's lease, built on the same majority.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Whether a datacenter serves its users' writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Service {
    /// It writes for the users it is the home of.
    InService,
    /// A majority could not hear from it: the next in line write for its users.
    Out {
        /// The epoch it went out in.
        since: u64,
        /// The newest of its changes any datacenter that reported it had applied:
        /// whoever writes for its users first applies its changes up to here, so
        /// no write of it that reached a survivor is overwritten.
        catch_up: u64,
    },
    /// It is back and catching up with what was written for its users meanwhile;
    /// nobody writes for them until it resumes.
    Returning {
        /// The epoch it started returning in.
        since: u64,
        /// Each datacenter in service that has stopped writing for its users, and
        /// its own last change (sequence number) when it stopped.
        released: BTreeMap<usize, u64>,
    },
}

/// An entry of the agreement's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Datacenter `from` cannot hear from `unreachable` now (replacing its last
    /// report), and had applied each one's changes up to `applied` (by index).
    Report {
        /// Who reports.
        from: usize,
        /// Whom it cannot hear from.
        unreachable: BTreeSet<usize>,
        /// How far it had applied each of them (missing: 0).
        applied: BTreeMap<usize, u64>,
    },
    /// Datacenter `from` writes no more for the users of returning datacenter
    /// `returning`; its last change is `seq`.
    Released {
        /// Who released.
        from: usize,
        /// Whose users.
        returning: usize,
        /// Its last change's sequence number.
        seq: u64,
    },
    /// Datacenter `dc` has applied everything written for its users while it was
    /// out, and serves them again.
    Resume {
        /// Who resumes.
        dc: usize,
    },
}

/// What applying a command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing but the reports.
    Noted,
    /// A new epoch: these datacenters changed service.
    Changed(Vec<usize>),
    /// The command was not valid in this state (a resume before every release,
    /// a datacenter that is not a member); nothing changed.
    Ignored(&'static str),
}

/// Who writes a user's data now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// This datacenter (its home, or the next in line while the home is out).
    At(usize),
    /// The datacenter that writes for the user is returning: writes wait until it
    /// resumes.
    Handover(usize),
    /// No datacenter in the user's order is in service.
    Nobody,
}

/// The agreed state: the epoch, each datacenter's service, the latest reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epochs {
    epoch: u64,
    service: Vec<Service>,
    reports: BTreeMap<usize, BTreeSet<usize>>,
    /// How far each reporter had applied each datacenter it reported (by
    /// reporter, then by datacenter).
    applied: BTreeMap<usize, BTreeMap<usize, u64>>,
    /// The epoch of each datacenter's latest report.
    reported_in: BTreeMap<usize, u64>,
}

impl Epochs {
    /// `n` datacenters, all in service, epoch 0.
    pub fn new(n: usize) -> Epochs {
        Epochs {
            epoch: 0,
            service: vec![Service::InService; n],
            reports: BTreeMap::new(),
            applied: BTreeMap::new(),
            reported_in: BTreeMap::new(),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many datacenters there are.
    pub fn len(&self) -> usize {
        self.service.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.service.is_empty()
    }

    /// The service state of datacenter `dc`.
    pub fn service(&self, dc: usize) -> Option<&Service> {
        self.service.get(dc)
    }

    /// Whether datacenter `dc` serves its users' writes.
    pub fn in_service(&self, dc: usize) -> bool {
        matches!(self.service.get(dc), Some(Service::InService))
    }

    /// The datacenters `dc` last reported it cannot hear from (`None`: it has not
    /// reported).
    pub fn report(&self, dc: usize) -> Option<&BTreeSet<usize>> {
        self.reports.get(&dc)
    }

    /// Whether datacenter `dc` is out and has not reported since it went out: its
    /// next report, whatever it says, lets it return once it is no longer
    /// suspected.
    pub fn awaits_report(&self, dc: usize) -> bool {
        match self.service.get(dc) {
            Some(Service::Out { since, .. }) => self.reported_in.get(&dc).is_none_or(|e| e < since),
            _ => false,
        }
    }

    /// A majority of all datacenters.
    pub fn majority(&self) -> usize {
        self.service.len() / 2 + 1
    }

    /// Who writes for a user whose rendezvous order is `ranking` (home first).
    pub fn writer(&self, ranking: &[usize]) -> Writer {
        for &dc in ranking {
            match self.service.get(dc) {
                Some(Service::InService) => return Writer::At(dc),
                Some(Service::Returning { .. }) => return Writer::Handover(dc),
                Some(Service::Out { .. }) | None => continue,
            }
        }
        Writer::Nobody
    }

    /// The newest change of `dc` that a datacenter now reporting it had applied.
    fn catch_up(&self, dc: usize) -> u64 {
        self.reports
            .iter()
            .filter(|(from, down)| **from != dc && down.contains(&dc))
            .filter_map(|(from, _)| self.applied.get(from)?.get(&dc))
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// The datacenters that report `dc` unreachable (itself not counted).
    fn suspects(&self, dc: usize) -> usize {
        self.reports
            .iter()
            .filter(|(from, down)| **from != dc && down.contains(&dc))
            .count()
    }

    /// Applies one command of the agreed log.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        let n = self.service.len();
        match command {
            Command::Report {
                from,
                unreachable,
                applied,
            } => {
                if *from >= n {
                    return Outcome::Ignored("a report from a datacenter that is not a member");
                }
                let down: BTreeSet<usize> = unreachable
                    .iter()
                    .copied()
                    .filter(|d| *d < n && d != from)
                    .collect();
                for &d in &down {
                    let seq = applied.get(&d).copied().unwrap_or(0);
                    let known = self.applied.entry(*from).or_default().entry(d).or_default();
                    *known = (*known).max(seq);
                    // A later report raises the target of a datacenter already out.
                    if let Service::Out { catch_up, .. } = &mut self.service[d] {
                        *catch_up = (*catch_up).max(seq);
                    }
                }
                self.reports.insert(*from, down);
                self.reported_in.insert(*from, self.epoch);
                self.settle()
            }
            Command::Released {
                from,
                returning,
                seq,
            } => match self.service.get_mut(*returning) {
                Some(Service::Returning { released, .. }) if *from < n => {
                    released.insert(*from, *seq);
                    Outcome::Noted
                }
                _ => Outcome::Ignored("a release for a datacenter that is not returning"),
            },
            Command::Resume { dc } => match self.service.get(*dc) {
                Some(Service::Returning { released, .. }) => {
                    let waiting = (0..n)
                        .filter(|d| d != dc && self.in_service(*d))
                        .any(|d| !released.contains_key(&d));
                    if waiting {
                        return Outcome::Ignored(
                            "a resume before every datacenter in service released",
                        );
                    }
                    self.epoch += 1;
                    self.service[*dc] = Service::InService;
                    Outcome::Changed(vec![*dc])
                }
                _ => Outcome::Ignored("a resume of a datacenter that is not returning"),
            },
        }
    }

    /// Takes out every datacenter a majority suspects (returning ones too), and
    /// lets one that is out return once fewer than a majority suspect it and it
    /// has reported since it went out (so it reaches the agreement).
    fn settle(&mut self) -> Outcome {
        let majority = self.majority();
        let mut changed = Vec::new();
        for dc in 0..self.service.len() {
            let suspected = self.suspects(dc) >= majority;
            let next = match &self.service[dc] {
                Service::InService | Service::Returning { .. } if suspected => Some(Service::Out {
                    since: self.epoch + 1,
                    catch_up: self.catch_up(dc),
                }),
                Service::Out { since, .. }
                    if !suspected && self.reported_in.get(&dc).is_some_and(|e| e >= since) =>
                {
                    Some(Service::Returning {
                        since: self.epoch + 1,
                        released: BTreeMap::new(),
                    })
                }
                _ => None,
            };
            if let Some(next) = next {
                self.service[dc] = next;
                changed.push(dc);
            }
        }
        match changed.is_empty() {
            true => Outcome::Noted,
            false => {
                self.epoch += 1;
                Outcome::Changed(changed)
            }
        }
    }
}

#[cfg(test)]
mod tests;
