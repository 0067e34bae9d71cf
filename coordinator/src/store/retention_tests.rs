//! The purge statement against the real Postgres, each test in a database of its own: what it
//! takes, what it leaves, and that it takes only the caller's partitions.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Text};

use super::*;
use crate::store::test_db::Db;

const TTL: Duration = Duration::from_secs(60);
const DAY: chrono::Duration = chrono::Duration::days(1);

/// A database of four partitions: `me` leases 0 and 1, `other` 2 and 3.
fn db() -> Db {
    let db = Db::new(4);
    let q = db.queries();
    q.settle_partitions(Some(4)).expect("four partitions");
    let mine = q.take_leases("me", &[], 2, TTL).expect("taken");
    assert_eq!(mine.len(), 2);
    let theirs = q.take_leases("other", &[], 2, TTL).expect("taken");
    assert_eq!(theirs.len(), 2);
    db
}

impl Db {
    fn partition_of(&self, owner: &str) -> i32 {
        #[derive(QueryableByName)]
        struct P {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            partition: i32,
        }
        let rows: Vec<P> = diesel::sql_query(
            "SELECT partition FROM partition_leases WHERE owner = $1 ORDER BY partition LIMIT 1",
        )
        .bind::<Text, _>(owner)
        .load(&mut self.pool.get().expect("connection"))
        .expect("a lease");
        rows[0].partition
    }

    /// A saga created at `created` in `state`, last written at `updated` (its finish, if final),
    /// in `partition`, with two steps, three events, an alert and an outbox row.
    fn saga(
        &self,
        state: &str,
        created: DateTime<Utc>,
        updated: DateTime<Utc>,
        partition: i32,
    ) -> Uuid {
        let ms = u64::try_from(created.timestamp_millis()).expect("after 1970");
        let mut bytes = *Uuid::now_v7().as_bytes();
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        let id = Uuid::from_bytes(bytes);
        self.run(&format!(
            "INSERT INTO sagas (id, name, definition, state, created_at, updated_at, partition,
                                step_terms)
             VALUES ('{id}', 'order', '{{}}', '{state}', '{created}', '{updated}', {partition},
                     '[]');
             INSERT INTO saga_state_count_changes VALUES ('{state}', 1);
             INSERT INTO saga_steps (saga_id, position, name, state, attempts,
                 compensation_attempts, compensation_attempt_limit, refused)
             VALUES ('{id}', 0, 'reserve', 'done', 1, 0, 3, false),
                    ('{id}', 1, 'charge', 'done', 1, 0, 3, false);
             INSERT INTO saga_events (saga_id, at, kind, detail)
             VALUES ('{id}', '{created}', 'submitted', '{{}}'),
                    ('{id}', '{created}', 'dispatched', '{{}}'),
                    ('{id}', '{updated}', 'finished', '{{}}');
             INSERT INTO saga_alerts (saga_id, reason) VALUES ('{id}', 'stuck');
             INSERT INTO outbox (saga_id, message_id, participant, kind, body, created_at)
             VALUES ('{id}', gen_random_uuid(), 'shop', 'action', '\\x00', '{updated}');",
            created = created.to_rfc3339(),
            updated = updated.to_rfc3339(),
        ));
        id
    }

    /// Rows left in each table for `id`: sagas, steps, events, alerts, outbox.
    fn rows_of(&self, id: Uuid) -> [i64; 5] {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.pool.get().expect("connection");
        [
            "sagas",
            "saga_steps",
            "saga_events",
            "saga_alerts",
            "outbox",
        ]
        .map(|table| {
            let column = if table == "sagas" { "id" } else { "saga_id" };
            let rows: Vec<N> = diesel::sql_query(format!(
                "SELECT count(*) AS n FROM {table} WHERE {column} = '{id}'"
            ))
            .load(&mut conn)
            .expect("a count");
            rows[0].n
        })
    }
}

#[test]
fn only_final_sagas_of_the_state_past_the_cutoff_go_with_every_row_of_theirs() {
    let db = db();
    let q = db.queries();
    let now = Utc::now();
    let (old, mine) = (now - DAY * 40, db.partition_of("me"));
    let cutoff = now - DAY * 30;
    let doomed: Vec<Uuid> = (0..3)
        .map(|i| db.saga("committed", old, old + chrono::Duration::seconds(i), mine))
        .collect();
    let kept = [
        // Finished after the cutoff.
        db.saga("committed", now - DAY * 2, now - DAY, mine),
        // Created long ago, finished just now (it became final while the purge ran).
        db.saga("committed", old, now, mine),
        // Another final state, which has a policy of its own.
        db.saga("compensated", old, old, mine),
        // Never: it waits for a person, or is still running.
        db.saga("failed", old, old, mine),
        db.saga("running", old, old, mine),
        db.saga("compensating", old, old, mine),
        db.saga("prepared", old, old, mine),
        // Another coordinator's partition: its owner purges it.
        db.saga("committed", old, old, db.partition_of("other")),
    ];
    assert_eq!(
        q.purge_finished("me", "committed", cutoff, 100)
            .expect("purged"),
        3
    );
    for id in &doomed {
        assert_eq!(
            db.rows_of(*id),
            [0, 0, 0, 0, 1],
            "every row of {id} went but its command"
        );
    }
    for id in &kept {
        assert_eq!(db.rows_of(*id), [1, 2, 3, 1, 1], "{id} is whole");
    }
    // The commands they left go in a statement of their own: those of living sagas stay.
    assert_eq!(q.purge_orphaned_commands().expect("purged"), 3);
    for id in &doomed {
        assert_eq!(db.rows_of(*id), [0; 5], "every row of {id} went");
    }
    for id in &kept {
        assert_eq!(db.rows_of(*id), [1, 2, 3, 1, 1], "{id} is whole");
    }
    let committed = q.count_by_state().expect("counts");
    assert!(
        committed.contains(&(crate::saga::SagaState::Committed, 3)),
        "the purge counted what it removed: {committed:?}"
    );
    assert_eq!(
        q.purge_finished("me", "committed", cutoff, 100)
            .expect("purged"),
        0,
        "nothing more"
    );
}

#[test]
fn a_batch_takes_the_oldest_first_and_no_more_than_asked() {
    let db = db();
    let q = db.queries();
    let now = Utc::now();
    let mine = db.partition_of("me");
    let sagas: Vec<Uuid> = (0..5)
        .map(|i| {
            let at = now - DAY * (50 - i);
            db.saga("aborted", at, at, mine)
        })
        .collect();
    let cutoff = now - DAY * 30;
    assert_eq!(
        q.purge_finished("me", "aborted", cutoff, 2)
            .expect("purged"),
        2
    );
    assert_eq!(db.rows_of(sagas[0])[0], 0);
    assert_eq!(db.rows_of(sagas[1])[0], 0);
    assert_eq!(
        db.rows_of(sagas[2])[0],
        1,
        "the third waits for the next batch"
    );
    assert_eq!(
        q.purge_finished("me", "aborted", cutoff, 2)
            .expect("purged"),
        2
    );
    assert_eq!(
        q.purge_finished("me", "aborted", cutoff, 2)
            .expect("purged"),
        1
    );
    assert_eq!(
        q.purge_finished("me", "aborted", cutoff, 2)
            .expect("purged"),
        0
    );
}

#[test]
fn a_coordinator_whose_lease_expired_purges_nothing() {
    let db = db();
    let q = db.queries();
    let now = Utc::now();
    let old = now - DAY * 40;
    let id = db.saga("committed", old, old, db.partition_of("me"));
    db.run(
        "UPDATE partition_leases SET expires_at = now() - interval '1 second' WHERE owner = 'me'",
    );
    assert_eq!(
        q.purge_finished("me", "committed", now - DAY * 30, 100)
            .expect("purged"),
        0
    );
    assert_eq!(db.rows_of(id)[0], 1);
}

#[test]
fn every_saga_created_by_then_has_a_smaller_id() {
    let at = Utc::now();
    let bound = first_id_after(at);
    let v7_at = |t: DateTime<Utc>| {
        Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(t.timestamp()).expect("after 1970"),
            t.timestamp_subsec_nanos(),
        ))
    };
    assert!(v7_at(at) < bound);
    assert!(v7_at(at + chrono::Duration::milliseconds(2)) > bound);
}
