//! What the write path is asked to commit and what it answers: the plain types between the runtime
//! and the writer, in a module of their own so that the writer threads ([`super::writer`]) and the
//! batch statement ([`super::batch`]) both depend on them and not on each other.

use uuid::Uuid;

use super::leases::Lease;
use crate::outbox::OutboxMessage;
use crate::saga::LogEntry;
use crate::saga::{Saga, SagaState};

/// One transition to persist.
#[derive(Debug, Clone)]
pub struct Persist {
    /// The saga after the transition; `version` is still the one it was loaded with.
    pub saga: Saga,
    /// Positions of the steps whose progress changed.
    pub steps: Vec<usize>,
    pub log: Vec<LogEntry>,
    pub outbox: Vec<OutboxMessage>,
    /// A new saga: insert it, unless its idempotency key is taken.
    pub is_new: bool,
    /// The saga's state before the transition (a new saga's is the one it is inserted in): the
    /// batch statement counts the change of state (`store/state_counts.rs`).
    pub state_before: SagaState,
    /// The saga's partition and the epoch this instance holds it with: the write is refused unless
    /// that lease is still this instance's when it runs.
    pub fence: Lease,
    /// The transition is a bulk action's (operator's action) on this saga: the write marks the
    /// saga `applied` in that bulk action, atomically with the transition.
    pub bulk_action: Option<Uuid>,
}

#[derive(Debug)]
pub enum Written {
    /// Committed: the saga's new version, and the outbox rows with their ids.
    Saved {
        version: i64,
        outbox: Vec<OutboxMessage>,
    },
    /// A new saga whose (name, key) an earlier saga already has; that saga is returned instead.
    Duplicate(Box<Saga>),
}
