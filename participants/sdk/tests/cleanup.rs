//! `barrier::purge`, `outbox::purge` and `half_message::purge` against a real Postgres, each test in a database of its own
//! (testkit), which starts with the SDK's tables as an older version installed them.

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_query;
use diesel::sql_types::{BigInt, Integer, Text, Uuid as SqlUuid};
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use participants::barrier::{self, Barrier, Verdict};
use participants::client::SagaRequest;
use participants::initiator::{self, half_message, outbox};
use participants::{Command, CommandKind, Outcome, PurgeError};
use serde_json::{Map, Value};
use testkit::{Schema, TestDb};
use uuid::Uuid;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations");
const SCHEMA: Schema = Schema {
    name: "sdk",
    migrations: MIGRATIONS,
    migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/migrations"),
};

const DAY: Duration = Duration::from_secs(86_400);

/// A database of its own with the SDK's tables installed and an `effects` table the handlers write.
fn database() -> (TestDb, PgConnection) {
    let db = TestDb::new(SCHEMA);
    let mut conn = PgConnection::establish(db.url()).expect("connecting to the test database");
    barrier::install(&mut conn).expect("installing the barrier");
    initiator::install(&mut conn).expect("installing the initiator tables");
    sql_query("CREATE TABLE effects (key text NOT NULL)")
        .execute(&mut conn)
        .expect("creating effects");
    (db, conn)
}

fn command(saga: Uuid, step: &str, kind: CommandKind) -> Command<()> {
    Command {
        saga_id: saga,
        saga_name: "place-order".into(),
        step: step.into(),
        kind,
        name: format!("{step}-{kind:?}"),
        attempt: 1,
        idempotency_key: key(saga, step, kind),
        deadline: Utc::now(),
        payload: (),
        saga_payload: Value::Null,
        outputs: Map::new(),
        action_output: None,
        redelivered: false,
        traceparent: None,
        tracestate: None,
    }
}

fn key(saga: Uuid, step: &str, kind: CommandKind) -> String {
    contract::idempotency_key(saga, Some(step), kind)
}

/// Handles one command behind the barrier; its business effect is a row in `effects`.
fn handle(conn: &mut PgConnection, saga: Uuid, step: &str, kind: CommandKind) -> Verdict {
    let cmd = command(saga, step, kind);
    Barrier::new(&cmd)
        .run(conn, |conn| {
            sql_query("INSERT INTO effects (key) VALUES ($1)")
                .bind::<Text, _>(&cmd.idempotency_key)
                .execute(conn)?;
            Ok::<_, diesel::result::Error>(Outcome::success())
        })
        .expect("the barrier")
        .verdict
}

/// Makes the barrier rows of one step of `saga` look `days` old.
fn age_step(conn: &mut PgConnection, saga: Uuid, step: &str, days: i32) {
    sql_query(
        "UPDATE saga_barrier SET recorded_at = now() - make_interval(days => $3)
         WHERE saga_id = $1 AND step = $2",
    )
    .bind::<SqlUuid, _>(saga)
    .bind::<Text, _>(step)
    .bind::<Integer, _>(days)
    .execute(conn)
    .expect("ageing barrier rows");
}

fn age_row(conn: &mut PgConnection, key: &str, days: i32) {
    sql_query(
        "UPDATE saga_barrier SET recorded_at = now() - make_interval(days => $2)
         WHERE idempotency_key = $1",
    )
    .bind::<Text, _>(key)
    .bind::<Integer, _>(days)
    .execute(conn)
    .expect("ageing a barrier row");
}

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    key: String,
}

fn barrier_keys(conn: &mut PgConnection) -> Vec<String> {
    let rows: Vec<Key> =
        sql_query("SELECT idempotency_key AS key FROM saga_barrier ORDER BY idempotency_key")
            .load(conn)
            .expect("reading the barrier");
    rows.into_iter().map(|r| r.key).collect()
}

fn effects(conn: &mut PgConnection, key: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let count: Count = sql_query("SELECT count(*) AS n FROM effects WHERE key = $1")
        .bind::<Text, _>(key)
        .get_result(conn)
        .expect("counting effects");
    count.n
}

/// Records, for every `DELETE` statement on `table`, its transaction and how many rows it deleted.
fn log_deletes(conn: &mut PgConnection, table: &str) {
    sql_query(
        "CREATE TABLE deletes (seq bigserial PRIMARY KEY, txid bigint NOT NULL, n bigint NOT NULL)",
    )
    .execute(conn)
    .expect("creating the delete log");
    sql_query(
        "CREATE FUNCTION log_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO deletes (txid, n) SELECT txid_current(), count(*) FROM gone;
             RETURN NULL;
         END $$",
    )
    .execute(conn)
    .expect("creating the delete logger");
    sql_query(format!(
        "CREATE TRIGGER log_deletes AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone
         FOR EACH STATEMENT EXECUTE FUNCTION log_deletes()"
    ))
    .execute(conn)
    .expect("creating the delete trigger");
}

/// `(transaction, rows deleted)` of each `DELETE` statement, in order.
fn deletes(conn: &mut PgConnection) -> Vec<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Delete {
        #[diesel(sql_type = BigInt)]
        txid: i64,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let rows: Vec<Delete> = sql_query("SELECT txid, n FROM deletes ORDER BY seq")
        .load(conn)
        .expect("reading the delete log");
    rows.into_iter().map(|d| (d.txid, d.n)).collect()
}

fn distinct(txids: impl Iterator<Item = i64>) -> usize {
    let mut txids: Vec<i64> = txids.collect();
    txids.sort_unstable();
    txids.dedup();
    txids.len()
}

#[test]
fn barrier_purge_keeps_recent_rows_and_removes_old_ones() {
    let (_db, mut conn) = database();
    // An old saga whose step ran and was compensated, and one whose compensation came first.
    let compensated = Uuid::now_v7();
    handle(&mut conn, compensated, "reserve", CommandKind::Action);
    handle(&mut conn, compensated, "reserve", CommandKind::Compensation);
    age_step(&mut conn, compensated, "reserve", 40);
    let barred = Uuid::now_v7();
    assert_eq!(
        handle(&mut conn, barred, "reserve", CommandKind::Compensation),
        Verdict::NullCompensation
    );
    age_step(&mut conn, barred, "reserve", 31);
    // Recent enough: a day short of the retention, and today.
    let recent = Uuid::now_v7();
    handle(&mut conn, recent, "reserve", CommandKind::Action);
    age_step(&mut conn, recent, "reserve", 29);
    let today = Uuid::now_v7();
    handle(&mut conn, today, "reserve", CommandKind::Action);

    let purged = barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 100).expect("purge");

    assert_eq!(purged, 4, "both rows of each old step");
    let mut kept = vec![
        key(recent, "reserve", CommandKind::Action),
        key(today, "reserve", CommandKind::Action),
    ];
    kept.sort();
    assert_eq!(barrier_keys(&mut conn), kept);
    assert_eq!(
        barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 100).expect("purge again"),
        0
    );
}

#[test]
fn an_old_barrier_row_stays_while_the_other_row_of_its_step_is_recent() {
    let (_db, mut conn) = database();
    let saga = Uuid::now_v7();
    // The action ran 40 days ago, its compensation today: the saga was still sending commands.
    handle(&mut conn, saga, "reserve", CommandKind::Action);
    age_step(&mut conn, saga, "reserve", 40);
    handle(&mut conn, saga, "reserve", CommandKind::Compensation);
    // Another step of the same saga, old on its own: it goes (the rule is per step).
    handle(&mut conn, saga, "charge", CommandKind::Action);
    age_step(&mut conn, saga, "charge", 40);

    assert_eq!(
        barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 100).expect("purge"),
        1
    );
    let mut kept = vec![
        key(saga, "reserve", CommandKind::Action),
        key(saga, "reserve", CommandKind::Compensation),
    ];
    kept.sort();
    assert_eq!(barrier_keys(&mut conn), kept);
    // A late copy of the action is still refused as a duplicate: it does not run again.
    assert_eq!(
        handle(&mut conn, saga, "reserve", CommandKind::Action),
        Verdict::Duplicate
    );
    assert_eq!(
        effects(&mut conn, &key(saga, "reserve", CommandKind::Action)),
        1
    );

    // Once the compensation is old too, the step's rows go together.
    age_row(
        &mut conn,
        &key(saga, "reserve", CommandKind::Compensation),
        31,
    );
    assert_eq!(
        barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 100).expect("purge"),
        2
    );
    assert!(barrier_keys(&mut conn).is_empty());
}

#[test]
fn commands_behind_a_kept_barrier_row_are_still_deduplicated_and_refused() {
    let (_db, mut conn) = database();
    let old = Uuid::now_v7();
    handle(&mut conn, old, "reserve", CommandKind::Action);
    age_step(&mut conn, old, "reserve", 40);
    // Within the retention: an action that ran, and a compensation that came before its action.
    let ran = Uuid::now_v7();
    handle(&mut conn, ran, "reserve", CommandKind::Action);
    age_step(&mut conn, ran, "reserve", 10);
    let barred = Uuid::now_v7();
    handle(&mut conn, barred, "reserve", CommandKind::Compensation);
    age_step(&mut conn, barred, "reserve", 10);

    assert_eq!(
        barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 100).expect("purge"),
        1
    );

    let action = key(ran, "reserve", CommandKind::Action);
    assert_eq!(
        handle(&mut conn, ran, "reserve", CommandKind::Action),
        Verdict::Duplicate
    );
    assert_eq!(effects(&mut conn, &action), 1, "the duplicate did not run");
    assert_eq!(
        barrier::recorded(&mut conn, &action)
            .expect("reading")
            .map(|(_, outcome)| outcome),
        Some(Outcome::success())
    );
    assert_eq!(
        handle(&mut conn, barred, "reserve", CommandKind::Action),
        Verdict::Hanging
    );
    assert_eq!(
        effects(&mut conn, &key(barred, "reserve", CommandKind::Action)),
        0,
        "the late action did not run"
    );
}

#[test]
fn barrier_purge_deletes_in_batches_each_committed_by_itself() {
    let (_db, mut conn) = database();
    for _ in 0..5 {
        let saga = Uuid::now_v7();
        handle(&mut conn, saga, "reserve", CommandKind::Action);
        age_step(&mut conn, saga, "reserve", 40);
    }
    log_deletes(&mut conn, "saga_barrier");

    assert_eq!(
        barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 2).expect("purge"),
        5
    );

    let deletes = deletes(&mut conn);
    assert_eq!(
        deletes.iter().map(|d| d.1).collect::<Vec<_>>(),
        [2, 2, 1],
        "at most a batch per statement, until one comes back short"
    );
    assert_eq!(
        distinct(deletes.iter().map(|d| d.0)),
        3,
        "each batch in a transaction of its own"
    );
}

#[test]
fn barrier_purge_refuses_an_age_below_the_floor_and_an_empty_batch() {
    let (_db, mut conn) = database();
    let saga = Uuid::now_v7();
    handle(&mut conn, saga, "reserve", CommandKind::Action);
    age_step(&mut conn, saga, "reserve", 400);

    let below = barrier::MIN_RETENTION - Duration::from_secs(1);
    assert!(matches!(
        barrier::purge(&mut conn, below, 100),
        Err(PurgeError::TooRecent { older_than, floor })
            if older_than == below && floor == barrier::MIN_RETENTION
    ));
    assert!(matches!(
        barrier::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 0),
        Err(PurgeError::Batch(0))
    ));
    assert_eq!(barrier_keys(&mut conn).len(), 1, "nothing was deleted");
    assert_eq!(
        barrier::purge(&mut conn, barrier::MIN_RETENTION, 100).expect("the floor itself"),
        1
    );
}

/// Enqueues a row and sets its times: `sent`/`refused` that many days ago (`None`: not set) and
/// `created` that many days ago.
fn outbox_row(
    conn: &mut PgConnection,
    created: i32,
    sent: Option<i32>,
    refused: Option<i32>,
) -> i64 {
    let id = outbox::enqueue(conn, &SagaRequest::new("place-order")).expect("enqueue");
    sql_query(
        "UPDATE saga_outbox SET
            created_at = now() - make_interval(days => $2),
            sent_at = now() - make_interval(days => $3),
            refused_at = now() - make_interval(days => $4),
            saga_id = CASE WHEN $3 IS NULL THEN NULL ELSE gen_random_uuid() END,
            attempts = CASE WHEN $3 IS NULL AND $4 IS NULL THEN 7 ELSE 1 END
         WHERE id = $1",
    )
    .bind::<BigInt, _>(id)
    .bind::<Integer, _>(created)
    .bind::<diesel::sql_types::Nullable<Integer>, _>(sent)
    .bind::<diesel::sql_types::Nullable<Integer>, _>(refused)
    .execute(conn)
    .expect("dating an outbox row");
    id
}

fn outbox_ids(conn: &mut PgConnection) -> Vec<i64> {
    outbox::rows(conn)
        .expect("reading the outbox")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn outbox_purge_keeps_pending_rows_and_removes_old_sent_and_refused_ones() {
    let (_db, mut conn) = database();
    let pending_for_a_year = outbox_row(&mut conn, 365, None, None);
    let old_sent = outbox_row(&mut conn, 41, Some(40), None);
    let old_refused = outbox_row(&mut conn, 40, None, Some(40));
    // Enqueued long ago but sent only yesterday: its age counts from when it was sent.
    let recently_sent = outbox_row(&mut conn, 60, Some(1), None);
    let pending_today = outbox_row(&mut conn, 0, None, None);

    assert_eq!(
        outbox::purge(&mut conn, 30 * DAY, 100).expect("purge"),
        2,
        "rows {old_sent} and {old_refused}"
    );
    assert_eq!(
        outbox_ids(&mut conn),
        [pending_for_a_year, recently_sent, pending_today]
    );

    // Whatever the age asked for, pending rows stay.
    assert_eq!(
        outbox::purge(&mut conn, Duration::ZERO, 100).expect("purge"),
        1
    );
    assert_eq!(outbox_ids(&mut conn), [pending_for_a_year, pending_today]);
}

#[test]
fn outbox_purge_deletes_in_batches_each_committed_by_itself() {
    let (_db, mut conn) = database();
    for _ in 0..4 {
        outbox_row(&mut conn, 40, Some(40), None);
    }
    let pending = outbox_row(&mut conn, 40, None, None);
    log_deletes(&mut conn, "saga_outbox");

    assert!(matches!(
        outbox::purge(&mut conn, 30 * DAY, 0),
        Err(PurgeError::Batch(0))
    ));
    assert_eq!(outbox::purge(&mut conn, 30 * DAY, 2).expect("purge"), 4);

    let deletes = deletes(&mut conn);
    assert_eq!(
        deletes.iter().map(|d| d.1).collect::<Vec<_>>(),
        [2, 2, 0],
        "at most a batch per statement, until one comes back short"
    );
    assert_eq!(distinct(deletes.iter().map(|d| d.0)), 3);
    assert_eq!(outbox_ids(&mut conn), [pending]);
}

#[test]
fn install_adds_the_purge_indexes_to_an_existing_installation() {
    let db = TestDb::new(SCHEMA);
    let mut conn = PgConnection::establish(db.url()).expect("connecting to the test database");
    let indexes = |conn: &mut PgConnection| -> Vec<String> {
        let rows: Vec<Key> = sql_query(
            "SELECT indexname AS key FROM pg_indexes
             WHERE indexname IN ('saga_barrier_recorded_at', 'saga_outbox_done',
                                 'saga_initiations_recorded_at') ORDER BY 1",
        )
        .load(conn)
        .expect("reading pg_indexes");
        rows.into_iter().map(|r| r.key).collect()
    };
    assert!(
        indexes(&mut conn).is_empty(),
        "the tables of an older version"
    );

    for _ in 0..2 {
        barrier::install(&mut conn).expect("installing the barrier");
        initiator::install(&mut conn).expect("installing the initiator tables");
    }

    assert_eq!(
        indexes(&mut conn),
        [
            "saga_barrier_recorded_at",
            "saga_initiations_recorded_at",
            "saga_outbox_done"
        ]
    );
}

/// A marker as `run_local` (`committed`) or a check-back (`aborted`) writes it, `days` old.
fn marker(conn: &mut PgConnection, outcome: &str, days: i32) -> Uuid {
    let saga = Uuid::now_v7();
    sql_query(
        "INSERT INTO saga_initiations (saga_id, outcome, recorded_at)
         VALUES ($1, $2, now() - make_interval(days => $3))",
    )
    .bind::<SqlUuid, _>(saga)
    .bind::<Text, _>(outcome)
    .bind::<Integer, _>(days)
    .execute(conn)
    .expect("a marker");
    saga
}

fn markers(conn: &mut PgConnection) -> Vec<Uuid> {
    #[derive(QueryableByName)]
    struct Marker {
        #[diesel(sql_type = SqlUuid)]
        saga_id: Uuid,
    }
    let rows: Vec<Marker> = sql_query("SELECT saga_id FROM saga_initiations ORDER BY saga_id")
        .load(conn)
        .expect("reading the markers");
    rows.into_iter().map(|r| r.saga_id).collect()
}

#[test]
fn marker_purge_keeps_recent_and_locked_markers_and_refuses_an_age_below_the_floor() {
    let (db, mut conn) = database();
    let old_committed = marker(&mut conn, "committed", 40);
    let old_aborted = marker(&mut conn, "aborted", 45);
    let recent = marker(&mut conn, "committed", 2);
    // An old marker that an open transaction holds (a check-back deciding it): skipped, not waited for.
    let held = marker(&mut conn, "committed", 50);
    let mut holder = PgConnection::establish(db.url()).expect("a second connection");
    holder
        .begin_test_transaction()
        .expect("an open transaction");
    sql_query("SELECT 1 FROM saga_initiations WHERE saga_id = $1 FOR UPDATE")
        .bind::<SqlUuid, _>(held)
        .execute(&mut holder)
        .expect("locking the marker");

    let below = barrier::MIN_RETENTION - Duration::from_secs(1);
    assert!(matches!(
        half_message::purge(&mut conn, below, 100),
        Err(PurgeError::TooRecent { .. })
    ));
    assert!(matches!(
        half_message::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 0),
        Err(PurgeError::Batch(0))
    ));
    assert_eq!(markers(&mut conn).len(), 4, "nothing was deleted");

    assert_eq!(
        half_message::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 1).expect("purge"),
        2,
        "markers {old_committed} and {old_aborted}, one per batch"
    );
    let mut kept = vec![recent, held];
    kept.sort();
    assert_eq!(markers(&mut conn), kept);
    // Ended here, not by closing the connection: the server ends a closed session's transaction
    // on its own time, and the next purge could still find the marker locked.
    sql_query("ROLLBACK")
        .execute(&mut holder)
        .expect("ending the transaction");
    assert_eq!(
        half_message::purge(&mut conn, barrier::RECOMMENDED_RETENTION, 100).expect("purge"),
        1,
        "the held marker, once its transaction ended"
    );
    assert_eq!(markers(&mut conn), [recent]);
}
