//! Chaos (issue 14): steady orders through the example shop (three SDK participants with the
//! barrier, business failures, transient errors and duplicate deliveries) on three coordinators,
//! while faults are injected one after another at random intervals: a coordinator SIGKILLed and
//! started again, one frozen (SIGSTOP) beyond its lease and woken, a shop participant SIGKILLed and
//! started again. Afterwards, from the shop's own ledgers: every order has exactly one saga, every
//! saga ended once, and every effect happened exactly once (compensations match actions).
//!
//! With `CHAOS_RESTART_SERVICES=1` the faults also restart this machine's RabbitMQ (`rabbitmqctl
//! stop_app`/`start_app`) and Postgres (`pg_ctlcluster ... restart`), which every other user of
//! them notices: CI sets it, a developer's `cargo test` does not.
//!
//! `CHAOS_SECS` sets how long orders keep coming (default 30, what CI runs); before a release run
//! it for minutes: `CHAOS_SECS=600 CHAOS_RESTART_SERVICES=1 cargo test -p e2e --test chaos --
//! --nocapture`. The figures are printed at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::cluster::instance_id;
use e2e::cluster::ClusterSettings;
use e2e::{order_policy, steady_faults, Cluster, ShopDbs, ShopProcess, BULK_TIMEOUT};
use participants::client::{Client, SagaState};
use participants::initiator::outbox::RelaySettings;
use shop::order::{Order, OrderPolicy};
use shop::{orders, report, Service};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");
const SHOP_BIN: &str = env!("CARGO_BIN_EXE_shop-under-test");

/// `SAGA_LEASE_TTL_MS` of the coordinators (the cluster harness's default).
const LEASE_TTL: Duration = Duration::from_millis(2_000);

fn chaos_secs() -> u64 {
    std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(30)
}

/// The faults injected, by kind.
#[derive(Debug, Default)]
struct Injected {
    coordinators_killed: usize,
    coordinators_frozen: usize,
    participants_killed: usize,
    broker_restarts: usize,
    database_restarts: usize,
}

fn restart_services() -> bool {
    std::env::var("CHAOS_RESTART_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// Runs `program args` to completion; panics if it fails.
async fn run(program: &str, args: &[&str]) {
    let (program, args): (String, Vec<String>) =
        (program.into(), args.iter().map(|a| a.to_string()).collect());
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("{program}: {e}"))
            .map(|s| (program, args, s))
    })
    .await
    .expect("join");
    match status {
        Ok((_, _, s)) if s.success() => {}
        Ok((program, args, s)) => panic!("{program} {args:?}: {s}"),
        Err(e) => panic!("{e}"),
    }
}

/// Restarts this machine's RabbitMQ node: down for a second or two, its queues kept.
async fn restart_rabbitmq() {
    run("rabbitmqctl", &["-q", "stop_app"]).await;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(500..2_000))).await;
    run("rabbitmqctl", &["-q", "start_app"]).await;
}

/// Restarts this machine's Postgres cluster (fast shutdown: every connection is cut).
async fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a Postgres cluster under /etc/postgresql");
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    )
    .await;
}

/// One relay of the order outbox per coordinator, replaced when its coordinator comes back on
/// another port; each under a name of its own, so all of them work the one outbox.
async fn run_relays(
    shop: shop::ShopSettings,
    mut urls: mpsc::UnboundedReceiver<(usize, String)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut relays: BTreeMap<usize, (oneshot::Sender<()>, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            next = urls.recv() => {
                let Some((i, url)) = next else { break };
                if let Some((old, task)) = relays.remove(&i) {
                    let _ = old.send(());
                    let _ = task.await;
                }
                let client = Client::new(&url).expect("client");
                let mut settings = RelaySettings::new(format!("shop-orders-via-{}", instance_id(i)));
                settings.poll = Duration::from_millis(200);
                settings.min_backoff = Duration::from_millis(50);
                settings.max_backoff = Duration::from_millis(500);
                let relay = orders::relay(&shop, client, Some(settings));
                let (done, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(relay.run_until(async {
                    let _ = stopped.await;
                }));
                relays.insert(i, (done, task));
            }
        }
    }
    for (_, (done, task)) in relays {
        let _ = done.send(());
        let _ = task.await;
    }
}

/// Places `order`, trying again while Postgres restarts; its id.
async fn place(pool: &shop::DbPool, order: &Order, policy: &OrderPolicy) -> uuid::Uuid {
    let deadline = Instant::now() + BULK_TIMEOUT;
    loop {
        let (pool, order, policy) = (pool.clone(), order.clone(), policy.clone());
        let placed = tokio::task::spawn_blocking(move || -> anyhow::Result<uuid::Uuid> {
            let mut conn = pool.get()?;
            Ok(orders::place(&mut conn, &order, &policy)?.id)
        })
        .await
        .expect("join");
        match placed {
            Ok(id) => return id,
            Err(e) if Instant::now() < deadline => {
                eprintln!("chaos: placing an order failed ({e:#}); again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("placing an order: {e:#}"),
        }
    }
}

/// The saga the relay started for `order`, reading again while Postgres restarts.
async fn saga_of(pool: &shop::DbPool, order: uuid::Uuid) -> uuid::Uuid {
    let deadline = Instant::now() + BULK_TIMEOUT;
    loop {
        match orders::wait_for_saga(pool, order, BULK_TIMEOUT).await {
            Ok(saga) => return saga,
            Err(e) if Instant::now() < deadline && !format!("{e:#}").contains("refused") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_faults_every_order_ends_once_and_the_shop_stays_exact() {
    let db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = e2e::TestNamespace::new();
    let mut cluster = Cluster::start(BIN, &db, &ns, ClusterSettings::instances(3)).await;
    cluster.wait_balanced(Duration::from_secs(30)).await;
    for i in 0..cluster.len() {
        ns.instance_replies_queue(&instance_id(i));
    }

    let mut dbs = ShopDbs::new();
    dbs.settings.balance_cents = 1_000_000;
    // Enough stock that no order fails for want of it: compensations come from the injected
    // business failures only.
    dbs.settings.stock = 1_000_000;
    let faults = steady_faults();
    let start_participant = {
        let (shop, ns, faults) = (dbs.settings.clone(), ns.clone(), faults.clone());
        move |service: Service| {
            ShopProcess::start(SHOP_BIN, service, &shop, &ns, &faults)
                .unwrap_or_else(|e| panic!("starting {}: {e:#}", service.name()))
        }
    };
    let mut participants = {
        let start = start_participant.clone();
        tokio::task::spawn_blocking(move || Service::ALL.into_iter().map(start).collect::<Vec<_>>())
            .await
            .expect("starting the shop")
    };
    let orders_pool = dbs.install_orders().await;

    let (urls, relay_urls) = mpsc::unbounded_channel();
    let (stop_relays, relays_stopping) = watch::channel(false);
    for i in 0..cluster.len() {
        let _ = urls.send((i, cluster.api(i).base_url.clone()));
    }
    let relays = tokio::spawn(run_relays(
        dbs.settings.clone(),
        relay_urls,
        relays_stopping,
    ));

    // The faults, one after another at random intervals, while orders come.
    let (stop_faults, mut faults_stopping) = watch::channel(false);
    let chaos = tokio::spawn(async move {
        let mut injected = Injected::default();
        loop {
            let pause = Duration::from_millis(fastrand::u64(1_500..3_000));
            if tokio::time::timeout(pause, faults_stopping.changed())
                .await
                .is_ok()
            {
                break;
            }
            let i = fastrand::usize(0..cluster.len());
            let kinds = if restart_services() { 5 } else { 3 };
            match fastrand::u8(0..kinds) {
                0 => {
                    cluster.kill(i);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(200..1_000))).await;
                    cluster.restart(i).await;
                    let _ = urls.send((i, cluster.api(i).base_url.clone()));
                    injected.coordinators_killed += 1;
                }
                1 => {
                    cluster.freeze(i);
                    tokio::time::sleep(LEASE_TTL + Duration::from_millis(500)).await;
                    cluster.thaw(i);
                    injected.coordinators_frozen += 1;
                }
                3 => {
                    restart_rabbitmq().await;
                    injected.broker_restarts += 1;
                }
                4 => {
                    restart_postgres().await;
                    injected.database_restarts += 1;
                }
                _ => {
                    let p = fastrand::usize(0..participants.len());
                    let service = participants[p].service();
                    participants[p].kill();
                    let start = start_participant.clone();
                    participants[p] = tokio::task::spawn_blocking(move || start(service))
                        .await
                        .expect("restarting a participant");
                    injected.participants_killed += 1;
                }
            }
        }
        (cluster, participants, injected)
    });

    // Actions get a few more attempts than elsewhere: a fault can hold a step for seconds.
    let mut policy = order_policy(Duration::from_millis(5_000), 1_000);
    policy.retry.max_attempts = 6;
    policy.retry.max_backoff_ms = 1_000;
    policy.compensation_retry.max_backoff_ms = 1_000;
    let deadline = Instant::now() + Duration::from_secs(chaos_secs());
    let mut waiting = JoinSet::new();
    let mut placed_orders = 0usize;
    while Instant::now() < deadline {
        let order = Order::random(&dbs.settings);
        let placed = place(&orders_pool, &order, &policy).await;
        placed_orders += 1;
        let pool = orders_pool.clone();
        waiting.spawn(async move { saga_of(&pool, placed).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let _ = stop_faults.send(true);
    let (cluster, participants, injected) = chaos.await.expect("the fault task");
    let faults_ended = Instant::now();

    let sagas_client = cluster.client().patience(BULK_TIMEOUT);
    let mut states = Vec::new();
    while let Some(saga) = waiting.join_next().await {
        let saga = saga.expect("an order's saga");
        let doc = sagas_client
            .wait_for_state(
                &saga.to_string(),
                &["committed", "compensated"],
                BULK_TIMEOUT,
            )
            .await;
        let state = match e2e::api::state(&doc) {
            "committed" => SagaState::Committed,
            "compensated" => SagaState::Compensated,
            other => panic!("saga {saga} ended {other}: {doc}"),
        };
        states.push((saga, state));
    }
    let drained = faults_ended.elapsed();
    let _ = stop_relays.send(true);
    relays.await.expect("the relays");

    let committed = states
        .iter()
        .filter(|(_, s)| *s == SagaState::Committed)
        .count();
    assert_eq!(states.len(), placed_orders, "every order got its saga");
    let shop = dbs.settings.clone();
    let checked = states.clone();
    let report = tokio::task::spawn_blocking(move || report::check(&shop, &checked, true))
        .await
        .expect("join")
        .expect("reading the shop");
    // A restart of Postgres left the harness's reading connection dead: the first read drops it.
    let _ = cluster.db().try_leases().await;
    let stored = cluster.db().sagas().await;
    let not_once: Vec<_> = stored.iter().filter(|s| s.final_events != 1).collect();
    eprintln!(
        "chaos: {placed_orders} orders in {} s, {committed} committed, {} compensated; faults \
         {injected:?}; every saga final {:.1} s after the last fault\n{report}",
        chaos_secs(),
        states.len() - committed,
        drained.as_secs_f64(),
    );
    assert!(report.is_consistent(), "{report}");
    // 5 % of deliveries are injected twice, and faults make the coordinator send commands again:
    // the barriers saw some, and counted them.
    assert!(report.duplicates_absorbed > 0, "{report}");
    assert_eq!(report.orders_with_saga, placed_orders, "one saga per order");
    assert_eq!(stored.len(), placed_orders, "one saga per order's key");
    assert!(
        not_once.is_empty(),
        "sagas not ended exactly once: {not_once:#?}"
    );
    assert!(
        injected.coordinators_killed + injected.coordinators_frozen + injected.participants_killed
            > 0,
        "faults were injected: {injected:?}"
    );
    drop(participants);
    drop(cluster);
    drop(dbs);
}
