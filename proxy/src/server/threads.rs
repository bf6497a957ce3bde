//! The threads client connections run on: one per core, each with a runtime of
//! its own, and each connection on one of them for its whole life.
//!
//! On the shared multi-threaded runtime a connection's task moved between
//! workers, and every hand-off (a read's reply coming back from the Redis
//! connection's task, a write's from the writer thread) could wake the other
//! worker, which then took work from the first: wakeups across cores, each a
//! system call and, in a virtual machine, an interrupt between processors. With
//! one runtime per thread, a connection's tasks stay on one core, and so does the
//! connection to Redis that its reads share with that thread's other clients.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The client threads of one proxy. Dropping it ends them, and with them any
/// connection still on them.
#[derive(Debug)]
pub(super) struct ClientThreads {
    handles: Vec<Handle>,
    next: usize,
    /// Dropped, each ends its thread's runtime.
    _stops: Vec<oneshot::Sender<()>>,
}

impl ClientThreads {
    /// One thread per core the process may use, named after the datacenter.
    pub(super) fn start(dc: &str) -> std::io::Result<ClientThreads> {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = ClientThreads {
            handles: Vec::with_capacity(count),
            next: 0,
            _stops: Vec::with_capacity(count),
        };
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            threads.handles.push(runtime.handle().clone());
            threads._stops.push(stop);
            std::thread::Builder::new()
                .name(format!("clients-{dc}-{i}"))
                .spawn(move || {
                    // Returns once the proxy drops its end; the runtime's tasks
                    // still there are dropped with it.
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(threads)
    }

    /// The runtime the next connection goes to (in turn).
    pub(super) fn next(&mut self) -> Option<&Handle> {
        let handle = self.handles.get(self.next % self.handles.len().max(1))?;
        self.next = self.next.wrapping_add(1);
        Some(handle)
    }
}
