//! The agreement among members in one process, over an in-memory transport that
//! can cut any pair apart.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_policies::{EpochCommand, Service};

use super::*;

/// Members by index, and the pairs that cannot talk.
#[derive(Debug, Default)]
struct Hub {
    members: Mutex<Vec<Option<Arc<Control>>>>,
    cut: Mutex<BTreeSet<(usize, usize)>>,
}

#[derive(Debug)]
struct Wire {
    hub: Arc<Hub>,
    from: usize,
}

impl Transport for Wire {
    fn call(&self, to: usize, request: Vec<u8>) -> network::BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let pair = (self.from.min(to), self.from.max(to));
            if self.hub.cut.lock().unwrap().contains(&pair) {
                return Err("cut".into());
            }
            let member = self.hub.members.lock().unwrap().get(to).cloned().flatten();
            match member {
                Some(m) => Ok(m.answer(&request).await),
                None => Err("down".into()),
            }
        })
    }
}

const TIMING: Timing = Timing {
    heartbeat: Duration::from_millis(50),
    election: Duration::from_millis(300),
};

async fn start(hub: &Arc<Hub>, dirs: &[tempfile::TempDir], i: usize) -> Arc<Control> {
    let wire = Arc::new(Wire {
        hub: hub.clone(),
        from: i,
    });
    // A member stopped a moment ago may still hold its store while its tasks end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let control = loop {
        match Control::start(i, dirs.len(), dirs[i].path(), TIMING, wire.clone()).await {
            Ok(control) => break control,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%e, "retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mut members = hub.members.lock().unwrap();
    if members.len() < dirs.len() {
        members.resize(dirs.len(), None);
    }
    members[i] = Some(control.clone());
    control
}

/// Proposes until a leader takes the command (elections take a moment).
async fn propose(control: &Control, command: EpochCommand) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match control.propose(command.clone()).await {
            Ok(epoch) => return epoch,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%e, "retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no agreement within 30 s: {e}"),
        }
    }
}

async fn until(mut epochs: watch::Receiver<Epochs>, what: &str, f: impl Fn(&Epochs) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), epochs.wait_for(|e| f(e)))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 30 s"))
        .unwrap();
}

fn report(from: usize, down: &[usize]) -> EpochCommand {
    EpochCommand::Report {
        from,
        unreachable: down.iter().copied().collect(),
        applied: down.iter().map(|&d| (d, 0)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_takes_a_home_out_and_every_member_learns_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let hub = Arc::new(Hub::default());
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(start(&hub, &dirs, i).await);
    }
    // Datacenter 0 is cut off from the others; they report it.
    hub.cut.lock().unwrap().extend([(0, 1), (0, 2)]);
    propose(&members[1], report(1, &[0])).await;
    propose(&members[2], report(2, &[0])).await;
    for m in &members[1..] {
        until(m.epochs(), "dc0 out", |e| {
            matches!(e.service(0), Some(Service::Out { .. }))
        })
        .await;
    }
    // Datacenter 0 alone cannot agree on anything.
    let alone = tokio::time::timeout(
        Duration::from_secs(2),
        members[0].propose(report(0, &[1, 2])),
    )
    .await;
    assert!(!matches!(alone, Ok(Ok(_))), "a minority agreed: {alone:?}");
    assert!(
        members[0].epochs().borrow().in_service(0),
        "dc0 never learned it is out while cut off"
    );
    // Healed, it learns the agreed state.
    hub.cut.lock().unwrap().clear();
    until(members[0].epochs(), "dc0 learns it is out", |e| {
        matches!(e.service(0), Some(Service::Out { .. }))
    })
    .await;
    for m in &members {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_keeps_the_agreed_state() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let hub = Arc::new(Hub::default());
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(start(&hub, &dirs, i).await);
    }
    propose(&members[0], report(0, &[2])).await;
    propose(&members[1], report(1, &[2])).await;
    until(members[2].epochs(), "dc2 out", |e| !e.in_service(2)).await;
    // dc2 restarts, cut off: it has the state from its own store.
    hub.cut.lock().unwrap().extend([(0, 2), (1, 2)]);
    let old = members.pop().unwrap();
    old.shutdown().await;
    hub.members.lock().unwrap()[2] = None;
    drop(old);
    let again = start(&hub, &dirs, 2).await;
    assert!(!again.epochs().borrow().in_service(2));
    assert_eq!(again.epochs().borrow().epoch(), 1);
    for m in members.iter().take(2).chain([&again]) {
        m.shutdown().await;
    }
}

/// openraft's own suite for storage implementations, on ours.
#[test]
fn the_store_passes_openraft_s_storage_suite() {
    struct Builder;
    impl
        openraft::testing::StoreBuilder<
            Agreement,
            store::Store,
            store::StateMachine,
            tempfile::TempDir,
        > for Builder
    {
        async fn build(
            &self,
        ) -> Result<
            (tempfile::TempDir, store::Store, store::StateMachine),
            openraft::StorageError<NodeId>,
        > {
            let dir = tempfile::tempdir().unwrap();
            let store = store::Store::open(&dir.path().join("control.redb")).unwrap();
            let (published, _) = watch::channel(Epochs::new(3));
            let machine = store::StateMachine::open(store.clone(), 3, published)?;
            Ok((dir, store, machine))
        }
    }
    openraft::testing::Suite::test_all(Builder).unwrap();
}

/// The state machine's state is stored as JSON: every part of it must be
/// representable (a map keyed by pairs is not, and failing to store the state
/// stops the member).
#[test]
fn the_state_round_trips_through_its_stored_form() {
    let mut epochs = Epochs::new(3);
    epochs.apply(&report(1, &[0]));
    epochs.apply(&report(2, &[0]));
    epochs.apply(&report(0, &[]));
    epochs.apply(&EpochCommand::Released {
        from: 1,
        returning: 0,
        seq: 4,
    });
    let state = store::State {
        last_applied: None,
        membership: openraft::StoredMembership::default(),
        epochs,
    };
    let json = serde_json::to_vec(&state).unwrap();
    assert_eq!(
        serde_json::from_slice::<store::State>(&json).unwrap(),
        state
    );
}
