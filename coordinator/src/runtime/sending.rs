//! What the runtime knows of commands on their way to RabbitMQ, and of the replies queue: the input
//! the state machine needs so that a step's reply timeout measures the participant, not an outage
//! of the coordinator's own broker (contract, section 4).
//!
//! Kept in memory only, so it costs no write per command. A command is `unconfirmed` from the moment
//! its transition committed (or the sweep found its row) until RabbitMQ confirms it; after a restart
//! nothing is known until the sweep has found the rows still in the outbox, and reply timeouts are
//! held anyway until the broker has been connected for [`REPLY_GRACE`]. The same grace follows the
//! last transition Postgres refused: replies are requeued while it is away, and must win when it
//! is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::outbox::OutboxMessage;
use crate::saga::machine::Sending;
use crate::saga::{CommandKind, Saga};

/// How long after the replies queue is consumed again (a reconnect, a start) reply timeouts wait,
/// so that replies that queued up meanwhile are delivered before a timeout counts against them.
pub const REPLY_GRACE: Duration = Duration::from_secs(3);

/// A step command by name: (step, kind, attempt).
type Sent = (String, CommandKind, u32);

#[derive(Default)]
struct State {
    /// Per saga, each step command on its way: `None` until confirmed, then when.
    commands: HashMap<Uuid, HashMap<Sent, Option<DateTime<Utc>>>>,
    /// Since when replies have been consumed without interruption; `None` while disconnected.
    consuming_since: Option<DateTime<Utc>>,
    /// When Postgres last refused a transition: replies were requeued, not lost, until then.
    store_failed_at: Option<DateTime<Utc>>,
    /// When this instance last took partitions from another (or after its own restart): what the
    /// previous owner published, and what it left unpublished, is not known until the sweep has
    /// run, and its partitions' replies may be waiting in their queues.
    taken_over_at: Option<DateTime<Utc>>,
}

/// Shared by the registry (commits, actors) and the relay (confirms).
#[derive(Clone, Default)]
pub struct Sendings {
    state: Arc<Mutex<State>>,
}

fn key(message: &OutboxMessage) -> Option<Sent> {
    let step = message.step.clone()?;
    Some((step, message.kind.into(), message.attempt))
}

impl Sendings {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned map is still a consistent map: entries are only inserted or changed whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Committed commands, not yet confirmed (a confirm already heard is kept).
    pub fn unconfirmed(&self, messages: &[OutboxMessage]) {
        let mut state = self.state();
        for message in messages {
            if let Some(key) = key(message) {
                state
                    .commands
                    .entry(message.saga_id)
                    .or_default()
                    .entry(key)
                    .or_insert(None);
            }
        }
    }

    /// RabbitMQ confirmed this command at `at`.
    pub fn confirmed(&self, saga_id: Uuid, message: Option<Sent>, at: DateTime<Utc>) {
        if let Some(key) = message {
            if let Some(commands) = self.state().commands.get_mut(&saga_id) {
                commands.insert(key, Some(at));
            }
        }
    }

    /// The key the relay keeps for a row until its confirm.
    pub fn key(message: &OutboxMessage) -> Option<Sent> {
        key(message)
    }

    /// The saga is final (or reloading): nothing of it is needed any more.
    pub fn forget(&self, saga_id: Uuid) {
        self.state().commands.remove(&saga_id);
    }

    /// The replies consumer started (`true`: every such notice is a new connection, even if the
    /// notice of the lost one was missed) or is down (`false`).
    pub fn consuming(&self, yes: bool, now: DateTime<Utc>) {
        self.state().consuming_since = yes.then_some(now);
    }

    /// Postgres refused a transition: replies are being requeued while it is away.
    pub fn store_failed(&self, now: DateTime<Utc>) {
        self.state().store_failed_at = Some(now);
    }

    /// Partitions were taken over: their sagas' reply timeouts wait [`REPLY_GRACE`] as after a
    /// reconnect.
    pub fn taken_over(&self, now: DateTime<Utc>) {
        self.state().taken_over_at = Some(now);
    }

    /// The machine's view for `saga`'s timers at `now`.
    pub fn for_saga(&self, saga: &Saga, now: DateTime<Utc>) -> Sending {
        let state = self.state();
        let grace = chrono::Duration::from_std(REPLY_GRACE).unwrap_or_default();
        let consumed_since = state.consuming_since.unwrap_or(now);
        let replies_held_until = [
            Some(consumed_since),
            state.store_failed_at,
            state.taken_over_at,
        ]
        .into_iter()
        .flatten()
        .max()
        .map(|since| since + grace);
        let mut sending = Sending {
            replies_held_until,
            ..Sending::default()
        };
        for ((step, kind, attempt), confirmed) in state.commands.get(&saga.id).into_iter().flatten()
        {
            let Some(i) = saga.definition.step_index(step) else {
                continue;
            };
            match confirmed {
                None => sending.unconfirmed.push((i, *kind, *attempt)),
                Some(at) => sending.confirmed.push(((i, *kind, *attempt), *at)),
            }
        }
        sending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_step_saga() -> Saga {
        Saga::new(
            Uuid::nil(),
            crate::submission::parse_submission(&serde_json::json!({
                "name": "n", "steps": [{"name": "a", "participant": "p", "action": "x"}]
            }))
            .expect("valid"),
            None,
            Utc::now(),
        )
    }

    #[test]
    fn a_command_is_unconfirmed_from_its_commit_until_its_confirm_and_forgotten_with_its_saga() {
        let sendings = Sendings::default();
        let saga = one_step_saga();
        let transition = match crate::saga::machine::handle(
            &saga,
            crate::saga::machine::Event::Start,
            &mut crate::saga::machine::Context {
                now: saga.created_at,
                rng: &mut rand::rng(),
                sending: Sending::default(),
            },
        ) {
            crate::saga::machine::Decision::Apply(t) => t,
            other => panic!("starts: {other:?}"),
        };
        let messages: Vec<OutboxMessage> = transition
            .commands
            .iter()
            .map(|c| crate::outbox::command_message(&transition.saga, c, saga.created_at))
            .collect();
        sendings.unconfirmed(&messages);
        let now = Utc::now();
        assert_eq!(
            sendings.for_saga(&saga, now).unconfirmed,
            [(0, CommandKind::Action, 1)]
        );
        sendings.confirmed(saga.id, Sendings::key(&messages[0]), now);
        // A later sweep finding the row before its deletion does not make it unconfirmed again.
        sendings.unconfirmed(&messages);
        let sending = sendings.for_saga(&saga, now);
        assert!(sending.unconfirmed.is_empty());
        assert_eq!(sending.confirmed, [((0, CommandKind::Action, 1), now)]);
        sendings.forget(saga.id);
        assert!(sendings.for_saga(&saga, now).confirmed.is_empty());
    }

    #[test]
    fn replies_are_held_while_disconnected_and_for_the_grace_after() {
        let sendings = Sendings::default();
        let saga = one_step_saga();
        let now = Utc::now();
        let grace = chrono::Duration::from_std(REPLY_GRACE).expect("small");
        assert_eq!(
            sendings.for_saga(&saga, now).replies_held_until,
            Some(now + grace)
        );
        sendings.consuming(true, now);
        let later = now + chrono::Duration::seconds(10);
        assert_eq!(
            sendings.for_saga(&saga, later).replies_held_until,
            Some(now + grace)
        );
        sendings.consuming(false, later);
        assert_eq!(
            sendings.for_saga(&saga, later).replies_held_until,
            Some(later + grace)
        );
        // Requeued while Postgres was away: held for the grace after the last refusal too.
        sendings.consuming(true, later);
        let refused = later + chrono::Duration::seconds(30);
        sendings.store_failed(refused);
        assert_eq!(
            sendings.for_saga(&saga, refused + grace).replies_held_until,
            Some(refused + grace)
        );
        // Partitions taken over from another instance: held for the grace after that as well.
        let taken = refused + chrono::Duration::seconds(30);
        sendings.taken_over(taken);
        assert_eq!(
            sendings.for_saga(&saga, taken).replies_held_until,
            Some(taken + grace)
        );
    }
}
