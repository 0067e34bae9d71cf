//! Live views across coordinators: the changes this instance commits are told to the others, and
//! theirs are relayed into this one's [`Changes`], so a dashboard shows every saga whichever
//! coordinator owns its partition.
//!
//! Both halves go through Postgres `LISTEN`/`NOTIFY` ([`crate::store::notices`]), which every
//! instance already shares, and stay out of the write path:
//! - the publisher reads the local feed like any other reader and, at most once per [`WINDOW`] and
//!   only when something changed, sends what it collected in one statement. A feed that lagged (a
//!   burst beyond the broadcast's capacity) or a window beyond [`MAX_CHANGES_PER_WINDOW`] is told as
//!   a resync instead, so the actors are never slowed and Postgres never flooded.
//! - the listener is a thread of its own with its own connection (diesel blocks), polling every
//!   [`POLL`]. When its connection is lost it reconnects with backoff and then tells local readers
//!   to resync, since notices sent meanwhile were missed.
//!
//! Notices are sent after the commit that made them (they come from the committed feed), so a
//! relayed change is as durable as a local one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use super::changes::{ChangeNotice, Changes, SagaChange};
use crate::store::notices::{self, NoticeListener};
use crate::store::Store;

/// How long the publisher collects before it sends: at most one statement per window.
const WINDOW: Duration = Duration::from_millis(100);
/// More changes than this in one window are told as a resync: one reload on each other instance
/// is cheaper than dozens of payloads to each. It matches the local feed's capacity.
const MAX_CHANGES_PER_WINDOW: usize = 1024;
/// How often the listener looks for notices.
const POLL: Duration = Duration::from_millis(50);
/// How often the listener proves its connection alive by using it.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long start-up waits for the listener's first connection.
const READY_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the listener (a poll, or a check stuck on a dead connection).
const LISTENER_STOP_WAIT: Duration = Duration::from_secs(2);

/// The running publisher and listener; [`ChangeFeed::stop`] ends both. Dropped without `stop`, they
/// end on their own shortly after.
pub struct ChangeFeed {
    stop: watch::Sender<bool>,
    publisher: JoinHandle<()>,
    listener_stopped: StopOnDrop,
    listener_done: mpsc::Receiver<()>,
}

/// Tells the listening thread to end when the feed is dropped (a start-up that failed later).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts telling the other instances about `changes` and relaying theirs into it, as `instance`;
/// returns once the listener listens (or, if Postgres does not let it, after [`READY_WAIT`] with it
/// still trying). Must run inside a tokio runtime.
pub async fn start(
    changes: Changes,
    store: Store,
    database_url: &str,
    instance: &str,
) -> std::io::Result<ChangeFeed> {
    let (stop, stopping) = watch::channel(false);
    // Subscribed now, before any saga runs, so that no commit is missed.
    let publisher = tokio::spawn(publish(
        changes.subscribe(),
        store,
        instance.to_owned(),
        stopping,
    ));
    let listener_stopped = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let (done, listener_done) = mpsc::channel();
    let (ready, listening) = oneshot::channel();
    let listener = Listener {
        database_url: database_url.to_owned(),
        instance: instance.to_owned(),
        changes,
        stopped: Arc::clone(&listener_stopped.0),
        ready: Some(ready),
    };
    let spawned = thread::Builder::new()
        .name("change-listener".into())
        .spawn(move || {
            listener.run();
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        publisher.abort();
        return Err(e);
    }
    if tokio::time::timeout(READY_WAIT, listening).await.is_err() {
        log::warn!("not yet listening for other coordinators' changes; still trying");
    }
    Ok(ChangeFeed {
        stop,
        publisher,
        listener_stopped,
        listener_done,
    })
}

impl ChangeFeed {
    /// Sends what the publisher still holds, then ends both halves. Called once no saga commits
    /// here any more.
    pub async fn stop(self) {
        let ChangeFeed {
            stop,
            publisher,
            listener_stopped,
            listener_done,
        } = self;
        drop(listener_stopped);
        stop.send_replace(true);
        if let Err(e) = publisher.await {
            log::warn!("the change notice publisher ended abnormally: {e}");
        }
        let waited =
            tokio::task::spawn_blocking(move || listener_done.recv_timeout(LISTENER_STOP_WAIT))
                .await;
        if !matches!(waited, Ok(Ok(()))) {
            // Stuck on a dead connection: it ends with the process.
            log::warn!("the change notice listener did not stop in time");
        }
    }
}

/// What one window collected.
#[derive(Default)]
struct Window {
    changes: Vec<SagaChange>,
    /// Some local changes cannot be told (lagged, too many, or a failed send before).
    missed: bool,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.missed
    }

    /// Takes one reading of the local feed; `false` once the feed is closed.
    fn take(&mut self, read: Result<ChangeNotice, RecvError>) -> bool {
        match read {
            Ok(ChangeNotice::Committed(change)) => {
                if self.changes.len() < MAX_CHANGES_PER_WINDOW {
                    self.changes.push(change);
                } else {
                    self.missed = true;
                }
            }
            // Another instance's change or resync: it already told everyone.
            Ok(ChangeNotice::Relayed(_) | ChangeNotice::Resync) => {}
            Err(RecvError::Lagged(_)) => self.missed = true,
            Err(RecvError::Closed) => return false,
        }
        true
    }

    /// Drains what is already queued, without waiting.
    fn take_queued(&mut self, feed: &mut broadcast::Receiver<ChangeNotice>) {
        loop {
            let read = match feed.try_recv() {
                Ok(notice) => Ok(notice),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(_) => return,
            };
            self.take(read);
        }
    }

    /// The payloads telling this window; a window told as missed says nothing more (the others
    /// reload anyway).
    fn payloads(&self, instance: &str) -> Vec<String> {
        if self.missed {
            notices::payloads::<SagaChange>(instance, &[], true)
        } else {
            notices::payloads(instance, &self.changes, false)
        }
    }
}

async fn publish(
    mut feed: broadcast::Receiver<ChangeNotice>,
    store: Store,
    instance: String,
    mut stopping: watch::Receiver<bool>,
) {
    let mut carried_missed = false;
    let mut failing = false;
    loop {
        let mut window = Window {
            missed: carried_missed,
            ..Window::default()
        };
        let mut open = true;
        // A window opens with the first local change (or with a failed send to make up for).
        while window.is_empty() && open {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => open = false,
                read = feed.recv() => open = window.take(read),
            }
        }
        if open {
            let closes = tokio::time::sleep(WINDOW);
            tokio::pin!(closes);
            while open {
                tokio::select! {
                    _ = &mut closes => break,
                    _ = stopping.wait_for(|s| *s) => open = false,
                    read = feed.recv() => open = window.take(read),
                }
            }
        }
        if !open {
            // Stopping: what was committed up to now still goes out.
            window.take_queued(&mut feed);
        }
        carried_missed = false;
        if !window.is_empty() {
            let instance = instance.clone();
            // Encoded on the blocking pool too: a busy window is hundreds of changes, and this
            // thread runs the actors.
            let sent = store
                .interact(move |db| {
                    let payloads = window.payloads(&instance);
                    db.notify_changes(&payloads).map(|()| payloads.len())
                })
                .await;
            match sent {
                Ok(_) => {
                    if failing {
                        log::info!("change notices to other coordinators are sent again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        log::warn!("cannot send change notices to other coordinators: {e}");
                    }
                    failing = true;
                    carried_missed = true;
                }
            }
        }
        if !open {
            return;
        }
    }
}

/// The listening thread's part.
struct Listener {
    database_url: String,
    instance: String,
    changes: Changes,
    stopped: Arc<AtomicBool>,
    /// Told once, when first listening.
    ready: Option<oneshot::Sender<()>>,
}

impl Listener {
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        // Nothing was missed before the first connection: views load after start-up.
        let mut missed = false;
        let mut failing = false;
        while !self.stopped() {
            let mut listener = match NoticeListener::connect(&self.database_url, &self.instance) {
                Ok(listener) => listener,
                Err(e) => {
                    if !failing {
                        log::warn!("cannot listen for other coordinators' changes (retrying): {e}");
                    }
                    failing = true;
                    missed = true;
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if failing {
                log::info!("listening for other coordinators' changes again");
            }
            failing = false;
            backoff = FIRST_BACKOFF;
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(());
            }
            if missed {
                // Listening again: what was sent meanwhile is lost, so views reload.
                self.changes.resync();
                missed = false;
            }
            if let Err(e) = self.listen(&mut listener) {
                log::warn!("lost the connection listening for other coordinators' changes: {e}");
                failing = true;
                missed = true;
            }
        }
    }

    /// Relays what `listener` hears until it fails or the feed stops.
    fn listen(&self, listener: &mut NoticeListener) -> Result<(), crate::store::StoreError> {
        let mut checked = Instant::now();
        while !self.stopped() {
            if checked.elapsed() >= CHECK_EVERY {
                listener.check()?;
                checked = Instant::now();
            }
            let heard = listener.poll::<SagaChange>()?;
            for change in heard.changes {
                self.changes.relay(change);
            }
            if heard.resync {
                self.changes.resync();
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    /// Sleeps `length`, waking early when stopped.
    fn sleep(&self, length: Duration) {
        let until = Instant::now() + length;
        while !self.stopped() && Instant::now() < until {
            thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }
}

#[cfg(test)]
mod tests {
    use testkit::{TcpProxy, TestDb};

    use super::*;
    use crate::saga::Saga;
    use crate::store::test_db::SCHEMA;

    /// The next notice a reader gets, waiting generously (notices cross connections).
    async fn next(reader: &mut broadcast::Receiver<ChangeNotice>) -> ChangeNotice {
        tokio::time::timeout(Duration::from_secs(20), reader.recv())
            .await
            .expect("a notice in time")
            .expect("the feed is open")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_on_one_instance_reaches_the_others_feed_and_a_lost_listener_resyncs() {
        let db = tokio::task::spawn_blocking(|| TestDb::new(SCHEMA))
            .await
            .expect("a test database");
        let pool = crate::store::pool(db.url(), 4).expect("pool");
        let (on_a, on_b) = (Changes::default(), Changes::default());
        let a = start(on_a.clone(), Store::new(pool.clone()), db.url(), "a")
            .await
            .expect("a's feed");
        // B listens through a proxy, to lose its connection at will.
        let proxy = TcpProxy::to_postgres();
        let b_url = proxy.postgres_url(db.name());
        let b = start(on_b.clone(), Store::new(pool.clone()), &b_url, "b")
            .await
            .expect("b's feed");
        let mut seen_on_a = on_a.subscribe();
        let mut seen_on_b = on_b.subscribe();

        let definition = crate::submission::parse_submission(&serde_json::json!(
            {"name": "n", "steps": [{"name": "s", "participant": "p", "action": "x"}]}
        ))
        .expect("a valid definition");
        let saga = Saga::new(uuid::Uuid::now_v7(), definition, None, chrono::Utc::now());
        // Both listen once started.
        on_a.send(&saga);
        let relayed = next(&mut seen_on_b).await;
        assert_eq!(relayed, ChangeNotice::Relayed(SagaChange::of(&saga)));

        // B loses Postgres while A commits again: once back, B tells its readers to reload.
        proxy.outage();
        on_a.send(&saga);
        tokio::time::sleep(WINDOW * 3).await;
        proxy.resume();
        assert_eq!(next(&mut seen_on_b).await, ChangeNotice::Resync);
        a.stop().await;
        b.stop().await;
        // A hears only its own commits, never their echo.
        while let Ok(notice) = seen_on_a.try_recv() {
            assert!(
                matches!(notice, ChangeNotice::Committed(_)),
                "A heard {notice:?}"
            );
        }
    }

    fn change(state: crate::saga::SagaState) -> SagaChange {
        SagaChange {
            id: uuid::Uuid::now_v7(),
            name: "n".into(),
            state,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_window_tells_only_local_changes_and_a_lag_as_a_resync() {
        let mut window = Window::default();
        let local = change(crate::saga::SagaState::Running);
        assert!(window.take(Ok(ChangeNotice::Relayed(change(
            crate::saga::SagaState::Committed
        )))));
        assert!(window.take(Ok(ChangeNotice::Resync)));
        assert!(window.is_empty(), "relayed notices are not told again");
        assert!(window.take(Ok(ChangeNotice::Committed(local.clone()))));
        assert_eq!(window.changes, vec![local]);
        assert!(!window.missed);
        assert!(window.take(Err(RecvError::Lagged(3))));
        let payloads = window.payloads("me");
        assert_eq!(payloads.len(), 1);
        assert!(payloads[0].contains("\"resync\":true"), "{}", payloads[0]);
        assert!(!window.take(Err(RecvError::Closed)));
    }

    #[test]
    fn too_many_changes_in_a_window_are_told_as_a_resync() {
        let mut window = Window::default();
        for _ in 0..=MAX_CHANGES_PER_WINDOW {
            window.take(Ok(ChangeNotice::Committed(change(
                crate::saga::SagaState::Running,
            ))));
        }
        assert!(window.missed);
        assert_eq!(window.payloads("me").len(), 1);
    }
}
