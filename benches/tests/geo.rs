//! `meridian-benches geo` for a few seconds on two regions: every figure is there
//! and sane, meridian loses no update and breaks no session guarantee, and the
//! JSON and SVG reports are written.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_short_two_region_run_reports_every_figure() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_meridian-benches"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let mut cmd = Command::new(&bench);
    cmd.args([
        "geo",
        "--regions",
        "us-east,eu-west",
        "--seconds",
        "3",
        "--warmup",
        "1",
        "--clients",
        "2",
        "--roaming",
        "0.5",
        "--quiet",
        "--out",
    ])
    .arg(&out);
    // The meridian binary next to this one, when the workspace's tests built it.
    let meridian = bench.with_file_name("meridian");
    if meridian.exists() {
        cmd.env("MERIDIAN_BIN", &meridian);
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for heading in [
        "| design | class |",
        "lost updates",
        "visibility lag per link",
    ] {
        assert!(stdout.contains(heading), "no {heading:?} in\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    let designs = report["designs"].as_array().unwrap();
    let names: Vec<&str> = designs
        .iter()
        .map(|d| d["design"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["global-leader", "local", "meridian"]);
    let finite = |v: &serde_json::Value, what: &str| {
        let x = v.as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x >= 0.0, "{what} = {v}");
        x
    };
    for d in designs {
        let name = d["design"].as_str().unwrap();
        assert!(
            finite(&d["throughput_per_s"], name) > 0.0,
            "{name}: no throughput"
        );
        assert!(d["operations_checked"].as_u64().unwrap() > 0, "{name}");
        finite(&d["convergence_ms"], name);
        let mut measured = 0;
        for c in d["classes"].as_array().unwrap() {
            if c["count"].as_u64().unwrap() == 0 {
                continue;
            }
            measured += 1;
            for q in ["p50_ms", "p99_ms", "p999_ms", "max_ms"] {
                assert!(finite(&c[q], q) > 0.0, "{name} {}: {q} is 0", c["class"]);
            }
            assert!(!c["cdf"].as_array().unwrap().is_empty());
        }
        assert!(measured >= 3, "{name}: only {measured} classes measured");
        let lags = d["lags"].as_array().unwrap();
        assert_eq!(lags.len(), 2, "{name}: a lag per direction");
        for l in lags {
            let p50 = finite(&l["p50_ms"], "lag p50");
            // A change cannot arrive faster than the emulated link carries it.
            assert!(
                p50 >= finite(&l["route_one_way_ms"], "route"),
                "{name}: {l}"
            );
            assert!(
                finite(&l["floor_one_way_ms"], "floor") < finite(&l["route_one_way_ms"], "route")
            );
        }
    }
    for d in designs {
        let late = &d["emulator_lateness"];
        assert!(late["datagrams"].as_u64().unwrap() > 0, "{late}");
        finite(&late["p99_ms"], "lateness p99");
    }
    assert!(stdout.contains("emulator lateness"), "{stdout}");
    let meridian = &designs[2];
    assert_eq!(meridian["lost_updates"], 0, "meridian lost updates");
    assert_eq!(
        meridian["violations"], 0,
        "meridian broke a session guarantee"
    );
    assert!(meridian["increments_acknowledged"].as_u64().unwrap() > 0);
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("latency CDF"));
}
