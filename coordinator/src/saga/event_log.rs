//! The saga's event log: what the machine records beside each transition, as typed entries.
//!
//! The machine says what happened; it does not say how an entry is stored. The stored form (the
//! `type` and `detail` of a `saga_events` row, which the API and the dashboard show and clients read)
//! is rendered in `store/` only, and the metrics match these variants, never text.

use std::fmt;

use super::reply::Outcome;
use super::state::{CommandKind, PausedBy};

/// One entry of a saga's event log.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    /// A two-phase saga was stored; it waits for its initiator's decision.
    Prepared,
    /// The saga began dispatching its steps.
    Started,
    /// A prepared saga was committed.
    Commit { by: DecidedBy },
    /// A prepared saga was aborted before it dispatched anything.
    Aborted { by: DecidedBy },
    /// An operator asked a failed saga to try again.
    RetryRequested,
    /// An operator asked what waits out a backoff to go now.
    RetryNowRequested,
    /// An operator paused the saga, or every saga of its name.
    Paused { by: PausedBy },
    /// An operator resumed the saga, or every saga of its name.
    Resumed { by: PausedBy },
    /// An operator repaired a failed saga by hand.
    Resolved { note: String },
    /// A command went out.
    Dispatched { command: CommandAttempt },
    /// An awaited answer to a command arrived.
    Reply {
        command: CommandAttempt,
        outcome: Outcome,
        error: Option<String>,
    },
    /// A command got no answer in time.
    TimedOut { command: CommandAttempt },
    /// The receiver rejected a command without requeue.
    DeadLettered { command: CommandAttempt },
    /// An attempt ended without success; the next one goes out after `backoff_ms`.
    RetryScheduled {
        command: CommandAttempt,
        error: String,
        backoff_ms: u64,
    },
    /// The attempts ran out.
    GaveUp {
        command: CommandAttempt,
        error: String,
    },
    /// The saga stopped dispatching actions and began undoing what may have taken effect.
    Compensating { reason: CompensationReason },
    /// Every step that needed it was compensated.
    Compensated,
    /// Every step succeeded.
    Committed,
    /// The saga waits for an operator.
    Failed { reason: FailureReason },
}

impl LogEntry {
    /// The command attempt this entry is about, if it is about one.
    pub fn command(&self) -> Option<&CommandAttempt> {
        match self {
            LogEntry::Dispatched { command }
            | LogEntry::Reply { command, .. }
            | LogEntry::TimedOut { command }
            | LogEntry::DeadLettered { command }
            | LogEntry::RetryScheduled { command, .. }
            | LogEntry::GaveUp { command, .. } => Some(command),
            _ => None,
        }
    }
}

/// Which attempt of which command an entry is about (the same coordinates as a machine `Command`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandAttempt {
    /// `None` for the saga-level `check` command.
    pub step: Option<usize>,
    pub kind: CommandKind,
    pub attempt: u32,
}

impl CommandAttempt {
    /// An attempt of a step's action or compensation.
    pub fn step(step: usize, kind: CommandKind, attempt: u32) -> Self {
        CommandAttempt {
            step: Some(step),
            kind,
            attempt,
        }
    }

    /// An attempt of the saga-level check-back.
    pub fn check_back(attempt: u32) -> Self {
        CommandAttempt {
            step: None,
            kind: CommandKind::Check,
            attempt,
        }
    }
}

/// Who decided a two-phase saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// `commit` from the initiator.
    Initiator,
    /// `abort` through the API, from an operator or the initiator.
    Api,
    /// The initiator's answer to a check-back.
    CheckBack,
}

/// Why a running saga began compensating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompensationReason {
    /// An operator or the initiator aborted it.
    Aborted,
    /// Its deadline passed.
    TimedOut,
    /// A step's action answered `failure`.
    StepFailed { step: String },
    /// A step's action ran out of attempts.
    StepGaveUp { step: String },
}

/// The reason as people read it: in the log, and in the error of each step it abandoned.
impl fmt::Display for CompensationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompensationReason::Aborted => f.write_str("aborted"),
            CompensationReason::TimedOut => f.write_str("saga timed out"),
            CompensationReason::StepFailed { step } => write!(f, "step {step} failed"),
            CompensationReason::StepGaveUp { step } => write!(f, "step {step} ran out of attempts"),
        }
    }
}

/// Why a saga stopped for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// A compensation ran out of attempts.
    CompensationGaveUp,
    /// A prepared saga's check-backs ran out without a decision.
    CheckBackGaveUp,
}
