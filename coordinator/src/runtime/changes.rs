//! A feed of saga change notices: one per committed transition, for live views (the dashboard's
//! server-sent events).
//!
//! A notice says only which saga changed and into which state; a view that wants more reads the saga
//! again. The feed is a bounded broadcast: a slow reader that falls behind is told it lagged (and
//! should reload everything) instead of slowing down the actors, and sending with no reader costs
//! nothing. Notices are sent only after the transition is committed, so a view never shows a state
//! that a crash could take back. Changes that other coordinators committed are relayed into the
//! same feed by [`super::change_feed`], after their commit as well.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::saga::{Saga, SagaState};

/// Notices kept for a reader that is behind; past this it lags and must reload.
const CAPACITY: usize = 1024;

/// One committed change of a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaChange {
    pub id: Uuid,
    pub name: String,
    pub state: SagaState,
    pub at: DateTime<Utc>,
}

impl SagaChange {
    pub fn of(saga: &Saga) -> Self {
        SagaChange {
            id: saga.id,
            name: saga.definition.name.clone(),
            state: saga.state,
            at: saga.updated_at,
        }
    }
}

/// What the feed carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeNotice {
    /// A transition committed by this coordinator.
    Committed(SagaChange),
    /// A transition another coordinator committed (one of its partitions' sagas).
    Relayed(SagaChange),
    /// Notices were missed (from another coordinator, or while not listening): reload.
    Resync,
}

/// The sending side, shared by the registry; cheap to clone.
#[derive(Clone)]
pub struct Changes {
    sender: broadcast::Sender<ChangeNotice>,
    /// `true` once the coordinator is stopping: long-lived readers (event streams) should end, so
    /// that a graceful shutdown does not wait for an open browser tab.
    closing: watch::Sender<bool>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            sender: broadcast::channel(CAPACITY).0,
            closing: watch::channel(false).0,
        }
    }
}

impl Changes {
    /// Announces a committed transition (nobody listening is fine).
    pub fn send(&self, saga: &Saga) {
        let _ = self
            .sender
            .send(ChangeNotice::Committed(SagaChange::of(saga)));
    }

    /// Announces a transition another coordinator committed.
    pub fn relay(&self, change: SagaChange) {
        let _ = self.sender.send(ChangeNotice::Relayed(change));
    }

    /// Tells readers that changes were missed and what they show should be reloaded.
    pub fn resync(&self) {
        let _ = self.sender.send(ChangeNotice::Resync);
    }

    /// A new reader, seeing notices sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeNotice> {
        self.sender.subscribe()
    }

    /// Tells long-lived readers to finish: the coordinator is stopping.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns `true` when [`Changes::close`] is called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::definition::SagaDefinition;

    #[test]
    fn a_reader_sees_changes_sent_after_it_subscribed() {
        let changes = Changes::default();
        let definition: SagaDefinition = crate::submission::parse_submission(
            &serde_json::json!({"name": "n", "steps": [{"name": "a", "participant": "p", "action": "x"}]}),
        )
        .expect("a valid definition");
        let saga = Saga::new(Uuid::now_v7(), definition, None, Utc::now());
        changes.send(&saga); // nobody listens: dropped
        let mut reader = changes.subscribe();
        changes.send(&saga);
        let seen = reader.try_recv().expect("one notice");
        let ChangeNotice::Committed(seen) = seen else {
            panic!("a local commit: {seen:?}");
        };
        assert_eq!(seen.id, saga.id);
        assert_eq!(seen.state, SagaState::Running);
        assert!(reader.try_recv().is_err());
        changes.relay(seen.clone());
        changes.resync();
        assert_eq!(reader.try_recv(), Ok(ChangeNotice::Relayed(seen)));
        assert_eq!(reader.try_recv(), Ok(ChangeNotice::Resync));
    }
}
