//! Rows as read from Postgres and their conversion into the saga domain. (Everything written goes
//! through the batch statement in `batch.rs`.)

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use super::schema::{outbox, saga_events, saga_steps, sagas};
use super::StoreError;
use crate::outbox::OutboxMessage;
use crate::saga::{
    CheckBackProgress, Pause, Saga, SagaDefinition, StepProgress, Timer, TimerPurpose,
};

#[derive(Queryable, Selectable)]
#[diesel(table_name = sagas)]
pub struct SagaRow {
    pub id: Uuid,
    pub definition: Value,
    pub state: String,
    pub deadline: Option<DateTime<Utc>>,
    pub check_back_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub check_back_purpose: Option<String>,
    pub check_attempts: i32,
    pub check_attempt_limit: i32,
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = saga_steps)]
pub struct StepRow {
    pub saga_id: Uuid,
    pub state: String,
    pub attempts: i32,
    pub compensation_attempts: i32,
    pub compensation_attempt_limit: i32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub timer_due_at: Option<DateTime<Utc>>,
    pub timer_purpose: Option<String>,
    pub refused: bool,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = saga_events)]
pub struct EventRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub detail: Value,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: i64,
    pub saga_id: Uuid,
    pub message_id: Uuid,
    pub participant: String,
    pub kind: String,
    pub body: Vec<u8>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

pub fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl SagaRow {
    pub fn into_saga(self, steps: Vec<StepRow>) -> Result<Saga, StoreError> {
        let definition: SagaDefinition =
            serde_json::from_value(self.definition).map_err(corrupt)?;
        let steps = steps
            .into_iter()
            .map(|s| {
                let timer = match (s.timer_due_at, s.timer_purpose) {
                    (Some(due_at), Some(purpose)) => Some(Timer {
                        due_at,
                        purpose: purpose.parse().map_err(corrupt)?,
                    }),
                    _ => None,
                };
                Ok(StepProgress {
                    state: s.state.parse().map_err(corrupt)?,
                    attempts: to_u32(s.attempts),
                    compensation_attempts: to_u32(s.compensation_attempts),
                    compensation_attempt_limit: to_u32(s.compensation_attempt_limit),
                    output: s.output,
                    error: s.error,
                    timer,
                    refused: s.refused,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let check_timer = match (self.check_back_at, self.check_back_purpose) {
            (Some(due_at), Some(purpose)) => Some(Timer {
                due_at,
                purpose: purpose.parse().map_err(corrupt)?,
            }),
            // Written before check-back progress was stored: the first check-back is due then.
            (Some(due_at), None) => Some(Timer {
                due_at,
                purpose: TimerPurpose::Backoff,
            }),
            _ => None,
        };
        Ok(Saga {
            id: self.id,
            definition: Arc::new(definition),
            state: self.state.parse().map_err(corrupt)?,
            steps,
            deadline: self.deadline,
            check_back: CheckBackProgress {
                attempts: to_u32(self.check_attempts),
                attempt_limit: to_u32(self.check_attempt_limit),
                timer: check_timer,
            },
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
            pause: match (self.paused_at, self.paused_by) {
                (Some(since), Some(by)) => Some(Pause {
                    since,
                    by: by.parse().map_err(corrupt)?,
                }),
                _ => None,
            },
        })
    }
}

/// The part of a stored command body that says which attempt of which saga it is.
#[derive(serde::Deserialize)]
struct Addressed {
    saga_name: String,
    step: Option<String>,
    attempt: u32,
}

impl OutboxRow {
    pub fn into_message(self) -> Result<OutboxMessage, StoreError> {
        let addressed: Addressed = serde_json::from_slice(&self.body).map_err(corrupt)?;
        Ok(OutboxMessage {
            id: self.id,
            saga_id: self.saga_id,
            saga_name: addressed.saga_name,
            message_id: self.message_id,
            participant: self.participant,
            kind: self.kind.parse().map_err(corrupt)?,
            step: addressed.step,
            attempt: addressed.attempt,
            body: self.body,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            created_at: self.created_at,
        })
    }
}
