//! The participants SDK against real RabbitMQ and Postgres, with the coordinator's side played by
//! hand ([`FakeCoordinator`]) so each test chooses exactly which commands arrive, how often, in
//! which order: duplicates, a compensation before its action, panics, crashes, a lost connection.

use std::sync::Arc;
use std::time::Duration;

use contract::CommandKind;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel::{sql_query, PgConnection, QueryableByName, RunQueryDsl};
use e2e::api::idempotency_key;
use e2e::{command_body, FakeCoordinator, ShopDbs, ShopProcess, TcpProxy, TestNamespace};
use participants::barrier;
use participants::{BoxError, Command, Outcome, Participant, ParticipantHandle, Settings};
use serde::Deserialize;
use serde_json::{json, Value};
use shop::{Faults, Service};
use tokio::sync::Notify;
use uuid::Uuid;

const SHOP_BIN: &str = env!("CARGO_BIN_EXE_shop-under-test");
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn settings(ns: &TestNamespace) -> Settings {
    Settings::default()
        .amqp_url(e2e::amqp_url())
        .namespace(ns.name())
        .concurrency(4)
}

/// The shop's inventory service, in this process.
async fn start_inventory(ns: &TestNamespace, dbs: &ShopDbs) -> ParticipantHandle {
    ns.register_participant("inventory");
    let shop = dbs.settings.clone();
    let settings = settings(ns);
    let mut handles = tokio::task::spawn_blocking(move || {
        shop::spawn(&[Service::Inventory], &shop, &settings, &Faults::default())
    })
    .await
    .expect("join")
    .expect("starting inventory");
    let mut handle = handles.pop().expect("one participant");
    handle.consuming().await;
    handle
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Stock {
    #[diesel(sql_type = BigInt)]
    available: i64,
    #[diesel(sql_type = BigInt)]
    reservations: i64,
}

/// `sku-0`'s available stock and how many reservations the saga has in effect.
async fn stock(dbs: &ShopDbs, saga: &str) -> Stock {
    let mut conn = dbs.connect(Service::Inventory).expect("inventory db");
    let saga: Uuid = saga.parse().expect("uuid");
    tokio::task::spawn_blocking(move || {
        sql_query(
            "SELECT (SELECT available FROM inventory_stock WHERE sku = 'sku-0') AS available,
                    (SELECT count(*) FROM inventory_reservations WHERE saga_id = $1 AND NOT released) AS reservations",
        )
        .bind::<SqlUuid, _>(saga)
        .get_result(&mut conn)
        .expect("reading stock")
    })
    .await
    .expect("join")
}

fn recorded(dbs: &ShopDbs, key: &str) -> Option<(String, Outcome)> {
    let mut conn: PgConnection = dbs.connect(Service::Inventory).expect("inventory db");
    barrier::recorded(&mut conn, key).expect("reading the barrier")
}

fn reserve(saga: &str, attempt: u32, qty: i64) -> Value {
    command_body(
        saga,
        "reserve",
        "action",
        "reserve",
        attempt,
        json!({"sku": "sku-0", "qty": qty}),
    )
}

fn release(saga: &str, attempt: u32, qty: i64) -> Value {
    command_body(
        saga,
        "reserve",
        "compensation",
        "release",
        attempt,
        json!({"sku": "sku-0", "qty": qty}),
    )
}

fn new_saga() -> String {
    Uuid::now_v7().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_run_the_business_effect_once() {
    let ns = TestNamespace::new();
    let coordinator = FakeCoordinator::start(&ns).await.expect("fake coordinator");
    let dbs = ShopDbs::new();
    let inventory = start_inventory(&ns, &dbs).await;
    let saga = new_saga();

    // The same command three times: a redelivery of attempt 1, then a retry (attempt 2).
    coordinator
        .send("inventory", &reserve(&saga, 1, 2))
        .await
        .expect("send");
    coordinator.wait_replies(&saga, 1, REPLY_TIMEOUT).await;
    coordinator
        .send("inventory", &reserve(&saga, 1, 2))
        .await
        .expect("send");
    coordinator
        .send("inventory", &reserve(&saga, 2, 2))
        .await
        .expect("send");
    let replies = coordinator.wait_replies(&saga, 3, REPLY_TIMEOUT).await;

    for reply in &replies {
        assert_eq!(reply["outcome"], "success", "{reply}");
        assert_eq!(
            reply["output"], replies[0]["output"],
            "the recorded output every time"
        );
        assert_eq!(reply["step"], "reserve");
        assert_eq!(reply["kind"], "action");
    }
    // The last two commands are handled concurrently, so their replies come in either order.
    let mut attempts: Vec<u64> = replies
        .iter()
        .filter_map(|r| r["attempt"].as_u64())
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 1, 2], "each reply names its attempt");
    assert_eq!(
        stock(&dbs, &saga).await,
        Stock {
            available: 98,
            reservations: 1
        },
        "the stock was taken once"
    );

    // The compensation twice: the stock comes back once.
    coordinator
        .send("inventory", &release(&saga, 1, 2))
        .await
        .expect("send");
    coordinator
        .send("inventory", &release(&saga, 2, 2))
        .await
        .expect("send");
    let replies = coordinator.wait_replies(&saga, 5, REPLY_TIMEOUT).await;
    assert!(
        replies[3..].iter().all(|r| r["outcome"] == "success"),
        "{replies:#?}"
    );
    assert_eq!(
        stock(&dbs, &saga).await,
        Stock {
            available: 100,
            reservations: 0
        },
        "the stock came back once"
    );
    inventory.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_without_its_action_is_null_and_the_late_action_is_refused() {
    let ns = TestNamespace::new();
    let coordinator = FakeCoordinator::start(&ns).await.expect("fake coordinator");
    let dbs = ShopDbs::new();
    let inventory = start_inventory(&ns, &dbs).await;
    let saga = new_saga();

    coordinator
        .send("inventory", &release(&saga, 1, 5))
        .await
        .expect("send");
    let replies = coordinator.wait_replies(&saga, 1, REPLY_TIMEOUT).await;
    assert_eq!(
        replies[0]["outcome"], "success",
        "a null compensation succeeds: {replies:#?}"
    );
    assert_eq!(
        stock(&dbs, &saga).await,
        Stock {
            available: 100,
            reservations: 0
        },
        "and has no effect (no stock was given back)"
    );
    let (origin, _) = recorded(
        &dbs,
        &idempotency_key(&saga, Some("reserve"), CommandKind::Compensation),
    )
    .expect("recorded");
    assert_eq!(origin, "null");

    // The action arrives late (hanging): refused, no effect, and so on every redelivery.
    coordinator
        .send("inventory", &reserve(&saga, 1, 5))
        .await
        .expect("send");
    coordinator
        .send("inventory", &reserve(&saga, 2, 5))
        .await
        .expect("send");
    let replies = coordinator.wait_replies(&saga, 3, REPLY_TIMEOUT).await;
    for reply in &replies[1..] {
        assert_eq!(reply["outcome"], "failure", "{reply}");
        assert!(
            reply["error"]
                .as_str()
                .unwrap_or("")
                .contains("after its compensation"),
            "{reply}"
        );
    }
    assert_eq!(
        stock(&dbs, &saga).await,
        Stock {
            available: 100,
            reservations: 0
        },
        "the late action took no stock"
    );
    inventory.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_refusal_is_recorded_and_its_compensation_has_nothing_to_undo() {
    let ns = TestNamespace::new();
    let coordinator = FakeCoordinator::start(&ns).await.expect("fake coordinator");
    let dbs = ShopDbs::new();
    let inventory = start_inventory(&ns, &dbs).await;
    let saga = new_saga();

    // More than there is: a business failure, the same answer on redelivery.
    coordinator
        .send("inventory", &reserve(&saga, 1, 1000))
        .await
        .expect("send");
    coordinator.wait_replies(&saga, 1, REPLY_TIMEOUT).await;
    coordinator
        .send("inventory", &reserve(&saga, 2, 1000))
        .await
        .expect("send");
    let replies = coordinator.wait_replies(&saga, 2, REPLY_TIMEOUT).await;
    for reply in &replies {
        assert_eq!(reply["outcome"], "failure", "{reply}");
        assert_eq!(reply["error"], replies[0]["error"]);
    }
    // A compensation anyway (e.g. after a timeout): nothing to undo, the stock stays whole.
    coordinator
        .send("inventory", &release(&saga, 1, 1000))
        .await
        .expect("send");
    let replies = coordinator.wait_replies(&saga, 3, REPLY_TIMEOUT).await;
    assert_eq!(replies[2]["outcome"], "success", "{replies:#?}");
    assert_eq!(
        stock(&dbs, &saga).await,
        Stock {
            available: 100,
            reservations: 0
        }
    );
    inventory.shutdown().await;
}

#[derive(Deserialize)]
struct Typed {
    n: u32,
}

async fn panics(_: Command) -> Result<Outcome, BoxError> {
    panic!("boom")
}

async fn errors(_: Command) -> Result<Outcome, BoxError> {
    Err("database unavailable".into())
}

async fn typed(cmd: Command<Typed>) -> Result<Outcome, BoxError> {
    Ok(Outcome::success_with(json!({"n": cmd.payload.n})))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_errors_become_retry_and_unknown_or_undecodable_commands_are_dead_lettered() {
    let ns = TestNamespace::new();
    ns.register_participant("quirky");
    let coordinator = FakeCoordinator::start(&ns).await.expect("fake coordinator");
    let mut quirky = Participant::builder("quirky")
        .settings(settings(&ns))
        .action("panic", panics)
        .action("error", errors)
        .action("typed", typed)
        .build()
        .expect("valid participant")
        .spawn();
    quirky.consuming().await;

    let panicking = new_saga();
    coordinator
        .send(
            "quirky",
            &command_body(&panicking, "s", "action", "panic", 1, json!({})),
        )
        .await
        .expect("send");
    let reply = &coordinator.wait_replies(&panicking, 1, REPLY_TIMEOUT).await[0];
    assert_eq!(reply["outcome"], "retry", "{reply}");
    assert!(
        reply["error"].as_str().unwrap_or("").contains("boom"),
        "{reply}"
    );

    let failing = new_saga();
    coordinator
        .send(
            "quirky",
            &command_body(&failing, "s", "action", "error", 1, json!({})),
        )
        .await
        .expect("send");
    let reply = &coordinator.wait_replies(&failing, 1, REPLY_TIMEOUT).await[0];
    assert_eq!(reply["outcome"], "retry", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("database unavailable"),
        "{reply}"
    );

    // Four commands nobody can handle: an unknown command, a known name of the wrong kind, a
    // payload that does not decode, a body that is not a command.
    let rejected = new_saga();
    for body in [
        command_body(&rejected, "s", "action", "nope", 1, json!({})),
        command_body(&rejected, "s", "compensation", "typed", 1, json!({"n": 1})),
        command_body(&rejected, "s", "action", "typed", 1, json!({"n": "three"})),
    ] {
        coordinator.send("quirky", &body).await.expect("send");
    }
    coordinator
        .send_raw("quirky", b"this is not json", "action")
        .await
        .expect("send");
    let dead = ns.wait_for_dead_letters(4, REPLY_TIMEOUT).await;
    assert_eq!(
        dead.len(),
        4,
        "{:?}",
        dead.iter().map(|d| d.body_text()).collect::<Vec<_>>()
    );
    assert!(coordinator.replies_for(&rejected).is_empty());

    // And the participant is still there.
    let fine = new_saga();
    coordinator
        .send(
            "quirky",
            &command_body(&fine, "s", "action", "typed", 1, json!({"n": 3})),
        )
        .await
        .expect("send");
    let reply = &coordinator.wait_replies(&fine, 1, REPLY_TIMEOUT).await[0];
    assert_eq!(reply["outcome"], "success");
    assert_eq!(reply["output"], json!({"n": 3}));
    quirky.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_reply_is_answered_with_the_recorded_reply_on_redelivery() {
    let ns = TestNamespace::new();
    let coordinator = FakeCoordinator::start(&ns).await.expect("fake coordinator");
    let dbs = ShopDbs::new();
    // Crashes right after every barrier commit whose business code ran.
    let faults = Faults {
        crash_rate: 1.0,
        ..Faults::default()
    };
    let start = {
        let (shop, ns, faults) = (dbs.settings.clone(), ns.clone(), faults.clone());
        move || ShopProcess::start(SHOP_BIN, Service::Inventory, &shop, &ns, &faults)
    };
    let mut first = tokio::task::spawn_blocking(start.clone())
        .await
        .expect("join")
        .expect("starting inventory");

    let saga = new_saga();
    coordinator
        .send("inventory", &reserve(&saga, 1, 3))
        .await
        .expect("send");
    let status = tokio::task::spawn_blocking(move || first.wait_exit(REPLY_TIMEOUT))
        .await
        .expect("join")
        .expect("the participant crashed");
    assert!(!status.success(), "aborted: {status}");

    // The effect is committed, the reply was never sent.
    assert_eq!(
        stock(&dbs, &saga).await,
        Stock {
            available: 97,
            reservations: 1
        }
    );
    let (origin, committed) = recorded(
        &dbs,
        &idempotency_key(&saga, Some("reserve"), CommandKind::Action),
    )
    .expect("the barrier row");
    assert_eq!(origin, "ran");
    assert!(committed.is_success());
    assert!(
        coordinator.replies_for(&saga).is_empty(),
        "no reply before the crash"
    );

    // Restarted, it gets the unacknowledged command again and answers with what was recorded,
    // without running the effect again (and so without crashing again).
    let mut second = tokio::task::spawn_blocking(start)
        .await
        .expect("join")
        .expect("restarting inventory");
    let replies = coordinator.wait_replies(&saga, 1, REPLY_TIMEOUT).await;
    assert_eq!(replies[0]["outcome"], "success", "{replies:#?}");
    assert_eq!(
        Some(&replies[0]["output"]),
        committed.output(),
        "the recorded output"
    );
    assert_eq!(
        stock(&dbs, &saga).await,
        Stock {
            available: 97,
            reservations: 1
        }
    );
    assert!(
        second.try_exit_status().is_none(),
        "a duplicate does not crash"
    );
}

async fn echo(cmd: Command) -> Result<Outcome, BoxError> {
    Ok(Outcome::success_with(json!({"attempt": cmd.attempt})))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_participant_reconnects_after_losing_the_broker() {
    let ns = TestNamespace::new();
    ns.register_participant("echo");
    let coordinator = FakeCoordinator::start(&ns).await.expect("fake coordinator");
    let proxy = TcpProxy::to_rabbitmq();
    let mut participant = Participant::builder("echo")
        .settings(settings(&ns).amqp_url(proxy.amqp_url()))
        .action("echo", echo)
        .build()
        .expect("valid participant")
        .spawn();
    participant.consuming().await;

    let before = new_saga();
    coordinator
        .send(
            "echo",
            &command_body(&before, "s", "action", "echo", 1, json!({})),
        )
        .await
        .expect("send");
    coordinator.wait_replies(&before, 1, REPLY_TIMEOUT).await;

    assert!(proxy.sever() >= 1, "the participant's connection was cut");
    let after = new_saga();
    coordinator
        .send(
            "echo",
            &command_body(&after, "s", "action", "echo", 1, json!({})),
        )
        .await
        .expect("send");
    let reply = &coordinator.wait_replies(&after, 1, REPLY_TIMEOUT).await[0];
    assert_eq!(reply["outcome"], "success");
    assert!(proxy.accepted() >= 2, "it connected again");
    participant.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_handlers_under_way_reply_and_acknowledge() {
    let ns = TestNamespace::new();
    ns.register_participant("slow");
    let coordinator = FakeCoordinator::start(&ns).await.expect("fake coordinator");
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (s, r) = (started.clone(), release.clone());
    let mut participant = Participant::builder("slow")
        .settings(settings(&ns))
        .action("wait", move |_: Command| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.notify_one();
                r.notified().await;
                Ok::<_, BoxError>(Outcome::success())
            }
        })
        .build()
        .expect("valid participant")
        .spawn();
    participant.consuming().await;

    let saga = new_saga();
    coordinator
        .send(
            "slow",
            &command_body(&saga, "s", "action", "wait", 1, json!({})),
        )
        .await
        .expect("send");
    started.notified().await;
    let stopping = tokio::spawn(participant.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "shutdown waits for the handler");
    release.notify_one();
    stopping.await.expect("shutdown");

    let replies = coordinator.wait_replies(&saga, 1, REPLY_TIMEOUT).await;
    assert_eq!(replies[0]["outcome"], "success");
    assert_eq!(
        ns.queue_len(&ns.participant_queue("slow"))
            .await
            .expect("queue"),
        Some(0),
        "the command was acknowledged, not handed back"
    );
}

#[test]
fn invalid_declarations_are_refused() {
    assert!(Participant::builder("no spaces")
        .action("a", echo)
        .build()
        .is_err());
    assert!(Participant::builder("empty").build().is_err());
    assert!(Participant::builder("twice")
        .action("a", echo)
        .action("a", echo)
        .build()
        .is_err());
    assert!(Participant::builder("ok")
        .action("a", echo)
        .compensation("a", echo)
        .build()
        .is_ok());
}
