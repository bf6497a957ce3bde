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
