//! A history checker for the session guarantees.
//!
//! Clients record every operation of every session: which session, at which
//! datacenter, a write or a read, the key, the value written or read. Every
//! written value is unique and names its writer and the writer's operation number
//! ([`Value`]), and every key is written by one session only, so the order of a
//! key's values is its writer's order.
//!
//! The checker gives each session a vector of what it has seen: for every writer,
//! the newest of its operations the session must see. A session sees its own
//! writes (read-your-writes), the values it read (monotonic reads), and what the
//! writer of a value it read had seen when writing it: the writer's earlier
//! writes (monotonic writes, consistent prefix) and what the writer had read
//! (writes-follow-reads). A read of a key must return the key's newest value
//! within that vector, or a later one; anything older is a violation, named by
//! the rule that made the session see the newer value.

use std::collections::HashMap;
use std::fmt;

/// A written value: its writer session and the writer's operation number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    /// The writer session.
    pub session: u32,
    /// The writer's operation number (increasing within the session).
    pub op: u64,
}

impl Value {
    /// The value's text, as written to the database: unique in the history.
    pub fn text(self) -> String {
        format!("s{}-{}", self.session, self.op)
    }

    /// Parses [`Value::text`].
    pub fn parse(text: &str) -> Option<Value> {
        let (session, op) = text.strip_prefix('s')?.split_once('-')?;
        Some(Value {
            session: session.parse().ok()?,
            op: op.parse().ok()?,
        })
    }
}

/// One completed operation of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The session.
    pub session: u32,
    /// The session's operation number (increasing; a write's value carries it).
    pub op: u64,
    /// The datacenter it ran at.
    pub dc: usize,
    /// The key.
    pub key: String,
    /// A write, or a read and what it returned.
    pub kind: Kind,
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Wrote the value `(session, op)`.
    Write,
    /// Tried to write the value `(session, op)` and got no answer (an error, a
    /// dropped connection): it may or may not have been applied. Reads may return
    /// it; nothing requires them to.
    MaybeWrite,
    /// Read this value (`None`: the key was missing).
    Read(Option<Value>),
}

/// The guarantee a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guarantee {
    /// The session missed its own write.
    ReadYourWrites,
    /// The session read an older value than one it had read.
    MonotonicReads,
    /// The session saw a writer's later write and then an older state of one of
    /// the writer's earlier writes (consistent prefix included).
    MonotonicWrites,
    /// The session saw a write, and then missed what its writer had read before it.
    WritesFollowReads,
    /// The session read a value nobody had written, or one written after the read
    /// in its writer's own order (a value from the future).
    Impossible,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::ReadYourWrites => "read-your-writes",
            Guarantee::MonotonicReads => "monotonic reads",
            Guarantee::MonotonicWrites => "monotonic writes",
            Guarantee::WritesFollowReads => "writes-follow-reads",
            Guarantee::Impossible => "a value never written",
        })
    }
}

/// A read that returned less than its session had seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which guarantee.
    pub guarantee: Guarantee,
    /// The offending read.
    pub read: Op,
    /// The oldest value it could have returned.
    pub expected_at_least: Option<Value>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = match &self.read.kind {
            Kind::Read(Some(v)) => v.text(),
            _ => "nothing".into(),
        };
        let want = self.expected_at_least.map_or("-".into(), Value::text);
        write!(
            f,
            "{}: session {} op {} at dc{} read {} = {got}, expected {want} or newer",
            self.guarantee, self.read.session, self.read.op, self.read.dc, self.read.key
        )
    }
}

/// What a session must see of one writer: each time the bound rose, the new
/// bound and the rule that raised it (increasing). A read that misses a write is
/// blamed on the rule that first required it.
#[derive(Debug, Clone, Default)]
struct Seen(Vec<(u64, Guarantee)>);

impl Seen {
    fn op(&self) -> u64 {
        self.0.last().map_or(0, |&(op, _)| op)
    }

    fn why(&self, op: u64) -> Guarantee {
        self.0
            .iter()
            .find(|&&(bound, _)| bound >= op)
            .map_or(Guarantee::Impossible, |&(_, why)| why)
    }
}

/// Checks a history; returns every violation, in the order found.
pub fn check(history: &[Op]) -> Vec<Violation> {
    let mut sessions: HashMap<u32, Vec<&Op>> = HashMap::new();
    // Each key's acknowledged writes, in its writer's order, and every value
    // that may have been written.
    let mut writes: HashMap<&str, Vec<Value>> = HashMap::new();
    let mut possible: HashMap<&str, Vec<Value>> = HashMap::new();
    for op in history {
        sessions.entry(op.session).or_default().push(op);
        let value = Value {
            session: op.session,
            op: op.op,
        };
        if op.kind == Kind::Write {
            writes.entry(op.key.as_str()).or_default().push(value);
        }
        if matches!(op.kind, Kind::Write | Kind::MaybeWrite) {
            possible.entry(op.key.as_str()).or_default().push(value);
        }
    }
    // A write of unknown outcome that somebody read was applied: from then on it
    // binds like any write.
    for op in history {
        if let Kind::Read(Some(v)) = op.kind {
            let maybe = possible
                .get(op.key.as_str())
                .is_some_and(|p| p.contains(&v));
            let known = writes.get(op.key.as_str()).is_some_and(|w| w.contains(&v));
            if maybe && !known {
                writes.entry(op.key.as_str()).or_default().push(v);
            }
        }
    }
    for ops in sessions.values_mut() {
        ops.sort_by_key(|op| op.op);
    }
    writes.values_mut().for_each(|w| w.sort());
    let mut run = Run {
        sessions,
        writes,
        possible,
        deps: HashMap::new(),
        ids: Vec::new(),
        violations: Vec::new(),
    };
    run.all();
    run.violations
}

struct Run<'h> {
    sessions: HashMap<u32, Vec<&'h Op>>,
    writes: HashMap<&'h str, Vec<Value>>,
    possible: HashMap<&'h str, Vec<Value>>,
    /// What each write's session had seen when it wrote: the bound of each
    /// session, in the order of `ids` (compact: a history has many writes).
    deps: HashMap<Value, Box<[u64]>>,
    /// Every session, in order.
    ids: Vec<u32>,
    violations: Vec<Violation>,
}

impl<'h> Run<'h> {
    /// Replays the sessions side by side: a session reading a value waits until
    /// its writer has replayed up to it (its dependencies are then known).
    fn all(&mut self) {
        let mut ids: Vec<u32> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        self.ids = ids.clone();
        let mut cursor: HashMap<u32, usize> = ids.iter().map(|&s| (s, 0)).collect();
        let mut seen: HashMap<u32, HashMap<u32, Seen>> =
            ids.iter().map(|&s| (s, HashMap::new())).collect();
        loop {
            let mut progressed = false;
            let mut pending = false;
            for &s in &ids {
                while let Some(&op) = self.sessions[&s].get(cursor[&s]) {
                    let vector = seen.entry(s).or_default();
                    match self.step(op, vector) {
                        Step::Done => {
                            *cursor.entry(s).or_default() += 1;
                            progressed = true;
                        }
                        Step::Blocked => {
                            pending = true;
                            break;
                        }
                    }
                }
            }
            if !pending {
                return;
            }
            if !progressed {
                // Every remaining session waits on a value not written before it
                // was read: report each blocked read and drop it.
                for &s in &ids {
                    if let Some(&op) = self.sessions[&s].get(cursor[&s]) {
                        self.violations.push(Violation {
                            guarantee: Guarantee::Impossible,
                            read: op.clone(),
                            expected_at_least: None,
                        });
                        *cursor.entry(s).or_default() += 1;
                    }
                }
            }
        }
    }

    fn step(&mut self, op: &Op, seen: &mut HashMap<u32, Seen>) -> Step {
        match op.kind {
            Kind::Write | Kind::MaybeWrite => {
                // Whoever reads it sees what the writer had seen. The writer is
                // bound to see its own write only once it was acknowledged.
                let value = Value {
                    session: op.session,
                    op: op.op,
                };
                let snapshot = self.snapshot(seen);
                self.deps.insert(value, snapshot);
                if op.kind == Kind::Write {
                    raise(seen, op.session, op.op, Guarantee::ReadYourWrites);
                }
                Step::Done
            }
            Kind::Read(got) => {
                if let Some(v) = got
                    && v.session != op.session
                    && !self.deps.contains_key(&v)
                {
                    let written = self.possible.get(op.key.as_str());
                    if written.is_some_and(|w| w.contains(&v)) {
                        return Step::Blocked;
                    }
                    self.violations.push(Violation {
                        guarantee: Guarantee::Impossible,
                        read: op.clone(),
                        expected_at_least: None,
                    });
                    return Step::Done;
                }
                self.check_read(op, got, seen);
                if let Some(v) = got {
                    if let Some(deps) = self.deps.get(&v) {
                        for (&writer, &bound) in self.ids.iter().zip(deps.iter()) {
                            let why = if writer == v.session {
                                Guarantee::MonotonicWrites
                            } else {
                                Guarantee::WritesFollowReads
                            };
                            raise(seen, writer, bound, why);
                        }
                    }
                    raise(seen, v.session, v.op, Guarantee::MonotonicReads);
                }
                Step::Done
            }
        }
    }

    /// The bounds of `seen`, one per session in `ids` order.
    fn snapshot(&self, seen: &HashMap<u32, Seen>) -> Box<[u64]> {
        self.ids
            .iter()
            .map(|id| seen.get(id).map_or(0, Seen::op))
            .collect()
    }

    /// Whether `got` is at least the key's newest value within what `seen` holds.
    fn check_read(&mut self, op: &Op, got: Option<Value>, seen: &HashMap<u32, Seen>) {
        let Some(written) = self.writes.get(op.key.as_str()) else {
            return;
        };
        let required = written
            .iter()
            .rev()
            .find(|w| seen.get(&w.session).is_some_and(|s| s.op() >= w.op));
        let Some(required) = required else { return };
        let fresh = got.is_some_and(|g| g.session == required.session && g.op >= required.op);
        if !fresh {
            self.violations.push(Violation {
                guarantee: seen[&required.session].why(required.op),
                read: op.clone(),
                expected_at_least: Some(*required),
            });
        }
    }
}

enum Step {
    Done,
    Blocked,
}

fn raise(seen: &mut HashMap<u32, Seen>, writer: u32, op: u64, why: Guarantee) {
    if op == 0 {
        return;
    }
    let bounds = seen.entry(writer).or_default();
    if op > bounds.op() {
        bounds.0.push((op, why));
    }
}

#[cfg(test)]
mod tests;
