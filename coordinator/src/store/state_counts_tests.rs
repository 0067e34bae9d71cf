//! The counts per state and per minute against the real Postgres: exact folded or not, and two
//! folds racing writers count nothing twice. (That the batch statement counts what it writes is
//! `writer_tests.rs`; that a purge does, `retention_tests.rs`.)

use std::collections::BTreeMap;

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;

use super::*;
use crate::store::test_db::Db;

fn db() -> Db {
    Db::new(8)
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Inserts `n` sagas in `state` and appends their counts, in one statement, as a writer does.
fn insert_counted(n: usize, state: &str) -> String {
    format!(
        "WITH new_sagas AS (
             INSERT INTO sagas (id, name, definition, state, created_at, updated_at, partition,
                                step_terms)
             SELECT gen_random_uuid(), 'order', '{{}}', '{state}', now(), now(), 0, '[]'
             FROM generate_series(1, {n})
             RETURNING state, created_at
         ), states AS (
             INSERT INTO saga_state_count_changes SELECT state, count(*) FROM new_sagas GROUP BY state
         )
         INSERT INTO saga_minute_count_changes
         SELECT date_trunc('minute', created_at, 'UTC'), count(*), 0 FROM new_sagas GROUP BY 1"
    )
}

/// Moves one saga from `from` to `to` and counts it, in one statement, as a writer does.
fn move_counted(from: &str, to: &str) -> String {
    format!(
        "WITH moved AS (
             UPDATE sagas SET state = '{to}'
             WHERE id = (SELECT id FROM sagas WHERE state = '{from}' LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING state
         )
         INSERT INTO saga_state_count_changes
         SELECT state, 1 FROM moved UNION ALL SELECT '{from}', -1 FROM moved"
    )
}

impl Db {
    /// `n` sagas in `state`, in one statement that counts them as every writer must.
    fn insert(&self, n: usize, state: &str) {
        self.run(&insert_counted(n, state));
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

    /// Changes not yet folded, of states and minutes.
    fn unfolded(&self) -> i64 {
        let rows: Vec<N> = diesel::sql_query(
            "SELECT (SELECT count(*) FROM saga_state_count_changes)
                    + (SELECT count(*) FROM saga_minute_count_changes) AS n",
        )
        .load(&mut self.pool.get().expect("connection"))
        .expect("a count");
        rows[0].n
    }
}

#[test]
fn counts_are_exact_folded_or_not_and_old_minutes_are_forgotten() {
    let db = db();
    let q = db.queries();
    assert!(db.counted().is_empty());

    db.insert(5, "running");
    db.insert(2, "failed");
    assert_eq!(db.counted(), db.actual());
    assert!(q.fold_counts().expect("folded") > 0);
    assert_eq!(db.unfolded(), 0);
    assert_eq!(db.counted(), db.actual());
    db.insert(1, "running");
    assert_eq!(db.counted(), db.actual(), "folded plus unfolded");

    let minutes = q.throughput(3, chrono::Utc::now()).expect("per minute");
    assert_eq!(minutes.len(), 3, "every minute, zeros included");
    assert_eq!(minutes.iter().map(|m| m.started).sum::<i64>(), 8);

    // A change for a minute older than the counts keep is dropped by the fold, and so is an old
    // folded minute.
    db.run(
        "INSERT INTO saga_minute_count_changes VALUES (date_trunc('minute', now()) - interval '3 days', 4, 4);
         INSERT INTO saga_minute_counts VALUES (date_trunc('minute', now()) - interval '4 days', 1, 1);",
    );
    q.fold_counts().expect("folded");
    let old: Vec<N> = diesel::sql_query(
        "SELECT count(*) AS n FROM saga_minute_counts WHERE minute < now() - interval '2 days'",
    )
    .load(&mut db.pool.get().expect("connection"))
    .expect("a count");
    assert_eq!(old[0].n, 0);
    assert_eq!(db.unfolded(), 0);
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
                    conn.batch_execute(&insert_counted(3, state))
                        .expect("written");
                    conn.batch_execute(&move_counted(state, "aborted"))
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
                    q.fold_counts().expect("folded");
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(folders) {
        t.join().expect("no panic");
    }
    assert_eq!(db.counted(), db.actual());
    db.queries().fold_counts().expect("folded");
    assert_eq!(db.unfolded(), 0);
    assert_eq!(db.counted(), db.actual());
    assert_eq!(db.actual().values().sum::<i64>(), 3 * 40 * 3);
}
