//! Start-up while Postgres is away, several coordinators starting at once, a schema from a newer
//! build, and readiness while Postgres goes away and comes back (issue 18).
//!
//! The shared Postgres is never stopped (other tests run beside): each coordinator reaches it through
//! a [`TcpProxy`], and "Postgres is down" is the proxy cutting every connection and refusing new ones.

use std::time::{Duration, Instant};

use coordinator::app::Coordinator;
use coordinator::config::Settings;
use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use e2e::defs::{saga, step};
use e2e::process::run_to_completion;
use e2e::{
    eventually, Api, Behaviour, CoordinatorProcess, FakeParticipant, Reply, TcpProxy, TestDb,
    TestNamespace, BULK_TIMEOUT, SAGA_TIMEOUT,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");

/// How long "Postgres" stays away in these tests: long enough for several tries with backoff.
const OUTAGE: Duration = Duration::from_secs(4);

/// The embedded migrations, as many as `__diesel_schema_migrations` must hold once migrated.
fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/migrations"))
        .expect("the migrations directory")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // A plain thread, not the blocking pool: `Coordinator` blocks on runtimes of its own.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.expect("the blocking call panicked")
}

fn settings(database_url: &str, ns: &TestNamespace) -> Settings {
    let mut settings = Settings::from_env()
        .map_err(anyhow::Error::msg)
        .expect("default settings");
    settings.database_url = database_url.to_string();
    settings.amqp_url = e2e::amqp_url();
    settings.http_addr = "127.0.0.1:0".to_string();
    settings.namespace = ns.name().to_string();
    settings.api_token = None;
    // Tests run in parallel against one Postgres (max_connections 100).
    settings.db_pool_size = 4;
    settings
}

async fn readyz(api: &Api) -> Option<(StatusCode, Value)> {
    let resp = api.request(Method::GET, "/readyz").send().await.ok()?;
    let status = resp.status();
    Some((status, resp.json().await.ok()?))
}

async fn wait_ready(api: &Api, timeout: Duration) {
    eventually("/readyz 200", timeout, async || {
        (readyz(api).await?.0 == StatusCode::OK).then_some(())
    })
    .await;
}

/// `/healthz` 200, `/readyz` 503 saying it waits for Postgres, and the API 503 problem+json.
async fn assert_waiting_for_postgres(api: &Api) {
    let healthz = api
        .request(Method::GET, "/healthz")
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status(), StatusCode::OK, "alive while waiting");
    let (status, body) = readyz(api).await.expect("readyz answers while waiting");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["postgres"], false, "{body}");
    assert_eq!(body["rabbitmq"], false, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("waiting for Postgres: "), "{body}");
    for resp in [
        api.submit(&saga("early", vec![step("a", "shop")])).await,
        api.list(&[]).await,
    ] {
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let problem: Value = resp.json().await.expect("a problem document");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("waiting for Postgres"), "{problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_postgres_then_migrates_starts_and_commits() {
    // A database that does not exist yet: once Postgres is back it is created and migrated.
    let db = TestDb::reserve_name();
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_postgres();
    proxy.outage();
    let settings = settings(&proxy.postgres_url(db.name()), &ns);
    let coordinator = blocking(move || Coordinator::start_listening(settings))
        .await
        .expect("the coordinator listens while Postgres is away");
    let api = Api::new(&format!("http://{}", coordinator.http_addr()), None);

    let back_at = Instant::now() + OUTAGE;
    eventually("a few tries to fail", SAGA_TIMEOUT, async || {
        let (_, body) = readyz(&api).await?;
        body["reason"]
            .as_str()?
            .starts_with("waiting for Postgres: ")
            .then_some(())
    })
    .await;
    while Instant::now() < back_at {
        assert_waiting_for_postgres(&api).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!db.exists().expect("checking the database"));

    proxy.resume();
    wait_ready(&api, SAGA_TIMEOUT).await;
    let _shop = FakeParticipant::always_succeed(&ns, "shop").await;
    let id = api
        .submit_id(&saga("after-wait", vec![step("a", "shop")]))
        .await;
    api.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    blocking(move || coordinator.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_postgres_is_away_and_200_once_it_is_back() {
    let db = blocking(e2e::test_db).await;
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_postgres();
    let settings = settings(&proxy.postgres_url(db.name()), &ns);
    let coordinator = blocking(move || Coordinator::start(settings))
        .await
        .expect("starting the coordinator");
    let api = Api::new(&format!("http://{}", coordinator.http_addr()), None);
    wait_ready(&api, SAGA_TIMEOUT).await;

    proxy.outage();
    let body = eventually("/readyz 503 without Postgres", SAGA_TIMEOUT, async || {
        let (status, body) = readyz(&api).await?;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!(body["postgres"], false, "{body}");
    assert_eq!(body["rabbitmq"], true, "{body}");
    assert_eq!(body["reason"], "Postgres is not reachable", "{body}");
    let healthz = api
        .request(Method::GET, "/healthz")
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status(), StatusCode::OK, "alive without Postgres");

    proxy.resume();
    wait_ready(&api, SAGA_TIMEOUT).await;
    let (_, body) = readyz(&api).await.expect("readyz");
    assert!(body.get("reason").is_none(), "no reason when ready: {body}");
    let _shop = FakeParticipant::always_succeed(&ns, "shop").await;
    let id = api
        .submit_id(&saga("after-outage", vec![step("a", "shop")]))
        .await;
    api.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    blocking(move || coordinator.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_during_an_outage_and_restarted_it_comes_up_with_the_database_and_every_saga_ends(
) {
    let db = blocking(e2e::test_db).await;
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_postgres();
    let url = proxy.postgres_url(db.name());
    let amqp = e2e::amqp_url();
    let namespace = ns.name().to_string();
    let start = |listening_only: bool| {
        let (url, amqp, namespace) = (url.clone(), amqp.clone(), namespace.clone());
        blocking(move || {
            if listening_only {
                CoordinatorProcess::start_listening(BIN, &url, &amqp, &namespace, &[])
            } else {
                CoordinatorProcess::start(BIN, &url, &amqp, &namespace, &[])
            }
        })
    };
    let mut first = start(false).await.expect("starting the coordinator");
    let mut participants = Vec::new();
    for name in ["p1", "p2"] {
        let me = name.to_string();
        participants.push(
            FakeParticipant::start(&ns, name, move |cmd| {
                Behaviour::DelayThenReply(
                    Duration::from_millis(300),
                    Reply::success_with(FakeParticipant::default_output(&me, cmd)),
                )
            })
            .await,
        );
    }
    let mut ids = Vec::new();
    for i in 0..10 {
        let definition = saga(
            &format!("outage-{i}"),
            vec![step("a", "p1"), step("b", "p2")],
        );
        ids.push(first.api().submit_id(&definition).await);
    }

    proxy.outage();
    first.kill();
    let second = start(true)
        .await
        .expect("the restarted coordinator listens while Postgres is away");
    let api = second.api().clone();
    eventually(
        "the restart to wait for Postgres",
        SAGA_TIMEOUT,
        async || {
            let (_, body) = readyz(&api).await?;
            body["reason"]
                .as_str()?
                .starts_with("waiting for Postgres: ")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(OUTAGE).await;
    assert_waiting_for_postgres(&api).await;

    proxy.resume();
    wait_ready(&api, SAGA_TIMEOUT).await;
    for id in &ids {
        api.wait_for_state(id, &["committed"], BULK_TIMEOUT).await;
    }
    let waited = second
        .output()
        .iter()
        .filter(|l| l.contains("waiting for Postgres ("))
        .count();
    assert!(waited >= 1, "the wait was logged");
    assert!(
        waited <= 2,
        "the wait is logged once per interval, not per try: {waited} lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_coordinators_started_at_once_on_an_empty_database_migrate_once_and_all_start() {
    let db = TestDb::reserve_name();
    let name = db.name().to_string();
    blocking(move || {
        let mut admin = PgConnection::establish(&format!("{}/postgres", e2e::pg_server_url()))
            .expect("connecting to the server");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("an empty database");
    })
    .await;
    let ns = TestNamespace::new();
    let starts: Vec<_> = (0..5)
        .map(|_| {
            let (url, namespace) = (db.url().to_string(), ns.name().to_string());
            tokio::spawn(blocking(move || {
                // Five pools at once on the shared server: keep them small.
                let small = [("SAGA_DB_POOL_SIZE", "2")];
                CoordinatorProcess::start(BIN, &url, &e2e::amqp_url(), &namespace, &small)
            }))
        })
        .collect();
    let mut coordinators = Vec::new();
    for start in starts {
        coordinators.push(
            start
                .await
                .expect("join")
                .expect("every coordinator starts"),
        );
    }
    for coordinator in &coordinators {
        wait_ready(coordinator.api(), SAGA_TIMEOUT).await;
    }
    let migration_runs = coordinators
        .iter()
        .flat_map(|c| c.output())
        .filter(|l| l.contains("migrated the database: applied"))
        .count();
    assert_eq!(migration_runs, 1, "one coordinator migrated");

    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        rows: i64,
        #[diesel(sql_type = BigInt)]
        versions: i64,
    }
    let url = db.url().to_string();
    let counts: Vec<Counts> = blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("connecting");
        sql_query(
            "SELECT count(*) AS rows, count(DISTINCT version) AS versions \
             FROM __diesel_schema_migrations",
        )
        .load(&mut conn)
        .expect("reading the applied migrations")
    })
    .await;
    assert_eq!(counts[0].rows, migration_count() as i64);
    assert_eq!(counts[0].versions, counts[0].rows, "each version once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_build_is_refused_with_what_to_do() {
    let db = blocking(e2e::test_db).await;
    let url = db.url().to_string();
    blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("connecting");
        conn.batch_execute(
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('20991231000001')",
        )
        .expect("a version from the future");
    })
    .await;
    let ns = TestNamespace::new();
    for command in ["serve", "migrate"] {
        let (url, namespace) = (db.url().to_string(), ns.name().to_string());
        let output = blocking(move || {
            run_to_completion(
                BIN,
                &[command],
                &[
                    ("SAGA_DATABASE_URL", url.as_str()),
                    ("SAGA_AMQP_URL", &e2e::amqp_url()),
                    ("SAGA_NAMESPACE", &namespace),
                    ("SAGA_HTTP_ADDR", "127.0.0.1:0"),
                ],
                Duration::from_secs(60),
            )
        })
        .await
        .expect("the coordinator exits by itself");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command} refused: {stderr}");
        assert!(
            stderr.contains("migrated by a newer coordinator")
                && stderr.contains("20991231000001")
                && stderr.contains("Run the newer coordinator"),
            "{command} says why and what to do: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_fails_fast_and_a_bounded_wait_gives_up_while_postgres_is_away() {
    let db = blocking(e2e::test_db).await;
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_postgres();
    proxy.outage();
    for (command, wait, within) in [
        ("migrate", "", Duration::from_secs(15)),
        ("serve", "2s", Duration::from_secs(30)),
    ] {
        let (url, namespace) = (proxy.postgres_url(db.name()), ns.name().to_string());
        let started = Instant::now();
        let output = blocking(move || {
            let mut env = vec![
                ("SAGA_DATABASE_URL", url.as_str()),
                ("SAGA_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
                ("SAGA_NAMESPACE", namespace.as_str()),
                ("SAGA_HTTP_ADDR", "127.0.0.1:0"),
            ];
            if !wait.is_empty() {
                env.push(("SAGA_DB_WAIT", wait));
            }
            run_to_completion(BIN, &[command], &env, Duration::from_secs(60))
        })
        .await
        .expect("the coordinator exits by itself");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command}: {stderr}");
        assert!(
            started.elapsed() < within,
            "{command} took {:?}",
            started.elapsed()
        );
        if command == "serve" {
            assert!(stderr.contains("still unreachable"), "{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_postgres_exits_0() {
    let db = TestDb::reserve_name();
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_postgres();
    proxy.outage();
    let (url, namespace) = (proxy.postgres_url(db.name()), ns.name().to_string());
    let mut process = blocking(move || {
        CoordinatorProcess::start_listening(BIN, &url, &e2e::amqp_url(), &namespace, &[])
    })
    .await
    .expect("the coordinator listens while Postgres is away");
    let api = process.api().clone();
    eventually(
        "the coordinator to wait for Postgres",
        SAGA_TIMEOUT,
        async || {
            let (_, body) = readyz(&api).await?;
            body["reason"]
                .as_str()?
                .starts_with("waiting for Postgres: ")
                .then_some(())
        },
    )
    .await;
    let status = blocking(move || process.terminate(Duration::from_secs(20)))
        .await
        .expect("the coordinator stops on SIGTERM while waiting");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_serve_refuses_a_public_address_unless_told_an_open_api_is_meant() {
    let db = e2e::test_db();
    let ns = TestNamespace::new();
    let (url, namespace) = (db.url().to_string(), ns.name().to_string());
    let refused = blocking(move || {
        run_to_completion(
            BIN,
            &["serve"],
            &[
                ("SAGA_DATABASE_URL", url.as_str()),
                ("SAGA_AMQP_URL", &e2e::amqp_url()),
                ("SAGA_NAMESPACE", &namespace),
                ("SAGA_HTTP_ADDR", "0.0.0.0:0"),
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .expect("the coordinator exits by itself");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "serve refused: {stderr}");
    assert!(
        stderr.contains("without a token")
            && stderr.contains("SAGA_API_TOKEN")
            && stderr.contains("SAGA_ALLOW_UNAUTHENTICATED=true"),
        "it says why and what to set: {stderr}"
    );

    for setting in [
        ("SAGA_ALLOW_UNAUTHENTICATED", "true"),
        ("SAGA_API_TOKEN", "s3cret-token"),
    ] {
        let (url, namespace) = (db.url().to_string(), ns.name().to_string());
        let coordinator = blocking(move || {
            CoordinatorProcess::start(
                BIN,
                &url,
                &e2e::amqp_url(),
                &namespace,
                &[("SAGA_HTTP_ADDR", "0.0.0.0:0"), setting],
            )
        })
        .await
        .unwrap_or_else(|e| panic!("it starts with {setting:?}: {e:#}"));
        assert!(coordinator.http_addr().ip().is_unspecified());
        let health = coordinator
            .api()
            .request_anonymous(Method::GET, "/healthz")
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), StatusCode::OK, "{setting:?}");
    }
}
