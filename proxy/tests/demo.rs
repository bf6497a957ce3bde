//! `meridian demo`, the README's main command, end to end (short).
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::process::Command;

#[test]
fn the_demo_converges_and_prints_lag_per_link() {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["demo", "--seconds", "2", "--rate", "100"])
        .output()
        .expect("run meridian demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("converged: yes"), "{stdout}");
    // A row per directed link, each with probes that arrived.
    for (from, to) in [
        ("us-east", "eu-west"),
        ("eu-west", "ap-northeast"),
        ("ap-northeast", "us-east"),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().take(2).eq([from, to]))
            .unwrap_or_else(|| panic!("no row {from} -> {to} in:\n{stdout}"));
        let probes: u64 = row
            .split_whitespace()
            .nth(4)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no probe count in {row:?}"));
        assert!(probes > 0, "{row}");
    }
}
