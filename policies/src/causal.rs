//! Causal delivery: may a change from another datacenter be applied yet?
//!
//! A change is identified by its origin and its dense sequence number there, and
//! carries `deps`: the version vector its origin had applied when it was made. A
//! datacenter that has applied `applied` may apply the change exactly when it has
//! applied the origin's previous change and everything in `deps`; a change already
//! within `applied` is a duplicate. Receivers (to choose what to hand the writer)
//! and the writer (which alone advances `applied`) ask this one function.

use crate::vv::VersionVector;

/// Where a change stands against what a datacenter has applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Already applied: skip it (idempotent apply).
    Applied,
    /// Its origin's previous change and all its dependencies are applied: apply it.
    Ready,
    /// An earlier change of its origin is still missing: hold it.
    AwaitsPredecessor,
    /// Its predecessor is applied but a dependency on another origin is not: hold it.
    AwaitsDependencies,
}

/// Whether change `seq` of `origin`, made after `deps`, may be applied at a
/// datacenter that has applied `applied`.
pub fn readiness(
    applied: &VersionVector,
    origin: &str,
    seq: u64,
    deps: &VersionVector,
) -> Readiness {
    let have = applied.get(origin);
    if seq <= have {
        Readiness::Applied
    } else if seq > have + 1 {
        Readiness::AwaitsPredecessor
    } else if applied.dominates(deps) {
        Readiness::Ready
    } else {
        Readiness::AwaitsDependencies
    }
}

/// Whether the dependencies alone are met (a change held only for its predecessor
/// is not counted as held for dependencies).
pub fn dependencies_met(applied: &VersionVector, deps: &VersionVector) -> bool {
    applied.dominates(deps)
}

#[cfg(test)]
mod tests;
