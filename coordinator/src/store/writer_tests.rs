//! The batched write path against the real Postgres, each test in a database of its own that it drops
//! again.

use chrono::{SubsecRound, Utc};
use diesel::connection::SimpleConnection;
use serde_json::{json, Value};
use testkit::TestDb;
use uuid::Uuid;

use super::*;
use crate::outbox::{command_message, OutboxMessage};
use crate::saga::machine::{self, Context, Decision, Event};
use crate::saga::SagaState;
use crate::store::leases::Lease;
use crate::store::schema::outbox;
use crate::store::test_db::SCHEMA;
use crate::store::Queries;

/// A migrated database of its own with a writer's pool on it, dropped at the end (the pool first).
struct TestDatabase {
    pool: Pool,
    _db: TestDb,
}

/// The instance the tests write as; it holds every partition with epoch 1.
const INSTANCE: &str = "writer-test";

impl TestDatabase {
    fn new() -> TestDatabase {
        let db = TestDb::new(SCHEMA);
        let pool = crate::store::writer_pool(db.url(), 2).expect("pool");
        pool.get()
            .expect("connection")
            .batch_execute(&format!(
                "UPDATE partition_leases SET owner = '{INSTANCE}', epoch = 1, \
                 expires_at = now() + interval '1 hour'"
            ))
            .expect("leases taken");
        TestDatabase { pool, _db: db }
    }
}

/// The lease a write of `saga` proves: its partition, held by [`INSTANCE`] with epoch 1.
fn fence_of(saga: &Saga) -> Lease {
    Lease {
        partition: crate::partition::Partitions::default().of(saga.id),
        epoch: 1,
    }
}

/// A freshly started saga of three sequential steps, with timestamps Postgres keeps exactly.
fn started(key: Option<&str>) -> Persist {
    let definition = crate::submission::parse_submission(&json!({
        "name": "writer-test",
        "key": key,
        "steps": [
            {"name": "a", "participant": "p", "action": "do", "compensation": "undo"},
            {"name": "b", "participant": "p", "action": "do"},
            {"name": "c", "participant": "p", "action": "do"},
        ]
    }))
    .expect("a valid submission");
    let now = Utc::now().trunc_subsecs(6);
    let saga = Saga::new(Uuid::now_v7(), definition, None, now);
    let mut rng = rand::rng();
    let mut ctx = Context {
        now,
        rng: &mut rng,
        sending: Default::default(),
    };
    let Decision::Apply(start) = machine::handle(&saga, Event::Start, &mut ctx) else {
        panic!("a new saga starts");
    };
    let outbox = start
        .commands
        .iter()
        .map(|c| command_message(&start.saga, c, now))
        .collect();
    Persist {
        steps: (0..start.saga.steps.len()).collect(),
        fence: fence_of(&start.saga),
        saga: start.saga,
        log: start.log,
        outbox,
        is_new: true,
        state_before: SagaState::Running,
        bulk_action: None,
    }
}

/// A transition of a running saga that changes only its row (no step, event or command).
fn bare_change(saga: Saga) -> Persist {
    Persist {
        fence: fence_of(&saga),
        saga,
        steps: Vec::new(),
        log: Vec::new(),
        outbox: Vec::new(),
        is_new: false,
        state_before: SagaState::Running,
        bulk_action: None,
    }
}

/// Runs one batch exactly as a writer thread would, and collects the answers.
fn run_batch(
    pool: &Pool,
    persists: Vec<Persist>,
    forget: Vec<i64>,
) -> Vec<Result<Written, String>> {
    let (kept, answers) = commit_batch(pool, persists, forget);
    assert!(kept, "the connection stays with the writer");
    answers
}

/// Hands one batch to `commit` and collects the answers; `true` if the writer kept its connection.
fn commit_batch(
    pool: &Pool,
    persists: Vec<Persist>,
    forget: Vec<i64>,
) -> (bool, Vec<Result<Written, String>>) {
    let mut jobs = Vec::new();
    let mut answers = Vec::new();
    for persist in persists {
        let (done, answer) = oneshot::channel();
        jobs.push(Job {
            persist,
            queued: Instant::now(),
            done,
        });
        answers.push(answer);
    }
    let (done, forgotten) = oneshot::channel();
    let kept = commit(pool.get(), INSTANCE, jobs, vec![(forget, done)]);
    forgotten
        .blocking_recv()
        .expect("answered")
        .expect("confirmed outbox rows deleted");
    let answers = answers
        .into_iter()
        .map(|a| {
            a.blocking_recv()
                .expect("answered")
                .map_err(|e| e.to_string())
        })
        .collect();
    (kept.is_some(), answers)
}

fn saved(written: &Result<Written, String>) -> (i64, Vec<OutboxMessage>) {
    match written {
        Ok(Written::Saved { version, outbox }) => (*version, outbox.clone()),
        other => panic!("expected a saved transition, got {other:?}"),
    }
}

fn outbox_ids(pool: &Pool) -> Vec<i64> {
    let mut conn = pool.get().expect("connection");
    outbox::table
        .select(outbox::id)
        .order(outbox::id)
        .load(&mut conn)
        .expect("outbox rows")
}

#[test]
fn a_batch_commits_every_saga_but_the_stale_one_and_deletes_confirmed_rows() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());

    // Two new sagas and a duplicate of the first one's key, in one batch.
    let first = started(Some("k-1"));
    let second = started(None);
    let mut duplicate = started(Some("k-1"));
    duplicate.saga.definition = Arc::clone(&first.saga.definition);
    let answers = run_batch(
        &db.pool,
        vec![first.clone(), second.clone(), duplicate],
        Vec::new(),
    );
    let (first_version, first_outbox) = saved(&answers[0]);
    let (_, second_outbox) = saved(&answers[1]);
    match &answers[2] {
        Ok(Written::Duplicate(existing)) => assert_eq!(existing.id, first.saga.id),
        other => panic!("expected the duplicate to be refused, got {other:?}"),
    }
    assert_eq!(first_outbox.len(), 1);
    assert!(first_outbox[0].id > 0);
    assert_eq!(
        outbox_ids(&db.pool),
        vec![first_outbox[0].id, second_outbox[0].id]
    );
    assert_eq!(
        store.load(first.saga.id).expect("load"),
        Some(first.saga.clone())
    );

    // The first saga moves on (its step gets an output that is JSON null, another a timer and an
    // error); the second one is written with a stale version. Its first command was confirmed.
    let mut moved = first.saga.clone();
    moved.version = first_version;
    moved.updated_at = Utc::now().trunc_subsecs(6);
    moved.steps[0].output = Some(Value::Null);
    moved.steps[1].error = Some("slow".into());
    moved.steps[1].attempts = 2;
    let mut stale = second.saga.clone();
    stale.version = 7;
    stale.steps[0].attempts = 9;
    let answers = run_batch(
        &db.pool,
        vec![
            Persist {
                fence: fence_of(&moved.clone()),
                saga: moved.clone(),
                steps: vec![0, 1],
                log: first.log.clone(),
                outbox: first.outbox.clone(),
                is_new: false,
                state_before: SagaState::Running,
                bulk_action: None,
            },
            Persist {
                fence: fence_of(&stale),
                saga: stale,
                steps: vec![0],
                log: Vec::new(),
                outbox: Vec::new(),
                is_new: false,
                state_before: SagaState::Running,
                bulk_action: None,
            },
        ],
        vec![first_outbox[0].id],
    );
    let (version, outbox) = saved(&answers[0]);
    assert_eq!(version, first_version + 1);
    assert!(
        matches!(answers[1], Err(ref e) if e.contains("changed by another writer")),
        "{:?}",
        answers[1]
    );
    moved.version = version;
    assert_eq!(store.load(first.saga.id).expect("load"), Some(moved));
    assert_eq!(
        store.load(second.saga.id).expect("load"),
        Some(second.saga.clone()),
        "a stale write changes nothing"
    );
    assert_eq!(
        outbox_ids(&db.pool),
        vec![second_outbox[0].id, outbox[0].id]
    );
    assert_eq!(
        store.events(first.saga.id).expect("events").len(),
        2 * first.log.len()
    );
}

#[test]
fn the_prepared_batch_statement_keeps_writing_on_one_connection() {
    // Postgres switches a prepared statement to its generic plan after a few runs: the same
    // connection must keep writing correctly, empty parts (no new saga, no outbox row) included.
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let first = started(None);
    let answers = run_batch(&db.pool, vec![first.clone()], Vec::new());
    let (mut version, mut outbox) = saved(&answers[0]);
    let mut saga = first.saga.clone();
    for round in 1..=8u32 {
        saga.version = version;
        saga.updated_at = Utc::now().trunc_subsecs(6);
        saga.steps[0].attempts = round;
        saga.steps[2].output = Some(json!({ "round": round }));
        let commands = if round % 2 == 0 {
            first.outbox.clone()
        } else {
            Vec::new()
        };
        let forget = outbox.iter().map(|m| m.id).collect();
        let answers = run_batch(
            &db.pool,
            vec![Persist {
                fence: fence_of(&saga.clone()),
                saga: saga.clone(),
                steps: vec![0, 2],
                log: first.log.clone(),
                outbox: commands
                    .into_iter()
                    .map(|mut m| {
                        m.message_id = Uuid::new_v4();
                        m
                    })
                    .collect(),
                is_new: false,
                state_before: SagaState::Running,
                bulk_action: None,
            }],
            forget,
        );
        (version, outbox) = saved(&answers[0]);
        assert_eq!(version, i64::from(round) + first.saga.version);
    }
    saga.version = version;
    assert_eq!(store.load(saga.id).expect("load"), Some(saga.clone()));
    assert_eq!(
        outbox_ids(&db.pool),
        outbox.iter().map(|m| m.id).collect::<Vec<_>>(),
        "each round deleted the rows the round before inserted"
    );
    assert_eq!(
        store.events(saga.id).expect("events").len(),
        9 * first.log.len()
    );
}

/// A batch whose statement fails as a whole falls back to one transaction per transition: the saga
/// that made it fail gets the error, every other one is committed, and the confirmed outbox rows are
/// still deleted.
#[test]
fn a_saga_that_fails_the_batch_statement_fails_alone() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let earlier = started(None);
    let (_, earlier_outbox) = saved(&run_batch(&db.pool, vec![earlier], Vec::new())[0]);

    let (good, bad, also_good) = (started(None), started(None), started(None));
    // Stands in for whatever Postgres may refuse in one saga's rows.
    db.pool
        .get()
        .expect("connection")
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.saga_id = '{}' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_one BEFORE INSERT ON saga_events
                 FOR EACH ROW EXECUTE FUNCTION refuse_one();",
            bad.saga.id
        ))
        .expect("trigger");

    let (kept, answers) = commit_batch(
        &db.pool,
        vec![good.clone(), bad.clone(), also_good.clone()],
        vec![earlier_outbox[0].id],
    );
    assert!(
        !kept,
        "after a failed statement the writer takes a fresh connection"
    );
    let (_, good_outbox) = saved(&answers[0]);
    assert!(
        matches!(answers[1], Err(ref e) if e.contains("refused by the test")),
        "{:?}",
        answers[1]
    );
    let (_, also_good_outbox) = saved(&answers[2]);
    assert_eq!(store.load(good.saga.id).expect("load"), Some(good.saga));
    assert_eq!(store.load(bad.saga.id).expect("load"), None);
    assert_eq!(
        store.load(also_good.saga.id).expect("load"),
        Some(also_good.saga)
    );
    assert_eq!(
        outbox_ids(&db.pool),
        vec![good_outbox[0].id, also_good_outbox[0].id],
        "the confirmed row is gone, the bad saga left none"
    );
}

/// Two transitions of one saga in one batch (actors wait for their writes, so only a bug would do
/// this) are written in order, in one transaction, rather than racing in one statement.
#[test]
fn two_transitions_of_one_saga_in_a_batch_are_written_in_order() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let first = started(None);
    let mut moved = first.saga.clone();
    moved.updated_at = Utc::now().trunc_subsecs(6);
    moved.steps[0].attempts = 2;
    let answers = run_batch(
        &db.pool,
        vec![
            first.clone(),
            Persist {
                fence: fence_of(&moved.clone()),
                saga: moved.clone(),
                steps: vec![0],
                log: first.log.clone(),
                outbox: Vec::new(),
                is_new: false,
                state_before: SagaState::Running,
                bulk_action: None,
            },
        ],
        Vec::new(),
    );
    let (created, _) = saved(&answers[0]);
    let (version, _) = saved(&answers[1]);
    assert_eq!(version, created + 1);
    moved.version = version;
    assert_eq!(store.load(moved.id).expect("load"), Some(moved.clone()));
    assert_eq!(
        store.events(moved.id).expect("events").len(),
        2 * first.log.len()
    );
}

/// A started saga whose partition differs from `other`'s.
fn started_elsewhere(other: &Persist) -> Persist {
    loop {
        let p = started(None);
        if p.fence.partition != other.fence.partition {
            return p;
        }
    }
}

#[test]
fn a_write_under_a_lease_another_instance_took_is_refused_and_the_rest_of_the_batch_commits() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let lost = started(None);
    let kept = started_elsewhere(&lost);
    db.pool
        .get()
        .expect("connection")
        .batch_execute(&format!(
            "UPDATE partition_leases SET owner = 'other', epoch = 2 WHERE partition = {}",
            lost.fence.partition
        ))
        .expect("taken over");

    let answers = run_batch(&db.pool, vec![lost.clone(), kept.clone()], Vec::new());
    assert_eq!(
        answers[0].as_ref().err().map(String::as_str),
        Some(
            StoreError::Fenced(lost.fence.partition)
                .to_string()
                .as_str()
        )
    );
    saved(&answers[1]);
    assert_eq!(store.load(lost.saga.id).expect("load"), None);
    assert!(store.load(kept.saga.id).expect("load").is_some());

    // Every entry of the kept saga's log says under which epoch it was written.
    let epochs: Vec<Option<i64>> = crate::store::schema::saga_events::table
        .filter(crate::store::schema::saga_events::saga_id.eq(kept.saga.id))
        .select(crate::store::schema::saga_events::epoch)
        .load(&mut db.pool.get().expect("connection"))
        .expect("events");
    assert!(!epochs.is_empty());
    assert!(epochs.iter().all(|e| *e == Some(1)), "{epochs:?}");

    // An expired lease fences as well, even if nobody took it yet.
    let late = started_elsewhere(&lost);
    db.pool
        .get()
        .expect("connection")
        .batch_execute(&format!(
            "UPDATE partition_leases SET expires_at = now() - interval '1 second' \
             WHERE partition = {}",
            late.fence.partition
        ))
        .expect("expired");
    let answers = run_batch(&db.pool, vec![late.clone()], Vec::new());
    assert!(answers[0].is_err(), "{:?}", answers[0].as_ref().ok());
}

#[test]
fn a_takeover_waits_for_a_write_under_way_and_then_fences_it() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let partition: i32 = 3;
    // A write under way: its statement holds the fence's shared lock until it commits.
    let mut writing = db.pool.get().expect("connection");
    writing.batch_execute("BEGIN").expect("begin");
    writing
        .batch_execute(&format!(
            "SELECT * FROM saga_fence('{INSTANCE}', ARRAY[{partition}], ARRAY[1::bigint])"
        ))
        .expect("fenced");
    // Meanwhile the lease expires and another instance tries to take it.
    db.pool
        .get()
        .expect("connection")
        .batch_execute(&format!(
            "UPDATE partition_leases SET expires_at = now() - interval '1 second' \
             WHERE partition = {partition}"
        ))
        .expect("expired");
    let (taken_tx, taken) = std::sync::mpsc::channel();
    let taker = std::thread::spawn(move || {
        let taken = store.take_leases("other", &[], 64, std::time::Duration::from_secs(60));
        let _ = taken_tx.send(taken);
    });
    assert!(
        taken
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "the takeover must wait for the write under way"
    );
    writing.batch_execute("COMMIT").expect("commit");
    let taken = taken
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the takeover goes on once the write is done")
        .expect("taken");
    taker.join().expect("taker");
    let lease = taken
        .iter()
        .find(|l| l.partition == partition as u32)
        .expect("the expired partition is taken");
    assert_eq!(lease.epoch, 2);
    // The old owner's next write is fenced.
    let mut conn = db.pool.get().expect("connection");
    #[derive(diesel::QueryableByName)]
    struct Live {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        #[allow(dead_code)]
        f: i32,
    }
    let live: Vec<Live> = diesel::sql_query(format!(
        "SELECT f FROM saga_fence('{INSTANCE}', ARRAY[{partition}], ARRAY[1::bigint]) AS f"
    ))
    .load(&mut conn)
    .expect("fence");
    assert!(live.is_empty());
}

#[test]
fn extreme_numbers_in_a_payload_read_back_as_written() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let mut persist = started(None);
    // Postgres keeps numbers as exact decimals and prints f64::MAX with all its 309 digits, which
    // a best-effort float parser rounds past f64::MAX: the saga could then no longer be read.
    let extremes = json!([
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        -2105755884560396.8
    ]);
    std::sync::Arc::make_mut(&mut persist.saga.definition).payload = extremes.clone();
    let id = persist.saga.id;
    let answers = run_batch(&db.pool, vec![persist], vec![]);
    saved(&answers[0]);
    let loaded = store.load(id).expect("readable").expect("stored");
    assert_eq!(loaded.definition.payload, extremes);
}

/// A bulk action's transition marks its saga `applied` in the same statement, and only if the
/// transition is written: a stale one leaves the saga to do.
#[test]
fn a_bulk_actions_transition_marks_its_saga_applied_only_when_written() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let first = started(None);
    let second = started(None);
    let answers = run_batch(&db.pool, vec![first.clone(), second.clone()], Vec::new());
    let (first_version, _) = saved(&answers[0]);
    let new = crate::store::bulk_actions::NewBulkAction {
        id: Uuid::now_v7(),
        action: "pause".into(),
        note: None,
        states: vec!["running".into()],
        name: Some("writer-test".into()),
        filter: json!({"state": ["running"], "name": "writer-test"}),
    };
    let created = store.create_bulk_action(&new).expect("created");
    assert_eq!((created.total, created.pending()), (2, 2));

    let mut paused = first.saga.clone();
    paused.version = first_version;
    let mut stale = second.saga.clone();
    stale.version = 7;
    let change = |saga: Saga| Persist {
        bulk_action: Some(new.id),
        ..bare_change(saga)
    };
    let answers = run_batch(&db.pool, vec![change(paused), change(stale)], Vec::new());
    saved(&answers[0]);
    assert!(answers[1].is_err(), "the stale transition is refused");

    let record = store.bulk_action(new.id).expect("read").expect("exists");
    assert_eq!((record.applied, record.pending()), (1, 1), "{record:?}");
    let pending = store
        .bulk_action_sagas(new.id, Some("pending"), None, 10)
        .expect("sagas");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].saga_id, second.saga.id);

    // Settling never overwrites what the transition recorded.
    store
        .settle_bulk_sagas(
            new.id,
            &[
                (first.saga.id, "unchanged", None),
                (second.saga.id, "skipped", Some("gone".into())),
            ],
        )
        .expect("settled");
    let record = store.bulk_action(new.id).expect("read").expect("exists");
    assert_eq!(
        (record.applied, record.unchanged, record.skipped),
        (1, 0, 1)
    );
    assert_eq!(store.finish_bulk_actions().expect("finished"), vec![new.id]);
    assert!(
        !store.cancel_bulk_action(new.id).expect("cancel"),
        "done already"
    );
}

#[test]
fn the_batch_counts_the_states_and_minutes_it_writes() {
    let db = TestDatabase::new();
    let store = Queries::new(db.pool.clone());
    let first = started(Some("counted"));
    let second = started(None);
    let answers = run_batch(
        &db.pool,
        vec![first.clone(), started(Some("counted")), second.clone()],
        Vec::new(),
    );
    let (first_version, _) = saved(&answers[0]);
    assert!(matches!(answers[1], Ok(Written::Duplicate(_))));
    let (second_version, _) = saved(&answers[2]);

    // The first commits (a final state); the second's transition is stale and writes nothing.
    let mut committed = first.saga.clone();
    committed.version = first_version;
    committed.state = SagaState::Committed;
    committed.updated_at = Utc::now().trunc_subsecs(6);
    let mut stale = second.saga.clone();
    stale.version = second_version + 5;
    stale.state = SagaState::Compensating;
    let answers = run_batch(
        &db.pool,
        vec![bare_change(committed), bare_change(stale)],
        Vec::new(),
    );
    saved(&answers[0]);
    assert!(answers[1].is_err(), "the stale transition is refused");

    for folded in [false, true] {
        if folded {
            assert!(store.fold_counts().expect("folded") > 0);
        }
        let mut counts = store.count_by_state().expect("counts");
        counts.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(
            counts,
            vec![(SagaState::Committed, 1), (SagaState::Running, 1)],
            "folded: {folded}"
        );
        let minutes = store.throughput(5, Utc::now()).expect("per minute");
        let started: i64 = minutes.iter().map(|m| m.started).sum();
        let finished: i64 = minutes.iter().map(|m| m.finished).sum();
        assert_eq!((started, finished), (2, 1), "folded: {folded}: {minutes:?}");
    }
}
