//! `bench seed`: fills a coordinator database with a year of history, for measuring what history
//! costs (issue 15). The sagas are three-step orders, each carrying its order as payload, in a
//! shop's mix of outcomes, created at random over `--days`, each with the steps and event log the
//! coordinator would have written for that outcome. Postgres generates the rows itself (`INSERT ...
//! SELECT` over `generate_series`, in chunks), so ten million sagas take minutes and no rows cross
//! the wire.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Jsonb, Text};
use serde_json::json;

use crate::target::RUN_AS_COORDINATOR;

/// Fill a database with history.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench seed")]
pub struct SeedOptions {
    /// Sagas to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub sagas: i64,

    /// Created times spread over this many days before now.
    #[arg(long, default_value_t = 365)]
    pub days: i64,

    /// The coordinator database to fill (created and migrated if needed).
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/saga_seed?sslmode=disable"
    )]
    pub database_url: String,

    /// Sagas per transaction.
    #[arg(long, default_value_t = 100_000)]
    pub chunk: i64,

    /// The coordinator binary that migrates the database (default: this binary acting as one).
    #[arg(long)]
    pub coordinator_bin: Option<PathBuf>,
}

/// The mix of outcomes: cumulative shares of committed, compensated, aborted; the rest failed.
const MIX: [(&str, f64); 4] = [
    ("committed", 0.938),
    ("compensated", 0.988),
    ("aborted", 0.999),
    ("failed", 1.0),
];

/// A step of an outcome: (outcome, position, name, state, attempts, compensation attempts, error).
type StepScript = (
    &'static str,
    i32,
    &'static str,
    &'static str,
    i32,
    i32,
    Option<&'static str>,
);
/// An event of an outcome's log: (outcome, kind, step, attempt, detail).
type EventScript = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<i32>,
    serde_json::Value,
);

/// Each outcome's steps.
const STEPS: &[StepScript] = &[
    ("committed", 0, "reserve", "succeeded", 1, 0, None),
    ("committed", 1, "charge", "succeeded", 1, 0, None),
    ("committed", 2, "ship", "succeeded", 1, 0, None),
    ("compensated", 0, "reserve", "compensated", 1, 1, None),
    (
        "compensated",
        1,
        "charge",
        "failed",
        3,
        0,
        Some("card declined"),
    ),
    ("compensated", 2, "ship", "pending", 0, 0, None),
    ("aborted", 0, "reserve", "pending", 0, 0, None),
    ("aborted", 1, "charge", "pending", 0, 0, None),
    ("aborted", 2, "ship", "pending", 0, 0, None),
    (
        "failed",
        0,
        "reserve",
        "compensation_failed",
        1,
        10,
        Some("the warehouse is gone"),
    ),
    ("failed", 1, "charge", "failed", 3, 0, Some("card declined")),
    ("failed", 2, "ship", "pending", 0, 0, None),
];

/// Each outcome's event log, in order.
fn events() -> Vec<EventScript> {
    let action = |outcome: &str| json!({"kind": "action", "outcome": outcome, "error": null});
    let declined = json!({"kind": "action", "outcome": "failure", "error": "card declined"});
    let mut log = vec![
        ("committed", "started", None, None, json!({})),
        (
            "committed",
            "dispatched",
            Some("reserve"),
            Some(1),
            json!({"kind": "action"}),
        ),
        (
            "committed",
            "reply",
            Some("reserve"),
            Some(1),
            action("success"),
        ),
        (
            "committed",
            "dispatched",
            Some("charge"),
            Some(1),
            json!({"kind": "action"}),
        ),
        (
            "committed",
            "reply",
            Some("charge"),
            Some(1),
            action("success"),
        ),
        (
            "committed",
            "dispatched",
            Some("ship"),
            Some(1),
            json!({"kind": "action"}),
        ),
        (
            "committed",
            "reply",
            Some("ship"),
            Some(1),
            action("success"),
        ),
        ("committed", "committed", None, None, json!({})),
        ("aborted", "prepared", None, None, json!({})),
        (
            "aborted",
            "aborted",
            None,
            None,
            json!({"reason": "aborted before commit", "by": "initiator"}),
        ),
    ];
    for outcome in ["compensated", "failed"] {
        log.extend([
            (outcome, "started", None, None, json!({})),
            (
                outcome,
                "dispatched",
                Some("reserve"),
                Some(1),
                json!({"kind": "action"}),
            ),
            (
                outcome,
                "reply",
                Some("reserve"),
                Some(1),
                action("success"),
            ),
            (
                outcome,
                "dispatched",
                Some("charge"),
                Some(1),
                json!({"kind": "action"}),
            ),
            (outcome, "reply", Some("charge"), Some(1), declined.clone()),
            (
                outcome,
                "compensating",
                None,
                None,
                json!({"reason": "step charge failed: card declined"}),
            ),
            (
                outcome,
                "dispatched",
                Some("reserve"),
                Some(1),
                json!({"kind": "compensation"}),
            ),
        ]);
    }
    log.extend([
        (
            "compensated",
            "reply",
            Some("reserve"),
            Some(1),
            json!({"kind": "compensation", "outcome": "success", "error": null}),
        ),
        ("compensated", "compensated", None, None, json!({})),
        (
            "failed",
            "gave_up",
            Some("reserve"),
            Some(10),
            json!({"kind": "compensation", "error": "the warehouse is gone"}),
        ),
        (
            "failed",
            "failed",
            None,
            None,
            json!({"reason": "a compensation ran out of attempts: retry or resolve"}),
        ),
    ]);
    log
}

/// The definition every seeded saga carries, as the coordinator stores it.
fn definition() -> anyhow::Result<serde_json::Value> {
    let body = json!({
        "name": "place-order",
        "steps": [
            {"name": "reserve", "participant": "inventory", "action": "reserve", "compensation": "release"},
            {"name": "charge", "participant": "payments", "action": "charge", "compensation": "refund"},
            {"name": "ship", "participant": "shipping", "action": "ship"}
        ]
    });
    let definition = coordinator::submission::parse_submission(&body)
        .map_err(|errors| anyhow::anyhow!("the seed definition is refused: {errors:?}"))?;
    Ok(serde_json::to_value(&definition)?)
}

/// One chunk: `n` sagas from number `first`, with their steps and events, in one statement.
const CHUNK: &str = "
WITH numbered AS (
    SELECT g,
           now() - random() * make_interval(days => $3) AS created,
           make_interval(secs => 0.05 + random() * 2) AS took,
           random() AS pick
    FROM generate_series($1, $1 + $2 - 1) AS g
), shaped AS (
    SELECT g, created, took,
           CASE WHEN pick < $4 THEN 'committed' WHEN pick < $5 THEN 'compensated'
                WHEN pick < $6 THEN 'aborted' ELSE 'failed' END AS state,
           (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0')
             || '7' || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text || 'x'), 1, 15))::uuid AS id
    FROM numbered
), sagas_in AS (
    INSERT INTO sagas (id, name, idempotency_key, definition, state, created_at, updated_at, version, partition,
                       step_terms)
    SELECT id, 'place-order', 'order-' || g,
           $7 || jsonb_build_object('key', 'order-' || g, 'payload', jsonb_build_object(
               'order', 'order-' || g, 'customer', 'c-' || substr(md5(g::text), 1, 10),
               'currency', 'EUR', 'total_cents', 1999 * (1 + g % 3) + 4500,
               'lines', jsonb_build_array(
                   jsonb_build_object('sku', 'A-' || g % 997, 'qty', 1 + g % 3, 'price_cents', 1999),
                   jsonb_build_object('sku', 'B-' || g % 89, 'qty', 1, 'price_cents', 4500)),
               'ship_to', jsonb_build_object('name', 'Customer ' || g % 100003,
                   'street', (g % 300) || ' Long Street', 'city', 'Springfield',
                   'postcode', lpad((g % 99999)::text, 5, '0')))),
           state, created, created + took, 8,
           (get_byte(uuid_send(id), 14) * 256 + get_byte(uuid_send(id), 15)) % $8, saga_step_terms($7)
    FROM shaped
    RETURNING id, state, created_at, updated_at, finished_at
), counted AS (
    -- Every writer of `sagas` counts its own changes (the coordinator's store/state_counts.rs).
    INSERT INTO saga_state_count_changes (state, sagas)
    SELECT state, count(*) FROM sagas_in GROUP BY state
), minutes_counted AS (
    INSERT INTO saga_minute_count_changes (minute, started, finished)
    SELECT minute, sum(started), sum(finished) FROM (
        SELECT date_trunc('minute', created_at, 'UTC') AS minute, 1 AS started, 0 AS finished
          FROM sagas_in WHERE created_at >= now() - make_interval(mins => $9)
        UNION ALL
        SELECT date_trunc('minute', finished_at, 'UTC'), 0, 1
          FROM sagas_in WHERE finished_at >= now() - make_interval(mins => $9)
    ) AS m
    GROUP BY minute
), steps_in AS (
    INSERT INTO saga_steps (saga_id, position, name, state, attempts, compensation_attempts,
                            compensation_attempt_limit, output, error, refused)
    SELECT s.id, t.position, t.name, t.state, t.attempts, t.compensation_attempts, 10,
           CASE WHEN t.state = 'succeeded' THEN '{\"ok\": true}'::jsonb END, t.error, false
    FROM sagas_in s JOIN seed_steps t ON t.outcome = s.state
)
INSERT INTO saga_events (saga_id, at, kind, step, attempt, detail)
SELECT s.id, s.created_at + (s.updated_at - s.created_at) * t.n / t.total, t.kind, t.step,
       t.attempt, t.detail
FROM sagas_in s JOIN seed_events t ON t.outcome = s.state
ORDER BY s.id, t.n";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Migrates the database, then writes the sagas chunk by chunk, printing progress.
pub fn run(opts: &SeedOptions) -> anyhow::Result<()> {
    if opts.sagas < 1 || opts.days < 1 || opts.chunk < 1 {
        bail!("--sagas, --days and --chunk must be at least 1");
    }
    migrate(opts)?;
    let mut conn = PgConnection::establish(&opts.database_url)
        .with_context(|| format!("connecting to {}", opts.database_url))?;
    let partitions: Count = diesel::sql_query("SELECT count(*) AS n FROM partition_leases")
        .get_result(&mut conn)
        .context("reading the partition count")?;
    let already: Count = diesel::sql_query("SELECT coalesce(max(substr(idempotency_key, 7)::bigint), 0) AS n FROM sagas WHERE idempotency_key LIKE 'order-%'")
        .get_result(&mut conn)
        .context("reading what an earlier seed wrote")?;
    install_scripts(&mut conn)?;
    let definition = definition()?;
    let started = Instant::now();
    let mut written = 0;
    while written < opts.sagas {
        let n = opts.chunk.min(opts.sagas - written);
        diesel::sql_query(CHUNK)
            .bind::<BigInt, _>(already.n + written + 1)
            .bind::<BigInt, _>(n)
            .bind::<Integer, _>(i32::try_from(opts.days).unwrap_or(i32::MAX))
            .bind::<Double, _>(MIX[0].1)
            .bind::<Double, _>(MIX[1].1)
            .bind::<Double, _>(MIX[2].1)
            .bind::<Jsonb, _>(&definition)
            .bind::<Integer, _>(i32::try_from(partitions.n.max(1)).unwrap_or(64))
            // The minutes the overview's chart keeps: older ones are never folded.
            .bind::<Integer, _>(coordinator::store::MINUTES_KEPT)
            .execute(&mut conn)
            .context("writing a chunk")?;
        written += n;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "bench seed: {written} of {} sagas ({:.0}/s)",
            opts.sagas,
            written as f64 / secs.max(0.001)
        );
    }
    // As autovacuum would soon: a measurement right after seeding must not share the machine
    // with it.
    conn.batch_execute("VACUUM (ANALYZE) sagas, saga_steps, saga_events")
        .context("vacuuming")?;
    println!(
        "seeded {written} sagas in {:.1} s into {}",
        started.elapsed().as_secs_f64(),
        opts.database_url
    );
    Ok(())
}

/// `coordinator migrate` on the database: the schema is the coordinator's own.
fn migrate(opts: &SeedOptions) -> anyhow::Result<()> {
    let bin = match &opts.coordinator_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?,
    };
    let status = Command::new(&bin)
        .env(RUN_AS_COORDINATOR, "1")
        .env("SAGA_DATABASE_URL", &opts.database_url)
        .arg("migrate")
        .status()
        .with_context(|| format!("running {} migrate", bin.display()))?;
    if !status.success() {
        bail!("migrating {} failed: {status}", opts.database_url);
    }
    Ok(())
}

/// The steps and events of each outcome, as temporary tables the chunk statement joins.
fn install_scripts(conn: &mut PgConnection) -> anyhow::Result<()> {
    conn.batch_execute(
        "CREATE TEMPORARY TABLE seed_steps (outcome text, position int, name text, state text,
                                            attempts int, compensation_attempts int, error text);
         CREATE TEMPORARY TABLE seed_events (outcome text, n int, total int, kind text, step text,
                                             attempt int, detail jsonb);",
    )?;
    for (outcome, position, name, state, attempts, compensations, error) in STEPS {
        diesel::sql_query("INSERT INTO seed_steps VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind::<Text, _>(*outcome)
            .bind::<Integer, _>(*position)
            .bind::<Text, _>(*name)
            .bind::<Text, _>(*state)
            .bind::<Integer, _>(*attempts)
            .bind::<Integer, _>(*compensations)
            .bind::<diesel::sql_types::Nullable<Text>, _>(*error)
            .execute(conn)?;
    }
    let log = events();
    for (outcome, _) in MIX {
        let of_outcome: Vec<_> = log.iter().filter(|e| e.0 == outcome).collect();
        let total = i32::try_from(of_outcome.len()).unwrap_or(1);
        for (n, (_, kind, step, attempt, detail)) in (0..).zip(of_outcome) {
            diesel::sql_query("INSERT INTO seed_events VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind::<Text, _>(outcome)
                .bind::<Integer, _>(n + 1)
                .bind::<Integer, _>(total)
                .bind::<Text, _>(*kind)
                .bind::<diesel::sql_types::Nullable<Text>, _>(*step)
                .bind::<diesel::sql_types::Nullable<Integer>, _>(*attempt)
                .bind::<Jsonb, _>(detail)
                .execute(conn)?;
        }
    }
    Ok(())
}
