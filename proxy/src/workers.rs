//! Named background workers: every long-running task and thread of a proxy (the
//! writer, the committer, the log syncer, retention, each link, shipper and
//! receiver) registers here with its state and error count, which `/status` shows.
//! Async workers are spawned through [`Workers::spawn`], inside a tracing span that
//! names the datacenter and the peer, and are joined, within a grace period, when
//! the proxy shuts down.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Not started yet, or between attempts (a link dialling again).
    Waiting = 0,
    /// Nothing to do.
    Idle = 1,
    /// Working.
    Busy = 2,
    /// Held back: its database or peer is slow or unreachable, and it retries.
    Throttled = 3,
    /// Ended.
    Done = 4,
    /// Stopped by an error it cannot recover from.
    Failed = 5,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Idle => "idle",
            State::Busy => "busy",
            State::Throttled => "throttled",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Idle,
            2 => State::Busy,
            3 => State::Throttled,
            4 => State::Done,
            5 => State::Failed,
            _ => State::Waiting,
        }
    }
}

/// One worker's visible state.
#[derive(Debug)]
pub(crate) struct Worker {
    name: &'static str,
    peer: Option<String>,
    state: AtomicU8,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Worker {
    /// Records what the worker is doing.
    pub(crate) fn set(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// What the worker is doing.
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Counts an error and keeps it as the last one.
    pub(crate) fn error(&self, why: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
    }

    fn json(&self) -> serde_json::Value {
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        serde_json::json!({
            "name": self.name,
            "peer": self.peer,
            "state": self.state().name(),
            "errors": self.errors.load(Ordering::Relaxed),
            "last_error": last_error,
        })
    }
}

/// The workers of one proxy.
#[derive(Debug)]
pub(crate) struct Workers {
    dc: String,
    list: Mutex<Vec<Arc<Worker>>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Workers {
    pub(crate) fn new(dc: &str) -> Workers {
        Workers {
            dc: dc.to_owned(),
            list: Mutex::new(Vec::new()),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// Registers a worker (a thread, or work done inside another task).
    pub(crate) fn register(&self, name: &'static str, peer: Option<&str>) -> Arc<Worker> {
        let worker = Arc::new(Worker {
            name,
            peer: peer.map(str::to_owned),
            state: AtomicU8::new(State::Waiting as u8),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(worker.clone());
        worker
    }

    /// Registers a worker and runs `task` on the runtime inside a span naming the
    /// datacenter, the worker and the peer; the worker is `done` when it returns.
    pub(crate) fn spawn<F>(
        &self,
        name: &'static str,
        peer: Option<&str>,
        task: impl FnOnce(Arc<Worker>) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self.register(name, peer);
        self.run_as(worker, task);
    }

    /// Runs `task` as the registered `worker` (see [`Workers::spawn`]).
    pub(crate) fn run_as<F>(&self, worker: Arc<Worker>, task: impl FnOnce(Arc<Worker>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!(
            "worker",
            dc = %self.dc,
            worker = worker.name,
            peer = worker.peer.as_deref().unwrap_or("")
        );
        let run = task(worker.clone());
        self.track(
            async move {
                run.await;
                if worker.state() != State::Failed {
                    worker.set(State::Done);
                }
            }
            .instrument(span),
        );
    }

    /// Runs a short-lived task (one accepted link, one echo), joined at shutdown
    /// like the workers; it runs in the caller's span.
    pub(crate) fn track(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task.in_current_span());
    }

    /// Waits up to `grace` for every spawned task to end (they watch the proxy's
    /// stop signal), then aborts the rest.
    pub(crate) async fn join(&self, grace: Duration) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                remaining = tasks.len(),
                "workers still running after the grace period; aborting them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Every worker as JSON, in registration order.
    pub(crate) fn json(&self) -> serde_json::Value {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::Value::Array(list.iter().map(|w| w.json()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn workers_show_their_state_and_are_joined_or_aborted() {
        let workers = Workers::new("dc1");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        workers.spawn("obedient", Some("dc2"), |w| {
            let mut stopped = stopped.clone();
            async move {
                w.set(State::Idle);
                let _ = stopped.changed().await;
            }
        });
        workers.spawn("stubborn", None, |w| async move {
            w.error(&"cannot reach the peer");
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        let json = workers.json();
        assert_eq!(json[0]["state"], "idle");
        assert_eq!(json[0]["peer"], "dc2");
        assert_eq!(json[1]["errors"], 1);
        assert_eq!(json[1]["last_error"], "cannot reach the peer");
        let _ = stop.send(true);
        workers.join(Duration::from_secs(5)).await;
        let json = workers.json();
        assert_eq!(json[0]["state"], "done");
        // Aborted after the grace period: it never finished.
        assert_eq!(json[1]["state"], "waiting");
    }
}
