//! The saga domain: definitions, progress, and the pure state machine that drives them.
//!
//! Nothing under this module performs I/O or knows actix, diesel, lapin or HTTP.

pub mod definition;
pub mod event_log;
pub mod machine;
pub mod reply;
pub mod state;

pub use definition::{CheckBack, RetryPolicy, SagaDefinition, StepDefinition, SubmissionMode};
pub use event_log::LogEntry;
pub use reply::{Outcome, Reply};
pub use state::{
    CheckBackProgress, CommandKind, Pause, PausedBy, Saga, SagaState, StepProgress, StepState,
    Timer, TimerPurpose,
};

#[cfg(test)]
mod machine_tests;
