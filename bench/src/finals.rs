//! When each saga reached its final state: a Postgres trigger in the coordinator's database notifies
//! the saga's id when the transition commits, and a listener thread here takes the time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::PgConnection;
use tokio::sync::oneshot;
use uuid::Uuid;

/// How often the listening connection is looked at when nothing arrived.
const POLL: Duration = Duration::from_micros(250);

enum Slot {
    Waiting(oneshot::Sender<Instant>),
    Done(Instant),
}

/// Final states seen so far, and who waits for which.
#[derive(Default)]
pub struct Finals {
    slots: Mutex<HashMap<Uuid, Slot>>,
    count: AtomicU64,
    first: OnceLock<Instant>,
}

impl Finals {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finished(&self, id: Uuid, at: Instant) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self.first.set(at);
        let mut slots = self.slots();
        match slots.remove(&id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(at);
            }
            _ => {
                // The notification can beat the HTTP answer that tells the submitter the id.
                slots.insert(id, Slot::Done(at));
            }
        }
    }

    /// Resolves with the time saga `id` reached a final state.
    pub fn wait_for(&self, id: Uuid) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots();
        match slots.remove(&id) {
            Some(Slot::Done(at)) => {
                let _ = tx.send(at);
            }
            _ => {
                slots.insert(id, Slot::Waiting(tx));
            }
        }
        rx
    }

    /// Sagas that reached a final state so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// When the first saga reached a final state.
    pub fn first(&self) -> Option<Instant> {
        self.first.get().copied()
    }
}

/// The listener thread; stops when dropped.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on `conn` (already `LISTEN`ing) and records into `finals`.
    pub fn start(mut conn: PgConnection, finals: Arc<Finals>) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let mut seen = false;
                for notification in conn.notifications_iter() {
                    let now = Instant::now();
                    match notification {
                        Ok(n) => {
                            seen = true;
                            if let Ok(id) = Uuid::parse_str(&n.payload) {
                                finals.finished(id, now);
                            }
                        }
                        Err(e) => {
                            eprintln!("bench: the final-state listener failed: {e}");
                            return;
                        }
                    }
                }
                if !seen {
                    std::thread::sleep(POLL);
                }
            }
        });
        Listener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
