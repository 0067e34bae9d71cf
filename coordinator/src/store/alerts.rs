//! What alerts are due (issue 16): failed sagas and stuck ones of the partitions a coordinator
//! owns, not yet acknowledged by the receiver, and the record of each try (`saga_alerts`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::{Queries, StoreError};

/// A saga an alert is due for, with what the alert says of it.
#[derive(Debug, Clone, QueryableByName)]
pub struct AlertDue {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub key: Option<String>,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    /// Tries so far.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// At most this many alerts per look: the next look takes the rest.
const BATCH: i64 = 100;

const DUE: &str = r#"
SELECT s.id, s.name, s.idempotency_key AS key, s.state, s.created_at, s.updated_at,
       COALESCE(a.attempts, 0) AS attempts
FROM sagas s
LEFT JOIN saga_alerts a ON a.saga_id = s.id AND a.reason = $1
WHERE s.state = ANY($2) AND s.partition = ANY($3) AND s.created_at < $4
  AND a.acknowledged_at IS NULL AND (a.next_try_at IS NULL OR a.next_try_at <= now())
ORDER BY s.created_at
LIMIT $5
"#;

impl Queries {
    /// Sagas of `partitions` in one of `states`, created before `created_before`, whose alert
    /// for `reason` is not acknowledged and due now.
    pub fn alerts_due(
        &self,
        reason: &str,
        states: &[&str],
        partitions: &[i32],
        created_before: DateTime<Utc>,
    ) -> Result<Vec<AlertDue>, StoreError> {
        let mut conn = self.conn()?;
        Ok(diesel::sql_query(DUE)
            .bind::<Text, _>(reason)
            .bind::<Array<Text>, _>(states)
            .bind::<Array<Integer>, _>(partitions)
            .bind::<Timestamptz, _>(created_before)
            .bind::<diesel::sql_types::BigInt, _>(BATCH)
            .load(&mut conn)?)
    }

    /// Records a try of saga `id`'s alert for `reason`: acknowledged (never sent again), or
    /// failed with `error` and tried again at `next_try_at`.
    pub fn record_alert_try(
        &self,
        id: Uuid,
        reason: &str,
        outcome: Result<(), (String, DateTime<Utc>)>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let (acknowledged, error, next_try_at) = match outcome {
            Ok(()) => (true, None, None),
            Err((error, next)) => (false, Some(error), Some(next)),
        };
        diesel::sql_query(
            r#"
INSERT INTO saga_alerts AS a (saga_id, reason, attempts, next_try_at, last_error, acknowledged_at)
VALUES ($1, $2, 1, $3, $4, CASE WHEN $5 THEN now() END)
ON CONFLICT (saga_id, reason) DO UPDATE
SET attempts = a.attempts + 1, next_try_at = EXCLUDED.next_try_at,
    last_error = COALESCE(EXCLUDED.last_error, a.last_error),
    acknowledged_at = COALESCE(a.acknowledged_at, EXCLUDED.acknowledged_at)
"#,
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(reason)
        .bind::<Nullable<Timestamptz>, _>(next_try_at)
        .bind::<Nullable<Text>, _>(error)
        .bind::<diesel::sql_types::Bool, _>(acknowledged)
        .execute(&mut conn)?;
        Ok(())
    }
}
