use std::sync::atomic::Ordering;

use super::*;
use crate::change::{Change, Data, Op};
use crate::command::{Kind, lookup};

fn config() -> EngineConfig {
    EngineConfig {
        dc: "us-east".into(),
        fsync: Fsync::Always,
        max_drift: Duration::from_secs(5),
        backend: BackendConfig::Embedded,
        clock_offset_ms: 0,
        max_unstored: super::DEFAULT_MAX_UNSTORED,
        log_retention: 1 << 30,
        log_segment_bytes: super::DEFAULT_SEGMENT_BYTES,
    }
}

fn args(line: &str) -> Vec<Bytes> {
    line.split(' ')
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

async fn exec(engine: &Engine, line: &str) -> Reply {
    let args = args(line);
    let spec = lookup(&args[0]).unwrap();
    match spec.kind {
        crate::command::Kind::Write(f) => {
            engine
                .write(f, args, Bytes::from_static(b"u"), None)
                .await
                .await
                .unwrap()
                .reply
        }
        crate::command::Kind::Read(f) => engine.read(spec, f, &args).await,
        crate::command::Kind::Server => unreachable!(),
    }
}

#[tokio::test]
async fn writes_are_read_back_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(exec(&engine, "SET {u}:a 1").await, Reply::OK);
    assert_eq!(exec(&engine, "INCRBY {u}:a 41").await, Reply::Integer(42));
    assert_eq!(exec(&engine, "HSET {u}:h f v").await, Reply::Integer(1));
    assert_eq!(exec(&engine, "GET {u}:a").await, Reply::bulk("42"));
    engine.shutdown().await;
    drop(engine);

    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(exec(&engine, "GET {u}:a").await, Reply::bulk("42"));
    assert_eq!(exec(&engine, "HGET {u}:h f").await, Reply::bulk("v"));
    assert_eq!(engine.applied().get("us-east"), 3);
    // Sequences continue where they stopped.
    exec(&engine, "SET {u}:b 2").await;
    assert_eq!(engine.applied().get("us-east"), 4);
}

#[tokio::test]
async fn changes_the_store_missed_are_replayed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    exec(&engine, "SET {u}:a 1").await;
    engine.shutdown().await;
    drop(engine);
    // A crash after the log append and before the store commit leaves this state.
    let (mut log, _) = Log::open(&dir.path().join("log")).unwrap();
    let value = Value {
        data: Data::String(b"2".to_vec()),
        expire_at_ms: None,
    };
    let change = Change {
        origin: "us-east".into(),
        seq: 2,
        hlc: 1,
        user: b"u".to_vec(),
        ops: vec![Op::new(b"{u}:a".to_vec(), Some(value))],
        deps: meridian_policies::VersionVector::new(),
        path: vec!["us-east".into()],
    };
    let mut bytes = Vec::new();
    change.encode(&mut bytes);
    log.append([bytes.as_slice()]).unwrap();
    drop(log);

    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(engine.stats().replayed.load(Ordering::Relaxed), 1);
    assert_eq!(exec(&engine, "GET {u}:a").await, Reply::bulk("2"));
    assert_eq!(exec(&engine, "INCR {u}:a").await, Reply::Integer(3));
    assert_eq!(
        engine.applied().get("us-east"),
        3,
        "the next write follows the replayed one"
    );
}

/// Edits in the log (a member added to a big set) are rebuilt on replay from the
/// state the log left before them: here the whole store is gone and the log
/// rebuilds it from its first record.
#[tokio::test]
async fn logged_edits_are_rebuilt_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let members: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    exec(&engine, &format!("SADD {{u}}:s {}", members.join(" "))).await;
    exec(&engine, "SADD {u}:s extra").await;
    exec(&engine, "SREM {u}:s m3").await;
    assert_eq!(engine.stats().edits_written.load(Ordering::Relaxed), 2);
    engine.shutdown().await;
    drop(engine);
    std::fs::remove_file(dir.path().join("store.redb")).unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(engine.stats().replayed.load(Ordering::Relaxed), 3);
    assert_eq!(exec(&engine, "SCARD {u}:s").await, Reply::Integer(40));
    assert_eq!(
        exec(&engine, "SISMEMBER {u}:s extra").await,
        Reply::Integer(1)
    );
    assert_eq!(exec(&engine, "SISMEMBER {u}:s m3").await, Reply::Integer(0));
}

#[tokio::test]
async fn a_failed_command_leaves_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    exec(&engine, "SET {u}:s text").await;
    let err = exec(&engine, "INCR {u}:s").await;
    assert!(err.is_error());
    assert_eq!(exec(&engine, "GET {u}:missing").await, Reply::Null);
    assert_eq!(
        engine.stats().changes.load(Ordering::Relaxed),
        1,
        "reads and failed writes log nothing"
    );
}

#[tokio::test]
async fn concurrent_writes_are_batched_and_all_applied() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let mut waits = Vec::new();
    for _ in 0..500 {
        let spec = lookup(b"INCR").unwrap();
        let crate::command::Kind::Write(f) = spec.kind else {
            unreachable!()
        };
        waits.push(
            engine
                .write(f, args("INCR {u}:n"), Bytes::from_static(b"u"), None)
                .await,
        );
    }
    let mut last = 0;
    for w in waits {
        let Reply::Integer(n) = w.await.unwrap().reply else {
            panic!("INCR failed")
        };
        assert_eq!(n, last + 1, "replies come in order");
        last = n;
    }
    assert_eq!(last, 500);
    let batches = engine.stats().batches.load(Ordering::Relaxed);
    assert!(batches < 500, "500 queued writes took {batches} batches");
}

/// Client tasks run writes themselves when the writer is free; one queued while
/// another holds the writer (a task, or the writer thread waking for its timed
/// sync every millisecond and to delete keys that expire) is run by that holder.
/// None is left waiting, none runs twice, and each task's writes run in the
/// order it queued them. Keys given a TTL by client tasks are deleted once it
/// passes: the writer thread learns of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_while_the_writer_is_held_all_run_once_in_order() {
    const TASKS: usize = 4;
    const WRITES: i64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        fsync: Fsync::Every(Duration::from_millis(1)),
        ..config()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    engine.set_expiry_owner(|_| Some(b"u".to_vec()));
    let incr = lookup(b"INCR").unwrap();
    let crate::command::Kind::Write(f) = incr.kind else {
        unreachable!()
    };
    let expiring = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                assert_eq!(
                    exec(&engine, &format!("SET {{u}}:e{i} x PX 2")).await,
                    Reply::OK
                );
            }
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut waits = Vec::new();
                for i in 0..WRITES {
                    let line = format!("INCR {{u}}:{t}");
                    waits.push(
                        engine
                            .write(f, args(&line), Bytes::from_static(b"u"), None)
                            .await,
                    );
                    // Some writes wait for their reply before the next is queued.
                    if i % 7 == 0 {
                        let w = waits.pop().unwrap();
                        let reply = tokio::time::timeout(Duration::from_secs(60), w).await;
                        assert_eq!(
                            reply.expect("a write was left waiting").unwrap().reply,
                            Reply::Integer(i + 1)
                        );
                    }
                }
                let mut last = 0;
                for w in waits {
                    let reply = tokio::time::timeout(Duration::from_secs(60), w).await;
                    let Reply::Integer(n) = reply.expect("a write was left waiting").unwrap().reply
                    else {
                        panic!("INCR failed")
                    };
                    assert!(n > last, "task {t}: {n} after {last}");
                    last = n;
                }
                last
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), WRITES);
    }
    expiring.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while engine.expiry_stats().0 > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired keys were left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in 0..TASKS {
        let key = format!("{{u}}:{t}");
        assert_eq!(
            exec(&engine, &format!("GET {key}")).await,
            Reply::Bulk(Bytes::from(WRITES.to_string()))
        );
    }
    engine.shutdown().await;
}

/// A write a client task ran brings the writer thread's duties sooner: the
/// timed sync of the log it dirtied, the deletion of the key it gave a TTL. The
/// thread, asleep with nothing due, wakes for them.
#[tokio::test]
async fn the_writer_thread_wakes_for_the_sync_and_expiry_client_writes_bring() {
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let every = EngineConfig {
        fsync: Fsync::Every(Duration::from_millis(20)),
        ..config()
    };
    let engine = Engine::open(dir.path(), every).unwrap();
    assert_eq!(exec(&engine, "SET {u}:a 1").await, Reply::OK);
    until("the log was not synced", &|| {
        engine.stats().log_syncs.load(Ordering::Relaxed) > 0
    });
    engine.shutdown().await;

    // No timed syncs: only the expiry wakes the thread.
    let dir = tempfile::tempdir().unwrap();
    let never = EngineConfig {
        fsync: Fsync::Never,
        ..config()
    };
    let engine = Engine::open(dir.path(), never).unwrap();
    engine.set_expiry_owner(|_| Some(b"u".to_vec()));
    assert_eq!(exec(&engine, "SET {u}:b 1 PX 20").await, Reply::OK);
    until("the expired key was not deleted", &|| {
        engine.expiry_stats().0 == 0
    });
    assert_eq!(engine.stats().expired_keys.load(Ordering::Relaxed), 1);
    engine.shutdown().await;
}

/// A peer's snapshot holds every change applied here when it was asked for, even
/// those the committer would otherwise gather for the rest of its period: the
/// shipper never sends a datacenter its own changes, so one restoring its lost
/// data from the snapshot would go without them.
#[tokio::test]
async fn a_peer_snapshot_holds_every_change_applied_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    exec(&engine, "SET {u}:a 1").await;
    // That commit went at once; the next one gathers for the backend's period.
    let mut committed = engine.shared.committed.subscribe();
    tokio::time::timeout(Duration::from_secs(30), committed.wait_for(|&c| c >= 1))
        .await
        .expect("the first write was committed")
        .unwrap();
    let remote = |seq: u64| Change {
        origin: "eu-west".into(),
        seq,
        hlc: seq << 16,
        user: b"v".to_vec(),
        ops: vec![Op::new(
            format!("{{v}}:{seq}").into_bytes(),
            Some(Value {
                data: Data::String(b"x".to_vec()),
                expire_at_ms: None,
            }),
        )],
        deps: meridian_policies::VersionVector::new(),
        path: vec!["eu-west".into()],
    };
    let held = engine.apply((1..=5).map(remote).collect()).await.unwrap();
    assert!(held.is_empty());
    assert_eq!(engine.applied().get("eu-west"), 5);
    exec(&engine, "SET {u}:b 2").await;

    let (vector, entries) = engine.snapshot().await.unwrap();
    assert_eq!(vector.get("eu-west"), 5, "the snapshot names {vector}");
    assert_eq!(vector.get("us-east"), 2, "the snapshot names {vector}");
    let keys: std::collections::BTreeSet<&[u8]> = entries.iter().map(|(k, _)| &k[..]).collect();
    for key in ["{u}:a", "{u}:b", "{v}:1", "{v}:5"] {
        assert!(
            keys.contains(key.as_bytes()),
            "{key} is missing from the snapshot"
        );
    }
    engine.shutdown().await;
}

/// After a restart the store is scanned for TTLs a slice at a time, writes
/// running between slices; a key written meanwhile keeps the TTL of that write,
/// not the one the store held before it.
#[tokio::test]
async fn the_start_up_scan_for_ttls_leaves_keys_written_meanwhile_as_written() {
    const KEYS: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        fsync: Fsync::Never,
        ..config()
    };
    let engine = Engine::open(dir.path(), config.clone()).unwrap();
    for i in 0..KEYS {
        exec(&engine, &format!("SET {{u}}:k{i:05} x PX 3600000")).await;
    }
    assert_eq!(engine.expiry_stats().0, KEYS as u64);
    engine.shutdown().await;
    drop(engine);

    // The scan waits (other tests' scans only go slower meanwhile).
    super::writer::HOLD_EXPIRY_SCAN.store(true, Ordering::Relaxed);
    let engine = Engine::open(dir.path(), config).unwrap();
    // A first write is committed at once; the next waits in the memtable for the
    // committer's period, the store holding the key's old value meanwhile. It is
    // the last key the scan reaches, and it loses its TTL.
    let written = async {
        assert_eq!(exec(&engine, "SET {u}:a 1").await, Reply::OK);
        let last = format!("SET {{u}}:k{:05} y", KEYS - 1);
        assert_eq!(exec(&engine, &last).await, Reply::OK);
    };
    let written = tokio::time::timeout(Duration::from_secs(30), written).await;
    super::writer::HOLD_EXPIRY_SCAN.store(false, Ordering::Relaxed);
    written.expect("writes ran while the scan was under way");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.stats().expiry_scan_left.load(Ordering::Relaxed) > 0 {
        assert!(std::time::Instant::now() < deadline, "the scan did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(engine.expiry_stats().0, KEYS as u64 - 1);
    engine.shutdown().await;
}

/// Reads racing the committer never go back in time: a value once read is never
/// followed by an older one, while the committer moves keys out of the memtable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_back_while_the_committer_moves_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        fsync: Fsync::Never,
        ..config()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    let reader = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let get = lookup(b"GET").unwrap();
            let spec = get;
            let crate::command::Kind::Read(f) = get.kind else {
                unreachable!()
            };
            let mut last = 0i64;
            let mut reads = 0;
            while last < 3_000 {
                let n = match engine.read(spec, f, &args("GET {u}:n")).await {
                    Reply::Null => 0,
                    Reply::Bulk(b) => std::str::from_utf8(&b).unwrap().parse::<i64>().unwrap(),
                    other => panic!("{other:?}"),
                };
                assert!(n >= last, "read {n} after {last}");
                last = n;
                reads += 1;
            }
            reads
        })
    };
    let incr = lookup(b"INCR").unwrap();
    let crate::command::Kind::Write(f) = incr.kind else {
        unreachable!()
    };
    for _ in 0..30 {
        let mut waits = Vec::new();
        for _ in 0..100 {
            waits.push(
                engine
                    .write(f, args("INCR {u}:n"), Bytes::from_static(b"u"), None)
                    .await,
            );
        }
        for w in waits {
            assert!(!w.await.unwrap().reply.is_error());
        }
    }
    let reads = reader.await.unwrap();
    assert!(reads > 1);
    engine.shutdown().await;
}

/// A write of a user queued behind the user's move away from here (routed here
/// before the move) does not run: the datacenter that moved the user no longer
/// writes it. The record survives a restart (the store holds it) and is hidden
/// from the keyspace.
#[tokio::test]
async fn writes_queued_behind_a_move_away_are_refused_and_the_move_persists() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(exec(&engine, "SET {u}:a 1").await, Reply::OK);
    let user = Bytes::from_static(b"u");
    let moved = engine.move_home(user.clone(), "eu-west".into(), "operator");
    let moved = moved.await;
    let Some(Kind::Write(incr)) = lookup(b"INCR").map(|s| s.kind) else {
        unreachable!()
    };
    // Queued right behind the move, in the same batch or the next.
    let late = engine
        .write(incr, args("INCR {u}:a"), user.clone(), None)
        .await;
    assert_eq!(moved.await.unwrap().reply, Reply::OK);
    let refused = late.await.unwrap().reply;
    let Reply::Error(why) = refused else {
        panic!("a write after the move ran: {refused:?}")
    };
    assert!(
        why.starts_with("TRYAGAIN user 'u' has moved to eu-west"),
        "{why}"
    );
    assert_eq!(exec(&engine, "GET {u}:a").await, Reply::bulk("1"));
    // Another user is written as before.
    let other = engine
        .write(incr, args("INCR {v}:a"), Bytes::from_static(b"v"), None)
        .await;
    assert_eq!(other.await.unwrap().reply, Reply::Integer(1));
    let placement = engine.placement(b"u").unwrap();
    assert_eq!((&*placement.home, &*placement.from), ("eu-west", "us-east"));
    assert_eq!(placement.seq, 2);
    assert_eq!(engine.key_count().await.unwrap(), 2);
    engine.shutdown().await;
    drop(engine);

    let engine = Engine::open(dir.path(), config()).unwrap();
    assert_eq!(engine.placement(b"u"), Some(placement));
    let late = engine.write(incr, args("INCR {u}:a"), user, None).await;
    assert!(late.await.unwrap().reply.is_error());
    assert_eq!(engine.key_count().await.unwrap(), 2);
}

#[tokio::test]
async fn writes_that_reach_the_writer_after_the_lease_ran_out_do_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config()).unwrap();
    let leased = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lease = leased.clone();
    engine.set_write_fence(move || match lease.load(Ordering::Acquire) {
        true => Ok(()),
        false => Err("1 of 3 datacenters heard from it".into()),
    });
    assert_eq!(exec(&engine, "SET {u}:a 1").await, Reply::OK);
    // Routed while the lease held, the write reaches the writer once it has run out.
    leased.store(false, Ordering::Release);
    let Reply::Error(refused) = exec(&engine, "SET {u}:a 2").await else {
        panic!("a write ran without the lease")
    };
    assert!(
        refused.starts_with("TRYAGAIN us-east lost its lease") && refused.contains("1 of 3"),
        "{refused}"
    );
    assert_eq!(exec(&engine, "GET {u}:a").await, Reply::bulk("1"));
    assert_eq!(engine.applied().get("us-east"), 1);
    leased.store(true, Ordering::Release);
    assert_eq!(exec(&engine, "SET {u}:a 3").await, Reply::OK);
    engine.shutdown().await;
}
