//! `meridian-benches values`: what a small change to a big value costs.
//!
//! Starts meridian on the embedded store and, for each type and size, builds one
//! value of that many elements, then changes one element at a time (SADD and
//! SREM of a member, HSET of one field, LPUSH and RPOP, ZINCRBY: the value keeps
//! its size) from one client for a while. It prints the bytes the log took per change (the wire carries the same
//! encoding) and the changes per second.

use std::time::{Duration, Instant};

use crate::processes::{start_meridian, tempfile_dir};

/// Settings of the values benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ValuesArgs {
    /// Element counts of the values, comma-separated.
    #[arg(long, default_value = "10,10000,100000", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Seconds of small changes per value.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

/// Runs the benchmark and prints its figures.
pub(crate) fn run(args: &ValuesArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    let dir = tempfile_dir()?;
    let (proxy, port) = start_meridian(&binary, &dir, "values", None)?;
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut conn = client.get_connection().map_err(|e| e.to_string())?;
    println!(
        "meridian on the embedded store; one client changing one element at a time for {} s per value",
        args.seconds
    );
    println!(
        "{:<6} {:>9}  {:>16}  {:>12}  {:>10}",
        "type", "elements", "log bytes/change", "changes/s", "as edits"
    );
    for kind in ["set", "hash", "list", "zset"] {
        for &size in &args.sizes {
            let key = format!("{{v}}:{kind}:{size}");
            build(&mut conn, kind, &key, size)?;
            let before = stats(&mut conn)?;
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < Duration::from_secs_f64(args.seconds) {
                change(&mut conn, kind, &key, n)?;
                n += 1;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let after = stats(&mut conn)?;
            let changes = (after.0 - before.0).max(1);
            println!(
                "{kind:<6} {size:>9}  {:>16.1}  {:>12.0}  {:>9.0}%",
                (after.1 - before.1) as f64 / changes as f64,
                changes as f64 / elapsed,
                100.0 * (after.2 - before.2) as f64 / changes as f64
            );
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query(&mut conn)
                .map_err(|e| e.to_string())?;
        }
    }
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Builds a value of `size` elements at `key`, in commands of at most 10,000.
fn build(conn: &mut redis::Connection, kind: &str, key: &str, size: usize) -> Result<(), String> {
    for start in (0..size).step_by(10_000) {
        let end = (start + 10_000).min(size);
        let mut cmd = redis::cmd(match kind {
            "set" => "SADD",
            "hash" => "HSET",
            "list" => "RPUSH",
            _ => "ZADD",
        });
        cmd.arg(key);
        for i in start..end {
            match kind {
                "hash" => cmd.arg(format!("field-{i}")).arg(format!("value-{i}")),
                "zset" => cmd.arg(i).arg(format!("member-{i}")),
                _ => cmd.arg(format!("element-{i}")),
            };
        }
        let _: i64 = cmd
            .query(conn)
            .map_err(|e| format!("building {key}: {e}"))?;
    }
    Ok(())
}

/// One small change to the value at `key`.
fn change(conn: &mut redis::Connection, kind: &str, key: &str, n: u64) -> Result<(), String> {
    let mut pipe = redis::pipe();
    match kind {
        "set" => pipe
            .cmd("SADD")
            .arg(key)
            .arg(format!("new-{n}"))
            .cmd("SREM")
            .arg(key)
            .arg(format!("new-{n}")),
        "hash" => pipe.cmd("HSET").arg(key).arg("field-1").arg(n),
        "list" => pipe.cmd("LPUSH").arg(key).arg(n).cmd("RPOP").arg(key),
        _ => pipe.cmd("ZINCRBY").arg(key).arg(1).arg("member-1"),
    };
    let _: redis::Value = pipe.query(conn).map_err(|e| e.to_string())?;
    Ok(())
}

/// Changes committed, log bytes appended and ops written as edits, so far.
fn stats(conn: &mut redis::Connection) -> Result<(u64, u64, u64), String> {
    let text: String = redis::cmd("INFO").query(conn).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("INFO has no {name}"))
    };
    Ok((
        field("changes_committed")?,
        field("log_bytes_appended")?,
        field("edits_written")?,
    ))
}
