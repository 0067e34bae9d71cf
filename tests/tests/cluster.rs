//! Broker HA: with `SAGA_QUEUE_TYPE=quorum` and `SAGA_AMQP_URL` listing the three nodes of a RabbitMQ
//! cluster, the loss of one node under load loses nothing and does nothing twice. The node the
//! coordinator is on is lost twice while sagas keep coming, and brought back each time: first by a
//! crash (SIGKILL), then by a shutdown (`rabbitmqctl stop`).
//!
//! The cluster is `scripts/rabbitmq-cluster.sh`'s (three extra nodes beside the shared broker; see
//! [`RabbitCluster`]). Where none can run, the test fails saying why, unless `E2E_SKIP_CLUSTER` is
//! set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::api::{idempotency_key, state, step};
use e2e::defs::{saga, step_with};
use e2e::rabbitmq_cluster::SKIP_VARIABLE;
use e2e::{eventually, Api, CoordinatorProcess, RabbitCluster, TestNamespace, BULK_TIMEOUT};
use participants::{Command, CommandKind, Outcome, Participant, ParticipantHandle, QueueType};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");
const STEPS: [(&str, &str); 3] = [("s1", "p1"), ("s2", "p2"), ("s3", "p3")];
/// Steady load: one saga this often, before, during and after each node's absence.
const SUBMIT_EVERY: Duration = Duration::from_millis(100);
/// How long the node stays down (after its stop completed) while sagas keep coming.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// What the participants did, by idempotency key: an in-memory barrier, so a command delivered again
/// (at-least-once) is answered as the first time and takes effect once.
#[derive(Default)]
struct Ledger {
    effects: Mutex<HashMap<String, Outcome>>,
    deliveries: Mutex<HashMap<String, u32>>,
}

impl Ledger {
    fn handle(&self, participant: &str, command: &Command<Value>) -> Outcome {
        let key = command.idempotency_key.clone();
        *lock(&self.deliveries).entry(key.clone()).or_default() += 1;
        lock(&self.effects)
            .entry(key.clone())
            .or_insert_with(|| {
                let refuse = participant == "p3"
                    && command.kind == CommandKind::Action
                    && command.saga_payload["refuse"] == true;
                if refuse {
                    Outcome::failure("refused")
                } else {
                    Outcome::success_with(json!({"by": participant, "key": key}))
                }
            })
            .clone()
    }

    fn effect(&self, key: &str) -> Option<Outcome> {
        lock(&self.effects).get(key).cloned()
    }

    fn redelivered(&self) -> usize {
        lock(&self.deliveries).values().filter(|n| **n > 1).count()
    }

    fn handled(&self) -> usize {
        lock(&self.effects).len()
    }

    /// Commands handled by each participant (from the outputs they gave).
    fn by_participant(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (key, outcome) in lock(&self.effects).iter() {
            let by = outcome
                .output()
                .and_then(|o| o["by"].as_str())
                .map_or_else(|| format!("refusal {key}"), str::to_owned);
            *counts.entry(by).or_default() += 1;
        }
        counts
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Participant `name` through the participants SDK, on quorum queues, taking the nodes in `urls`'
/// order.
async fn participant(
    ns: &TestNamespace,
    name: &'static str,
    urls: String,
    ledger: Arc<Ledger>,
) -> ParticipantHandle {
    ns.register_participant(name);
    let settings = participants::Settings::default()
        .amqp_url(urls)
        .namespace(ns.name())
        .queue_type(QueueType::Quorum)
        .concurrency(8);
    let mut builder = Participant::builder(name).settings(settings);
    for (s, p) in STEPS.iter().filter(|(_, p)| *p == name) {
        let (on_action, on_compensation) = (ledger.clone(), ledger.clone());
        builder = builder
            .action(&format!("do-{s}"), move |command: Command<Value>| {
                let outcome = on_action.handle(p, &command);
                async move { Ok::<_, participants::BoxError>(outcome) }
            })
            .compensation(&format!("undo-{s}"), move |command: Command<Value>| {
                let outcome = on_compensation.handle(p, &command);
                async move { Ok::<_, participants::BoxError>(outcome) }
            });
    }
    let mut handle = builder.build().expect("a valid participant").spawn();
    tokio::time::timeout(BULK_TIMEOUT, handle.consuming())
        .await
        .unwrap_or_else(|_| panic!("{name} never started consuming"));
    handle
}

/// Three steps; a reply timeout far longer than the outage, so a lost command would show as a
/// second attempt rather than be hidden by a retry.
fn definition(i: usize, refuse: bool) -> Value {
    let limits = json!({"timeout_ms": 120_000, "retry": {"max_attempts": 3}});
    let mut definition = saga(
        "through-a-node-loss",
        STEPS
            .iter()
            .map(|(s, p)| step_with(s, p, limits.clone()))
            .collect(),
    );
    definition["payload"] = json!({"i": i, "refuse": refuse});
    definition
}

/// The node the coordinator's log says it connected to last.
fn coordinator_node(cluster: &RabbitCluster, coordinator: &CoordinatorProcess) -> Option<usize> {
    coordinator
        .output()
        .iter()
        .rev()
        .find(|line| line.contains("connected to RabbitMQ at"))
        .and_then(|line| cluster.node_named_in(line))
}

/// Waits until the participants handled `more` commands beyond `from`; on timeout, fails with what
/// the cluster says about the namespace's queues and what each participant did.
async fn progress(
    what: &str,
    ledger: &Ledger,
    from: usize,
    more: usize,
    cluster: &RabbitCluster,
    ns: &TestNamespace,
    api: &Api,
) {
    let waited = tokio::time::timeout(BULK_TIMEOUT, async {
        while ledger.handled() < from + more {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if waited.is_err() {
        let by_participant = ledger.by_participant();
        let metrics = match api.request(reqwest::Method::GET, "/metrics").send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => format!("no metrics: {e}"),
        };
        let metrics: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && (l.contains("outbox") || l.contains("amqp")))
            .collect();
        panic!(
            "timed out after {BULK_TIMEOUT:?} waiting for {what}: {} commands handled, {from} \
             before; by participant {by_participant:?}\n{}the coordinator's metrics:\n{}",
            ledger.handled(),
            cluster.describe_queues(ns.name()),
            metrics.join("\n")
        );
    }
}

/// How a node is lost.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// SIGKILL.
    Crash,
    /// `rabbitmqctl stop`.
    Shutdown,
}

/// Takes away the node the coordinator is on, waits for sagas to go on without it, brings it back
/// and waits for sagas to go on with it.
async fn lose_and_restore(
    loss: Loss,
    cluster: &Arc<RabbitCluster>,
    coordinator: &CoordinatorProcess,
    ledger: &Ledger,
    ns: &TestNamespace,
) {
    let api = coordinator.api();
    let node = coordinator_node(cluster, coordinator).expect("the coordinator says its node");
    let handled_before = ledger.handled();
    let lost = {
        let cluster = cluster.clone();
        blocking(move || match loss {
            Loss::Crash => cluster.kill_node(node),
            Loss::Shutdown => cluster.stop_node(node),
        })
        .await
    };
    lost.unwrap_or_else(|e| panic!("{loss:?} of node {node}: {e:#}"));
    eprintln!("{loss:?} of node {node}, the coordinator's, after {handled_before} commands");
    let elsewhere = eventually(
        "the coordinator to move to another node",
        BULK_TIMEOUT,
        async || coordinator_node(cluster, coordinator).filter(|n| *n != node),
    )
    .await;
    let without = ledger.handled();
    progress(
        "sagas to go on without the node",
        ledger,
        without,
        30,
        cluster,
        ns,
        api,
    )
    .await;
    tokio::time::sleep(DOWN_FOR).await;
    eprintln!("the coordinator moved to node {elsewhere}; starting node {node} again");
    let restarted = {
        let cluster = cluster.clone();
        blocking(move || cluster.start_node(node)).await
    };
    restarted.unwrap_or_else(|e| panic!("starting node {node} again: {e:#}"));
    let back = ledger.handled();
    progress(
        "sagas to go on with the node back",
        ledger,
        back,
        30,
        cluster,
        ns,
        api,
    )
    .await;
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_broker_node_under_load_loses_nothing_with_quorum_queues() {
    // The participants run in this process: their log says which node each is on.
    let _ = env_logger::builder().is_test(true).try_init();
    if RabbitCluster::skipped() {
        eprintln!("skipped: {SKIP_VARIABLE} is set, so no RabbitMQ cluster is started");
        return;
    }
    let cluster = blocking(RabbitCluster::up)
        .await
        .map(Arc::new)
        .unwrap_or_else(|e| {
            panic!(
                "a three-node RabbitMQ cluster could not be started on this machine (set \
             {SKIP_VARIABLE}=1 to skip this test where none can run): {e:#}"
            )
        });
    let ns = TestNamespace::on_broker(&cluster.url_list(&[1, 2, 3]));
    let db = blocking(e2e::test_db).await;

    let (url, namespace, urls) = (
        db.url().to_string(),
        ns.name().to_string(),
        cluster.url_list(&[1, 2, 3]),
    );
    let coordinator = blocking(move || {
        CoordinatorProcess::start(
            BIN,
            &url,
            &urls,
            &namespace,
            &[("SAGA_QUEUE_TYPE", "quorum")],
        )
    })
    .await
    .expect("starting the coordinator on the cluster");
    let ledger = Arc::new(Ledger::default());
    // Participants start on different nodes, so commands cross nodes before and after the loss.
    let participants = vec![
        participant(&ns, "p1", cluster.url_list(&[1, 2, 3]), ledger.clone()).await,
        participant(&ns, "p2", cluster.url_list(&[1, 3, 2]), ledger.clone()).await,
        participant(&ns, "p3", cluster.url_list(&[2, 3, 1]), ledger.clone()).await,
    ];

    // Steady load until told to stop.
    let submit_api = coordinator.api().clone();
    let done = Arc::new(AtomicBool::new(false));
    let submitter = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut expected: Vec<(String, &'static str)> = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let refuse = i % 5 == 4;
                let id = submit_api.submit_id(&definition(i, refuse)).await;
                expected.push((id, if refuse { "compensated" } else { "committed" }));
                i += 1;
                tokio::time::sleep(SUBMIT_EVERY).await;
            }
            expected
        })
    };

    eventually("sagas under way", BULK_TIMEOUT, async || {
        (ledger.handled() >= 30).then_some(())
    })
    .await;
    // A crash first (connections reset, queue leaders lost without notice), then a shutdown.
    for loss in [Loss::Crash, Loss::Shutdown] {
        lose_and_restore(loss, &cluster, &coordinator, &ledger, &ns).await;
    }
    done.store(true, Ordering::Relaxed);
    let expected = submitter.await.expect("the submitter");

    let api = coordinator.api();
    for (id, outcome) in &expected {
        let doc = api.wait_for_state(id, &[*outcome], BULK_TIMEOUT).await;
        let events = api.events(id).await;
        for (s, p) in STEPS {
            let action = idempotency_key(id, Some(s), CommandKind::Action);
            let compensation = idempotency_key(id, Some(s), CommandKind::Compensation);
            let step_doc = step(&doc, s);
            // One attempt each: no command was lost and sent again after a timeout.
            assert_eq!(step_doc["attempts"], 1, "saga {id}: {doc:#}");
            let acted = ledger.effect(&action);
            let compensated = ledger.effect(&compensation);
            match (*outcome, s) {
                ("committed", _) => {
                    assert!(
                        acted.as_ref().is_some_and(Outcome::is_success),
                        "saga {id} committed but {p} never did {s}"
                    );
                    assert!(compensated.is_none(), "saga {id}: {s} was compensated");
                    assert_eq!(state(step_doc), "succeeded", "{doc:#}");
                    assert_eq!(step_doc["output"], json!({"by": p, "key": action}));
                }
                (_, "s3") => {
                    assert!(
                        acted.is_some_and(|o| !o.is_success()),
                        "saga {id}: p3 was asked"
                    );
                    assert!(
                        compensated.is_none(),
                        "saga {id}: a refused step is not undone"
                    );
                    assert_eq!(state(step_doc), "failed", "{doc:#}");
                }
                _ => {
                    assert!(
                        acted.is_some_and(|o| o.is_success()),
                        "saga {id}: {p} did {s}"
                    );
                    assert!(
                        compensated.is_some_and(|o| o.is_success()),
                        "saga {id}: {s} took effect but was never undone"
                    );
                    assert_eq!(state(step_doc), "compensated", "{doc:#}");
                }
            }
        }
        // Each command was dispatched once and answered once: nothing sent twice, no timeout.
        let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
        for event in &events {
            let kind = event["type"].as_str().unwrap_or_default().to_string();
            assert!(
                !["timed_out", "retry_scheduled", "dead_lettered", "gave_up"]
                    .contains(&kind.as_str()),
                "saga {id}: {event:#}"
            );
            let step = event["step"].as_str().unwrap_or_default().to_string();
            let command = event["detail"]["kind"].as_str().unwrap_or_default();
            *seen.entry((kind, step, command.to_string())).or_default() += 1;
        }
        for ((kind, step, command), n) in seen {
            assert_eq!(
                n, 1,
                "saga {id}: {kind} of {command} {step} {n} times: {events:#?}"
            );
        }
    }
    // And nothing was done for sagas that do not exist.
    let known: std::collections::HashSet<String> =
        expected.iter().map(|(id, _)| id.clone()).collect();
    for key in lock(&ledger.effects).keys() {
        let saga = key.split(':').next().unwrap_or_default();
        assert!(known.contains(saga), "{key} belongs to no submitted saga");
    }
    eprintln!(
        "{} sagas through a crash and a shutdown of nodes: {} commands, {} of them delivered more \
         than once",
        expected.len(),
        ledger.handled(),
        ledger.redelivered()
    );
    for p in participants {
        p.shutdown().await;
    }
    drop(coordinator);
    drop(cluster);
}
