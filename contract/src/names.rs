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

/// The reply queue of one partition of the coordinator's sagas: commands name it in `reply_to`, and
/// the coordinator that owns the partition consumes it (several coordinators share a namespace).
/// Participants need not know it: they answer to `reply_to`.
pub fn partition_replies_queue(ns: &str, partition: u32) -> String {
    format!("{ns}.replies.{partition}")
}

/// The reply queue of one coordinator instance (`SAGA_INSTANCE_ID`): the `reply_to` of the commands
/// it publishes, consumed by it alone. One busy queue per instance costs RabbitMQ far less than
/// replies spread over every partition's queue (each queue syncs its persistent messages to disk on
/// its own). A reply that waits there too long (its instance is gone) moves on by itself to
/// `{ns}.replies`. Participants need not know it: they answer to `reply_to`.
pub fn instance_replies_queue(ns: &str, instance: &str) -> String {
    format!("{ns}.replies.at.{instance}")
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

/// The RabbitMQ queue argument naming the queue's type.
pub const QUEUE_TYPE_ARGUMENT: &str = "x-queue-type";

/// The arguments of every contract queue that dead-letters (a participant's queue, the replies
/// queue) in a namespace of classic queues: exactly `x-dead-letter-exchange = {ns}.dead`, to be sent
/// as a long string. RabbitMQ refuses a redeclaration with any difference, so a participant
/// declares exactly these. Equal to `queue_arguments(ns, QueueType::Classic)`.
pub fn dead_lettering_arguments(ns: &str) -> [(&'static str, String); 1] {
    [(DEAD_LETTER_EXCHANGE_ARGUMENT, dead_exchange(ns))]
}

/// The type of every queue of a namespace (`SAGA_QUEUE_TYPE`): the coordinator and every
/// participant of the namespace must use the same, since RabbitMQ refuses to redeclare a queue as
/// another type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QueueType {
    /// RabbitMQ's classic queue. Its messages live on one node: in a cluster, the queue is
    /// unavailable while that node is down. Declared without `x-queue-type`, as before the setting
    /// existed, so existing namespaces and participants stay valid.
    #[default]
    Classic,
    /// A quorum queue, replicated on the cluster's nodes (Raft): it keeps working, and loses
    /// nothing confirmed, while a minority of them is down. What a cluster needs to survive the loss
    /// of a node.
    Quorum,
}

impl QueueType {
    /// `classic` or `quorum` (surrounding spaces and case do not matter).
    pub fn parse(text: &str) -> Result<QueueType, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err(format!(
                "unknown queue type {text:?}: use classic or quorum"
            )),
        }
    }

    /// The value of `x-queue-type` (and of `SAGA_QUEUE_TYPE`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// `x-queue-type`, for a queue of this type; none for classic, which is RabbitMQ's default
    /// (adding it would change the arguments of queues declared before the setting existed).
    pub fn argument(self) -> Option<(&'static str, String)> {
        match self {
            QueueType::Classic => None,
            QueueType::Quorum => Some((QUEUE_TYPE_ARGUMENT, self.as_str().to_string())),
        }
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        QueueType::parse(text)
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The full argument list of a contract queue that dead-letters (a participant's queue, the
/// replies queue) in a namespace of this queue type, every value a long string. A participant
/// declares its queue with exactly these.
pub fn queue_arguments(ns: &str, queue_type: QueueType) -> Vec<(&'static str, String)> {
    let mut arguments = dead_lettering_arguments(ns).to_vec();
    arguments.extend(queue_type.argument());
    arguments
}

/// The full argument list of the queues that do not dead-letter (`{ns}.dead-letters`, the
/// coordinator's dead-commands queue): only the type.
pub fn plain_queue_arguments(queue_type: QueueType) -> Vec<(&'static str, String)> {
    queue_type.argument().into_iter().collect()
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
        assert_eq!(partition_replies_queue("saga", 7), "saga.replies.7");
        assert_eq!(
            instance_replies_queue("saga", "host/0.0.0.0:8080"),
            "saga.replies.at.host/0.0.0.0:8080"
        );
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

    #[test]
    fn a_queue_type_is_classic_or_quorum() {
        assert_eq!(QueueType::default(), QueueType::Classic);
        for (text, expected) in [
            ("classic", QueueType::Classic),
            ("quorum", QueueType::Quorum),
            (" Quorum ", QueueType::Quorum),
            ("CLASSIC", QueueType::Classic),
        ] {
            assert_eq!(QueueType::parse(text), Ok(expected), "{text:?}");
            assert_eq!(text.parse::<QueueType>(), Ok(expected), "{text:?}");
        }
        for wrong in ["", "stream", "quorum,classic", "mirrored"] {
            let error = QueueType::parse(wrong).expect_err(wrong);
            assert!(error.contains("classic or quorum"), "{error}");
        }
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            assert_eq!(QueueType::parse(queue_type.as_str()), Ok(queue_type));
            assert_eq!(queue_type.to_string(), queue_type.as_str());
        }
    }

    #[test]
    fn classic_queues_keep_the_arguments_they_always_had() {
        assert_eq!(
            queue_arguments("saga", QueueType::Classic),
            dead_lettering_arguments("saga").to_vec()
        );
        assert_eq!(plain_queue_arguments(QueueType::Classic), vec![]);
    }

    #[test]
    fn quorum_queues_say_so_beside_their_dead_letter_exchange() {
        assert_eq!(
            queue_arguments("shop", QueueType::Quorum),
            vec![
                ("x-dead-letter-exchange", "shop.dead".to_string()),
                ("x-queue-type", "quorum".to_string()),
            ]
        );
        assert_eq!(
            plain_queue_arguments(QueueType::Quorum),
            vec![("x-queue-type", "quorum".to_string())]
        );
    }
}
