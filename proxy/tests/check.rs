//! `meridian check` and `meridian version`, run as a user runs them.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::Path;
use std::process::{Command, Output};

fn meridian(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .output()
        .expect("run meridian")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .display()
        .to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_example_is_valid_and_gets_a_plan() {
    for (file, kind, edges) in [
        ("three-regions.toml", "ring over 3", "replication edges (3)"),
        (
            "all-to-all.toml",
            "all-to-all over 5",
            "replication edges (20)",
        ),
        ("star.toml", "star over 5", "replication edges (8)"),
    ] {
        let out = meridian(&["check", &example(file)]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", text(&out.stderr));
        assert!(stdout.contains(kind), "{file}: {stdout}");
        assert!(stdout.contains(edges), "{file}: {stdout}");
        assert!(stdout.trim_end().ends_with(": valid"), "{file}: {stdout}");
    }
}

#[test]
fn the_star_plan_shows_the_detour_through_the_hub() {
    let out = meridian(&["check", &example("star.toml")]);
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .skip_while(|l| *l != "changes from us-west:")
        .find(|l| l.contains("us-east -> ap-northeast"))
        .expect("us-west's tree reaches ap-northeast through the hub");
    assert!(
        line.contains("hop 2  104.5 ms  (direct link: 48.5 ms)"),
        "{line}"
    );
}

#[test]
fn a_file_with_several_mistakes_gets_every_one_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let good = std::fs::read_to_string(example("three-regions.toml")).unwrap();
    let bad = good
        .replace(
            "ring = [\"us-east\", \"eu-west\", \"ap-northeast\"]",
            "ring = [\"us-east\", \"eu-west\"]",
        )
        .replace("client = \"127.0.0.1:7002\"", "client = \"127.0.0.1:7001\"")
        .replace("\"bob\" = \"ap-northeast\"", "\"bob\" = \"ap-north\"")
        .replace("read_wait_ms = 100", "read_wait_ms = 100\nread_wiat = 3");
    std::fs::write(&file, bad).unwrap();
    let out = meridian(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].ends_with("bad.toml: 4 problems in the topology file"),
        "{stderr}"
    );
    let expect = [
        ":8:8: cluster.ring: the ring misses \"ap-northeast\"",
        ":21:10: datacenter \"eu-west\".client: 127.0.0.1:7001 clashes with 127.0.0.1:7001",
        ":38:39: homes.pins.\"bob\": \"ap-north\" is not a datacenter; did you mean \"ap-northeast\"?",
        ":44:1: session: unknown key \"read_wiat\"; did you mean \"read_wait_ms\"?",
    ];
    for (line, want) in lines[1..].iter().zip(expect) {
        assert!(
            line.contains(want),
            "{line:?} should contain {want:?}\n{stderr}"
        );
    }
    assert_eq!(lines.len(), 5, "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_file_gets_one_clear_line() {
    let out = meridian(&["check", "/nonexistent/topology.toml"]);
    assert_eq!(out.status.code(), Some(66));
    assert_eq!(
        text(&out.stderr),
        "/nonexistent/topology.toml: cannot read the topology file: entity not found\n"
    );
}

#[test]
fn a_file_that_is_not_toml_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("yaml.toml", &b"cluster:\n  name: shop\n"[..]),
        ("binary.toml", &[0xff, 0xfe, 0x00, 0x41][..]),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let out = meridian(&["check", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(file.to_str().unwrap()), "{stderr}");
        assert!(
            stderr.contains("not valid TOML") || stderr.contains("not UTF-8"),
            "{stderr}"
        );
    }
}

#[test]
fn version_names_the_build() {
    let out = meridian(&["version"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with(concat!("meridian ", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn a_bad_thread_count_is_refused_by_name() {
    let topology = example("three-regions.toml");
    let out = meridian(&[
        "run",
        "--config",
        &topology,
        "--dc",
        "us-east",
        "--threads",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("'0' for '--threads"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["run", "--config", &topology, "--dc", "us-east"])
        .env("MERIDIAN_THREADS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("'many' for '--threads"), "{stderr}");
}
