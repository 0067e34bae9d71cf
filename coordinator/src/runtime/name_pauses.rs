//! Pausing every saga of a name ("stop every place-order saga until payments is back"): each
//! coordinator keeps the held names, so that a new saga of a held name starts paused, and, for the
//! partitions it owns, pauses the in-flight sagas of a held name and resumes those a released name
//! held. Each is a transition like any other (`Pause`/`Resume` by name), made by the owner.
//!
//! It looks every [`EVERY`], and at once when this coordinator pauses or resumes a name: a name
//! paused through another coordinator reaches this one's sagas within about a second. Durable and
//! idempotent: the names are a table, and a look cut short (a crash, a partition handed over) is
//! finished by the next look, here or at the partition's next owner.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use super::ownership::Ownership;
use super::{EngineError, Registry};
use crate::saga::machine::Event;
use crate::saga::PausedBy;
use crate::store::{Store, StoreError};

/// How often each coordinator looks for sagas to hold or release.
pub const EVERY: Duration = Duration::from_secs(1);

/// The held names as this coordinator last read them; cheap to clone.
#[derive(Clone, Default)]
pub struct PausedNames {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    names: RwLock<BTreeSet<String>>,
    look_now: Notify,
}

impl PausedNames {
    /// Whether sagas named `name` are held (a new one starts paused).
    pub fn contains(&self, name: &str) -> bool {
        self.inner
            .names
            .read()
            .map(|names| names.contains(name))
            .unwrap_or(false)
    }

    /// A name was paused or resumed here: take it into account now rather than at the next look.
    pub fn changed(&self, name: &str, paused: bool) {
        if let Ok(mut names) = self.inner.names.write() {
            if paused {
                names.insert(name.to_owned());
            } else {
                names.remove(name);
            }
        }
        self.inner.look_now.notify_one();
    }

    fn replace(&self, fresh: BTreeSet<String>) {
        if let Ok(mut names) = self.inner.names.write() {
            *names = fresh;
        }
    }
}

/// Looks until `stop` fires.
pub async fn run(
    registry: Registry,
    store: Store,
    ownership: Ownership,
    mut stop: oneshot::Receiver<()>,
) {
    let paused = registry.paused_names();
    loop {
        if let Err(e) = look(&registry, &store, &ownership, &paused).await {
            log::warn!("paused saga names: cannot look ({e}); trying again in {EVERY:?}");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(EVERY) => {}
            _ = paused.inner.look_now.notified() => {}
        }
    }
}

/// One look: reads the held names, then holds and releases the owned sagas that need it.
async fn look(
    registry: &Registry,
    store: &Store,
    ownership: &Ownership,
    paused: &PausedNames,
) -> Result<(), StoreError> {
    let names: Vec<String> = store
        .interact(|db| db.paused_names())
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    paused.replace(names.iter().cloned().collect());
    let partitions = ownership.owned_partition_columns();
    if partitions.is_empty() {
        return Ok(());
    }
    if !names.is_empty() {
        let (names, owned) = (names.clone(), partitions.clone());
        let to_hold = store
            .interact(move |db| db.sagas_to_hold(&names, &owned))
            .await?;
        apply(registry, to_hold, Event::Pause { by: PausedBy::Name }).await;
    }
    let to_release = store
        .interact(move |db| db.sagas_to_release(&names, &partitions))
        .await?;
    apply(registry, to_release, Event::Resume { by: PausedBy::Name }).await;
    Ok(())
}

async fn apply(registry: &Registry, sagas: Vec<Uuid>, event: Event) {
    for id in sagas {
        match registry.operate(id, event.clone()).await {
            // Finished meanwhile, or its partition moved: nothing to do here.
            Ok(_) | Err(EngineError::Conflict(_)) | Err(EngineError::NotOwner(_)) => {}
            Err(e) => log::warn!(
                saga_id:% = id;
                "saga {id}: {event:?} by its name failed ({e}); the next look tries again"
            ),
        }
    }
}
