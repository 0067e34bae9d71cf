//! One SQL statement for a whole batch of transitions.
//!
//! A batch of transitions of different sagas is written by a single statement: data-modifying CTEs
//! insert the new sagas and their steps, update the changed sagas (with the optimistic `version`
//! check) and their changed steps, append the changes of the counts per state and per minute
//! (`state_counts.rs`), append the event log, insert the outbox rows, mark the sagas a bulk action
//! changed as `applied` in it, and delete the outbox rows RabbitMQ confirmed. A single
//! statement is atomic on its own, so it runs without `BEGIN` and `COMMIT`: one round trip to
//! Postgres and one commit per batch, whatever its size.
//!
//! Every column travels as one array parameter, and `unnest` turns the arrays back into rows. The
//! statement text never changes, so diesel prepares it once per connection and Postgres plans it once
//! (the writer's connections ask for the generic plan, see [`super::writer_pool`]); planning a
//! statement this size on every batch would cost more than running it. The
//! event log, the steps and the outbox of a saga are written only if its own row was (a transition
//! whose saga changed elsewhere, or a new saga whose idempotency key is taken, writes nothing).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{
    Array, BigInt, Binary, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel::sql_types::{HasSqlType, Untyped};
use serde_json::Value;
use uuid::Uuid;

use super::persist::{Persist, Written};
use super::rows::to_i32;
use super::search::step_terms;
use super::StoreError;
use crate::saga::{Saga, SagaState};

/// The statement; each `$?` is the next parameter, in the order [`WriteBatch::walk_ast`] binds them.
const WRITE_BATCH: &str = r#"
WITH fenced AS (
    SELECT f AS partition FROM saga_fence($?::text, $?::integer[], $?::bigint[]) AS f
), new_sagas AS (
    INSERT INTO sagas (id, name, idempotency_key, definition, state, deadline, check_back_at,
                       traceparent, created_at, updated_at, version, check_back_purpose,
                       check_attempts, check_attempt_limit, partition, paused_at, paused_by,
                       step_terms, tracestate)
    SELECT v.id, v.name, v.idempotency_key, v.definition, v.state, v.deadline, v.check_back_at,
           v.traceparent, v.created_at, v.updated_at, v.version, v.check_back_purpose,
           v.check_attempts, v.check_attempt_limit, v.partition, v.paused_at, v.paused_by,
           v.step_terms, v.tracestate
    FROM unnest($?::uuid[], $?::text[], $?::text[], $?::jsonb[], $?::text[],
                $?::timestamptz[], $?::timestamptz[], $?::text[], $?::timestamptz[],
                $?::timestamptz[], $?::bigint[], $?::text[], $?::integer[],
                $?::integer[], $?::integer[], $?::timestamptz[], $?::text[], $?::jsonb[],
                $?::text[])
         WITH ORDINALITY
         AS v(id, name, idempotency_key, definition, state, deadline, check_back_at,
              traceparent, created_at, updated_at, version, check_back_purpose, check_attempts,
              check_attempt_limit, partition, paused_at, paused_by, step_terms, tracestate, n)
    WHERE v.partition IN (SELECT partition FROM fenced)
    -- In submission order: of two new sagas with one key, the first is inserted.
    ORDER BY v.n
    ON CONFLICT DO NOTHING
    RETURNING id, state, created_at, finished_at
), changed_sagas AS (
    UPDATE sagas AS s
    SET state = v.state, deadline = v.deadline, check_back_at = v.check_back_at,
        check_back_purpose = v.check_back_purpose, check_attempts = v.check_attempts,
        check_attempt_limit = v.check_attempt_limit, updated_at = v.updated_at,
        paused_at = v.paused_at, paused_by = v.paused_by, version = v.version + 1
    FROM unnest($?::uuid[], $?::bigint[], $?::text[], $?::timestamptz[], $?::timestamptz[],
                $?::text[], $?::integer[], $?::integer[], $?::timestamptz[], $?::integer[],
                $?::timestamptz[], $?::text[], $?::text[])
         AS v(id, version, state, deadline, check_back_at, check_back_purpose, check_attempts,
              check_attempt_limit, updated_at, partition, paused_at, paused_by, state_before)
    -- The fence filters the transitions, not the table: a condition on `s.partition` would let
    -- the planner read every unfinished saga of the batch's partitions.
    WHERE s.id = v.id AND s.version = v.version AND v.partition IN (SELECT partition FROM fenced)
    -- The version check makes `state_before` the state the row had.
    RETURNING s.id, s.state, v.state_before, s.finished_at
), moved AS (
    SELECT state, state_before, finished_at FROM changed_sagas WHERE state <> state_before
), state_counted AS (
    INSERT INTO saga_state_count_changes (state, sagas)
    SELECT state, sum(change) FROM (
        SELECT state, 1 AS change FROM new_sagas
        UNION ALL SELECT state, 1 FROM moved
        UNION ALL SELECT state_before, -1 FROM moved
    ) AS c
    GROUP BY state HAVING sum(change) <> 0
), minutes_counted AS (
    -- A saga finishes when it moves to a final state, the only ones with a `finished_at`.
    INSERT INTO saga_minute_count_changes (minute, started, finished)
    SELECT minute, sum(started), sum(finished) FROM (
        SELECT date_trunc('minute', created_at, 'UTC') AS minute, 1 AS started, 0 AS finished
          FROM new_sagas
        UNION ALL
        SELECT date_trunc('minute', finished_at, 'UTC'), 0, 1 FROM new_sagas
         WHERE finished_at IS NOT NULL
        UNION ALL
        SELECT date_trunc('minute', finished_at, 'UTC'), 0, 1 FROM moved
         WHERE finished_at IS NOT NULL
    ) AS m
    GROUP BY minute
), written AS (
    SELECT id FROM new_sagas UNION ALL SELECT id FROM changed_sagas
), new_steps AS (
    INSERT INTO saga_steps (saga_id, position, state, attempts, compensation_attempts,
                            compensation_attempt_limit, output, error, timer_due_at,
                            timer_purpose, refused, name)
    SELECT v.* FROM unnest($?::uuid[], $?::integer[], $?::text[], $?::integer[], $?::integer[],
                           $?::integer[], $?::jsonb[], $?::text[], $?::timestamptz[],
                           $?::text[], $?::boolean[], $?::text[])
         AS v(saga_id, position, state, attempts, compensation_attempts,
              compensation_attempt_limit, output, error, timer_due_at, timer_purpose, refused,
              name)
    WHERE v.saga_id IN (SELECT id FROM new_sagas)
), changed_steps AS (
    UPDATE saga_steps AS t
    SET state = v.state, attempts = v.attempts, compensation_attempts = v.compensation_attempts,
        compensation_attempt_limit = v.compensation_attempt_limit, output = v.output,
        error = v.error, timer_due_at = v.timer_due_at, timer_purpose = v.timer_purpose,
        refused = v.refused
    FROM unnest($?::uuid[], $?::integer[], $?::text[], $?::integer[], $?::integer[],
                $?::integer[], $?::jsonb[], $?::text[], $?::timestamptz[], $?::text[],
                $?::boolean[])
         AS v(saga_id, position, state, attempts, compensation_attempts,
              compensation_attempt_limit, output, error, timer_due_at, timer_purpose, refused)
    WHERE t.saga_id = v.saga_id AND t.position = v.position
      AND v.saga_id IN (SELECT id FROM changed_sagas)
), events AS (
    INSERT INTO saga_events (saga_id, at, kind, step, attempt, detail, epoch)
    SELECT v.saga_id, v.at, v.kind, v.step, v.attempt, v.detail, v.epoch
    FROM unnest($?::uuid[], $?::timestamptz[], $?::text[], $?::text[], $?::integer[],
                $?::jsonb[], $?::bigint[])
         WITH ORDINALITY AS v(saga_id, at, kind, step, attempt, detail, epoch, n)
    WHERE v.saga_id IN (SELECT id FROM written)
    ORDER BY v.n
), commands AS (
    INSERT INTO outbox (saga_id, message_id, participant, kind, body, traceparent, created_at,
                        tracestate)
    SELECT v.* FROM unnest($?::uuid[], $?::uuid[], $?::text[], $?::text[], $?::bytea[],
                           $?::text[], $?::timestamptz[], $?::text[])
         AS v(saga_id, message_id, participant, kind, body, traceparent, created_at, tracestate)
    WHERE v.saga_id IN (SELECT id FROM written)
    RETURNING message_id, id
), bulk_applied AS (
    UPDATE bulk_action_sagas AS b SET outcome = 'applied', done_at = now()
    FROM unnest($?::uuid[], $?::uuid[]) AS v(bulk_action_id, saga_id)
    WHERE b.bulk_action_id = v.bulk_action_id AND b.saga_id = v.saga_id AND b.outcome IS NULL
      AND v.saga_id IN (SELECT id FROM changed_sagas)
), confirmed AS (
    DELETE FROM outbox WHERE id = ANY($?::bigint[])
)
SELECT id AS saga_id, NULL::uuid AS message_id, NULL::bigint AS outbox_id,
       NULL::integer AS live_partition FROM written
UNION ALL
SELECT NULL, message_id, id, NULL FROM commands
UNION ALL
SELECT NULL, NULL, NULL, partition FROM fenced"#;

/// What the statement answers: the sagas it wrote, and the ids of the outbox rows it inserted.
#[derive(QueryableByName)]
struct Answer {
    #[diesel(sql_type = Nullable<SqlUuid>)]
    saga_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    message_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<BigInt>)]
    outbox_id: Option<i64>,
    /// A partition the writer still holds (see `saga_fence`).
    #[diesel(sql_type = Nullable<Integer>)]
    live_partition: Option<i32>,
}

/// What became of each transition of a batch (in order), before duplicates are looked up.
pub(super) enum Outcome {
    Saved(Written),
    /// A new saga whose idempotency key an earlier saga has.
    Duplicate,
    /// The saga's row was no longer at the version the transition was computed from.
    Conflict,
    /// The writer no longer holds the saga's partition with the epoch the transition carries.
    Fenced,
}

/// Writes the transitions (of distinct sagas, at most one epoch per partition) and deletes the
/// confirmed outbox rows `forget`, in one statement, fenced: only transitions whose partition
/// `writer` still holds with the epoch they carry are written.
pub(super) fn write(
    conn: &mut PgConnection,
    writer: &str,
    persists: &[&Persist],
    forget: &[i64],
) -> Result<Vec<Outcome>, StoreError> {
    let mut fence = Fence {
        writer,
        ..Fence::default()
    };
    let mut new_sagas = NewSagas::default();
    let mut changed_sagas = ChangedSagas::default();
    let mut new_steps = NewSteps::default();
    let mut changed_steps = ChangedSteps::default();
    let mut events = Events::default();
    let mut commands = Commands::default();
    let mut bulk_applied = BulkApplied::default();
    for p in persists {
        if let Some(bulk_action) = p.bulk_action {
            bulk_applied.bulk_action.push(bulk_action);
            bulk_applied.saga.push(p.saga.id);
        }
        fence.push(p);
        if p.is_new {
            new_sagas.push(&p.saga, p.fence.partition)?;
            for position in 0..p.saga.steps.len() {
                new_steps.push(&p.saga, position);
            }
        } else {
            changed_sagas.push(&p.saga, p.fence.partition, p.state_before);
            for &position in &p.steps {
                changed_steps.push(&p.saga, position);
            }
        }
        events.push(p);
        commands.push(p);
    }
    let command_count = commands.message_id.len();
    let answers: Vec<Answer> = WriteBatch {
        fence,
        new_sagas,
        changed_sagas,
        new_steps,
        changed_steps,
        events,
        commands,
        bulk_applied,
        forget,
    }
    .load(conn)?;

    let mut written = HashSet::with_capacity(persists.len());
    let mut outbox_ids = HashMap::with_capacity(command_count);
    let mut live = HashSet::new();
    for answer in answers {
        match (
            answer.saga_id,
            answer.message_id,
            answer.outbox_id,
            answer.live_partition,
        ) {
            (Some(saga), _, _, _) => {
                written.insert(saga);
            }
            (None, Some(message), Some(id), _) => {
                outbox_ids.insert(message, id);
            }
            (None, None, None, Some(partition)) => {
                live.insert(partition);
            }
            _ => return Err(StoreError::Corrupt("an unexpected answer row".into())),
        }
    }
    persists
        .iter()
        .map(|p| {
            if !written.contains(&p.saga.id) {
                if !live.contains(&partition_column(p.fence.partition)) {
                    return Ok(Outcome::Fenced);
                }
                return Ok(if p.is_new {
                    Outcome::Duplicate
                } else {
                    Outcome::Conflict
                });
            }
            let mut outbox = p.outbox.clone();
            for message in &mut outbox {
                message.id = outbox_ids
                    .get(&message.message_id)
                    .copied()
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "outbox row {} not inserted",
                            message.message_id
                        ))
                    })?;
            }
            let version = if p.is_new {
                p.saga.version
            } else {
                p.saga.version + 1
            };
            Ok(Outcome::Saved(Written::Saved { version, outbox }))
        })
        .collect()
}

/// The batch as a diesel query with a fixed text, so that diesel caches its prepared statement.
struct WriteBatch<'a> {
    fence: Fence<'a>,
    new_sagas: NewSagas<'a>,
    changed_sagas: ChangedSagas,
    new_steps: NewSteps<'a>,
    changed_steps: ChangedSteps<'a>,
    events: Events<'a>,
    commands: Commands<'a>,
    bulk_applied: BulkApplied,
    forget: &'a [i64],
}

/// The sagas whose transition is a bulk action's, to be marked `applied` in it.
#[derive(Default)]
struct BulkApplied {
    bulk_action: Vec<Uuid>,
    saga: Vec<Uuid>,
}

impl QueryId for WriteBatch<'_> {
    type QueryId = WriteBatch<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for WriteBatch<'_> {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for WriteBatch<'_> {}

impl QueryFragment<Pg> for WriteBatch<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut sql = Statement {
            rest: WRITE_BATCH.split("$?"),
        };
        sql.next(&mut out);
        self.fence.walk(&mut out, &mut sql)?;
        self.new_sagas.walk(&mut out, &mut sql)?;
        self.changed_sagas.walk(&mut out, &mut sql)?;
        self.new_steps.walk(&mut out, &mut sql)?;
        self.changed_steps.walk(&mut out, &mut sql)?;
        self.events.walk(&mut out, &mut sql)?;
        self.commands.walk(&mut out, &mut sql)?;
        sql.bind::<Array<SqlUuid>, _>(&mut out, &self.bulk_applied.bulk_action)?;
        sql.bind::<Array<SqlUuid>, _>(&mut out, &self.bulk_applied.saga)?;
        sql.bind::<Array<BigInt>, _>(&mut out, self.forget)
    }
}

/// The statement's text, handed out piece by piece between its parameters.
struct Statement {
    rest: std::str::Split<'static, &'static str>,
}

impl Statement {
    fn next(&mut self, out: &mut AstPass<'_, '_, Pg>) {
        out.push_sql(self.rest.next().unwrap_or_default());
    }

    /// Binds the next parameter, then writes the text up to the one after it.
    fn bind<'b, ST, U>(&mut self, out: &mut AstPass<'_, 'b, Pg>, value: &'b U) -> QueryResult<()>
    where
        Pg: HasSqlType<ST>,
        U: ToSql<ST, Pg> + ?Sized,
    {
        out.push_bind_param::<ST, U>(value)?;
        self.next(out);
        Ok(())
    }
}

fn timer_due(timer: Option<crate::saga::Timer>) -> Option<DateTime<Utc>> {
    timer.map(|t| t.due_at)
}

fn timer_purpose(timer: Option<crate::saga::Timer>) -> Option<&'static str> {
    timer.map(|t| t.purpose.as_str())
}

fn position(position: usize) -> i32 {
    i32::try_from(position).unwrap_or(i32::MAX)
}

fn partition_column(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(i32::MAX)
}

/// The arguments of `saga_fence`: who writes, and each partition of the batch with the epoch the
/// writer holds it with.
#[derive(Default)]
struct Fence<'a> {
    writer: &'a str,
    partition: Vec<i32>,
    epoch: Vec<i64>,
}

impl Fence<'_> {
    fn push(&mut self, p: &Persist) {
        let partition = partition_column(p.fence.partition);
        if !self.partition.contains(&partition) {
            self.partition.push(partition);
            self.epoch.push(p.fence.epoch);
        }
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, sql: &mut Statement) -> QueryResult<()> {
        sql.bind::<Text, _>(out, self.writer)?;
        sql.bind::<Array<Integer>, _>(out, &self.partition)?;
        sql.bind::<Array<BigInt>, _>(out, &self.epoch)
    }
}

/// Columns of the `new_sagas` insert.
#[derive(Default)]
struct NewSagas<'a> {
    id: Vec<Uuid>,
    name: Vec<&'a str>,
    idempotency_key: Vec<Option<&'a str>>,
    definition: Vec<Value>,
    state: Vec<&'static str>,
    deadline: Vec<Option<DateTime<Utc>>>,
    check_back_at: Vec<Option<DateTime<Utc>>>,
    traceparent: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    version: Vec<i64>,
    check_back_purpose: Vec<Option<&'static str>>,
    check_attempts: Vec<i32>,
    check_attempt_limit: Vec<i32>,
    partition: Vec<i32>,
    paused_at: Vec<Option<DateTime<Utc>>>,
    paused_by: Vec<Option<&'static str>>,
    step_terms: Vec<Value>,
    tracestate: Vec<Option<&'a str>>,
}

impl<'a> NewSagas<'a> {
    fn push(&mut self, saga: &'a Saga, partition: u32) -> Result<(), StoreError> {
        let definition = serde_json::to_value(&*saga.definition)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.id.push(saga.id);
        self.name.push(&saga.definition.name);
        self.idempotency_key.push(saga.definition.key.as_deref());
        self.definition.push(definition);
        self.state.push(saga.state.as_str());
        self.deadline.push(saga.deadline);
        self.check_back_at.push(timer_due(saga.check_back.timer));
        self.traceparent.push(saga.traceparent.as_deref());
        self.created_at.push(saga.created_at);
        self.updated_at.push(saga.updated_at);
        self.version.push(saga.version);
        self.check_back_purpose
            .push(timer_purpose(saga.check_back.timer));
        self.check_attempts.push(to_i32(saga.check_back.attempts));
        self.check_attempt_limit
            .push(to_i32(saga.check_back.attempt_limit));
        self.partition.push(partition_column(partition));
        self.paused_at.push(saga.pause.map(|p| p.since));
        self.paused_by.push(saga.pause.map(|p| p.by.as_str()));
        self.step_terms.push(step_terms(&saga.definition));
        self.tracestate.push(saga.tracestate.as_deref());
        Ok(())
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, sql: &mut Statement) -> QueryResult<()> {
        sql.bind::<Array<SqlUuid>, _>(out, &self.id)?;
        sql.bind::<Array<Text>, _>(out, &self.name)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.idempotency_key)?;
        sql.bind::<Array<Jsonb>, _>(out, &self.definition)?;
        sql.bind::<Array<Text>, _>(out, &self.state)?;
        sql.bind::<Array<Nullable<Timestamptz>>, _>(out, &self.deadline)?;
        sql.bind::<Array<Nullable<Timestamptz>>, _>(out, &self.check_back_at)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.traceparent)?;
        sql.bind::<Array<Timestamptz>, _>(out, &self.created_at)?;
        sql.bind::<Array<Timestamptz>, _>(out, &self.updated_at)?;
        sql.bind::<Array<BigInt>, _>(out, &self.version)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.check_back_purpose)?;
        sql.bind::<Array<Integer>, _>(out, &self.check_attempts)?;
        sql.bind::<Array<Integer>, _>(out, &self.check_attempt_limit)?;
        sql.bind::<Array<Integer>, _>(out, &self.partition)?;
        sql.bind::<Array<Nullable<Timestamptz>>, _>(out, &self.paused_at)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.paused_by)?;
        sql.bind::<Array<Jsonb>, _>(out, &self.step_terms)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.tracestate)?;
        Ok(())
    }
}

/// Columns of the `changed_sagas` update.
#[derive(Default)]
struct ChangedSagas {
    id: Vec<Uuid>,
    version: Vec<i64>,
    state: Vec<&'static str>,
    deadline: Vec<Option<DateTime<Utc>>>,
    check_back_at: Vec<Option<DateTime<Utc>>>,
    check_back_purpose: Vec<Option<&'static str>>,
    check_attempts: Vec<i32>,
    check_attempt_limit: Vec<i32>,
    updated_at: Vec<DateTime<Utc>>,
    partition: Vec<i32>,
    paused_at: Vec<Option<DateTime<Utc>>>,
    paused_by: Vec<Option<&'static str>>,
    state_before: Vec<&'static str>,
}

impl ChangedSagas {
    fn push(&mut self, saga: &Saga, partition: u32, state_before: SagaState) {
        self.id.push(saga.id);
        self.version.push(saga.version);
        self.state.push(saga.state.as_str());
        self.deadline.push(saga.deadline);
        self.check_back_at.push(timer_due(saga.check_back.timer));
        self.check_back_purpose
            .push(timer_purpose(saga.check_back.timer));
        self.check_attempts.push(to_i32(saga.check_back.attempts));
        self.check_attempt_limit
            .push(to_i32(saga.check_back.attempt_limit));
        self.updated_at.push(saga.updated_at);
        self.partition.push(partition_column(partition));
        self.paused_at.push(saga.pause.map(|p| p.since));
        self.paused_by.push(saga.pause.map(|p| p.by.as_str()));
        self.state_before.push(state_before.as_str());
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, sql: &mut Statement) -> QueryResult<()> {
        sql.bind::<Array<SqlUuid>, _>(out, &self.id)?;
        sql.bind::<Array<BigInt>, _>(out, &self.version)?;
        sql.bind::<Array<Text>, _>(out, &self.state)?;
        sql.bind::<Array<Nullable<Timestamptz>>, _>(out, &self.deadline)?;
        sql.bind::<Array<Nullable<Timestamptz>>, _>(out, &self.check_back_at)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.check_back_purpose)?;
        sql.bind::<Array<Integer>, _>(out, &self.check_attempts)?;
        sql.bind::<Array<Integer>, _>(out, &self.check_attempt_limit)?;
        sql.bind::<Array<Timestamptz>, _>(out, &self.updated_at)?;
        sql.bind::<Array<Integer>, _>(out, &self.partition)?;
        sql.bind::<Array<Nullable<Timestamptz>>, _>(out, &self.paused_at)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.paused_by)?;
        sql.bind::<Array<Text>, _>(out, &self.state_before)?;
        Ok(())
    }
}

/// The progress columns a step has whether it is new or changed.
#[derive(Default)]
struct StepProgressColumns<'a> {
    saga_id: Vec<Uuid>,
    position: Vec<i32>,
    state: Vec<&'static str>,
    attempts: Vec<i32>,
    compensation_attempts: Vec<i32>,
    compensation_attempt_limit: Vec<i32>,
    /// A step without output is SQL NULL; one whose output is JSON `null` is the jsonb `null`.
    output: Vec<Option<&'a Value>>,
    error: Vec<Option<&'a str>>,
    timer_due_at: Vec<Option<DateTime<Utc>>>,
    timer_purpose: Vec<Option<&'static str>>,
    refused: Vec<bool>,
}

impl<'a> StepProgressColumns<'a> {
    fn push(&mut self, saga: &'a Saga, at: usize) {
        let s = &saga.steps[at];
        self.saga_id.push(saga.id);
        self.position.push(position(at));
        self.state.push(s.state.as_str());
        self.attempts.push(to_i32(s.attempts));
        self.compensation_attempts
            .push(to_i32(s.compensation_attempts));
        self.compensation_attempt_limit
            .push(to_i32(s.compensation_attempt_limit));
        self.output.push(s.output.as_ref());
        self.error.push(s.error.as_deref());
        self.timer_due_at.push(timer_due(s.timer));
        self.timer_purpose.push(timer_purpose(s.timer));
        self.refused.push(s.refused);
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, sql: &mut Statement) -> QueryResult<()> {
        sql.bind::<Array<SqlUuid>, _>(out, &self.saga_id)?;
        sql.bind::<Array<Integer>, _>(out, &self.position)?;
        sql.bind::<Array<Text>, _>(out, &self.state)?;
        sql.bind::<Array<Integer>, _>(out, &self.attempts)?;
        sql.bind::<Array<Integer>, _>(out, &self.compensation_attempts)?;
        sql.bind::<Array<Integer>, _>(out, &self.compensation_attempt_limit)?;
        sql.bind::<Array<Nullable<Jsonb>>, _>(out, &self.output)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.error)?;
        sql.bind::<Array<Nullable<Timestamptz>>, _>(out, &self.timer_due_at)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.timer_purpose)?;
        sql.bind::<Array<Bool>, _>(out, &self.refused)
    }
}

/// Columns of the `new_steps` insert: a step's progress, then its name.
#[derive(Default)]
struct NewSteps<'a> {
    progress: StepProgressColumns<'a>,
    name: Vec<&'a str>,
}

impl<'a> NewSteps<'a> {
    fn push(&mut self, saga: &'a Saga, at: usize) {
        self.progress.push(saga, at);
        self.name.push(&saga.definition.steps[at].name);
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, sql: &mut Statement) -> QueryResult<()> {
        self.progress.walk(out, sql)?;
        sql.bind::<Array<Text>, _>(out, &self.name)
    }
}

/// Columns of the `changed_steps` update.
type ChangedSteps<'a> = StepProgressColumns<'a>;

/// Columns of the event-log insert, in the order the machine logged them.
#[derive(Default)]
struct Events<'a> {
    saga_id: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    kind: Vec<&'a str>,
    step: Vec<Option<&'a str>>,
    attempt: Vec<Option<i32>>,
    detail: Vec<Value>,
    epoch: Vec<i64>,
}

impl<'a> Events<'a> {
    fn push(&mut self, p: &'a Persist) {
        let saga = &p.saga;
        for e in &p.log {
            let stored = super::events::render(e, &saga.definition);
            self.saga_id.push(saga.id);
            self.at.push(saga.updated_at);
            self.kind.push(stored.kind);
            self.step.push(stored.step);
            self.attempt.push(stored.attempt);
            self.detail.push(stored.detail);
            self.epoch.push(p.fence.epoch);
        }
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, sql: &mut Statement) -> QueryResult<()> {
        sql.bind::<Array<SqlUuid>, _>(out, &self.saga_id)?;
        sql.bind::<Array<Timestamptz>, _>(out, &self.at)?;
        sql.bind::<Array<Text>, _>(out, &self.kind)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.step)?;
        sql.bind::<Array<Nullable<Integer>>, _>(out, &self.attempt)?;
        sql.bind::<Array<Jsonb>, _>(out, &self.detail)?;
        sql.bind::<Array<BigInt>, _>(out, &self.epoch)?;
        Ok(())
    }
}

/// Columns of the outbox insert.
#[derive(Default)]
struct Commands<'a> {
    saga_id: Vec<Uuid>,
    message_id: Vec<Uuid>,
    participant: Vec<&'a str>,
    kind: Vec<&'static str>,
    body: Vec<&'a [u8]>,
    traceparent: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
    tracestate: Vec<Option<&'a str>>,
}

impl<'a> Commands<'a> {
    fn push(&mut self, p: &'a Persist) {
        for m in &p.outbox {
            self.saga_id.push(m.saga_id);
            self.message_id.push(m.message_id);
            self.participant.push(&m.participant);
            self.kind.push(m.kind.as_str());
            self.body.push(&m.body);
            self.traceparent.push(m.traceparent.as_deref());
            self.created_at.push(m.created_at);
            self.tracestate.push(m.tracestate.as_deref());
        }
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, sql: &mut Statement) -> QueryResult<()> {
        sql.bind::<Array<SqlUuid>, _>(out, &self.saga_id)?;
        sql.bind::<Array<SqlUuid>, _>(out, &self.message_id)?;
        sql.bind::<Array<Text>, _>(out, &self.participant)?;
        sql.bind::<Array<Text>, _>(out, &self.kind)?;
        sql.bind::<Array<Binary>, _>(out, &self.body)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.traceparent)?;
        sql.bind::<Array<Timestamptz>, _>(out, &self.created_at)?;
        sql.bind::<Array<Nullable<Text>>, _>(out, &self.tracestate)?;
        Ok(())
    }
}
