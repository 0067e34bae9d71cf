//! A participant's answer to a command, as the machine understands it.
//!
//! The domain's own type: the AMQP reply body is turned into it at the edge (`crate::wire`), and a
//! check-back URL's answer is built as one directly, so the machine never sees how an answer
//! travelled.

use serde::Serialize;
use serde_json::Value;

use super::state::CommandKind;

/// What an answer says about a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done; the output is the step's.
    Success,
    /// A business refusal with no effect.
    Failure,
    /// A transient error: try again later.
    Retry,
    /// Check-back answer: the initiator's local transaction committed.
    Committed,
    /// Check-back answer: it rolled back, or never ran and now never will.
    Aborted,
    /// Check-back answer: it may still be running.
    Pending,
}

/// An answer to one attempt of one command of a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The step answered; `None` for a check-back, which concerns the whole saga.
    pub step: Option<String>,
    pub kind: CommandKind,
    pub attempt: u32,
    pub outcome: Outcome,
    pub output: Option<Value>,
    pub error: Option<String>,
}
