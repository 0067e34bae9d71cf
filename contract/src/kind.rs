//! Which command of a step (or of the saga, for `check`) a message is about (contract, section 4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether a command runs a step forward, undoes it, or asks about a prepared saga. Also the AMQP
/// `type` property of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// The step's action.
    Action,
    /// The step's compensation: semantically undoes the action.
    Compensation,
    /// A two-phase submission's check-back (contract, section 5); it has no step.
    Check,
}

impl CommandKind {
    pub const ALL: &'static [CommandKind] = &[
        CommandKind::Action,
        CommandKind::Compensation,
        CommandKind::Check,
    ];

    /// The name used on the wire (`action`, `compensation`, `check`).
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Action => "action",
            CommandKind::Compensation => "compensation",
            CommandKind::Check => "check",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommandKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CommandKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown CommandKind: {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_spelling_is_the_serde_spelling() {
        for &kind in CommandKind::ALL {
            let json = serde_json::to_value(kind).expect("serializes");
            assert_eq!(json, kind.as_str());
            assert_eq!(kind.as_str().parse(), Ok(kind));
        }
        assert!("reply".parse::<CommandKind>().is_err());
    }
}
