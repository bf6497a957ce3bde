//! `meridian-benches multikey`: how long one write of many keys takes, and how long
//! another client's write waits behind it.
//!
//! Starts meridian on the embedded store, then for each size sends an MSET of that
//! many keys of one user, then a DEL of them, each on its own connection, while a
//! second connection writes a small key every 10 ms and records its slowest reply.
//! Afterwards it reports the store's file size per byte of data held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::processes::{data_dir, start_meridian, tempfile_dir};

/// Settings of the multi-key benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MultikeyArgs {
    /// Keys per command, comma-separated.
    #[arg(long, default_value = "10000,80000,200000", value_delimiter = ',')]
    keys: Vec<usize>,
    /// Bytes per value.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
}

/// Runs the benchmark and prints its figures.
pub(crate) fn run(args: &MultikeyArgs) -> Result<(), String> {
    let binary = crate::binary::meridian()?;
    let dir = tempfile_dir()?;
    let name = "multikey";
    let (proxy, port) = start_meridian(&binary, &dir, name, None)?;
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    println!(
        "meridian on the embedded store; one user's keys, values of {} bytes",
        args.value_size
    );
    println!(
        "{:>8}  {:>10}  {:>10}  {:>22}",
        "keys", "MSET s", "DEL s", "other SET, slowest ms"
    );
    let value = vec![b'v'; args.value_size];
    let mut data_bytes = 0;
    for &n in &args.keys {
        let keys: Vec<String> = (0..n).map(|i| format!("{{bulk}}:{n}:{i}")).collect();
        let mut mset = redis::cmd("MSET");
        for key in &keys {
            mset.arg(key).arg(&value[..]);
        }
        let (mset_s, mset_other) = timed(&client, &mset)?;
        let mut del = redis::cmd("DEL");
        del.arg(&keys);
        let (del_s, del_other) = timed(&client, &del)?;
        println!(
            "{n:>8}  {mset_s:>10.3}  {del_s:>10.3}  {:>22.1}",
            mset_other.max(del_other)
        );
        // Keep one copy of this size's keys for the space figure.
        let (_, _) = timed(&client, &mset)?;
        data_bytes += keys.iter().map(|k| k.len() + value.len()).sum::<usize>();
    }
    // Let the committer checkpoint (it does a second after writes stop).
    std::thread::sleep(Duration::from_secs(3));
    let store = data_dir(&dir, name).join("store.redb");
    let size = std::fs::metadata(&store)
        .map_err(|e| format!("{}: {e}", store.display()))?
        .len();
    println!(
        "store: {} bytes for {data_bytes} bytes of keys and values: {:.2} bytes per byte",
        size,
        size as f64 / data_bytes as f64
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `cmd` on a connection of its own and returns its seconds, with the slowest
/// reply (ms) another connection's small writes got meanwhile.
fn timed(client: &redis::Client, cmd: &redis::Cmd) -> Result<(f64, f64), String> {
    let done = Arc::new(AtomicBool::new(false));
    let other = {
        let (client, done) = (client.clone(), done.clone());
        std::thread::spawn(move || -> Result<f64, String> {
            let mut conn = client.get_connection().map_err(|e| e.to_string())?;
            let mut slowest: f64 = 0.0;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                redis::cmd("SET")
                    .arg("{other}:k")
                    .arg("v")
                    .query::<()>(&mut conn)
                    .map_err(|e| e.to_string())?;
                slowest = slowest.max(started.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(slowest)
        })
    };
    let mut conn = client.get_connection().map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let result = cmd.query::<redis::Value>(&mut conn);
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let slowest = other.join().map_err(|_| "the other client panicked")??;
    if let Err(e) = result {
        return Err(format!("the command failed after {seconds:.1} s: {e}"));
    }
    Ok((seconds, slowest))
}
