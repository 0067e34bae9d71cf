//! When each saga reached its final state: a Postgres trigger in the coordinator's database notifies
//! the saga's id when the transition commits, and a listening task here takes the time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

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

/// The listening connection's task; stops when dropped.
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
    _client: tokio_postgres::Client,
}

impl Listener {
    /// Connects to the coordinator's database, `LISTEN`s on `channel` and records into `finals`
    /// each notification the moment it arrives (no polling: a poll loop would take CPU from the
    /// machine being measured).
    pub async fn start(url: &str, channel: &str, finals: Arc<Finals>) -> anyhow::Result<Listener> {
        let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        let now = Instant::now();
                        if let Ok(id) = Uuid::parse_str(n.payload()) {
                            finals.finished(id, now);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("bench: the final-state listener failed: {e}");
                        return;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok(Listener {
            task,
            _client: client,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
