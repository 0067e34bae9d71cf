//! Starting a saga atomically with the initiator's own database change (issue: two-phase submission
//! and the transactional outbox), with the SDK's `initiator` module against the real coordinator.
//!
//! The crash cases are real processes: `initiator-under-test` dies with `abort()` at a chosen point.

use std::process::Stdio;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use e2e::api::state;
use e2e::{
    eventually, CheckAnswer, CheckBackServer, CoordinatorProcess, FakeParticipant, TestApp, TestDb,
    TestNamespace, SAGA_TIMEOUT,
};
use participants::client::{CheckBack, Client, SagaRequest, StepRequest};
use participants::initiator::half_message::{self, CheckBackAnswer, HalfMessageError, PgPool};
use participants::initiator::outbox::{self, OutboxRelay, RelaySettings};
use participants::{Participant, Settings};
use uuid::Uuid;

const INITIATOR: &str = env!("CARGO_BIN_EXE_initiator-under-test");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_coordinator-under-test");

/// The initiator's own database: the SDK's tables and an `orders` table.
async fn initiator_db() -> TestDb {
    tokio::task::spawn_blocking(|| {
        let db = e2e::test_db();
        let mut conn = PgConnection::establish(db.url()).expect("connecting");
        participants::initiator::install(&mut conn).expect("installing the initiator tables");
        diesel::sql_query(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, saga_id uuid, item text NOT NULL)",
        )
        .execute(&mut conn)
        .expect("creating orders");
        db
    })
    .await
    .expect("join")
}

fn connect(url: &str) -> PgConnection {
    PgConnection::establish(url).expect("connecting to the initiator database")
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn orders_of(url: &str, saga_id: Option<Uuid>) -> i64 {
    let mut conn = connect(url);
    let count: Count = match saga_id {
        Some(id) => diesel::sql_query("SELECT count(*) AS n FROM orders WHERE saga_id = $1")
            .bind::<SqlUuid, _>(id)
            .get_result(&mut conn),
        None => diesel::sql_query("SELECT count(*) AS n FROM orders").get_result(&mut conn),
    }
    .expect("counting orders");
    count.n
}

fn order_saga(item: &str) -> SagaRequest {
    SagaRequest::new("place-order")
        .payload(serde_json::json!({"item": item}))
        .step(StepRequest::new("reserve", "shop", "do-reserve").compensation("undo-reserve"))
        .step(StepRequest::new("charge", "shop", "do-charge").compensation("undo-charge"))
}

/// A check-back URL answered by the SDK's `check_back_answer` on the initiator's database.
async fn check_back_endpoint(db_url: &str) -> CheckBackServer {
    let url = db_url.to_string();
    CheckBackServer::start(move |id, _| {
        let Ok(saga_id) = Uuid::parse_str(id) else {
            return CheckAnswer::status(400);
        };
        let mut conn = connect(&url);
        match half_message::check_back_answer(&mut conn, saga_id, Duration::from_secs(2)) {
            Ok(answer) => CheckAnswer::outcome(answer.as_str()),
            Err(_) => CheckAnswer::status(500),
        }
    })
    .await
}

/// Runs the initiator process until it dies at `point`; returns the saga id it printed.
async fn run_initiator_until_it_dies(
    point: &str,
    coordinator: &str,
    db: &str,
    check: &str,
) -> Uuid {
    let output = tokio::process::Command::new(INITIATOR)
        .args([point, coordinator, db, check])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running the initiator");
    assert!(
        !output.status.success(),
        "the initiator was meant to die: {output:?}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    Uuid::parse_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "no saga id printed: {stdout:?} / {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiator_dies_after_its_local_commit_and_the_check_back_starts_the_saga() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let db = initiator_db().await;
    let endpoint = check_back_endpoint(db.url()).await;

    let id = run_initiator_until_it_dies(
        "after-local-commit",
        &app.api.base_url,
        db.url(),
        &endpoint.url(),
    )
    .await;
    assert_eq!(
        orders_of(db.url(), Some(id)),
        1,
        "the local change committed"
    );
    app.wait_for_state(&id.to_string(), &["committed"], SAGA_TIMEOUT)
        .await;
    assert_eq!(endpoint.calls_for(&id.to_string()), 1);
    assert_eq!(shop.commands_for(&id.to_string()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiator_dies_before_its_local_commit_and_the_saga_is_aborted() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let db = initiator_db().await;
    let endpoint = check_back_endpoint(db.url()).await;

    let id = run_initiator_until_it_dies(
        "in-local-transaction",
        &app.api.base_url,
        db.url(),
        &endpoint.url(),
    )
    .await;
    app.wait_for_state(&id.to_string(), &["aborted"], SAGA_TIMEOUT)
        .await;
    assert_eq!(orders_of(db.url(), None), 0, "the local change rolled back");
    assert!(shop.commands_for(&id.to_string()).is_empty());
    // The check-back's answer is final: a local transaction arriving late for this saga fails.
    let url = db.url().to_string();
    let late = tokio::task::spawn_blocking(move || {
        half_message::run_local(&mut connect(&url), id, |conn| {
            diesel::sql_query("INSERT INTO orders (saga_id, item) VALUES ($1, 'late')")
                .bind::<SqlUuid, _>(id)
                .execute(conn)
        })
    })
    .await
    .expect("join");
    assert!(
        matches!(late, Err(HalfMessageError::AlreadyAborted)),
        "{late:?}"
    );
    assert_eq!(orders_of(db.url(), None), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_participant_answers_check_backs_over_amqp_from_the_marker_row() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let db = initiator_db().await;
    let pool: PgPool = diesel::r2d2::Pool::builder()
        .max_size(2)
        .build(diesel::r2d2::ConnectionManager::new(db.url()))
        .expect("pool");
    // The initiator's own participant, answering `check` commands with the SDK's ready handler.
    app.ns.register_participant("orders");
    let mut orders = Participant::builder("orders")
        .settings(
            Settings::default()
                .amqp_url(e2e::amqp_url())
                .namespace(app.ns.name()),
        )
        .check_back(half_message::check_back_handler(
            pool,
            Duration::from_secs(2),
        ))
        .build()
        .expect("declaring orders")
        .spawn();
    orders.consuming().await;

    let committed = run_initiator_until_it_dies(
        "after-local-commit",
        &app.api.base_url,
        db.url(),
        "participant:orders",
    )
    .await;
    let aborted = run_initiator_until_it_dies(
        "in-local-transaction",
        &app.api.base_url,
        db.url(),
        "participant:orders",
    )
    .await;
    app.wait_for_state(&committed.to_string(), &["committed"], SAGA_TIMEOUT)
        .await;
    app.wait_for_state(&aborted.to_string(), &["aborted"], SAGA_TIMEOUT)
        .await;
    assert_eq!(orders_of(db.url(), Some(committed)), 1);
    assert_eq!(orders_of(db.url(), Some(aborted)), 0);
    assert_eq!(shop.commands_for(&committed.to_string()).len(), 2);
    assert!(shop.commands_for(&aborted.to_string()).is_empty());
    let events = app.events(&committed.to_string()).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "commit" && e["detail"]["by"] == "check_back"),
        "{events:#?}"
    );
    orders.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_back_waits_for_an_open_local_transaction_instead_of_guessing() {
    let db = initiator_db().await;
    let url = db.url().to_string();
    for commit in [true, false] {
        let saga_id = Uuid::now_v7();
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let local_url = url.clone();
        // A local transaction that holds its marker for a while, then commits or rolls back.
        let local = std::thread::spawn(move || {
            let mut conn = connect(&local_url);
            half_message::run_local(&mut conn, saga_id, |conn| {
                diesel::sql_query("INSERT INTO orders (saga_id, item) VALUES ($1, 'slow')")
                    .bind::<SqlUuid, _>(saga_id)
                    .execute(conn)?;
                opened_tx.send(()).expect("signal");
                std::thread::sleep(Duration::from_millis(800));
                if commit {
                    Ok(())
                } else {
                    Err(diesel::result::Error::RollbackTransaction)
                }
            })
        });
        opened_rx.recv().expect("the local transaction started");
        let mut conn = connect(&url);
        // Too impatient: the transaction is still open, so the answer is pending.
        let impatient =
            half_message::check_back_answer(&mut conn, saga_id, Duration::from_millis(100))
                .expect("answer");
        assert_eq!(impatient, CheckBackAnswer::Pending);
        // Patient: waits on the marker's row lock for the transaction's end.
        let answer = half_message::check_back_answer(&mut conn, saga_id, Duration::from_secs(10))
            .expect("answer");
        let ran = local.join().expect("local thread");
        if commit {
            assert!(ran.is_ok());
            assert_eq!(answer, CheckBackAnswer::Committed);
        } else {
            assert!(ran.is_err());
            assert_eq!(answer, CheckBackAnswer::Aborted);
        }
        // Asking again gives the same answer.
        let again = half_message::check_back_answer(&mut conn, saga_id, Duration::from_secs(1))
            .expect("answer");
        assert_eq!(again, answer);
    }
    // Never heard of: aborted (and now barred).
    let mut conn = connect(&url);
    let unknown =
        half_message::check_back_answer(&mut conn, Uuid::now_v7(), Duration::from_secs(1))
            .expect("answer");
    assert_eq!(unknown, CheckBackAnswer::Aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_message_start_commits_or_aborts_by_the_local_result() {
    let app = TestApp::start().await;
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let db = initiator_db().await;
    let endpoint = check_back_endpoint(db.url()).await;
    let client = Client::new(&app.api.base_url).expect("client");
    let pool: PgPool = diesel::r2d2::Pool::builder()
        .max_size(2)
        .build(diesel::r2d2::ConnectionManager::new(db.url()))
        .expect("pool");
    let check = CheckBack::Url {
        url: endpoint.url(),
    };

    let started = half_message::start(
        &client,
        &pool,
        order_saga("book"),
        check.clone(),
        |conn, saga| {
            diesel::sql_query("INSERT INTO orders (saga_id, item) VALUES ($1, 'book')")
                .bind::<SqlUuid, _>(saga.id)
                .execute(conn)
        },
    )
    .await
    .expect("started");
    assert!(started.commit_confirmed);
    let id = started.saga.id.to_string();
    app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    assert_eq!(orders_of(db.url(), Some(started.saga.id)), 1);

    let failed = half_message::start(&client, &pool, order_saga("pen"), check, |conn, _| {
        diesel::sql_query("INSERT INTO orders (item) VALUES ('pen')").execute(conn)?;
        Err::<(), _>(diesel::result::Error::RollbackTransaction)
    })
    .await;
    assert!(
        matches!(failed, Err(HalfMessageError::Local(_))),
        "{failed:?}"
    );
    let aborted = app
        .list_ok(&[("name", "place-order"), ("state", "aborted")])
        .await;
    assert_eq!(
        aborted["items"].as_array().map(Vec::len),
        Some(1),
        "{aborted}"
    );
    assert_eq!(
        orders_of(db.url(), None),
        1,
        "only the committed order exists"
    );
    assert_eq!(shop.commands().len(), 2, "only the committed saga ran");
    assert_eq!(endpoint.calls_for(&id), 0, "decided without a check-back");
}

/// Runs an outbox relay named `name` on `db` until every row is sent or refused; the rows then.
async fn relay_until_settled(app: &TestApp, db: &TestDb, name: &str) -> Vec<outbox::OutboxRow> {
    let client = Client::new(&app.api.base_url).expect("client");
    let mut settings = RelaySettings::new(name);
    settings.poll = Duration::from_millis(50);
    let relay = OutboxRelay::new(client, db.url(), settings);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run_until(async {
        let _ = stop_rx.await;
    }));
    let url = db.url().to_string();
    let rows = eventually("every outbox row settled", SAGA_TIMEOUT, async || {
        let rows = outbox_rows(&url).await?;
        rows.iter().all(|r| r.sent || r.refused).then_some(rows)
    })
    .await;
    let _ = stop_tx.send(());
    let _ = task.await;
    rows
}

async fn outbox_rows(url: &str) -> Option<Vec<outbox::OutboxRow>> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || outbox::rows(&mut connect(&url)))
        .await
        .ok()?
        .ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_written_while_the_coordinator_is_down_become_exactly_one_saga_each() {
    let db = initiator_db().await;
    let coordinator_db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("join");
    let ns = TestNamespace::new();
    let shop = FakeParticipant::always_succeed(&ns, "shop").await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new(&base).expect("client");

    // The business change and the saga request commit together, while nothing listens on `port`.
    let url = db.url().to_string();
    let row_ids: Vec<i64> = tokio::task::spawn_blocking(move || {
        let mut conn = connect(&url);
        (0..5)
            .map(|i| {
                conn.transaction(|conn| {
                    diesel::sql_query("INSERT INTO orders (item) VALUES ($1)")
                        .bind::<Text, _>(format!("item-{i}"))
                        .execute(conn)?;
                    outbox::enqueue(conn, &order_saga(&format!("item-{i}")))
                })
                .expect("enqueue")
            })
            .collect()
    })
    .await
    .expect("join");

    // One row was already submitted by a relay that died before marking it sent.
    let first_key = format!("shop-orders:{}", row_ids[0]);
    let mut settings = RelaySettings::new("shop-orders");
    settings.poll = Duration::from_millis(50);
    settings.min_backoff = Duration::from_millis(50);
    settings.max_backoff = Duration::from_millis(400);
    let relay = OutboxRelay::new(client.clone(), db.url(), settings);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run_until(async {
        let _ = stop_rx.await;
    }));

    // The relay keeps trying while the coordinator is down, and delivers nothing.
    let url = db.url().to_string();
    eventually(
        "the relay retrying while the coordinator is down",
        Duration::from_secs(20),
        async || {
            let rows = outbox_rows(&url).await?;
            (rows[0].attempts >= 2 && rows[0].last_error.is_some()).then_some(())
        },
    )
    .await;
    let url = db.url().to_string();
    let rows = tokio::task::spawn_blocking(move || outbox::rows(&mut connect(&url)))
        .await
        .expect("join")
        .expect("rows");
    assert!(rows.iter().all(|r| !r.sent), "nothing sent while down");

    // The coordinator comes up on the relay's address.
    let addr = format!("127.0.0.1:{port}");
    let coordinator_url = coordinator_db.url().to_string();
    let namespace = ns.name().to_string();
    let process = tokio::task::spawn_blocking(move || {
        CoordinatorProcess::start(
            COORDINATOR,
            &coordinator_url,
            &e2e::amqp_url(),
            &namespace,
            &[("SAGA_HTTP_ADDR", addr.as_str())],
        )
    })
    .await
    .expect("join")
    .expect("starting the coordinator");
    // Simulate the dead relay's submission of row 0 racing the live relay: same key, same saga.
    let mut duplicate = order_saga("item-0");
    duplicate.key = Some(first_key);
    let _ = client.submit(&duplicate).await;

    let url = db.url().to_string();
    let rows = eventually("every outbox row sent", SAGA_TIMEOUT, async || {
        let rows = outbox_rows(&url).await?;
        rows.iter().all(|r| r.sent).then_some(rows)
    })
    .await;
    let _ = stop_tx.send(());
    let _ = relay_task.await;

    let api = process.api();
    let listed = api
        .list_ok(&[("name", "place-order"), ("limit", "500")])
        .await;
    let items = listed["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        items.len(),
        5,
        "exactly one saga per outbox row: {listed:#}"
    );
    // In row order: sagas were created in the order of their rows (ids are UUIDv7).
    let saga_ids: Vec<Uuid> = rows.iter().filter_map(|r| r.saga_id).collect();
    assert_eq!(saga_ids.len(), 5);
    assert!(saga_ids.windows(2).all(|w| w[0] < w[1]), "{saga_ids:?}");
    for (row, id) in rows.iter().zip(&saga_ids) {
        let doc = api
            .wait_for_state(&id.to_string(), &["committed"], SAGA_TIMEOUT)
            .await;
        assert_eq!(state(&doc), "committed");
        assert_eq!(doc["key"], format!("shop-orders:{}", row.id).as_str());
    }
    assert_eq!(shop.commands().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_row_the_coordinator_refuses_is_marked_and_the_next_ones_still_go() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let db = initiator_db().await;
    let url = db.url().to_string();
    tokio::task::spawn_blocking(move || {
        let mut conn = connect(&url);
        outbox::enqueue(&mut conn, &SagaRequest::new("no-steps"))?;
        outbox::enqueue(&mut conn, &order_saga("after"))
    })
    .await
    .expect("join")
    .expect("enqueue");
    let rows = relay_until_settled(&app, &db, "refusals").await;
    assert!(rows[0].refused && !rows[0].sent);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("422")),
        "{:?}",
        rows[0].last_error
    );
    assert!(rows[1].sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_deliver_each_row_once_and_in_order() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let db = initiator_db().await;
    let url = db.url().to_string();
    let row_ids: Vec<i64> = tokio::task::spawn_blocking(move || {
        let mut conn = connect(&url);
        (0..12)
            .map(|i| outbox::enqueue(&mut conn, &order_saga(&format!("item-{i}"))))
            .collect::<QueryResult<Vec<i64>>>()
    })
    .await
    .expect("join")
    .expect("enqueue");
    // Two service instances, each with its relay: only the one holding the lock delivers.
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut settings = RelaySettings::new("twins");
        settings.poll = Duration::from_millis(20);
        let client = Client::new(&app.api.base_url).expect("client");
        let relay = OutboxRelay::new(client, db.url(), settings);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop_tx);
        tasks.push(tokio::spawn(relay.run_until(async {
            let _ = stop_rx.await;
        })));
    }
    let url = db.url().to_string();
    let rows = eventually("every outbox row sent", SAGA_TIMEOUT, async || {
        let rows = outbox_rows(&url).await?;
        rows.iter().all(|r| r.sent).then_some(rows)
    })
    .await;
    for stop in stops {
        let _ = stop.send(());
    }
    for task in tasks {
        let _ = task.await;
    }
    assert_eq!(rows.len(), row_ids.len());
    assert!(
        rows.iter().all(|r| r.attempts == 1),
        "each row submitted once: {rows:?}"
    );
    let saga_ids: Vec<Uuid> = rows.iter().filter_map(|r| r.saga_id).collect();
    assert!(
        saga_ids.windows(2).all(|w| w[0] < w[1]),
        "in row order: {saga_ids:?}"
    );
    let listed = app
        .list_ok(&[("name", "place-order"), ("limit", "500")])
        .await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(row_ids.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_row_submits_its_saga_in_the_trace_that_enqueued_it() {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};

    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let db = initiator_db().await;
    let url = db.url().to_string();
    // The request that enqueues the row runs in a trace (a remote parent, as a server would have).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    tokio::task::spawn_blocking(move || {
        let caller = SpanContext::new(
            TraceId::from_hex(trace_id).expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        let _attached = opentelemetry::Context::new()
            .with_remote_span_context(caller)
            .attach();
        outbox::enqueue(&mut connect(&url), &order_saga("traced"))
    })
    .await
    .expect("join")
    .expect("enqueue");
    // The relay runs later, in no trace of its own.
    let rows = relay_until_settled(&app, &db, "traced-orders").await;
    assert!(rows[0].sent, "{rows:?}");
    let saga_id = rows[0].saga_id.expect("the saga's id");
    let trace = app
        .api
        .request(
            reqwest::Method::GET,
            &format!("/dashboard/api/sagas/{saga_id}/stored"),
        )
        .send()
        .await
        .expect("the saga's stored parts");
    let trace = e2e::api::expect_json(trace, reqwest::StatusCode::OK).await;
    assert_eq!(trace["trace_id"], trace_id, "{trace}");
    assert!(
        trace["trace_url"].is_null(),
        "no SAGA_TRACE_URL_TEMPLATE: {trace}"
    );
    assert_eq!(trace["definition"]["name"], "place-order", "{trace}");
}
