//! The replay state's background flush: one thread that `fdatasync`s the replay file after the
//! worker has written to it, so the knock path never waits for the disk.
//!
//! The worker writes records and the header (with its *horizon*, see
//! [`super::replay_store`]) with plain `pwrite`s, which the page cache makes visible to any later
//! reader at once, a restarted daemon included. Only a power cut or a reboot can lose them, and
//! the horizon that bounds what such a loss can hide is made durable ahead of time: by this thread
//! while knocks keep coming, by the worker itself (one flush) when none came for a while. A request
//! names the file and the horizon it wrote; when the flush returns, the store's durable horizon
//! moves up to it. Requests that arrive while a flush runs are coalesced into the next one.
//!
//! One thread serves every store of the process; it is started by the first store, at daemon
//! start-up (before the sandbox, which would refuse a new thread's set-up calls later on), and
//! drops its capabilities when the process enters the sandbox, within a second, like every other
//! thread.

use std::{
    fs,
    sync::{
        Arc, Condvar, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// What to flush: a store's file, the horizon its header holds, and where to publish it.
#[derive(Debug)]
pub struct FlushJob {
    /// The replay file (a handle shared with its store).
    pub file: Arc<fs::File>,
    /// The horizon written in the file's header before this request.
    pub horizon: u64,
    /// The store's durable horizon, raised to `horizon` once the flush returns.
    pub durable: Arc<AtomicU64>,
}

/// Pending requests, at most one per store (a newer request replaces the store's older one).
#[derive(Debug, Default)]
struct Queue {
    jobs: Mutex<Vec<FlushJob>>,
    wake: Condvar,
}

/// Stores with a pending request, at most (the daemon has one store, two while it replaces a
/// broken one); beyond it the oldest request is dropped, which only delays its store's flush.
const MAX_PENDING: usize = 8;

/// The process's flusher (`None` when its thread could not be started: stores then flush on
/// the knock path, as before this design).
static FLUSHER: OnceLock<Option<Arc<Queue>>> = OnceLock::new();

/// Starts the flusher thread if it is not running yet; whether there is one.
pub fn start() -> bool {
    FLUSHER
        .get_or_init(|| {
            let queue = Arc::new(Queue::default());
            let worker = Arc::clone(&queue);
            match std::thread::Builder::new()
                .name("replay-flush".into())
                .spawn(move || run(&worker))
            {
                Ok(_) => Some(queue),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start the replay flush thread: every knock waits for its own flush");
                    None
                }
            }
        })
        .is_some()
}

/// Asks for a flush. Never waits: a pending request of the same store is replaced (the newer
/// horizon covers the older). False when there is no flusher thread.
pub fn request(job: FlushJob) -> bool {
    let Some(Some(queue)) = FLUSHER.get() else {
        return false;
    };
    let mut pending = queue.jobs.lock().unwrap_or_else(PoisonError::into_inner);
    pending.retain(|p| !Arc::ptr_eq(&p.durable, &job.durable));
    if pending.len() >= MAX_PENDING {
        pending.remove(0);
    }
    pending.push(job);
    queue.wake.notify_one();
    true
}

/// How long the thread sleeps without a request before it looks again: it must wake up now and
/// then to follow the process into the sandbox (see [`drop_privileges_if_due`]).
const IDLE_WAKE: Duration = Duration::from_secs(1);

fn run(queue: &Queue) {
    loop {
        let jobs = {
            let mut pending = queue.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            while pending.is_empty() {
                drop_privileges_if_due();
                pending = queue
                    .wake
                    .wait_timeout(pending, IDLE_WAKE)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::take(&mut *pending)
        };
        drop_privileges_if_due();
        for job in jobs {
            flush(&job);
        }
    }
}

/// The thread starts before the daemon drops its capabilities (see the module docs) and
/// capabilities are per thread: it drops its own once the process has dropped, like every
/// runtime thread does.
fn drop_privileges_if_due() {
    #[cfg(target_os = "linux")]
    super::privsep::sandbox::catch_up();
}

fn flush(job: &FlushJob) {
    match job.file.sync_data() {
        Ok(()) => {
            job.durable.fetch_max(job.horizon, Ordering::AcqRel);
        }
        Err(err) => {
            // The durable horizon stays where it was: the next knock past it flushes on its
            // own path, and fails closed if that fails too.
            tracing::error!(error = %err, "cannot flush the replay state in the background");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_flush_raises_the_durable_horizon() {
        assert!(start());
        let file = Arc::new(tempfile::tempfile().unwrap());
        let durable = Arc::new(AtomicU64::new(10));
        assert!(request(FlushJob {
            file,
            horizon: 42,
            durable: Arc::clone(&durable),
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while durable.load(Ordering::Acquire) != 42 {
            assert!(Instant::now() < deadline, "not flushed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_durable_horizon_never_goes_down() {
        assert!(start());
        let file = Arc::new(tempfile::tempfile().unwrap());
        let durable = Arc::new(AtomicU64::new(100));
        let marker = Arc::new(AtomicU64::new(0));
        request(FlushJob {
            file: Arc::clone(&file),
            horizon: 50,
            durable: Arc::clone(&durable),
        });
        // A second job of another store, queued behind the first.
        request(FlushJob {
            file,
            horizon: 1,
            durable: Arc::clone(&marker),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while marker.load(Ordering::Acquire) != 1 {
            assert!(Instant::now() < deadline, "not flushed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(durable.load(Ordering::Acquire), 100);
    }
}
