//! Outbox messages: commands that a committed transition produced and that still have to be published.
//!
//! A row is written in the same Postgres transaction as the transition it follows from, and deleted once
//! RabbitMQ has confirmed it. This type is what travels between the persistence layer, the relay and
//! the AMQP publisher; it knows neither diesel nor lapin.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::saga::CommandKind;

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The outbox row's id (assigned by Postgres; 0 before insertion).
    pub id: i64,
    pub saga_id: Uuid,
    /// The saga's name, as in the body: for the log lines about this command.
    pub saga_name: String,
    /// AMQP `message_id` and `correlation_id`: unique per attempt.
    pub message_id: Uuid,
    /// Routing key on `{ns}.commands`; also names the queue `{ns}.participant.{participant}`.
    pub participant: String,
    /// AMQP `type` property.
    pub kind: contract::CommandKind,
    /// The step (`None` for `check`) and attempt the command is, as in its body.
    pub step: Option<String>,
    pub attempt: u32,
    /// The JSON body (a serialized `contract::CommandBody`).
    pub body: Vec<u8>,
    /// W3C trace context, sent as the `traceparent` header when present: the attempt's span when
    /// spans are exported, else the saga's context (`crate::telemetry::command_traceparent`).
    pub traceparent: Option<String>,
    /// The saga's `tracestate`, sent as the `tracestate` header when present.
    pub tracestate: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Turns a command the state machine decided on into the message participants receive
/// (contract, section 4).
pub fn command_message(
    saga: &crate::saga::Saga,
    command: &crate::saga::machine::Command,
    now: DateTime<Utc>,
) -> OutboxMessage {
    use contract::{idempotency_key, CommandBody};
    use serde_json::{Map, Value};

    let def = &saga.definition;
    let step = command.step.map(|i| (&def.steps[i], &saga.steps[i]));
    let outputs: Map<String, Value> = def
        .steps
        .iter()
        .zip(&saga.steps)
        .filter_map(|(d, p)| p.output.clone().map(|o| (d.name.clone(), o)))
        .collect();
    let (participant, name, payload, action_output) = match (step, command.kind) {
        (Some((d, p)), CommandKind::Compensation) => (
            d.participant.clone(),
            d.compensation.clone().unwrap_or_default(),
            d.payload.clone(),
            Some(p.output.clone().unwrap_or(Value::Null)),
        ),
        (Some((d, _)), _) => (
            d.participant.clone(),
            d.action.clone(),
            d.payload.clone(),
            None,
        ),
        (None, _) => {
            let participant = match &def.check_back {
                Some(crate::saga::CheckBack::Participant(p)) => p.clone(),
                _ => String::new(),
            };
            (participant, "check".to_string(), Value::Null, None)
        }
    };
    let step_name = step.map(|(d, _)| d.name.clone());
    let kind = contract::CommandKind::from(command.kind);
    let body = CommandBody {
        saga_id: saga.id,
        saga_name: def.name.clone(),
        idempotency_key: idempotency_key(saga.id, step_name.as_deref(), kind),
        step: step_name.clone(),
        kind,
        command: name,
        attempt: command.attempt,
        deadline: command.deadline,
        payload,
        saga_payload: def.payload.clone(),
        outputs,
        action_output,
    };
    OutboxMessage {
        id: 0,
        saga_id: saga.id,
        saga_name: def.name.clone(),
        message_id: Uuid::now_v7(),
        participant,
        kind,
        step: step_name,
        attempt: command.attempt,
        // Serializing plain data into a Vec cannot fail.
        body: serde_json::to_vec(&body).unwrap_or_default(),
        traceparent: crate::telemetry::command_traceparent(saga, command),
        tracestate: saga.tracestate.clone(),
        created_at: now,
    }
}
