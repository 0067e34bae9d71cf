//! The idempotency key (contract, section 1) and a command's `message_id` (section 4).

use uuid::Uuid;

use crate::CommandKind;

/// The key all attempts of one command share: `{saga_id}:{step}:{kind}`, the step empty for a
/// saga-level `check`.
pub fn idempotency_key(saga_id: Uuid, step: Option<&str>, kind: CommandKind) -> String {
    format!("{saga_id}:{}:{kind}", step.unwrap_or(""))
}

/// The `message_id` (and `correlation_id`) of one attempt of a command: a name-based UUID (version
/// 5, in the saga's id as namespace) of `{kind}:{step}:{attempt}`. Every send of one attempt carries
/// the same id, also when a coordinator sends it again after a restart; each attempt has its own.
pub fn command_message_id(
    saga_id: Uuid,
    step: Option<&str>,
    kind: CommandKind,
    attempt: u32,
) -> Uuid {
    let name = format!("{kind}:{}:{attempt}", step.unwrap_or(""));
    Uuid::new_v5(&saga_id, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_saga_step_and_kind() {
        let id = Uuid::nil();
        assert_eq!(
            idempotency_key(id, Some("charge"), CommandKind::Action),
            "00000000-0000-0000-0000-000000000000:charge:action"
        );
        assert_eq!(
            idempotency_key(id, None, CommandKind::Check),
            "00000000-0000-0000-0000-000000000000::check"
        );
    }

    #[test]
    fn a_message_id_is_the_same_for_every_send_of_an_attempt_and_differs_between_attempts() {
        let saga = Uuid::now_v7();
        let first = command_message_id(saga, Some("charge"), CommandKind::Action, 1);
        assert_eq!(
            first,
            command_message_id(saga, Some("charge"), CommandKind::Action, 1)
        );
        for other in [
            command_message_id(saga, Some("charge"), CommandKind::Action, 2),
            command_message_id(saga, Some("charge"), CommandKind::Compensation, 1),
            command_message_id(saga, Some("ship"), CommandKind::Action, 1),
            command_message_id(saga, None, CommandKind::Check, 1),
            command_message_id(Uuid::now_v7(), Some("charge"), CommandKind::Action, 1),
        ] {
            assert_ne!(first, other);
        }
        assert_eq!(first.get_version_num(), 5);
    }
}
