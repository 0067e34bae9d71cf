//! Many coordinators as one (issue 13): several `coordinator serve` processes on one database and one
//! AMQP namespace share the sagas by partition, each partition owned by one of them under a fenced
//! lease (`partition_leases`: owner, epoch, expiry).
//!
//! Under load: the partitions are spread and every effect happens exactly once (the example shop and
//! its consistency report); one coordinator SIGKILLed, one frozen (SIGSTOP) beyond its lease, all
//! three restarted one after another (SIGTERM): no saga is lost or stuck, and a frozen one that wakes
//! writes nothing for the partitions it lost. The dashboard's stream, operator actions and replies to
//! the old shared `{ns}.replies` work whichever instance is asked.
//!
//! The tests of this file run one at a time (`ONE_AT_A_TIME`): each runs up to three coordinators
//! with their load, as much as a two-core machine and Postgres' 100 connections take. Leases last
//! 2 s, so takeovers happen within seconds. `INSTANCES_TEST_SCALE=N` multiplies the load (a longer
//! variant; see the README).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::api::{expect_json, expect_problem, saga_id, state};
use e2e::cluster::{instance_id, ClusterSettings, DEFAULT_PARTITIONS};
use e2e::defs::{saga, step, step_with};
use e2e::process::run_to_completion;
use e2e::{
    eventually, order_policy, steady_faults, Behaviour, Cluster, ClusterClient, FakeParticipant,
    Reply, ShopDbs, ShopProcess, TestDb, TestNamespace, BULK_TIMEOUT, SAGA_TIMEOUT,
};
use participants::client::{Client, SagaState};
use participants::initiator::outbox::RelaySettings;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shop::order::Order;
use shop::{orders, report, Service};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");
const SHOP_BIN: &str = env!("CARGO_BIN_EXE_shop-under-test");

/// Each test runs several coordinators under load: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `SAGA_LEASE_TTL_MS` of these tests (ClusterSettings' default).
const LEASE_TTL: Duration = Duration::from_millis(2_000);

/// How long partitions may take to move: a few lease periods (renewals and balancing rounds on a
/// loaded two-core machine), plus slack. A bound to wait for, not a figure asserted.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a participant takes to answer: sagas stay in flight long enough to be caught mid-way.
const PARTICIPANT_DELAY: Duration = Duration::from_millis(400);

/// `INSTANCES_TEST_SCALE`: multiplies the number of sagas (default 1).
fn scale() -> usize {
    std::env::var("INSTANCES_TEST_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

async fn new_db() -> TestDb {
    tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database")
}

/// A database, a namespace and `instances` coordinators on them, settled (partitions spread).
async fn cluster_of(instances: usize) -> (TestDb, TestNamespace, Cluster) {
    let db = new_db().await;
    let ns = TestNamespace::new();
    let cluster = Cluster::start(BIN, &db, &ns, ClusterSettings::instances(instances)).await;
    let leases = cluster.wait_balanced(TAKEOVER_TIMEOUT).await;
    eprintln!("cluster of {instances} settled: {leases}");
    (db, ns, cluster)
}

/// Participants `names` that answer every command with success after [`PARTICIPANT_DELAY`].
async fn slow_participants(ns: &TestNamespace, names: &[&str]) -> Vec<FakeParticipant> {
    let mut participants = Vec::new();
    for name in names {
        let me = name.to_string();
        participants.push(
            FakeParticipant::start(ns, name, move |cmd| {
                Behaviour::DelayThenReply(
                    PARTICIPANT_DELAY,
                    Reply::success_with(FakeParticipant::default_output(&me, cmd)),
                )
            })
            .await,
        );
    }
    participants
}

/// A two-step saga at `p1` and `p2` with the idempotency key `{tag}-{n}`: the client may send it
/// again to another instance after a lost answer.
fn keyed_saga(tag: &str, n: usize) -> Value {
    let mut def = saga(
        "many-coordinators",
        vec![
            step_with("a", "p1", json!({"timeout_ms": 10_000})),
            step_with("b", "p2", json!({"timeout_ms": 10_000})),
        ],
    );
    def["key"] = json!(format!("{tag}-{n}"));
    def["payload"] = json!({ "n": n });
    def
}

/// Submissions at a steady pace through a [`ClusterClient`], each on a task of its own (one held up
/// by a takeover does not hold up the others).
struct Load {
    accepted: Arc<Mutex<Vec<String>>>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Load {
    /// Submits `make(n)` every `pace` until `limit` sagas were offered or [`Load::finish`].
    fn start(
        client: ClusterClient,
        pace: Duration,
        limit: Option<usize>,
        make: impl Fn(usize) -> Value + Send + 'static,
    ) -> Load {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, f, s) = (accepted.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut submissions = JoinSet::new();
            let mut n = 0;
            while !s.load(Ordering::SeqCst) && limit.is_none_or(|l| n < l) {
                let (client, def, a, f) = (client.clone(), make(n), a.clone(), f.clone());
                submissions.spawn(async move {
                    match client.submit(&def).await {
                        Ok(id) => lock(&a).push(id),
                        Err(e) => lock(&f).push(format!("{}: {e}", def["key"])),
                    }
                });
                n += 1;
                tokio::time::sleep(pace).await;
            }
            while submissions.join_next().await.is_some() {}
        });
        Load {
            accepted,
            failed,
            stop,
            task,
        }
    }

    fn accepted(&self) -> usize {
        lock(&self.accepted).len()
    }

    /// Waits until `n` submissions in all were accepted.
    async fn wait_accepted(&self, n: usize) {
        eventually(
            &format!("{n} accepted submissions"),
            BULK_TIMEOUT,
            async || (self.accepted() >= n).then_some(()),
        )
        .await;
    }

    /// Stops offering, waits for the submissions under way; the accepted ids and the failures.
    async fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the load task");
        let accepted = lock(&self.accepted).clone();
        let failed = lock(&self.failed).clone();
        (accepted, failed)
    }
}

/// Every saga of `ids` is committed (waiting for each), the database holds exactly these sagas (none
/// lost, none created twice by a retried submission), each with exactly one final event, and every
/// step was carried out by its participant and never compensated.
async fn assert_all_committed_once(
    client: &ClusterClient,
    cluster: &Cluster,
    ids: &[String],
    participants: &[FakeParticipant],
) {
    for id in ids {
        client
            .wait_for_state(id, &["committed"], BULK_TIMEOUT)
            .await;
    }
    let stored = cluster.db().sagas().await;
    let known: HashSet<&String> = ids.iter().collect();
    let strangers: Vec<_> = stored.iter().filter(|s| !known.contains(&s.id)).collect();
    assert!(
        strangers.is_empty(),
        "sagas no accepted submission answered with (a submission retried on another instance \
         made a second saga?): {strangers:#?}"
    );
    assert_eq!(
        stored.len(),
        ids.len(),
        "every accepted saga is stored once"
    );
    let not_once: Vec<_> = stored.iter().filter(|s| s.final_events != 1).collect();
    assert!(
        not_once.is_empty(),
        "sagas whose log does not end exactly once: {not_once:#?}"
    );
    for p in participants {
        for id in ids {
            let commands = p.commands_for(id);
            let acted = commands.iter().any(|c| {
                c.is_action()
                    && p.replies_to(c.seq)
                        .iter()
                        .any(|r| r.body["outcome"] == "success")
            });
            assert!(acted, "saga {id} committed but {} never acted", p.name());
            assert!(
                !commands.iter().any(|c| c.is_compensation()),
                "saga {id} committed but {} got a compensation",
                p.name()
            );
        }
        for c in p.commands() {
            assert!(
                known.contains(&c.saga_id().to_string()),
                "a command of an unknown saga: {c:?}"
            );
        }
    }
}

/// The sum of the leases' epochs grows by one per change of owner: how many handovers happened.
async fn handovers_since(cluster: &Cluster, epochs_before: i64) -> i64 {
    cluster.db().leases().await.epoch_sum() - epochs_before
}

// --- a. three coordinators under steady load -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_share_the_partitions_and_the_shop_stays_exact() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, cluster) = cluster_of(3).await;
    let partitions = cluster.settings().partition_count();

    // Spread: each owns some, every partition is owned by exactly one of them, and each instance
    // says (readyz, metrics) what the table says.
    eventually(
        "each instance to report the partitions the table gives it",
        TAKEOVER_TIMEOUT,
        async || {
            let leases = cluster.db().try_leases().await.ok()?;
            let counts = leases.counts();
            let mut reported = 0;
            for i in 0..cluster.len() {
                let owned = counts.get(&instance_id(i)).copied().unwrap_or(0);
                if owned == 0 {
                    return None;
                }
                let ready = cluster.readyz(i).await?;
                let said = ready.get("partitions_owned")?.as_u64()?;
                let gauge = cluster.metric(i, "saga_partitions_owned").await?;
                if said as usize != owned || gauge as usize != owned {
                    return None;
                }
                reported += owned;
            }
            (reported == partitions && leases.unowned().is_empty()).then_some(())
        },
    )
    .await;
    let epochs_before = cluster.db().leases().await.epoch_sum();

    // The shop: three SDK participants with the barrier, and business failures, transient errors
    // and duplicate deliveries.
    let mut dbs = ShopDbs::new();
    dbs.settings.balance_cents = 60_000;
    let faults = steady_faults();
    let _shop = {
        let (shop, ns, faults) = (dbs.settings.clone(), ns.clone(), faults.clone());
        tokio::task::spawn_blocking(move || {
            Service::ALL
                .into_iter()
                .map(|service| {
                    ShopProcess::start(SHOP_BIN, service, &shop, &ns, &faults)
                        .unwrap_or_else(|e| panic!("starting {}: {e:#}", service.name()))
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("starting the shop")
    };
    let orders_pool = dbs.install_orders().await;

    // Three relays over the one outbox, one per coordinator, each under a name of its own (so
    // each takes its own lock and all three work): every order's saga request goes to all three
    // instances, often at the same moment, with its one key. One saga per order must come of it.
    let mut relays = Vec::new();
    let mut wakes = Vec::new();
    for i in 0..cluster.len() {
        let client = Client::new(&cluster.api(i).base_url).expect("client");
        let mut settings = RelaySettings::new(format!("shop-orders-via-{}", instance_id(i)));
        settings.poll = Duration::from_millis(200);
        settings.min_backoff = Duration::from_millis(50);
        settings.max_backoff = Duration::from_millis(500);
        let relay = orders::relay(&dbs.settings, client, Some(settings));
        wakes.push(relay.handle());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        relays.push((
            stop,
            tokio::spawn(relay.run_until(async {
                let _ = stopped.await;
            })),
        ));
    }
    let clients: Vec<Client> = (0..cluster.len())
        .map(|i| Client::new(&cluster.api(i).base_url).expect("client"))
        .collect();
    let policy = order_policy(Duration::from_millis(5_000), 200);

    let count = 120 * scale();
    let mut waiting = JoinSet::new();
    let mut in_flight_reporters = Vec::new();
    for n in 0..count {
        let placed = {
            let (pool, order, policy) = (
                orders_pool.clone(),
                Order::random(&dbs.settings),
                policy.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.get().expect("a connection to the orders database");
                orders::place(&mut conn, &order, &policy)
            })
            .await
            .expect("join")
            .expect("placing an order")
        };
        for wake in &wakes {
            wake.wake();
        }
        // Waits and operator aborts go to any instance, the owner or not.
        let waiter = clients[n % clients.len()].clone();
        let operator = clients[(n + 1) % clients.len()].clone();
        let pool = orders_pool.clone();
        waiting.spawn(async move {
            let saga = orders::wait_for_saga(&pool, placed.id, BULK_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
            if n % 10 == 5 {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
                abort_unless_final(&operator, saga).await;
            }
            waiter.wait(saga, BULK_TIMEOUT).await
        });
        if n % 20 == 19 {
            // A steady stream; and while sagas are in flight, which instances report the gauges
            // read from the database.
            in_flight_reporters.push(in_flight_reporters_now(&cluster).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut states = Vec::new();
    while let Some(done) = waiting.join_next().await {
        match done.expect("join") {
            Ok(saga) => states.push((saga.id, saga.state)),
            Err(e) => panic!("a saga did not settle: {e}"),
        }
    }
    for (stop, relay) in relays {
        let _ = stop.send(());
        relay.await.expect("join");
    }

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
    assert_eq!(committed + compensated, count, "{states:?}");
    assert!(
        committed > 0 && compensated > 0,
        "a mix of outcomes: {committed} committed, {compensated} compensated"
    );

    // Effects exactly once, one saga per order.
    let shop = dbs.settings.clone();
    let report = tokio::task::spawn_blocking(move || report::check(&shop, &states, true))
        .await
        .expect("join")
        .expect("reading the shop");
    eprintln!("{report}");
    assert!(report.is_consistent(), "{report}");
    assert_eq!(report.orders_with_saga, count, "one saga per order");

    // The coordinators' side: one saga per order however many instances it was submitted to, each
    // ended once; the sagas ran on every instance.
    let stored = cluster.db().sagas().await;
    assert_eq!(stored.len(), count, "one saga per key across instances");
    let not_once: Vec<_> = stored.iter().filter(|s| s.final_events != 1).collect();
    assert!(
        not_once.is_empty(),
        "sagas not ended exactly once: {not_once:#?}"
    );
    let leases = cluster.db().leases().await;
    let mut by_owner: BTreeMap<String, usize> = BTreeMap::new();
    for s in &stored {
        let owner = leases.owner_of(s.partition).unwrap_or("nobody").to_string();
        *by_owner.entry(owner).or_default() += 1;
    }
    eprintln!(
        "sagas by the owner of their partition: {by_owner:?}; leases {leases}; \
         {} handovers during the run; in-flight gauges reported by {in_flight_reporters:?}",
        handovers_since(&cluster, epochs_before).await
    );
    for i in 0..cluster.len() {
        assert!(
            by_owner.get(&instance_id(i)).copied().unwrap_or(0) > 0,
            "{} owns the partitions of some sagas: {by_owner:?}",
            instance_id(i)
        );
    }
    // The gauges read from the database come from one instance only.
    assert!(
        in_flight_reporters.iter().all(|r| r.len() <= 1),
        "saga_sagas_in_flight is reported by one instance at a time: {in_flight_reporters:?}"
    );
    assert!(
        in_flight_reporters.iter().any(|r| r.len() == 1),
        "one instance reports saga_sagas_in_flight while sagas run: {in_flight_reporters:?}"
    );
    drop(dbs);
}

/// The instances whose `/metrics` carry samples of `saga_sagas_in_flight` now.
async fn in_flight_reporters_now(cluster: &Cluster) -> Vec<String> {
    let mut reporters = Vec::new();
    for i in 0..cluster.len() {
        let metrics = cluster.metrics(i).await.unwrap_or_default();
        if metrics
            .lines()
            .any(|l| l.starts_with("saga_sagas_in_flight{"))
        {
            reporters.push(instance_id(i));
        }
    }
    reporters
}

/// Aborts the saga; one already final answers 409; 503 (its actor finishing) is asked again.
async fn abort_unless_final(client: &Client, id: uuid::Uuid) {
    for _ in 0..100 {
        match client.abort(id).await {
            Ok(_) => return,
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => return,
            Err(e) if e.status() == Some(StatusCode::SERVICE_UNAVAILABLE) => {
                if client.get(id).await.is_ok_and(|s| s.state.is_settled()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("aborting {id} via {}: {e}", client.base_url()),
        }
    }
    panic!("aborting {id}: the coordinator kept answering 503");
}

// --- b. SIGKILL one of three under load -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinators_sagas_are_resumed_by_the_others() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, mut cluster) = cluster_of(3).await;
    let participants = slow_participants(&ns, &["p1", "p2"]).await;
    let client = cluster.client();
    let load = Load::start(
        client.clone(),
        Duration::from_millis(50),
        Some(60 * scale()),
        |n| keyed_saga("kill", n),
    );
    load.wait_accepted(20).await;

    let victim = 1;
    let id = instance_id(victim);
    let held = cluster.db().leases().await.partitions_of(&id);
    let in_flight = cluster.db().unsettled_in(&held).await;
    cluster.kill(victim);
    let killed = Instant::now();
    assert!(
        !in_flight.is_empty(),
        "{id} had sagas in flight when it was killed (partitions {held:?})"
    );

    let (handover, leases) = cluster
        .wait_taken_over(&id, &held, killed, TAKEOVER_TIMEOUT)
        .await;
    eprintln!(
        "handover after SIGKILL: {handover:?} (lease {LEASE_TTL:?}) for {} partitions; {leases}",
        held.len()
    );
    // Its sagas in flight are resumed by the new owners.
    for saga in &in_flight {
        client
            .wait_for_state(saga, &["committed"], SAGA_TIMEOUT)
            .await;
    }
    eprintln!(
        "the {} sagas {id} had in flight finished {:?} after the kill",
        in_flight.len(),
        killed.elapsed()
    );

    let (ids, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "submissions failed even after retrying on another instance: {failed:#?}"
    );
    assert_eq!(ids.len(), 60 * scale());
    assert_all_committed_once(&client, &cluster, &ids, &participants).await;
}

// --- c. SIGSTOP one beyond its lease, then SIGCONT ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_coordinator_that_wakes_writes_nothing_for_the_partitions_it_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, mut cluster) = cluster_of(3).await;
    let participants = slow_participants(&ns, &["p1", "p2"]).await;
    let client = cluster.client();
    let load = Load::start(client.clone(), Duration::from_millis(60), None, |n| {
        keyed_saga("freeze", n)
    });
    load.wait_accepted(20).await;

    let victim = 2;
    let id = instance_id(victim);
    let held = cluster.db().leases().await.held_by(&id);
    let partitions: Vec<i32> = held.iter().map(|(p, _)| *p).collect();
    let in_flight = cluster.db().unsettled_in(&partitions).await;
    cluster.freeze(victim);
    let frozen = Instant::now();
    assert!(
        !in_flight.is_empty(),
        "{id} had sagas in flight when it was frozen (partitions {held:?})"
    );

    let (handover, leases) = cluster
        .wait_taken_over(&id, &partitions, frozen, TAKEOVER_TIMEOUT)
        .await;
    eprintln!(
        "{} partitions of the frozen {id} taken over after {handover:?} (lease {LEASE_TTL:?}); {leases}",
        held.len()
    );
    // Each new owner holds a newer epoch: the fencing token moved on.
    for (partition, epoch) in &held {
        let now = leases.lease(*partition).map_or(0, |l| l.epoch);
        assert!(
            now > *epoch,
            "partition {partition} changed owner but its epoch is {now}, was {epoch}"
        );
    }
    // Let the others run its sagas for a while before it wakes.
    tokio::time::sleep(LEASE_TTL).await;
    let seq_at_wake = cluster.db().max_event_seq().await;
    cluster.thaw(victim);
    let woke = Instant::now();

    // It rejoins as an ordinary member: it owns partitions again.
    let rejoined = eventually(
        &format!("{id} to own partitions again"),
        TAKEOVER_TIMEOUT,
        async || {
            let leases = cluster.db().try_leases().await.ok()?;
            (!leases.partitions_of(&id).is_empty()).then_some(leases)
        },
    )
    .await;
    eprintln!(
        "{id} owns partitions again {:?} after waking: {rejoined}",
        woke.elapsed()
    );
    load.wait_accepted(load.accepted() + 20).await;
    let (ids, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "submissions failed even after retrying on another instance: {failed:#?}"
    );
    for saga in &in_flight {
        assert!(ids.contains(saga), "{saga} was accepted");
    }
    assert_all_committed_once(&client, &cluster, &ids, &participants).await;

    // Nothing it wrote after waking carries an epoch of a lease it had lost.
    let stale = cluster.db().events_written_under(seq_at_wake, &held).await;
    assert!(
        stale.is_empty(),
        "{id} wrote after waking under leases it had lost (partition, epoch {held:?}): {stale:#?}"
    );
    let lost = cluster.metric(victim, "saga_leases_lost_total").await;
    let fenced = cluster.metric(victim, "saga_fenced_writes_total").await;
    eprintln!("{id}: saga_leases_lost_total {lost:?}, saga_fenced_writes_total {fenced:?}");
    assert!(
        lost.is_some_and(|n| n >= 1.0),
        "{id} counts the leases it lost while frozen: {lost:?}"
    );
}

// --- d. rolling restart -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, mut cluster) = cluster_of(3).await;
    let participants = slow_participants(&ns, &["p1", "p2"]).await;
    let client = cluster.client();
    let load = Load::start(client.clone(), Duration::from_millis(60), None, |n| {
        keyed_saga("rolling", n)
    });
    load.wait_accepted(10).await;

    let mut handovers = Vec::new();
    for victim in 0..cluster.len() {
        let id = instance_id(victim);
        load.wait_accepted(load.accepted() + 10).await;
        let held = cluster.db().leases().await.partitions_of(&id);
        let signalled = cluster.sigterm(victim);
        let (handover, _) = cluster
            .wait_taken_over(&id, &held, signalled, TAKEOVER_TIMEOUT)
            .await;
        let status = cluster
            .wait_exit(victim, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{id} exits after SIGTERM: {e:#}"));
        assert_eq!(
            status.code(),
            Some(0),
            "{id} exits 0 after SIGTERM: {status}"
        );
        // It released what it held on the way out: nothing of its own is left to expire.
        let leases = cluster.db().leases().await;
        let kept: Vec<_> = leases
            .0
            .iter()
            .filter(|l| l.owner.as_deref() == Some(id.as_str()) && l.live)
            .collect();
        assert!(
            kept.is_empty(),
            "{id} exited still holding live leases: {kept:#?}"
        );
        eprintln!(
            "SIGTERM to {id}: its {} partitions had new owners after {handover:?} (lease {LEASE_TTL:?})",
            held.len()
        );
        handovers.push((id.clone(), handover));
        cluster.restart(victim).await;
        cluster.wait_balanced(TAKEOVER_TIMEOUT).await;
    }
    load.wait_accepted(load.accepted() + 10).await;
    let (ids, failed) = load.finish().await;
    eprintln!(
        "rolling restart: handovers {handovers:?}; {} sagas; {} requests sent again to another \
         instance",
        ids.len(),
        client.retried()
    );
    assert!(
        failed.is_empty(),
        "submissions failed even after retrying on another instance: {failed:#?}"
    );
    assert_all_committed_once(&client, &cluster, &ids, &participants).await;
}

// --- e. the dashboard's stream on one instance shows another's sagas ------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_of_one_instance_shows_sagas_another_owns() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, cluster) = cluster_of(2).await;
    let _participants = slow_participants(&ns, &["p1", "p2"]).await;
    let (a, b) = (0, 1);
    // A client without the API client's overall timeout: the stream stays open.
    let mut stream = reqwest::Client::new()
        .get(cluster.api(a).url("/dashboard/api/stream"))
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut text = String::new();
    while !text.contains("event: hello") {
        let chunk = tokio::time::timeout(SAGA_TIMEOUT, stream.chunk())
            .await
            .expect("the stream's greeting")
            .expect("a chunk")
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }

    // A saga whose partition B owns (submitted to either: an instance may give a new saga a
    // partition of its own).
    let mut chosen = None;
    for n in 0..40 {
        let id = cluster.api(n % 2).submit_id(&keyed_saga("stream", n)).await;
        let partition = cluster.db().partition_of(&id).await;
        let leases = cluster.db().leases().await;
        if leases.owner_of(partition) == Some(instance_id(b).as_str()) {
            chosen = Some((id, partition));
            break;
        }
    }
    let (id, partition) = chosen.expect("one of 40 sagas lands in a partition of B");
    eprintln!(
        "saga {id} in partition {partition}, owned by {}",
        instance_id(b)
    );

    let mut states: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
    while !states.iter().any(|s| s == "committed") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}'s stream showed no commit of {id} (owned by {}); saw {states:?} in {text}",
                    instance_id(a),
                    instance_id(b)
                )
            })
            .expect("a chunk")
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        states = text
            .split("\n\n")
            .filter_map(|frame| frame.strip_prefix("event: change\ndata: "))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .filter(|c| c["id"] == json!(id))
            .map(|c| c["state"].as_str().unwrap_or_default().to_owned())
            .collect();
    }
    assert_eq!(
        states.first().map(String::as_str),
        Some("running"),
        "the stream shows the saga advancing, from its start: {states:?}"
    );
    let change = text
        .split("\n\n")
        .filter_map(|frame| frame.strip_prefix("event: change\ndata: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find(|c| c["id"] == json!(id))
        .expect("a change of the saga");
    for member in ["id", "name", "state", "at"] {
        assert!(change.get(member).is_some(), "{member} in {change}");
    }
}

// --- f. operator actions on an instance that does not own the saga -------------------------------

/// The top-level members of a JSON object: the shape of an answer.
fn shape(body: &Value) -> BTreeSet<String> {
    body.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The owner of saga `id`'s partition and another instance, as indexes.
async fn owner_and_other(cluster: &Cluster, id: &str) -> (usize, usize) {
    let partition = cluster.db().partition_of(id).await;
    let leases = cluster.db().leases().await;
    let owner = leases
        .owner_of(partition)
        .unwrap_or_else(|| panic!("partition {partition} has no owner: {leases}"));
    let owner = (0..cluster.len())
        .find(|&i| instance_id(i) == owner)
        .unwrap_or_else(|| panic!("{owner} is not one of the cluster"));
    (owner, (owner + 1) % cluster.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_on_an_instance_that_does_not_own_the_saga_answer_as_the_owner_would() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, cluster) = cluster_of(2).await;
    // `hold` takes actions and never answers them (the sagas stay running); compensations succeed.
    let _hold = FakeParticipant::start(&ns, "hold", |cmd| {
        if cmd.is_action() {
            Behaviour::NoReply
        } else {
            Behaviour::success()
        }
    })
    .await;
    let _fast = FakeParticipant::always_succeed(&ns, "fast").await;
    let held_saga = |n: usize| {
        let mut def = saga(
            "held",
            vec![step_with("a", "hold", json!({"timeout_ms": 600_000}))],
        );
        def["key"] = json!(format!("held-{n}"));
        def
    };
    let prepared_saga = |n: usize| {
        let mut def = saga("two-phase", vec![step("a", "fast")]);
        def["key"] = json!(format!("prepared-{n}"));
        def["mode"] = json!("prepare");
        def["check_back"] = json!({"participant": "orders"});
        def["prepare_timeout_ms"] = json!(600_000);
        def
    };

    // Abort of a running saga: on its owner, and on the other instance.
    let on_owner = cluster.api(0).submit_id(&held_saga(1)).await;
    let on_other = cluster.api(0).submit_id(&held_saga(2)).await;
    let client = cluster.client();
    for id in [&on_owner, &on_other] {
        client.wait_for_state(id, &["running"], SAGA_TIMEOUT).await;
    }
    let (owner, _) = owner_and_other(&cluster, &on_owner).await;
    let (_, other) = owner_and_other(&cluster, &on_other).await;
    let by_owner = expect_json(cluster.api(owner).abort(&on_owner).await, StatusCode::OK).await;
    let by_other = expect_json(cluster.api(other).abort(&on_other).await, StatusCode::OK).await;
    assert_eq!(
        shape(&by_owner),
        shape(&by_other),
        "the same answer from a non-owner: {by_owner:#} vs {by_other:#}"
    );
    assert_eq!(saga_id(&by_other), on_other);
    for id in [&on_owner, &on_other] {
        client
            .wait_for_state(id, &["compensated"], SAGA_TIMEOUT)
            .await;
    }

    // Conflicts: abort of a compensated (final) saga, retry of a running one.
    let owner_conflict = expect_problem(
        cluster.api(owner).abort(&on_owner).await,
        StatusCode::CONFLICT,
    )
    .await;
    let other_conflict = expect_problem(
        cluster.api(other).abort(&on_other).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(shape(&owner_conflict), shape(&other_conflict));
    let running = cluster.api(0).submit_id(&held_saga(3)).await;
    client
        .wait_for_state(&running, &["running"], SAGA_TIMEOUT)
        .await;
    let (owner, other) = owner_and_other(&cluster, &running).await;
    expect_problem(
        cluster.api(other).retry(&running).await,
        StatusCode::CONFLICT,
    )
    .await;
    expect_problem(
        cluster.api(owner).retry(&running).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(
        state(&client.saga(&running).await.expect("the saga")),
        "running"
    );
    // A committed one.
    let done = cluster
        .api(0)
        .submit_id(&saga("quick", vec![step("a", "fast")]))
        .await;
    client
        .wait_for_state(&done, &["committed"], SAGA_TIMEOUT)
        .await;
    let (owner, other) = owner_and_other(&cluster, &done).await;
    expect_problem(cluster.api(other).abort(&done).await, StatusCode::CONFLICT).await;
    expect_problem(cluster.api(owner).abort(&done).await, StatusCode::CONFLICT).await;
    // Unknown: 404 wherever.
    let unknown = uuid::Uuid::new_v4().to_string();
    for i in 0..cluster.len() {
        expect_problem(cluster.api(i).abort(&unknown).await, StatusCode::NOT_FOUND).await;
    }

    // Two-phase: abort and commit of prepared sagas, on the owner and on the other instance.
    let mut answers = Vec::new();
    for (n, decision) in [(1, "abort"), (2, "abort"), (3, "commit"), (4, "commit")] {
        let id = cluster.api(0).submit_id(&prepared_saga(n)).await;
        let (owner, other) = owner_and_other(&cluster, &id).await;
        let on = if n % 2 == 1 { owner } else { other };
        let api = cluster.api(on);
        let response = match decision {
            "abort" => api.abort(&id).await,
            _ => api.commit(&id).await,
        };
        let body = expect_json(response, StatusCode::OK).await;
        let expected = if decision == "abort" {
            "aborted"
        } else {
            "running"
        };
        assert!(
            state(&body) == expected || (decision == "commit" && state(&body) == "committed"),
            "{decision} of a prepared saga on {}: {body:#}",
            instance_id(on)
        );
        answers.push((decision, on == owner, shape(&body)));
        if decision == "commit" {
            client
                .wait_for_state(&id, &["committed"], SAGA_TIMEOUT)
                .await;
        }
        // Deciding again conflicts, on either.
        let again = if decision == "abort" {
            cluster.api(other).commit(&id).await
        } else {
            cluster.api(other).abort(&id).await
        };
        expect_problem(again, StatusCode::CONFLICT).await;
    }
    for pair in answers.chunks(2) {
        assert_eq!(
            pair[0].2, pair[1].2,
            "{} answers alike on the owner and elsewhere: {pair:?}",
            pair[0].0
        );
    }
}

// --- g. replies to the old shared queue -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_the_shared_replies_queue_still_finish_sagas() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, cluster) = cluster_of(3).await;
    let shared = ns.replies_queue();
    let legacy = FakeParticipant::start(&ns, "legacy", move |cmd| {
        Behaviour::ReplyVia(
            shared.clone(),
            Reply::success_with(FakeParticipant::default_output("legacy", cmd)),
        )
    })
    .await;
    let client = cluster.client();
    let mut ids = Vec::new();
    for n in 0..12 {
        let mut def = saga("legacy", vec![step("a", "legacy"), step("b", "legacy")]);
        def["key"] = json!(format!("legacy-{n}"));
        ids.push(client.submit(&def).await.expect("submitted"));
    }
    let mut owners = HashSet::new();
    let leases = cluster.db().leases().await;
    let instance_queues: HashSet<String> = cluster
        .live_ids()
        .iter()
        .map(|id| ns.instance_replies_queue(id))
        .collect();
    for id in &ids {
        let doc = client
            .wait_for_state(id, &["committed"], SAGA_TIMEOUT)
            .await;
        assert_eq!(
            doc["steps"][1]["output"]["by"], "legacy",
            "the reply's output is kept: {doc:#}"
        );
        let partition = cluster.db().partition_of(id).await;
        owners.insert(leases.owner_of(partition).unwrap_or("nobody").to_string());
        // The commands asked for a coordinator's own queue; the participant ignored that.
        for command in legacy.commands_for(id) {
            assert!(
                instance_queues.contains(&command.reply_to.clone().unwrap_or_default()),
                "reply_to of {command:?} is one of {instance_queues:?}"
            );
        }
    }
    assert!(
        owners.len() >= 2,
        "the sagas were owned by several instances: {owners:?}"
    );
}

// --- h. partitions and instance ids --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_partition_count_on_a_migrated_database_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (db, ns, cluster) = cluster_of(1).await;
    assert_eq!(
        cluster.db().leases().await.partitions(),
        DEFAULT_PARTITIONS as usize,
        "one row per partition"
    );
    let env = [
        ("SAGA_DATABASE_URL", db.url().to_string()),
        ("SAGA_AMQP_URL", e2e::amqp_url()),
        ("SAGA_NAMESPACE", ns.name().to_string()),
        ("SAGA_HTTP_ADDR", "127.0.0.1:0".to_string()),
        ("SAGA_INSTANCE_ID", "c9".to_string()),
        ("SAGA_PARTITIONS", "8".to_string()),
    ];
    let output = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_to_completion(BIN, &["serve"], &env, Duration::from_secs(60))
    })
    .await
    .expect("join")
    .expect("serve with another partition count stops by itself");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "refused: {text}");
    assert!(
        text.lines()
            .any(|l| l.contains("partition") && l.contains("64") && l.contains('8')),
        "the refusal names both numbers: {text}"
    );
    assert_eq!(
        cluster.db().leases().await.partitions(),
        DEFAULT_PARTITIONS as usize,
        "the refused start changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_reclaims_its_own_leases_without_waiting_for_them_to_expire() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = new_db().await;
    let ns = TestNamespace::new();
    // Long leases: were it to wait for them to expire, its sagas would wait that long.
    let settings = ClusterSettings {
        instances: 1,
        lease_ttl: Duration::from_secs(60),
        ..ClusterSettings::default()
    };
    let mut cluster = Cluster::start(BIN, &db, &ns, settings).await;
    cluster.wait_balanced(TAKEOVER_TIMEOUT).await;
    let _participants = slow_participants(&ns, &["p1", "p2"]).await;
    let client = cluster.client();
    let mut in_flight = Vec::new();
    for n in 0..6 {
        in_flight.push(
            client
                .submit(&keyed_saga("reclaim", n))
                .await
                .expect("submitted"),
        );
    }
    let before = cluster.db().leases().await;
    let expiry = before
        .0
        .iter()
        .filter_map(|l| l.expires_at)
        .min()
        .expect("the leases expire some time");
    cluster.kill(0);
    cluster.restart(0).await;
    for id in &in_flight {
        client
            .wait_for_state(id, &["committed"], SAGA_TIMEOUT)
            .await;
    }
    let after = cluster.db().leases().await;
    eprintln!("before the kill: {before}; after the restart: {after}");
    assert_eq!(after.counts().get("c1").copied(), Some(before.partitions()));
    // They finished before the leases it held when killed would have expired (Postgres' clock).
    for id in &in_flight {
        let committed = cluster
            .db()
            .events_of(id)
            .await
            .into_iter()
            .find(|e| e.kind == "committed")
            .unwrap_or_else(|| panic!("saga {id} has a committed event"));
        assert!(
            committed.at < expiry,
            "saga {id} finished at {}, only after the old leases expired at {expiry}",
            committed.at
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_name_on_one_instance_holds_its_sagas_on_every_instance() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_db, ns, cluster) = cluster_of(2).await;
    // Actions are taken and never answered: the sagas stay running with an attempt out.
    let _hold = FakeParticipant::start(&ns, "hold", |cmd| {
        if cmd.is_action() {
            Behaviour::NoReply
        } else {
            Behaviour::success()
        }
    })
    .await;
    let held_saga = || {
        saga(
            "held-by-name",
            vec![step_with("a", "hold", json!({"timeout_ms": 600_000}))],
        )
    };
    // A saga goes to a partition of the instance that takes the submission: some to each.
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(cluster.api(n % 2).submit_id(&held_saga()).await);
    }
    let mut owners = BTreeSet::new();
    for id in &ids {
        owners.insert(owner_and_other(&cluster, id).await.0);
    }
    assert_eq!(owners.len(), 2, "both instances own some of the sagas");

    let client = cluster.client();
    let paused = expect_json(
        cluster.api(1).pause_name("held-by-name", true).await,
        StatusCode::OK,
    )
    .await;
    assert!(paused["paused_at"].is_string(), "{paused}");
    for id in &ids {
        eventually(
            "every saga of the name held, whoever owns it",
            SAGA_TIMEOUT,
            async || {
                let doc = client.saga(id).await?;
                (doc["paused_by"] == "name").then_some(())
            },
        )
        .await;
    }
    // Each instance has looked since (it held its own sagas): a new saga starts held wherever it
    // is submitted.
    for i in 0..cluster.len() {
        let new = expect_json(
            cluster.api(i).submit(&held_saga()).await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(new["paused_by"], "name", "submitted to instance {i}: {new}");
        ids.push(saga_id(&new));
    }

    expect_json(
        cluster.api(0).pause_name("held-by-name", false).await,
        StatusCode::OK,
    )
    .await;
    for id in &ids {
        eventually(
            "every saga of the name released",
            SAGA_TIMEOUT,
            async || {
                let doc = client.saga(id).await?;
                (doc["paused_at"].is_null() && doc["state"] == "running").then_some(())
            },
        )
        .await;
    }
}
