//! What a handler answers, and the reply that carries it (contract, section 4).
//!
//! The body on the wire is `contract::ReplyBody`; [`reply_body`] builds it from an [`Outcome`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
        self.wire().as_str()
    }

    fn wire(self) -> contract::Outcome {
        match self {
            CheckBackAnswer::Committed => contract::Outcome::Committed,
            CheckBackAnswer::Aborted => contract::Outcome::Aborted,
            CheckBackAnswer::Pending => contract::Outcome::Pending,
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
        self.wire().as_str()
    }

    /// The reply's `outcome` on the wire.
    fn wire(&self) -> contract::Outcome {
        match self {
            Outcome::Success(_) => contract::Outcome::Success,
            Outcome::Failure(_) => contract::Outcome::Failure,
            Outcome::Retry(_) => contract::Outcome::Retry,
            Outcome::CheckBack(answer) => answer.wire(),
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

/// The reply to `command` that carries `outcome`.
pub(crate) fn reply_body<P>(command: &Command<P>, outcome: &Outcome) -> contract::ReplyBody {
    contract::ReplyBody {
        saga_id: command.saga_id,
        step: (command.kind != CommandKind::Check).then(|| command.step.clone()),
        kind: command.kind,
        attempt: command.attempt,
        outcome: outcome.wire(),
        output: outcome.output().cloned(),
        error: outcome.error().map(str::to_string),
    }
}
