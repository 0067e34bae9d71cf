//! The command a participant receives (contract, section 4), typed.
//!
//! The body on the wire is `contract::CommandBody`; this is the form handlers see.

use chrono::{DateTime, Utc};
use contract::CommandBody;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Whether a command runs a step forward (`action`), undoes it (`compensation`), or asks about a
/// prepared saga (`check`, answered by the handler given to `ParticipantBuilder::check_back`).
pub use contract::CommandKind;

/// One delivery of a command, with its step payload decoded as `P`.
///
/// Every attempt of one command carries the same [`idempotency_key`](Command::idempotency_key); use it
/// (or the [`barrier`](crate::barrier)) so that the command's effect happens at most once.
#[derive(Debug, Clone, PartialEq)]
pub struct Command<P = Value> {
    /// The saga this command belongs to.
    pub saga_id: Uuid,
    /// The saga's kind, e.g. `place-order`.
    pub saga_name: String,
    /// The step's name within the saga.
    pub step: String,
    /// Action or compensation.
    pub kind: CommandKind,
    /// The command's name: the step's `action` or `compensation`.
    pub name: String,
    /// 1 for the first attempt; retries and timeouts count up.
    pub attempt: u32,
    /// Shared by every attempt of this command: `{saga_id}:{step}:{kind}`.
    pub idempotency_key: String,
    /// When the coordinator stops waiting for this attempt's reply.
    pub deadline: DateTime<Utc>,
    /// The step's payload, decoded.
    pub payload: P,
    /// The saga-level payload (any JSON, `null` if none).
    pub saga_payload: Value,
    /// The `output` of every step that has succeeded so far, by step name.
    pub outputs: Map<String, Value>,
    /// On a compensation: the output of the action it undoes (`None` on actions and when the action
    /// produced no output or never answered).
    pub action_output: Option<Value>,
    /// Whether the broker delivered this message before (a hint only: duplicates also arrive fresh).
    pub redelivered: bool,
    /// The W3C `traceparent` header, when the saga carries one.
    pub traceparent: Option<String>,
    /// The W3C `tracestate` header, when the saga was submitted with one.
    pub tracestate: Option<String>,
}

impl<P> Command<P> {
    /// The output a step that succeeded earlier in this saga produced, decoded as `T`.
    pub fn output_of<T: DeserializeOwned>(&self, step: &str) -> Option<T> {
        self.outputs
            .get(step)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The saga payload decoded as `T`.
    pub fn saga_payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.saga_payload.clone())
    }

    /// This command with another payload (the rest unchanged).
    pub fn with_payload<Q>(self, payload: Q) -> Command<Q> {
        Command {
            saga_id: self.saga_id,
            saga_name: self.saga_name,
            step: self.step,
            kind: self.kind,
            name: self.name,
            attempt: self.attempt,
            idempotency_key: self.idempotency_key,
            deadline: self.deadline,
            payload,
            saga_payload: self.saga_payload,
            outputs: self.outputs,
            action_output: self.action_output,
            redelivered: self.redelivered,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
        }
    }
}

impl Command<Value> {
    /// Builds a command from a body; `None` for an action or compensation without a step. A
    /// `check` command has no step: its `step` is empty.
    pub(crate) fn from_body(
        body: CommandBody,
        redelivered: bool,
        (traceparent, tracestate): (Option<String>, Option<String>),
    ) -> Option<Command<Value>> {
        let step = match body.kind {
            CommandKind::Check => body.step.unwrap_or_default(),
            _ => body.step?,
        };
        Some(Command {
            saga_id: body.saga_id,
            saga_name: body.saga_name,
            step,
            kind: body.kind,
            name: body.command,
            attempt: body.attempt,
            idempotency_key: body.idempotency_key,
            deadline: body.deadline,
            payload: body.payload,
            saga_payload: body.saga_payload,
            outputs: body.outputs,
            action_output: body.action_output.filter(|v| !v.is_null()),
            redelivered,
            traceparent,
            tracestate,
        })
    }
}
