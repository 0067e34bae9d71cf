//! End to end: the coordinator and the example shop (three participant processes built on the SDK),
//! hundreds of orders placed with the shop's order service, whose outbox relay starts their
//! `place-order` sagas (the coordinator unreachable for the relay for a while), with injected
//! business failures, transient errors, slow replies, duplicate deliveries and crashes between
//! commit and reply, operator aborts, plus a participant killed mid-run and restarted. Afterwards
//! every order has exactly one saga, every saga is final and the shop is exactly consistent.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{order_policy, ShopDbs, ShopProcess, TcpProxy, TestApp, BULK_TIMEOUT};
use participants::client::{Client, SagaState};
use participants::initiator::outbox::{self, RelaySettings};
use shop::order::Order;
use shop::{orders, report, Faults, Service};
use tokio::task::JoinSet;

const SHOP_BIN: &str = env!("CARGO_BIN_EXE_shop-under-test");
fn orders() -> usize {
    std::env::var("SHOP_TEST_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Keeps the three services running: restarts any that exited (crashed or killed).
struct Supervisor {
    processes: Arc<Mutex<Vec<ShopProcess>>>,
    restarts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    fn start(
        processes: Vec<ShopProcess>,
        restart: impl Fn(Service) -> ShopProcess + Send + 'static,
    ) -> Supervisor {
        let processes = Arc::new(Mutex::new(processes));
        let restarts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, r, s) = (processes.clone(), restarts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let exited: Vec<usize> = {
                    let mut procs = p.lock().unwrap_or_else(|e| e.into_inner());
                    let mut exited = Vec::new();
                    for (i, proc) in procs.iter_mut().enumerate() {
                        if proc.try_exit_status().is_some() {
                            exited.push(i);
                        }
                    }
                    exited
                };
                for i in exited {
                    let service = p.lock().unwrap_or_else(|e| e.into_inner())[i].service();
                    let fresh = restart(service);
                    p.lock().unwrap_or_else(|e| e.into_inner())[i] = fresh;
                    r.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Supervisor {
            processes,
            restarts,
            stop,
            thread: Some(thread),
        }
    }

    /// SIGKILLs the process of `service` (the supervisor restarts it).
    fn kill(&self, service: Service) {
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = procs.iter_mut().find(|p| p.service() == service) {
            p.kill();
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for p in self
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            p.kill();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_orders_with_faults_and_crashes_keep_stock_and_money_exact() {
    let app = TestApp::start().await;
    let mut dbs = ShopDbs::new();
    dbs.settings.balance_cents = 60_000;
    let faults = Faults {
        failure_rate: 0.05,
        transient_rate: 0.05,
        slow_rate: 0.03,
        // Longer than the step timeout: the coordinator retries while the first attempt still runs.
        slow_ms: 1_200,
        duplicate_rate: 0.05,
        crash_rate: 0.01,
    };
    let start = {
        let (shop, ns, faults) = (dbs.settings.clone(), app.ns.clone(), faults.clone());
        move |service: Service| {
            ShopProcess::start(SHOP_BIN, service, &shop, &ns, &faults)
                .unwrap_or_else(|e| panic!("starting {}: {e:#}", service.name()))
        }
    };
    let processes = {
        let start = start.clone();
        tokio::task::spawn_blocking(move || {
            Service::ALL.into_iter().map(&start).collect::<Vec<_>>()
        })
        .await
        .expect("starting the shop")
    };
    let mut supervisor = Supervisor::start(processes, start);

    let client = Client::new(&app.api.base_url).expect("client");
    let policy = order_policy(Duration::from_millis(1_000), 200);

    // The order service: its database, and its outbox relay reaching the coordinator through a
    // proxy that the test closes for a while.
    let orders_pool = dbs.install_orders().await;
    let api_addr = app.api.base_url.trim_start_matches("http://").to_string();
    let proxy = Arc::new(TcpProxy::start(&api_addr).expect("proxy to the coordinator"));
    let relay_client = Client::new(&format!("http://{}", proxy.addr())).expect("client");
    let mut relay_settings = RelaySettings::new(orders::RELAY_NAME);
    relay_settings.poll = Duration::from_millis(200);
    relay_settings.min_backoff = Duration::from_millis(50);
    relay_settings.max_backoff = Duration::from_millis(500);
    let relay = orders::relay(&dbs.settings, relay_client, Some(relay_settings));
    let wake = relay.handle();
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run_until(async {
        let _ = relay_stopped.await;
    }));

    let mut waiting = JoinSet::new();
    let mut reopen = None;
    for n in 0..orders() {
        if n == orders() / 3 {
            supervisor.kill(Service::Payments);
        }
        if n == orders() / 2 {
            // The coordinator is unreachable for the relay: orders are still taken, their sagas
            // start once it is back.
            proxy.pause();
            proxy.sever();
            let proxy = proxy.clone();
            reopen = Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                proxy.resume();
            }));
        }
        let placed = {
            let (pool, order, policy, wake) = (
                orders_pool.clone(),
                Order::random(&dbs.settings),
                policy.clone(),
                wake.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.get().expect("a connection to the orders database");
                orders::place_and_wake(&mut conn, &order, &policy, &wake)
            })
            .await
            .expect("join")
            .expect("placing an order")
        };
        let client = client.clone();
        let pool = orders_pool.clone();
        let abort = n % 10 == 5;
        waiting.spawn(async move {
            let saga = orders::wait_for_saga(&pool, placed.id, BULK_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
            if abort {
                // An operator's abort, often while an action is under way (or stalled by a slow
                // fault): its compensation may overtake it (null compensation, then a hanging action).
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
                abort_unless_final(&client, saga).await;
            }
            client.wait(saga, BULK_TIMEOUT).await
        });
        if n % 20 == 19 {
            // A steady stream rather than one burst.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut states = Vec::new();
    while let Some(done) = waiting.join_next().await {
        match done.expect("join") {
            Ok(saga) => states.push((saga.id, saga.state)),
            Err(e) => {
                let events = match &e {
                    participants::client::ClientError::Timeout { id, .. } => {
                        format!(
                            "{:#}",
                            serde_json::Value::Array(app.api.events(&id.to_string()).await)
                        )
                    }
                    _ => String::new(),
                };
                panic!("a saga did not settle: {e}\nevents: {events}");
            }
        }
    }
    if let Some(reopen) = reopen {
        reopen.await.expect("join");
    }
    let _ = stop_relay.send(());
    relay_task.await.expect("join");
    supervisor.stop();
    let retried = {
        let pool = orders_pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().expect("a connection to the orders database");
            outbox::rows(&mut conn).expect("reading the outbox")
        })
        .await
        .expect("join")
        .into_iter()
        .filter(|row| row.attempts > 1)
        .count()
    };
    let restarts = supervisor.restarts.load(Ordering::SeqCst);

    let not_final: Vec<_> = states.iter().filter(|(_, s)| !s.is_final()).collect();
    assert!(not_final.is_empty(), "sagas not final: {not_final:?}");
    let committed = states
        .iter()
        .filter(|(_, s)| *s == SagaState::Committed)
        .count();
    let compensated = states
        .iter()
        .filter(|(_, s)| *s == SagaState::Compensated)
        .count();
    assert_eq!(committed + compensated, orders());
    assert!(
        committed > 0 && compensated > 0,
        "a mix of outcomes: {committed} committed, {compensated} compensated"
    );
    assert!(restarts >= 1, "the killed participant was restarted");
    assert!(
        retried >= 1,
        "some orders were placed while the relay could not reach the coordinator"
    );

    let shop = dbs.settings.clone();
    let report = tokio::task::spawn_blocking(move || report::check(&shop, &states, true))
        .await
        .expect("join")
        .expect("reading the shop");
    let barrier = barrier_origins(&dbs);
    eprintln!(
        "{report}\n{restarts} participant restarts; {retried} outbox rows needed retries; \
         barrier rows by origin: {barrier:?}"
    );
    assert!(report.is_consistent(), "{report}");
    assert_eq!(report.orders, orders(), "every order placed is stored");
    assert_eq!(report.orders_with_saga, orders(), "one saga per order");
    assert_eq!(
        report.stock_available + report.stock_reserved,
        report.stock_initial
    );
    assert_eq!(report.money_total, report.money_initial);
    drop(dbs);
}

/// How many barrier rows of each origin (`ran`, `null`, `barred`) the three services hold: how often
/// the run met null compensations and hanging actions.
fn barrier_origins(dbs: &ShopDbs) -> std::collections::BTreeMap<String, i64> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        origin: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut out = std::collections::BTreeMap::new();
    for service in Service::ALL {
        let Ok(mut conn) = dbs.connect(service) else {
            continue;
        };
        let rows: Vec<Row> = diesel::RunQueryDsl::load(
            diesel::sql_query("SELECT origin, count(*) AS n FROM saga_barrier GROUP BY origin"),
            &mut conn,
        )
        .unwrap_or_default();
        for row in rows {
            *out.entry(row.origin).or_default() += row.n;
        }
    }
    out
}

/// Aborts the saga; a saga already final answers 409. A saga whose actor is just finishing may answer
/// 503 (its mailbox closed): then look again.
async fn abort_unless_final(client: &Client, id: uuid::Uuid) {
    for _ in 0..100 {
        match client.abort(id).await {
            Ok(_) => return,
            Err(e) if e.status() == Some(reqwest::StatusCode::CONFLICT) => return,
            Err(e) if e.status() == Some(reqwest::StatusCode::SERVICE_UNAVAILABLE) => {
                if client.get(id).await.is_ok_and(|s| s.state.is_settled()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("aborting {id}: {e}"),
        }
    }
    panic!("aborting {id}: the coordinator kept answering 503");
}
