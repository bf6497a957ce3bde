//! The home's memory of recent forwarded requests: a request received again (its
//! sender lost the link before the reply) is answered with the first reply, or
//! waits for it while the first is still running, and is never executed twice.
//!
//! Entries are kept for a fixed time, longer than any sender keeps resending (its
//! deadline), and at most [`MOST`] of them (past that the oldest go first, counted).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::link::frame::{ForwardReply, RequestId};

/// The least time a request is remembered.
pub(super) const MIN_KEEP: Duration = Duration::from_secs(60);
/// Most requests remembered.
pub(super) const MOST: usize = 1 << 20;

type Slot = watch::Receiver<Option<ForwardReply>>;

#[derive(Debug)]
pub(super) struct Window {
    keep: Duration,
    inner: Mutex<Inner>,
    /// Requests forgotten before their time because the window was full.
    pub(super) evicted_early: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<RequestId, Slot>,
    order: VecDeque<(Instant, RequestId)>,
}

/// What to do with a request.
#[derive(Debug)]
pub(super) enum Begin {
    /// Not seen before: execute it, then [`Window::finish`] with the reply.
    New(watch::Sender<Option<ForwardReply>>),
    /// Seen and answered: send this again.
    Done(ForwardReply),
    /// Seen and still running: wait for its reply.
    Running(Slot),
}

impl Window {
    pub(super) fn new(keep: Duration) -> Window {
        Window {
            keep,
            inner: Mutex::new(Inner::default()),
            evicted_early: AtomicU64::new(0),
        }
    }

    /// Looks `id` up, registering it as running when it is new.
    pub(super) fn begin(&self, id: &RequestId, now: Instant) -> Begin {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now, self.keep, &self.evicted_early);
        if let Some(slot) = inner.by_id.get(id) {
            return match slot.borrow().clone() {
                Some(reply) => Begin::Done(reply),
                None => Begin::Running(slot.clone()),
            };
        }
        let (tx, rx) = watch::channel(None);
        inner.by_id.insert(id.clone(), rx);
        inner.order.push_back((now, id.clone()));
        Begin::New(tx)
    }

    /// How many requests are remembered.
    pub(super) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, keep: Duration, evicted_early: &AtomicU64) {
        while let Some((at, _)) = self.order.front() {
            let old = now.saturating_duration_since(*at) > keep;
            let full = self.order.len() >= MOST;
            if !old && !full {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
            if !old {
                evicted_early.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits for the reply of a request that is still running; `None` when its
/// execution ended without one.
pub(super) async fn wait(mut slot: Slot) -> Option<ForwardReply> {
    slot.wait_for(Option::is_some).await.ok()?.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> RequestId {
        RequestId {
            from: "eu".into(),
            incarnation: 1,
            n,
        }
    }

    fn reply(text: &'static [u8]) -> ForwardReply {
        ForwardReply {
            replies: vec![bytes::Bytes::from_static(text)],
            token: bytes::Bytes::new(),
        }
    }

    #[tokio::test]
    async fn a_request_seen_again_gets_the_first_reply_and_is_not_run_twice() {
        let window = Window::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let Begin::New(tx) = window.begin(&id(1), t0) else {
            panic!("a new request should run")
        };
        let Begin::Running(slot) = window.begin(&id(1), t0) else {
            panic!("a resend while running should wait")
        };
        let waiting = tokio::spawn(wait(slot));
        tx.send_replace(Some(reply(b":1\r\n")));
        assert_eq!(waiting.await.unwrap(), Some(reply(b":1\r\n")));
        match window.begin(&id(1), t0 + Duration::from_secs(59)) {
            Begin::Done(r) => assert_eq!(r, reply(b":1\r\n")),
            other => panic!("a resend after the reply should get it, got {other:?}"),
        }
        // Another request, or the same number from a restarted sender, is new.
        assert!(matches!(window.begin(&id(2), t0), Begin::New(_)));
        let mut other = id(1);
        other.incarnation = 2;
        assert!(matches!(window.begin(&other, t0), Begin::New(_)));
    }

    #[tokio::test]
    async fn requests_are_forgotten_after_the_window_and_a_lost_execution_says_so() {
        let window = Window::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let Begin::New(tx) = window.begin(&id(1), t0) else {
            panic!("new")
        };
        let Begin::Running(slot) = window.begin(&id(1), t0) else {
            panic!("running")
        };
        drop(tx);
        assert_eq!(wait(slot).await, None);
        assert!(matches!(
            window.begin(&id(3), t0 + Duration::from_secs(61)),
            Begin::New(_)
        ));
        assert_eq!(window.len(), 1, "the old request was forgotten");
        assert_eq!(window.evicted_early.load(Ordering::Relaxed), 0);
    }
}
