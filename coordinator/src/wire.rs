//! Where the wire contract meets the domain: the one place `contract` types become `saga` types and
//! back.
//!
//! `saga/` names nothing of the wire, so the machine takes its own [`Reply`] and [`CommandKind`];
//! `amqp/` names nothing of the domain and speaks only the contract (the tests below check both). A
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
    use std::path::Path;

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

    /// Strips `//` comments, so that prose may name what code must not.
    fn code(text: &str) -> String {
        text.lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// Fails if any source under `src/{dir}` names one of `words` outside comments.
    fn assert_names_none(dir: &str, words: &[&str], why: &str) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        assert!(!files.is_empty(), "no sources under {}", root.display());
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a readable source");
            let code = code(&text);
            for word in words {
                assert!(
                    !code.contains(word),
                    "{} names {word:?}: {why}",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn the_domain_names_nothing_of_the_wire() {
        assert_names_none(
            "saga",
            &[
                "contract::",
                "messages",
                "lapin",
                "diesel",
                "actix",
                "crate::amqp",
                "crate::wire",
            ],
            "the domain must not know the wire or the edges",
        );
    }

    #[test]
    fn the_amqp_edge_names_nothing_of_the_domain() {
        assert_names_none(
            "amqp",
            &["crate::saga", "crate::wire"],
            "the AMQP edge speaks only the contract; wire.rs converts",
        );
    }
}
