//! The command relay: gets the commands of committed transitions to RabbitMQ, and forgets each
//! once RabbitMQ confirmed it.
//!
//! Commands come from the registry after their transition committed, and from a partition just
//! taken over (every command its sagas await). Nothing here is durable, and need not be: a command
//! follows from its step's state, so a crash loses only what the next owner of the saga sends
//! again (`saga::machine::awaited_commands`). Until then the relay keeps each command in memory:
//! one RabbitMQ refused, or could not take while it was away, goes again every
//! [`RETRY_EVERY`] while its saga's partition is still held here. A command is never on its way
//! twice at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::amqp::PublishResult;
use crate::metrics::{CommandBacklog, Metrics};
use crate::outgoing::OutgoingCommand;
use crate::runtime::ownership::Ownership;
use crate::runtime::sending::Sendings;

/// How often commands that were not published are handed to the publisher again, and the
/// backlog gauges brought up to date.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Commands whose partition `ownership` no longer holds are dropped: their new owner sends them.
pub fn spawn(
    ownership: Ownership,
    mut fresh: mpsc::UnboundedReceiver<Vec<OutgoingCommand>>,
    outbound: mpsc::UnboundedSender<OutgoingCommand>,
    mut results: mpsc::UnboundedReceiver<PublishResult>,
    metrics: Arc<Metrics>,
    sendings: Sendings,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut unconfirmed = Unconfirmed::default();
        let mut retry = tokio::time::interval(RETRY_EVERY);
        loop {
            tokio::select! {
                batch = fresh.recv() => {
                    let Some(batch) = batch else { break };
                    for command in batch {
                        let command = unconfirmed.hold(command);
                        if outbound.send(command).is_err() {
                            return;
                        }
                    }
                }
                result = results.recv() => {
                    let Some(result) = result else { break };
                    match result.result {
                        Ok(()) => {
                            let command = unconfirmed.confirmed(result.command_id);
                            metrics.observe_published(command.as_ref().map(|c| c.created_at));
                            if let Some(c) = command {
                                sendings.confirmed(c.saga_id, Sendings::key(&c), Utc::now());
                            }
                        }
                        Err(reason) => {
                            metrics.observe_publish_failure();
                            match unconfirmed.failed(result.command_id) {
                                Some(c) => log::debug!(
                                    saga_id:% = c.saga_id,
                                    saga = c.saga_name.as_str(),
                                    step = c.step.as_deref(),
                                    attempt = c.attempt,
                                    trace_id = logfmt::trace_id(c.traceparent.as_deref());
                                    "command {} not published, sending again later: {reason}",
                                    c.message_id
                                ),
                                None => log::debug!(
                                    "command {} not published: {reason}",
                                    result.command_id
                                ),
                            }
                        }
                    }
                }
                _ = retry.tick() => {
                    for command in unconfirmed.again(|saga_id| ownership.owns(saga_id)) {
                        if outbound.send(command).is_err() {
                            return;
                        }
                    }
                    metrics.observe_unconfirmed(&unconfirmed.backlog(Utc::now()));
                }
            }
        }
    })
}

/// The commands handed to the relay and not yet confirmed by RabbitMQ, by the relay's number.
#[derive(Default)]
struct Unconfirmed {
    next_id: i64,
    commands: HashMap<i64, Held>,
}

struct Held {
    command: OutgoingCommand,
    /// With the publisher now (`false`: refused, to be sent again).
    on_its_way: bool,
}

impl Unconfirmed {
    /// Numbers a new command and keeps it until confirmed; answers the copy to publish.
    fn hold(&mut self, mut command: OutgoingCommand) -> OutgoingCommand {
        self.next_id += 1;
        command.id = self.next_id;
        self.commands.insert(
            command.id,
            Held {
                command: command.clone(),
                on_its_way: true,
            },
        );
        command
    }

    /// RabbitMQ has it: forgotten.
    fn confirmed(&mut self, id: i64) -> Option<OutgoingCommand> {
        self.commands.remove(&id).map(|held| held.command)
    }

    /// Not published: kept for the next round.
    fn failed(&mut self, id: i64) -> Option<&OutgoingCommand> {
        let held = self.commands.get_mut(&id)?;
        held.on_its_way = false;
        Some(&held.command)
    }

    /// The commands to send again, now on their way; those of sagas no longer `owned` here are
    /// dropped.
    fn again(&mut self, owned: impl Fn(uuid::Uuid) -> bool) -> Vec<OutgoingCommand> {
        self.commands.retain(|_, held| owned(held.command.saga_id));
        self.commands
            .values_mut()
            .filter(|held| !held.on_its_way)
            .map(|held| {
                held.on_its_way = true;
                held.command.clone()
            })
            .collect()
    }

    /// How many commands wait for a confirm, and the age of the oldest.
    fn backlog(&self, now: DateTime<Utc>) -> CommandBacklog {
        let oldest = self.commands.values().map(|h| h.command.created_at).min();
        CommandBacklog {
            commands: i64::try_from(self.commands.len()).unwrap_or(i64::MAX),
            oldest_age_seconds: oldest
                .map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(saga_id: uuid::Uuid, attempt: u32) -> OutgoingCommand {
        OutgoingCommand {
            id: 0,
            saga_id,
            saga_name: "s".into(),
            message_id: contract::command_message_id(
                saga_id,
                Some("a"),
                contract::CommandKind::Action,
                attempt,
            ),
            participant: "p".into(),
            kind: contract::CommandKind::Action,
            step: Some("a".into()),
            attempt,
            body: Vec::new(),
            traceparent: None,
            tracestate: None,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_command_is_kept_until_confirmed_and_a_refused_one_goes_again_while_its_saga_is_owned() {
        let mut unconfirmed = Unconfirmed::default();
        let (mine, moved) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let first = unconfirmed.hold(command(mine, 1)).id;
        let second = unconfirmed.hold(command(mine, 2)).id;
        let elsewhere = unconfirmed.hold(command(moved, 1)).id;
        assert_ne!(first, second);
        assert_eq!(unconfirmed.backlog(Utc::now()).commands, 3);

        // Nothing refused: nothing to send again, even for a saga that moved.
        assert!(unconfirmed.again(|saga| saga == mine).is_empty());
        assert_eq!(
            unconfirmed.backlog(Utc::now()).commands,
            2,
            "the moved saga's command is dropped"
        );
        assert!(unconfirmed.failed(elsewhere).is_none());

        unconfirmed.failed(second);
        let again = unconfirmed.again(|saga| saga == mine);
        assert_eq!(again.iter().map(|c| c.id).collect::<Vec<_>>(), [second]);
        assert!(
            unconfirmed.again(|saga| saga == mine).is_empty(),
            "on its way once at a time"
        );

        assert_eq!(unconfirmed.confirmed(first).map(|c| c.attempt), Some(1));
        assert_eq!(unconfirmed.confirmed(second).map(|c| c.attempt), Some(2));
        assert_eq!(unconfirmed.backlog(Utc::now()).commands, 0);
        assert_eq!(unconfirmed.backlog(Utc::now()).oldest_age_seconds, 0.0);
    }
}
