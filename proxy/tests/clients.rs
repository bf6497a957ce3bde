//! Real client libraries against a proxy: redis-py and ioredis transactions
//! (`clients/`). `scripts/test` installs them; without them these tests fail
//! saying what to install.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{single_dc_topology, start_meridian};

/// The repository's `clients/` directory.
fn clients() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients")
}

/// Runs `program args... <port>` against a fresh proxy; fails with its output.
fn run_against_proxy(program: &str, args: &[&str], install: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "never");
    let _proxy = start_meridian(&topology, addr);
    let port = addr.port().to_string();
    let output = Command::new(program)
        .args(args)
        .arg(&port)
        .current_dir(clients())
        .output()
        .unwrap_or_else(|e| panic!("could not run {program} ({e}): {install}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?}: {text}\n({install})"
    );
}

#[test]
fn redis_py_transactions() {
    run_against_proxy(
        "python3",
        &["python/transactions.py"],
        "redis-py is needed: `bash scripts/test` installs it",
    );
}

#[test]
fn ioredis_transactions() {
    run_against_proxy(
        "node",
        &["node/transactions.mjs"],
        "ioredis is needed: `bash scripts/test` installs it (npm ci in clients/node)",
    );
}
