//! Names of the contract's topology (section 3), and the queue arguments a participant must declare
//! its queue with.
//!
//! `ns` is the namespace (`SAGA_NAMESPACE`, default `saga`). Kept in one place because participants
//! integrate against these exact strings.

/// The direct exchange commands are published to.
pub fn commands_exchange(ns: &str) -> String {
    format!("{ns}.commands")
}

/// A participant's command queue, bound to the commands exchange with the participant as key.
pub fn participant_queue(ns: &str, participant: &str) -> String {
    format!("{ns}.participant.{participant}")
}

/// Where participants send replies (through the default exchange).
pub fn replies_queue(ns: &str) -> String {
    format!("{ns}.replies")
}

/// The fanout exchange every contract queue dead-letters to.
pub fn dead_exchange(ns: &str) -> String {
    format!("{ns}.dead")
}

/// The operators' queue: everything dead-lettered stays here for inspection.
pub fn dead_letters_queue(ns: &str) -> String {
    format!("{ns}.dead-letters")
}

/// The coordinator's own copy of the dead-letter fanout, so it learns about rejected commands
/// without taking anything away from `dead-letters`. Not for participants; named here so that
/// whoever cleans up a namespace finds it.
pub fn dead_commands_queue(ns: &str) -> String {
    format!("{ns}.coordinator.dead-commands")
}

/// The RabbitMQ queue argument naming the exchange a queue dead-letters to.
pub const DEAD_LETTER_EXCHANGE_ARGUMENT: &str = "x-dead-letter-exchange";

/// The arguments of every contract queue that dead-letters (a participant's queue, the replies
/// queue): exactly `x-dead-letter-exchange = {ns}.dead`, to be sent as a long string. RabbitMQ
/// refuses a redeclaration with any difference, so a participant declares exactly these.
pub fn dead_lettering_arguments(ns: &str) -> [(&'static str, String); 1] {
    [(DEAD_LETTER_EXCHANGE_ARGUMENT, dead_exchange(ns))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(commands_exchange("saga"), "saga.commands");
        assert_eq!(
            participant_queue("saga", "inventory"),
            "saga.participant.inventory"
        );
        assert_eq!(replies_queue("saga"), "saga.replies");
        assert_eq!(dead_exchange("saga"), "saga.dead");
        assert_eq!(dead_letters_queue("saga"), "saga.dead-letters");
        assert_eq!(
            dead_commands_queue("saga"),
            "saga.coordinator.dead-commands"
        );
        assert_eq!(
            dead_lettering_arguments("saga"),
            [("x-dead-letter-exchange", "saga.dead".to_string())]
        );
    }
}
