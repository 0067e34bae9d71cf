//! Timeouts measure participants, not the coordinator's infrastructure (contract, section 4): an
//! outage of RabbitMQ or Postgres longer than a step's whole retry budget compensates nothing that
//! would have committed, while the saga deadline still fires.
//!
//! The shared servers are never stopped (other tests run beside): the coordinator reaches them
//! through a [`TcpProxy`], and "down" is the proxy cutting every connection and refusing new ones.

use std::time::Duration;

use coordinator::app::Coordinator;
use coordinator::config::Settings;
use e2e::api::{state, step};
use e2e::defs::{three_quick_steps, QUICK_STEPS};
use e2e::{
    connected_through, eventually, Api, FakeParticipant, TcpProxy, TestApp, TestNamespace,
    BULK_TIMEOUT, SAGA_TIMEOUT,
};
use serde_json::json;

/// Longer than a step's whole retry budget below: three attempts of 1 s plus the backoffs.
const OUTAGE: Duration = Duration::from_secs(7);
const SAGAS: usize = 30;

fn commands(participants: &[FakeParticipant]) -> usize {
    participants.iter().map(|p| p.commands().len()).sum()
}

/// Every saga committed, every step at its first attempt, and no compensation was ever sent.
async fn all_committed_at_first_attempt(
    api: &Api,
    ids: &[String],
    participants: &[FakeParticipant],
) {
    for id in ids {
        let done = api.wait_for_state(id, &["committed"], BULK_TIMEOUT).await;
        for (s, _) in QUICK_STEPS {
            assert_eq!(
                step(&done, s)["attempts"],
                1,
                "no attempt was spent: {done:#}"
            );
        }
    }
    for p in participants {
        assert!(
            !p.commands().iter().any(|c| c.is_compensation()),
            "{} was asked to compensate",
            p.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_outage_longer_than_the_retry_budget_compensates_nothing() {
    let app = TestApp::builder().via_proxy().start().await;
    let participants = FakeParticipant::always_succeed_each(&app.ns, &QUICK_STEPS).await;
    connected_through(app.proxy()).await;
    let mut ids = Vec::new();
    for i in 0..SAGAS {
        ids.push(
            app.submit_id(&three_quick_steps(&format!("outage-{i}"), 1000))
                .await,
        );
    }
    eventually("some commands to arrive", BULK_TIMEOUT, async || {
        (commands(&participants) >= SAGAS / 2).then_some(())
    })
    .await;
    // Gone in the middle of the run: commands wait in the outbox, replies wait in their queue.
    app.proxy().outage();
    tokio::time::sleep(OUTAGE).await;
    let stuck = app.list_ok(&[("state", "running")]).await;
    assert!(
        !stuck["items"].as_array().is_some_and(|a| a.is_empty()),
        "the outage stopped some sagas mid-way: {stuck:#}"
    );
    app.proxy().resume();
    all_committed_at_first_attempt(&app, &ids, &participants).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_deadline_still_fires_during_a_rabbitmq_outage() {
    let app = TestApp::builder().via_proxy().start().await;
    let _participants = FakeParticipant::always_succeed_each(&app.ns, &QUICK_STEPS).await;
    connected_through(app.proxy()).await;
    app.proxy().outage();
    let mut definition = three_quick_steps("deadline", 1000);
    definition["timeout_ms"] = json!(1500);
    let id = app.submit_id(&definition).await;
    let compensating = eventually(
        "the deadline to fire without a broker",
        SAGA_TIMEOUT,
        async || {
            let doc = app.saga(&id).await;
            (state(&doc) == "compensating").then_some(doc)
        },
    )
    .await;
    assert_eq!(step(&compensating, "s1")["attempts"], 1, "{compensating:#}");
    app.proxy().resume();
    app.wait_for_state(&id, &["compensated"], BULK_TIMEOUT)
        .await;
}

fn settings(database_url: &str, amqp_url: &str, ns: &TestNamespace) -> Settings {
    let mut settings = Settings::from_env()
        .map_err(anyhow::Error::msg)
        .expect("default settings");
    settings.database_url = database_url.to_string();
    settings.amqp_url = amqp_url.to_string();
    settings.http_addr = "127.0.0.1:0".to_string();
    settings.namespace = ns.name().to_string();
    settings.api_token = None;
    // Tests run in parallel against one Postgres (max_connections 100).
    settings.db_pool_size = 4;
    settings
}

async fn start(settings: Settings) -> (StopOnDrop, Api) {
    let coordinator = StopOnDrop(Some(
        blocking(move || Coordinator::start(settings))
            .await
            .expect("starting the coordinator"),
    ));
    let api = Api::new(&format!("http://{}", coordinator.http_addr()), None);
    (coordinator, api)
}

/// Commands still in the outbox after a restart are unconfirmed too: they wait for the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_unpublished_at_a_restart_during_a_rabbitmq_outage_do_not_time_out() {
    let db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_rabbitmq();
    let settings = settings(db.url(), &proxy.amqp_url(), &ns);
    let (coordinator, api) = start(settings.clone()).await;
    let participants = FakeParticipant::always_succeed_each(&ns, &QUICK_STEPS).await;
    connected_through(&proxy).await;
    proxy.outage();
    let mut ids = Vec::new();
    for i in 0..SAGAS {
        ids.push(
            api.submit_id(&three_quick_steps(&format!("restart-{i}"), 1000))
                .await,
        );
    }
    drop(coordinator);
    let (_coordinator, api) = start(settings).await;
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(
        commands(&participants),
        0,
        "nothing reached the participants"
    );
    proxy.resume();
    all_committed_at_first_attempt(&api, &ids, &participants).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_longer_than_the_retry_budget_compensates_nothing() {
    let db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_postgres();
    let (_coordinator, api) = start(settings(
        &proxy.postgres_url(db.name()),
        &e2e::amqp_url(),
        &ns,
    ))
    .await;
    let participants = FakeParticipant::always_succeed_each(&ns, &QUICK_STEPS).await;
    let mut ids = Vec::new();
    for i in 0..SAGAS {
        ids.push(
            api.submit_id(&three_quick_steps(&format!("pg-outage-{i}"), 1000))
                .await,
        );
    }
    eventually("some commands to arrive", BULK_TIMEOUT, async || {
        (commands(&participants) >= SAGAS / 2).then_some(())
    })
    .await;
    proxy.outage();
    tokio::time::sleep(OUTAGE).await;
    proxy.resume();
    all_committed_at_first_attempt(&api, &ids, &participants).await;
}

/// Stops the coordinator on a plain thread, also when an assertion failed: it blocks on runtimes of
/// its own, which must not happen on the test's.
struct StopOnDrop(Option<Coordinator>);

impl std::ops::Deref for StopOnDrop {
    type Target = Coordinator;
    fn deref(&self) -> &Coordinator {
        self.0.as_ref().expect("running until dropped")
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(coordinator) = self.0.take() {
            let _ = std::thread::spawn(move || coordinator.stop()).join();
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // A plain thread, not the blocking pool: `Coordinator` blocks on runtimes of its own.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.expect("the blocking call panicked")
}
