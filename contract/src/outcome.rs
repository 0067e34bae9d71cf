//! What a reply says about a command (contract, sections 4 and 5).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `outcome` of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done; the reply's `output` is stored and passed to later steps.
    Success,
    /// A business refusal with no effect.
    Failure,
    /// A transient error: try again later.
    Retry,
    /// Check-back answer (section 5): the initiator's local transaction committed.
    Committed,
    /// Check-back answer: it rolled back, or never ran and now never will.
    Aborted,
    /// Check-back answer: it may still be running.
    Pending,
}

impl Outcome {
    pub const ALL: &'static [Outcome] = &[
        Outcome::Success,
        Outcome::Failure,
        Outcome::Retry,
        Outcome::Committed,
        Outcome::Aborted,
        Outcome::Pending,
    ];

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Retry => "retry",
            Outcome::Committed => "committed",
            Outcome::Aborted => "aborted",
            Outcome::Pending => "pending",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_spelling_is_the_serde_spelling() {
        for &outcome in Outcome::ALL {
            let json = serde_json::to_value(outcome).expect("serializes");
            assert_eq!(json, outcome.as_str());
        }
    }
}
