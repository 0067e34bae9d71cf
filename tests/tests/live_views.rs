//! Live views across coordinators: the dashboard's change stream on one coordinator shows the
//! progress of sagas that another coordinator, sharing the database, runs.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Integer, Nullable, Text};
use e2e::defs::{saga, step};
use e2e::{CoordinatorProcess, FakeParticipant, TestDb, TestNamespace, SAGA_TIMEOUT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The real binary on `db` and `ns` with `env` added, once it serves every request.
async fn coordinator(db: &TestDb, ns: &TestNamespace, env: &[(&str, &str)]) -> CoordinatorProcess {
    let (url, namespace) = (db.url().to_string(), ns.name().to_string());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        CoordinatorProcess::start(
            env!("CARGO_BIN_EXE_coordinator-under-test"),
            &url,
            &e2e::amqp_url(),
            &namespace,
            &env,
        )
    })
    .await
    .expect("join")
    .expect("starting the coordinator process")
}

#[derive(QueryableByName)]
struct Owner {
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = Nullable<Text>)]
    owner: Option<String>,
}

/// Who holds each partition.
async fn lease_owners(db: &TestDb) -> Vec<(i32, Option<String>)> {
    let url = db.url().to_string();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        diesel::sql_query("SELECT partition, owner FROM partition_leases ORDER BY partition")
            .load::<Owner>(&mut conn)
            .expect("the leases")
            .into_iter()
            .map(|o| (o.partition, o.owner))
            .collect()
    })
    .await
    .expect("join")
}

/// The partition a saga is stored in.
async fn partition_of(db: &TestDb, id: &str) -> i32 {
    #[derive(QueryableByName)]
    struct Partition {
        #[diesel(sql_type = Integer)]
        partition: i32,
    }
    let (url, id) = (db.url().to_string(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        diesel::sql_query("SELECT partition FROM sagas WHERE id = $1::uuid")
            .bind::<Text, _>(&id)
            .get_result::<Partition>(&mut conn)
            .expect("the saga's row")
            .partition
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_shows_the_progress_of_sagas_another_coordinator_runs() {
    let db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let b = coordinator(&db, &ns, &[("SAGA_INSTANCE_ID", "b")]).await;
    let a = coordinator(&db, &ns, &[("SAGA_INSTANCE_ID", "a")]).await;
    let _shop = FakeParticipant::always_succeed(&ns, "shop").await;
    // B took every partition, then hands half of them over to A. Once each holds its share,
    // nothing moves any more, and B puts a new saga in one of its own.
    let balanced = tokio::time::Instant::now() + SAGA_TIMEOUT;
    loop {
        let owners = lease_owners(&db).await;
        let held_by = |who: &str| {
            owners
                .iter()
                .filter(|(_, o)| o.as_deref() == Some(who))
                .count()
        };
        if held_by("a") == owners.len() / 2 && held_by("b") == owners.len() - owners.len() / 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < balanced,
            "the partitions were not shared out: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stream = a
        .api()
        .request(Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .expect("GET A's stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream;
    let mut text = String::new();
    // The greeting first: from then on, nothing is missed.
    while !text.contains("event: hello") {
        let chunk = tokio::time::timeout(SAGA_TIMEOUT, stream.chunk())
            .await
            .expect("the stream's greeting")
            .expect("a chunk")
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }

    let id = b
        .api()
        .submit_id(&saga(
            "place-order",
            vec![step("reserve", "shop"), step("charge", "shop")],
        ))
        .await;
    let mut states: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
    while !states.iter().any(|s| s == "committed") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("A showed no committed notice; saw {states:?} in {text}"))
            .unwrap_or_else(|e| panic!("A's stream broke ({e}); saw {states:?} in {text}"))
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
    // Each transition B committed, in order: started, the first step done, ..., committed.
    assert_eq!(
        states.first().map(String::as_str),
        Some("running"),
        "{text}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("committed"),
        "{text}"
    );
    assert!(
        states.len() >= 3,
        "the step in between is shown too: {text}"
    );

    // It was B's saga throughout: its partition never moved.
    let partition = partition_of(&db, &id).await;
    let owners = lease_owners(&db).await;
    assert!(
        owners.contains(&(partition, Some("b".to_owned()))),
        "partition {partition} of saga {id}: {owners:?}"
    );
}
