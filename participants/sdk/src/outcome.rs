//! What a handler answers, and the reply that carries it (contract, section 4).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::command::{Command, CommandKind};

/// A handler's answer to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done. The output (any JSON) is stored by the coordinator and passed to later steps.
    Success(Option<Value>),
    /// A business refusal: the participant guarantees the command had no effect. Not retried; on an
    /// action it starts the saga's compensation. (On a compensation the coordinator treats it as
    /// [`Outcome::Retry`]: a compensation must eventually succeed.)
    Failure(String),
    /// A transient error: the coordinator tries again with backoff.
    Retry(String),
    /// The answer to a check-back (a `check` command of a two-phase submission, contract section 5);
    /// only meaningful from a handler given to `ParticipantBuilder::check_back`.
    CheckBack(CheckBackAnswer),
}

/// What a check-back answers about a prepared saga (contract, section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckBackAnswer {
    /// The initiator's local transaction committed: start the saga.
    Committed,
    /// It rolled back or never ran (and now never will): abort the saga.
    Aborted,
    /// It may still be running: ask again later.
    Pending,
}

impl CheckBackAnswer {
    /// The contract's spelling: `committed`, `aborted` or `pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckBackAnswer::Committed => "committed",
            CheckBackAnswer::Aborted => "aborted",
            CheckBackAnswer::Pending => "pending",
        }
    }
}

impl Outcome {
    /// Success without output.
    pub fn success() -> Outcome {
        Outcome::Success(None)
    }

    /// Success with an output; a value that cannot be serialized becomes a `retry`.
    pub fn success_with(output: impl Serialize) -> Outcome {
        match serde_json::to_value(output) {
            Ok(v) => Outcome::Success(Some(v)),
            Err(e) => Outcome::Retry(format!("the output could not be serialized: {e}")),
        }
    }

    /// A business refusal with a message.
    pub fn failure(message: impl Into<String>) -> Outcome {
        Outcome::Failure(message.into())
    }

    /// A transient error with a message.
    pub fn retry(message: impl Into<String>) -> Outcome {
        Outcome::Retry(message.into())
    }

    /// `success`, `failure` or `retry` (or a check-back's `committed`, `aborted`, `pending`).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Retry(_) => "retry",
            Outcome::CheckBack(answer) => answer.as_str(),
        }
    }

    /// Whether this is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }

    /// The output of a success.
    pub fn output(&self) -> Option<&Value> {
        match self {
            Outcome::Success(output) => output.as_ref(),
            _ => None,
        }
    }

    /// The message of a failure or retry.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Success(_) | Outcome::CheckBack(_) => None,
            Outcome::Failure(m) | Outcome::Retry(m) => Some(m),
        }
    }
}

/// The JSON body of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplyBody {
    pub saga_id: Uuid,
    /// `None` for a check-back, which has no step.
    pub step: Option<String>,
    pub kind: CommandKind,
    pub attempt: u32,
    pub outcome: String,
    pub output: Option<Value>,
    pub error: Option<String>,
}

impl ReplyBody {
    pub(crate) fn new<P>(command: &Command<P>, outcome: &Outcome) -> ReplyBody {
        ReplyBody {
            saga_id: command.saga_id,
            step: (command.kind != CommandKind::Check).then(|| command.step.clone()),
            kind: command.kind,
            attempt: command.attempt,
            outcome: outcome.label().to_string(),
            output: outcome.output().cloned(),
            error: outcome.error().map(str::to_string),
        }
    }
}
