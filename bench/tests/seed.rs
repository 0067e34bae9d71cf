//! `bench seed` writes what the coordinator would have: sagas it can read back, each with the steps
//! and event log of its outcome, spread over the days asked, in the partitions its id says.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Text};

use bench::seed::SeedOptions;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    sagas: i64,
    #[diesel(sql_type = BigInt)]
    steps: i64,
    #[diesel(sql_type = BigInt)]
    events: i64,
    #[diesel(sql_type = BigInt)]
    misplaced: i64,
    #[diesel(sql_type = BigInt)]
    out_of_range: i64,
}

#[derive(QueryableByName)]
struct Checks {
    /// States whose count differs from the table's.
    #[diesel(sql_type = BigInt)]
    miscounted: i64,
    /// Sagas the search by participant and step would not find.
    #[diesel(sql_type = BigInt)]
    unsearchable: i64,
}

#[derive(QueryableByName)]
struct Definition {
    #[diesel(sql_type = Jsonb)]
    definition: serde_json::Value,
}

#[test]
fn seeded_sagas_are_whole_and_readable() {
    let name = format!(
        "bench_seed_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let server = "postgres://postgres@127.0.0.1:5432";
    let url = format!("{server}/{name}?sslmode=disable");
    let opts = SeedOptions {
        sagas: 3000,
        days: 30,
        database_url: url.clone(),
        chunk: 1000,
        coordinator_bin: Some(env!("CARGO_BIN_EXE_bench").into()),
    };
    bench::seed::run(&opts).expect("seeded");
    let mut conn = PgConnection::establish(&url).expect("connect");
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT s.state, count(*) AS sagas,
                sum((SELECT count(*) FROM saga_steps t WHERE t.saga_id = s.id))::bigint AS steps,
                sum((SELECT count(*) FROM saga_events e WHERE e.saga_id = s.id))::bigint AS events,
                count(*) FILTER (WHERE s.partition <>
                    (get_byte(uuid_send(s.id), 14) * 256 + get_byte(uuid_send(s.id), 15)) % 64) AS misplaced,
                count(*) FILTER (WHERE s.created_at < now() - interval '30 days'
                                    OR s.finished_at IS NULL AND s.state <> 'failed') AS out_of_range
         FROM sagas s GROUP BY s.state ORDER BY s.state",
    )
    .load(&mut conn)
    .expect("the counts");
    let total: i64 = rows.iter().map(|r| r.sagas).sum();
    assert_eq!(total, 3000);
    for r in &rows {
        assert_eq!(r.steps, 3 * r.sagas, "three steps per {} saga", r.state);
        let log = match r.state.as_str() {
            "committed" => 8,
            "compensated" => 9,
            "aborted" => 2,
            "failed" => 9,
            other => panic!("unexpected state {other}"),
        };
        assert_eq!(r.events, log * r.sagas, "the log of a {} saga", r.state);
        assert_eq!(r.misplaced, 0, "partitions follow the ids");
        assert_eq!(r.out_of_range, 0);
    }
    assert!(rows
        .iter()
        .any(|r| r.state == "committed" && r.sagas > 2000));
    let definition: Definition = diesel::sql_query("SELECT definition FROM sagas LIMIT 1")
        .get_result(&mut conn)
        .expect("a definition");
    let parsed: coordinator::saga::SagaDefinition =
        serde_json::from_value(definition.definition).expect("the coordinator reads it back");
    assert_eq!(parsed.steps.len(), 3);
    // Each saga carries its own order, as a shop's would: rows of the size real ones have.
    assert_eq!(
        parsed.payload["order"].as_str(),
        parsed.key.as_deref(),
        "{:#}",
        parsed.payload
    );
    assert_eq!(parsed.payload["lines"].as_array().map(Vec::len), Some(2));
    // The overview's counts and the search's terms, which the seed writes as the coordinator would.
    let checks: Checks = diesel::sql_query(
        "SELECT (SELECT count(*) FROM (SELECT state, count(*) AS sagas FROM sagas GROUP BY state) a
                 FULL JOIN (SELECT state, sum(sagas)::bigint AS sagas
                            FROM (SELECT state, sagas FROM saga_state_counts
                                  UNION ALL SELECT state, sagas FROM saga_state_count_changes) c
                            GROUP BY state) b USING (state)
                 WHERE a.sagas IS DISTINCT FROM b.sagas) AS miscounted,
                (SELECT count(*) FROM sagas
                 WHERE NOT step_terms @> '[\"participant:payments\", \"step:ship\"]') AS unsearchable",
    )
    .get_result(&mut conn)
    .expect("the checks");
    assert_eq!((checks.miscounted, checks.unsearchable), (0, 0));
    drop(conn);
    let mut admin =
        PgConnection::establish(&format!("{server}/postgres?sslmode=disable")).expect("connect");
    diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .expect("dropped");
}
