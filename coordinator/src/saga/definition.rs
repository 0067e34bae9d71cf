//! What a client submitted: the immutable shape of a saga, with every default applied.
//!
//! A `SagaDefinition` is produced by validating a submission (see `crate::submission`) and never changes
//! afterwards. Two submissions with the same idempotency key are "identical" exactly when their
//! definitions compare equal, which is why defaults are filled in here rather than at use sites.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Upper bound on steps per saga (contract, section 2).
pub const MAX_STEPS: usize = 100;
/// Step `timeout_ms` when the submission gives none.
pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 30_000;
/// `prepare_timeout_ms` when a two-phase submission gives none.
pub const DEFAULT_PREPARE_TIMEOUT_MS: u64 = 10_000;
/// `check_back.timeout_ms` when a two-phase submission gives none: how long one check-back
/// attempt may go unanswered before it counts as no answer.
pub const DEFAULT_CHECK_BACK_TIMEOUT_MS: u64 = 5_000;

/// How often and how patiently one command is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
}

impl RetryPolicy {
    /// The contract's default for actions.
    pub fn action_default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            multiplier: 2.0,
        }
    }

    /// The contract's default for compensations: like actions, but a compensation must eventually
    /// succeed, so it gets more attempts before an operator is called.
    pub fn compensation_default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            ..Self::action_default()
        }
    }

    /// The default for check-backs of a prepared saga: patient, since the initiator may be
    /// restarting, but bounded so that an unanswerable saga reaches an operator within minutes.
    pub fn check_back_default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            multiplier: 2.0,
        }
    }

    /// Backoff before attempt `failed_attempts + 1`, without jitter: capped exponential growth.
    pub fn backoff_ms(&self, failed_attempts: u32) -> u64 {
        let exponent = failed_attempts.saturating_sub(1).min(64) as i32;
        let raw = self.initial_backoff_ms as f64 * self.multiplier.powi(exponent);
        if raw.is_finite() {
            (raw as u64).min(self.max_backoff_ms)
        } else {
            self.max_backoff_ms
        }
    }
}

/// Whether a submission starts running at once or waits for commit (contract, section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionMode {
    #[default]
    Run,
    Prepare,
}

/// Where a prepared saga asks whether its initiator committed (contract, section 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckBack {
    Participant(String),
    Url(String),
}

/// One unit of work at one participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    pub name: String,
    pub participant: String,
    pub action: String,
    pub compensation: Option<String>,
    pub payload: Value,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
    /// Indices of the steps this one waits for. Sequential submissions get the previous step here,
    /// so the rest of the engine only ever deals with a dependency graph.
    pub after: Vec<usize>,
}

/// A validated saga submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDefinition {
    pub name: String,
    pub key: Option<String>,
    pub payload: Value,
    pub timeout_ms: Option<u64>,
    pub mode: SubmissionMode,
    pub check_back: Option<CheckBack>,
    pub prepare_timeout_ms: u64,
    /// How often a prepared saga asks its initiator before an operator must decide.
    #[serde(default = "RetryPolicy::check_back_default")]
    pub check_back_retry: RetryPolicy,
    /// How long one check-back attempt may go unanswered.
    #[serde(default = "default_check_back_timeout_ms")]
    pub check_back_timeout_ms: u64,
    pub steps: Vec<StepDefinition>,
}

fn default_check_back_timeout_ms() -> u64 {
    DEFAULT_CHECK_BACK_TIMEOUT_MS
}

impl SagaDefinition {
    /// Steps that list `step` among their dependencies.
    pub fn dependents(&self, step: usize) -> impl Iterator<Item = usize> + '_ {
        self.steps
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.after.contains(&step))
            .map(|(i, _)| i)
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
}
