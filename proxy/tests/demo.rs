//! `meridian demo`, the README's main command, end to end (short).
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::process::Command;

#[test]
fn the_demo_converges_and_prints_lag_per_link() {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "demo",
            "--seconds",
            "2",
            "--rate",
            "100",
            "--roaming",
            "0.5",
        ])
        .output()
        .expect("run meridian demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("converged: yes"), "{stdout}");
    // The instrument reports its own cost and accuracy.
    assert!(stdout.contains("proxies' CPU: "), "{stdout}");
    assert!(stdout.contains("emulator lateness"), "{stdout}");
    // Home leaders: one writer per user, so nothing for last-writer-wins to drop.
    assert!(
        stdout.contains("writes lost to last-writer-wins: 0"),
        "{stdout}"
    );
    // Roaming clients' writes were forwarded to their homes, and timed.
    let forwarded = stdout
        .lines()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 2
                && cols[0] != cols[1]
                && cols[2].parse::<f64>().is_ok_and(|rtt| rtt > 0.0)
        })
        .count();
    assert!(forwarded > 0, "no forwarded-write rows in:\n{stdout}");
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
