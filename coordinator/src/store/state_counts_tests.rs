//! The counts per state against the real Postgres: they follow every kind of write, folded or not,
//! and two folds racing writers count nothing twice.

use std::collections::BTreeMap;

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;

use super::*;
use crate::store::test_db::Db;

fn db() -> Db {
    Db::new(8)
}

impl Db {
    /// `n` sagas in `state`, in one statement.
    fn insert(&self, n: usize, state: &str) {
        self.run(&format!(
            "INSERT INTO sagas (id, name, definition, state, created_at, updated_at, partition)
             SELECT gen_random_uuid(), 'order', '{{}}', '{state}', now(), now(), 0
             FROM generate_series(1, {n})"
        ));
    }

    /// What the counts say, as a map.
    fn counted(&self) -> BTreeMap<String, i64> {
        self.queries()
            .count_by_state()
            .expect("counts")
            .into_iter()
            .map(|(s, n)| (s.as_str().to_owned(), n))
            .collect()
    }

    /// What counting the table says.
    fn actual(&self) -> BTreeMap<String, i64> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            state: String,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT state, count(*) AS n FROM sagas GROUP BY state")
                .load(&mut self.pool.get().expect("connection"))
                .expect("a count");
        rows.into_iter().map(|r| (r.state, r.n)).collect()
    }

    fn unfolded(&self) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let rows: Vec<N> = diesel::sql_query("SELECT count(*) AS n FROM saga_state_count_changes")
            .load(&mut self.pool.get().expect("connection"))
            .expect("a count");
        rows[0].n
    }
}

#[test]
fn counts_follow_inserts_state_changes_and_deletes_folded_or_not() {
    let db = db();
    let q = db.queries();
    assert!(db.counted().is_empty());

    db.insert(5, "running");
    db.insert(2, "failed");
    assert_eq!(db.counted(), db.actual());

    // One statement that changes some states and leaves others: only net changes are recorded.
    db.run(
        "UPDATE sagas SET state = CASE WHEN ctid = (SELECT min(ctid) FROM sagas WHERE state = 'running')
                                       THEN 'committed' ELSE state END,
                          updated_at = now()",
    );
    assert_eq!(db.counted(), db.actual());
    q.fold_state_counts().expect("folded");
    assert_eq!(db.unfolded(), 0);
    assert_eq!(db.counted(), db.actual());

    // The writer's shape: one statement of data-modifying CTEs that inserts and updates sagas.
    db.run(
        "WITH new_sagas AS (
             INSERT INTO sagas (id, name, definition, state, created_at, updated_at, partition)
             VALUES (gen_random_uuid(), 'order', '{}', 'running', now(), now(), 1) RETURNING id
         ), changed AS (
             UPDATE sagas SET state = 'compensating'
             WHERE id = (SELECT id FROM sagas WHERE state = 'running' ORDER BY id LIMIT 1)
             RETURNING id
         )
         SELECT id FROM new_sagas UNION ALL SELECT id FROM changed",
    );
    assert_eq!(db.counted(), db.actual());

    db.run("DELETE FROM sagas WHERE state = 'failed'");
    assert!(
        !db.counted().contains_key("failed"),
        "a state with none is left out"
    );
    assert_eq!(db.counted(), db.actual());
    q.fold_state_counts().expect("folded");
    assert_eq!(db.counted(), db.actual());

    db.run("TRUNCATE sagas CASCADE");
    assert!(db.counted().is_empty());
}

#[test]
fn folds_racing_each_other_and_writers_count_every_change_once() {
    let db = db();
    let writers: Vec<_> = ["running", "committed", "compensated"]
        .into_iter()
        .map(|state| {
            let pool = db.pool.clone();
            std::thread::spawn(move || {
                let mut conn = pool.get().expect("connection");
                for _ in 0..40 {
                    conn.batch_execute(&format!(
                        "INSERT INTO sagas (id, name, definition, state, created_at, updated_at,
                                            partition)
                         SELECT gen_random_uuid(), 'order', '{{}}', '{state}', now(), now(), 0
                         FROM generate_series(1, 3);
                         UPDATE sagas SET state = 'aborted'
                         WHERE id = (SELECT id FROM sagas WHERE state = '{state}' LIMIT 1)"
                    ))
                    .expect("written");
                }
            })
        })
        .collect();
    let folders: Vec<_> = (0..2)
        .map(|_| {
            let q = db.queries();
            std::thread::spawn(move || {
                for _ in 0..60 {
                    q.fold_state_counts().expect("folded");
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(folders) {
        t.join().expect("no panic");
    }
    assert_eq!(db.counted(), db.actual());
    db.queries().fold_state_counts().expect("folded");
    assert_eq!(db.unfolded(), 0);
    assert_eq!(db.counted(), db.actual());
    assert_eq!(db.actual().values().sum::<i64>(), 3 * 40 * 3);
}
