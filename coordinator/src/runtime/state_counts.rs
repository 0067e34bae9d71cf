//! Folds the changes of the counts per state and per minute into the counts every few seconds, so
//! that the changes tables stay a few thousand rows however long the coordinator runs (`store/
//! state_counts.rs`). Every instance folds; two folds at once are safe, just redundant.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::store::Store;

/// How often: the changes of a few seconds at full load are a few thousand rows.
pub const EVERY: Duration = Duration::from_secs(5);

/// Works until `stop` fires.
pub async fn run(store: Store, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if let Err(e) = store.interact(|db| db.fold_counts()).await {
            log::warn!(
                "cannot fold the counts per state and minute now ({e}); trying again in {EVERY:?}"
            );
        }
    }
}
