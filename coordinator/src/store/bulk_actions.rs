//! Bulk actions (issue 16): an operator's action over every saga a filter matched, as a durable
//! job. Creating one takes the matching sagas into `bulk_action_sagas` in the same transaction, so
//! the job has a fixed total and survives any restart; each partition's owner then works through
//! its own sagas (`runtime/bulk_actions.rs`). A saga the action changed is marked `applied` by the
//! write of its transition (`batch.rs`), never here: that is what makes a crash between the two
//! harmless. Here are only the outcomes that change no saga (`unchanged`, `skipped`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use serde_json::Value;
use uuid::Uuid;

use super::{Queries, StoreError};

/// A bulk action as stored, with how far it got.
#[derive(Debug, Clone, QueryableByName)]
pub struct BulkActionRecord {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Jsonb)]
    pub filter: Value,
    #[diesel(sql_type = Nullable<Text>)]
    pub note: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub cancelled_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    #[diesel(sql_type = BigInt)]
    pub applied: i64,
    #[diesel(sql_type = BigInt)]
    pub unchanged: i64,
    #[diesel(sql_type = BigInt)]
    pub skipped: i64,
}

impl BulkActionRecord {
    /// Sagas not done yet (after a cancel: never to be done).
    pub fn pending(&self) -> i64 {
        self.total - self.applied - self.unchanged - self.skipped
    }
}

/// One saga of a bulk action.
#[derive(Debug, Clone, QueryableByName)]
pub struct BulkSagaRecord {
    #[diesel(sql_type = SqlUuid)]
    pub saga_id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    pub outcome: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub done_at: Option<DateTime<Utc>>,
}

/// A bulk action still to be worked on: what to apply.
#[derive(Debug, Clone, QueryableByName)]
pub struct OpenBulkAction {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub note: Option<String>,
}

/// What a new bulk action applies to: the list API's filters (an empty `states` means any state).
#[derive(Debug, Clone)]
pub struct NewBulkAction {
    pub id: Uuid,
    pub action: String,
    pub note: Option<String>,
    pub states: Vec<String>,
    pub name: Option<String>,
    /// The filter as the API was given it, stored for display.
    pub filter: Value,
}

const SELECT_RECORD: &str = r#"
SELECT b.id, b.action, b.filter, b.note, b.created_at, b.finished_at, b.cancelled_at,
       COALESCE(c.total, 0) AS total, COALESCE(c.applied, 0) AS applied,
       COALESCE(c.unchanged, 0) AS unchanged, COALESCE(c.skipped, 0) AS skipped
FROM bulk_actions b
LEFT JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE outcome = 'applied') AS applied,
           count(*) FILTER (WHERE outcome = 'unchanged') AS unchanged,
           count(*) FILTER (WHERE outcome = 'skipped') AS skipped
    FROM bulk_action_sagas s WHERE s.bulk_action_id = b.id
) c ON true
"#;

impl Queries {
    /// Stores a bulk action with the sagas its filter matches now; answers it.
    pub fn create_bulk_action(&self, new: &NewBulkAction) -> Result<BulkActionRecord, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction::<_, StoreError, _>(|conn| {
            diesel::sql_query(
                "INSERT INTO bulk_actions (id, action, filter, note) VALUES ($1, $2, $3, $4)",
            )
            .bind::<SqlUuid, _>(new.id)
            .bind::<Text, _>(&new.action)
            .bind::<Jsonb, _>(&new.filter)
            .bind::<Nullable<Text>, _>(new.note.as_deref())
            .execute(conn)?;
            diesel::sql_query(
                "INSERT INTO bulk_action_sagas (bulk_action_id, saga_id, partition) \
                 SELECT $1, id, partition FROM sagas \
                 WHERE (cardinality($2::text[]) = 0 OR state = ANY($2)) \
                   AND ($3::text IS NULL OR name = $3)",
            )
            .bind::<SqlUuid, _>(new.id)
            .bind::<Array<Text>, _>(&new.states)
            .bind::<Nullable<Text>, _>(new.name.as_deref())
            .execute(conn)?;
            Ok(())
        })?;
        self.bulk_action(new.id)?
            .ok_or_else(|| StoreError::Corrupt("a bulk action vanished as it was created".into()))
    }

    /// One bulk action with its progress.
    pub fn bulk_action(&self, id: Uuid) -> Result<Option<BulkActionRecord>, StoreError> {
        let mut conn = self.conn()?;
        Ok(
            diesel::sql_query(format!("{SELECT_RECORD} WHERE b.id = $1"))
                .bind::<SqlUuid, _>(id)
                .get_result(&mut conn)
                .optional()?,
        )
    }

    /// Bulk actions, newest first, older than `before` if given.
    pub fn bulk_actions(
        &self,
        limit: i64,
        before: Option<Uuid>,
    ) -> Result<Vec<BulkActionRecord>, StoreError> {
        let mut conn = self.conn()?;
        Ok(diesel::sql_query(format!(
            "{SELECT_RECORD} WHERE ($1::uuid IS NULL OR b.id < $1) ORDER BY b.id DESC LIMIT $2"
        ))
        .bind::<Nullable<SqlUuid>, _>(before)
        .bind::<BigInt, _>(limit)
        .load(&mut conn)?)
    }

    /// Stops an unfinished bulk action; answers whether it was unfinished.
    pub fn cancel_bulk_action(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let cancelled = diesel::sql_query(
            "UPDATE bulk_actions SET cancelled_at = now(), finished_at = now() \
             WHERE id = $1 AND finished_at IS NULL",
        )
        .bind::<SqlUuid, _>(id)
        .execute(&mut conn)?;
        Ok(cancelled > 0)
    }

    /// A bulk action's sagas in id order after `after`, only those with `outcome` if given
    /// (`"pending"` for those not done).
    pub fn bulk_action_sagas(
        &self,
        id: Uuid,
        outcome: Option<&str>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<BulkSagaRecord>, StoreError> {
        let mut conn = self.conn()?;
        Ok(diesel::sql_query(
            "SELECT saga_id, outcome, reason, done_at FROM bulk_action_sagas \
             WHERE bulk_action_id = $1 \
               AND ($2::text IS NULL OR outcome = $2 OR ($2 = 'pending' AND outcome IS NULL)) \
               AND ($3::uuid IS NULL OR saga_id > $3) \
             ORDER BY saga_id LIMIT $4",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Nullable<Text>, _>(outcome)
        .bind::<Nullable<SqlUuid>, _>(after)
        .bind::<BigInt, _>(limit)
        .load(&mut conn)?)
    }

    /// The bulk actions not finished, oldest first.
    pub fn open_bulk_actions(&self) -> Result<Vec<OpenBulkAction>, StoreError> {
        let mut conn = self.conn()?;
        Ok(diesel::sql_query(
            "SELECT id, action, note FROM bulk_actions WHERE finished_at IS NULL \
             ORDER BY created_at",
        )
        .load(&mut conn)?)
    }

    /// Up to `limit` sagas of bulk action `id` in `partitions` not done yet.
    pub fn bulk_sagas_to_do(
        &self,
        id: Uuid,
        partitions: &[i32],
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        #[derive(QueryableByName)]
        struct ToDo {
            #[diesel(sql_type = SqlUuid)]
            saga_id: Uuid,
        }
        let mut conn = self.conn()?;
        let rows: Vec<ToDo> = diesel::sql_query(
            "SELECT saga_id FROM bulk_action_sagas \
             WHERE bulk_action_id = $1 AND partition = ANY($2) AND outcome IS NULL \
             ORDER BY saga_id LIMIT $3",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Array<Integer>, _>(partitions)
        .bind::<BigInt, _>(limit)
        .load(&mut conn)?;
        Ok(rows.into_iter().map(|r| r.saga_id).collect())
    }

    /// Records the outcome of sagas the action did not change: `unchanged` (no reason) or
    /// `skipped` (with its reason). A saga already done keeps its outcome: one the action changed
    /// was marked `applied` by its transition's write.
    pub fn settle_bulk_sagas(
        &self,
        id: Uuid,
        settled: &[(Uuid, &'static str, Option<String>)],
    ) -> Result<(), StoreError> {
        if settled.is_empty() {
            return Ok(());
        }
        let sagas: Vec<Uuid> = settled.iter().map(|s| s.0).collect();
        let outcomes: Vec<&str> = settled.iter().map(|s| s.1).collect();
        let reasons: Vec<Option<&str>> = settled.iter().map(|s| s.2.as_deref()).collect();
        let mut conn = self.conn()?;
        diesel::sql_query(
            "UPDATE bulk_action_sagas AS b SET outcome = v.outcome, reason = v.reason, \
                    done_at = now() \
             FROM unnest($2::uuid[], $3::text[], $4::text[]) AS v(saga_id, outcome, reason) \
             WHERE b.bulk_action_id = $1 AND b.saga_id = v.saga_id AND b.outcome IS NULL",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Array<SqlUuid>, _>(&sagas)
        .bind::<Array<Text>, _>(&outcomes)
        .bind::<Array<Nullable<Text>>, _>(&reasons)
        .execute(&mut conn)?;
        Ok(())
    }

    /// Marks finished every open bulk action with no saga left to do; answers their ids.
    pub fn finish_bulk_actions(&self) -> Result<Vec<Uuid>, StoreError> {
        #[derive(QueryableByName)]
        struct Finished {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
        }
        let mut conn = self.conn()?;
        let rows: Vec<Finished> = diesel::sql_query(
            "UPDATE bulk_actions AS b SET finished_at = now() \
             WHERE finished_at IS NULL AND NOT EXISTS ( \
                 SELECT 1 FROM bulk_action_sagas s \
                 WHERE s.bulk_action_id = b.id AND s.outcome IS NULL) \
             RETURNING id",
        )
        .load(&mut conn)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }
}
