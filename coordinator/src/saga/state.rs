//! The changing part of a saga: its state, each step's progress, and the timers it waits on.
//!
//! Everything here is plain data that the persistence layer stores and reloads verbatim, so a saga
//! recovered after a crash is indistinguishable from one that never stopped. Timers are stored as due
//! times, not as running clocks.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::definition::SagaDefinition;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {}: {other:?}", stringify!($name))),
                }
            }
        }
    };
}

string_enum! {
    /// A saga's state (contract, section 1).
    SagaState {
        Prepared => "prepared",
        Running => "running",
        Compensating => "compensating",
        Committed => "committed",
        Compensated => "compensated",
        Aborted => "aborted",
        Failed => "failed",
    }
}

impl SagaState {
    /// No command is ever issued from a final state, and its actor is gone.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Committed | SagaState::Compensated | SagaState::Aborted
        )
    }

    /// The states in which a saga still moves on its own: it may dispatch commands and has timers.
    pub const IN_FLIGHT: [SagaState; 3] = [
        SagaState::Prepared,
        SagaState::Running,
        SagaState::Compensating,
    ];

    /// Whether the saga is in one of [`Self::IN_FLIGHT`].
    pub fn in_flight(self) -> bool {
        Self::IN_FLIGHT.contains(&self)
    }
}

string_enum! {
    /// Who holds a paused saga: an operator's pause of this saga, or the pause of every saga of
    /// its name. Resuming the name releases only what the name's pause holds.
    PausedBy {
        Operator => "operator",
        Name => "name",
    }
}

/// An operator's hold on a saga (`pause`): nothing is dispatched and no timer fires while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// When it began: on resume, each timer gets back the wait it had left then.
    pub since: DateTime<Utc>,
    pub by: PausedBy,
}

string_enum! {
    /// A step's state (contract, section 1).
    StepState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Compensating => "compensating",
        Compensated => "compensated",
        CompensationFailed => "compensation_failed",
    }
}

string_enum! {
    /// Which command of a step (or of the saga, for `check`) a message is about.
    CommandKind {
        Action => "action",
        Compensation => "compensation",
        Check => "check",
    }
}

string_enum! {
    /// Why a step's timer is set.
    TimerPurpose {
        /// An attempt is out; no reply by then counts as `retry`.
        ReplyTimeout => "reply_timeout",
        /// The last attempt asked for a retry; the next attempt goes out then.
        Backoff => "backoff",
    }
}

/// A durable timer: a due time and what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub due_at: DateTime<Utc>,
    pub purpose: TimerPurpose,
}

/// Progress of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepProgress {
    pub state: StepState,
    /// Action attempts dispatched so far.
    pub attempts: u32,
    /// Compensation attempts dispatched so far (never reset, so attempt numbers stay unique).
    pub compensation_attempts: u32,
    /// Compensation attempts allowed in total; an operator's `retry` raises it by a fresh budget.
    pub compensation_attempt_limit: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub timer: Option<Timer>,
    /// The action answered `failure`: the participant guarantees no effect, so it is never compensated.
    pub refused: bool,
}

impl StepProgress {
    pub fn new(compensation_attempt_limit: u32) -> Self {
        StepProgress {
            state: StepState::Pending,
            attempts: 0,
            compensation_attempts: 0,
            compensation_attempt_limit,
            output: None,
            error: None,
            timer: None,
            refused: false,
        }
    }
}

/// Check-backs of a two-phase submission (contract, section 5): asking the initiator whether its
/// local transaction committed, when neither `commit` nor `abort` arrived in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CheckBackProgress {
    /// Check-backs sent so far (never reset, so attempt numbers stay unique).
    pub attempts: u32,
    /// Check-backs allowed in total; an operator's `retry` raises it by a fresh budget.
    pub attempt_limit: u32,
    /// `Backoff`: ask when due (the first one is the prepare timeout); `ReplyTimeout`: an attempt
    /// is out and counts as unanswered when due.
    pub timer: Option<Timer>,
}

/// A saga as the engine knows it: the definition plus its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    pub id: Uuid,
    pub definition: Arc<SagaDefinition>,
    pub state: SagaState,
    pub steps: Vec<StepProgress>,
    /// Saga-level deadline (from `timeout_ms`): past it a running saga compensates.
    pub deadline: Option<DateTime<Utc>>,
    /// Two-phase submissions: asking the initiator (contract, section 5).
    pub check_back: CheckBackProgress,
    /// W3C trace context of the submitting request, passed on with every command.
    pub traceparent: Option<String>,
    /// The submitting request's W3C `tracestate` (vendors' data of its trace), passed on as it came.
    pub tracestate: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every persisted transition; guards against two writers for one saga.
    pub version: i64,
    /// Set while an operator holds the saga: it dispatches nothing and no timer fires.
    pub pause: Option<Pause>,
}

impl Saga {
    /// A freshly submitted saga, before its first transition.
    pub fn new(
        id: Uuid,
        definition: SagaDefinition,
        traceparent: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        let steps = definition
            .steps
            .iter()
            .map(|s| StepProgress::new(s.compensation_retry.max_attempts))
            .collect();
        let check_attempt_limit = definition.check_back_retry.max_attempts;
        Saga {
            id,
            deadline: definition
                .timeout_ms
                .map(|ms| now + chrono::Duration::milliseconds(ms as i64)),
            definition: Arc::new(definition),
            state: SagaState::Running,
            steps,
            check_back: CheckBackProgress {
                attempts: 0,
                attempt_limit: check_attempt_limit,
                timer: None,
            },
            traceparent,
            tracestate: None,
            created_at: now,
            updated_at: now,
            version: 0,
            pause: None,
        }
    }

    /// The earliest time at which something is due, if any: the actor arms one clock for it.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        if self.state.is_final() || self.state == SagaState::Failed || self.pause.is_some() {
            return None;
        }
        let step_timers = self.steps.iter().filter_map(|s| s.timer.map(|t| t.due_at));
        let saga_deadline = match self.state {
            SagaState::Running => self.deadline,
            SagaState::Prepared => self.check_back.timer.map(|t| t.due_at),
            _ => None,
        };
        step_timers.chain(saga_deadline).min()
    }

    /// The step names of a step's dependencies, for documents and logs.
    pub fn after_names(&self, step: usize) -> Vec<String> {
        self.definition.steps[step]
            .after
            .iter()
            .map(|&i| self.definition.steps[i].name.clone())
            .collect()
    }
}
