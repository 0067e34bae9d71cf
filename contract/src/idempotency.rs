//! The idempotency key (contract, section 1).

use uuid::Uuid;

use crate::CommandKind;

/// The key all attempts of one command share: `{saga_id}:{step}:{kind}`, the step empty for a
/// saga-level `check`.
pub fn idempotency_key(saga_id: Uuid, step: Option<&str>, kind: CommandKind) -> String {
    format!("{saga_id}:{}:{kind}", step.unwrap_or(""))
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
}
