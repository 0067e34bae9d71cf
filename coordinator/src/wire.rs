//! Where the wire contract meets the domain: the one place `contract` types become `saga` types and
//! back.
//!
//! `saga/` names nothing of the wire, so the machine takes its own [`Reply`] and [`CommandKind`];
//! `amqp/` names nothing of the domain and speaks only the contract (`coordinator/tests/layering.rs` checks both). A
//! reply crosses here on its way from the consumer to its saga (`app::dispatch_inbound`), a command
//! kind on its way into an outbox message (`outbox::command_message`). The tests also hold each
//! domain spelling to the contract's, since the event log stores outcomes by their serde names.

use crate::saga::{CommandKind, Outcome, Reply};

impl From<contract::CommandKind> for CommandKind {
    fn from(kind: contract::CommandKind) -> Self {
        match kind {
            contract::CommandKind::Action => CommandKind::Action,
            contract::CommandKind::Compensation => CommandKind::Compensation,
            contract::CommandKind::Check => CommandKind::Check,
        }
    }
}

impl From<CommandKind> for contract::CommandKind {
    fn from(kind: CommandKind) -> Self {
        match kind {
            CommandKind::Action => contract::CommandKind::Action,
            CommandKind::Compensation => contract::CommandKind::Compensation,
            CommandKind::Check => contract::CommandKind::Check,
        }
    }
}

impl From<contract::Outcome> for Outcome {
    fn from(outcome: contract::Outcome) -> Self {
        match outcome {
            contract::Outcome::Success => Outcome::Success,
            contract::Outcome::Failure => Outcome::Failure,
            contract::Outcome::Retry => Outcome::Retry,
            contract::Outcome::Committed => Outcome::Committed,
            contract::Outcome::Aborted => Outcome::Aborted,
            contract::Outcome::Pending => Outcome::Pending,
        }
    }
}

/// A reply body already validated by [`contract::ReplyBody::parse`]; its `saga_id` routed it to the
/// saga, so the saga's event does not repeat it.
impl From<contract::ReplyBody> for Reply {
    fn from(body: contract::ReplyBody) -> Self {
        Reply {
            step: body.step,
            kind: body.kind.into(),
            attempt: body.attempt,
            outcome: body.outcome.into(),
            output: body.output,
            error: body.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_kinds_and_outcomes_spell_as_the_contract() {
        for &kind in contract::CommandKind::ALL {
            let domain = CommandKind::from(kind);
            assert_eq!(domain.as_str(), kind.as_str());
            assert_eq!(contract::CommandKind::from(domain), kind);
        }
        assert_eq!(CommandKind::ALL.len(), contract::CommandKind::ALL.len());
        for &outcome in contract::Outcome::ALL {
            // Outcomes are written into the event log by their serde spelling.
            let logged = serde_json::to_value(Outcome::from(outcome)).expect("serializes");
            assert_eq!(logged, outcome.as_str());
        }
    }
}
