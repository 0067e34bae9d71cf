//! The lease keeper: keeps this instance a live member, renews its leases well before they expire,
//! notices the ones it lost, and balances so that N live instances hold about P/N partitions each.
//!
//! Every third of a lease's lifetime it heartbeats, renews, then gives up its surplus (a newcomer
//! raised the number of live instances) or takes free and expired partitions up to its share. A
//! partition is given up here before it is released in Postgres (its actors stop, its replies are
//! forwarded), and taken in Postgres before anything of it runs here; in between, the fence in every
//! write makes sure no two instances ever commit for one partition.

use std::time::{Duration, Instant};

use super::ownership::Ownership;
use super::Registry;
use crate::metrics::Metrics;
use crate::store::leases::Lease;
use crate::store::{Store, StoreError};

/// How the keeper is set up.
#[derive(Debug, Clone)]
pub struct KeeperSettings {
    /// A lease's lifetime (`SAGA_LEASE_TTL_MS`); renewed every third of it.
    pub lease_ttl: Duration,
    /// Where other instances reach this one's HTTP API (`SAGA_ADVERTISE_URL`).
    pub url: String,
}

/// What to do about this instance's share of the partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Take up to this many more.
    Take(u32),
    /// Hand this many over to the others.
    Release(u32),
}

/// This instance's share: `ceil(partitions / live)`; more is handed over, less is topped up from
/// free and expired partitions.
pub fn balance(held: u32, live: u32, partitions: u32) -> Balance {
    let share = partitions.div_ceil(live.max(1));
    if held > share {
        Balance::Release(held - share)
    } else {
        Balance::Take(share - held)
    }
}

pub struct Keeper {
    ownership: Ownership,
    store: Store,
    registry: Registry,
    metrics: std::sync::Arc<Metrics>,
    settings: KeeperSettings,
    /// When the leases were last renewed, to tell how long Postgres has been away.
    renewed: Instant,
}

impl Keeper {
    pub fn new(
        ownership: Ownership,
        store: Store,
        registry: Registry,
        metrics: std::sync::Arc<Metrics>,
        settings: KeeperSettings,
    ) -> Self {
        Keeper {
            ownership,
            store,
            registry,
            metrics,
            settings,
            renewed: Instant::now(),
        }
    }

    pub fn every(&self) -> Duration {
        self.settings.lease_ttl / 3
    }

    /// A round failed (Postgres is away). Nothing is dropped here: without Postgres nothing can be
    /// committed anyway, and once it is back, the fence refuses what another instance took
    /// meanwhile and the next round learns it. If nobody took them (one coordinator alone), the
    /// sagas simply go on.
    pub fn failed(&mut self, e: StoreError) {
        if self.renewed.elapsed() >= self.settings.lease_ttl {
            log::warn!(
                "cannot renew partition leases for {:?} (longer than a lease): {e}; other \
                 coordinators may take them over, and then this one's writes are refused",
                self.renewed.elapsed()
            );
        } else {
            log::warn!("cannot renew or balance partition leases: {e}");
        }
    }

    /// One round: heartbeat, renew, balance, and learn who owns what.
    pub async fn tick(&mut self) -> Result<(), StoreError> {
        let instance = self.ownership.instance().to_owned();
        let ttl = self.settings.lease_ttl;
        let url = self.settings.url.clone();
        let held = self.ownership.leases();
        let started = Instant::now();
        let (live, renewed) = {
            let instance = instance.clone();
            let held = held.clone();
            self.store
                .interact(move |db| {
                    let live = db.heartbeat(&instance, &url, ttl)?;
                    Ok((live, db.renew_leases(&instance, &held, ttl)?))
                })
                .await?
        };
        self.renewed = started;
        self.metrics.observe_lease_renewals(renewed.len());
        let lost: Vec<Lease> = held
            .iter()
            .filter(|l| !renewed.contains(l))
            .copied()
            .collect();
        if !lost.is_empty() {
            log::warn!(
                "lost {} partition lease(s) to expiry or another instance: {:?}",
                lost.len(),
                partitions(&lost)
            );
            self.metrics.observe_leases_lost(lost.len());
            self.drop_partitions(&lost);
        }

        let count = self.ownership.partitions().count();
        let now_held = u32::try_from(self.ownership.owned_count()).unwrap_or(u32::MAX);
        match balance(now_held, live, count) {
            Balance::Release(surplus) => {
                // The highest partitions go first, so instances tend to keep the same ones.
                let mut leases = self.ownership.leases();
                let give = leases.split_off(leases.len().saturating_sub(surplus as usize));
                self.release(&give).await?;
            }
            Balance::Take(want) => self.take(want).await?,
        }
        let owners = self.store.interact(|db| db.partition_owners()).await?;
        self.ownership.set_owners(owners);
        self.metrics
            .observe_partitions_owned(self.ownership.owned_count());
        Ok(())
    }

    /// Takes up to `want` free or expired partitions (and any left by this instance's previous
    /// run), then starts their sagas.
    async fn take(&mut self, want: u32) -> Result<(), StoreError> {
        let instance = self.ownership.instance().to_owned();
        let held = self.ownership.leases();
        let ttl = self.settings.lease_ttl;
        let taken = self
            .store
            .interact(move |db| db.take_leases(&instance, &held, want, ttl))
            .await?;
        if taken.is_empty() {
            return Ok(());
        }
        log::info!(
            "took {} partition(s): {:?}",
            taken.len(),
            partitions(&taken)
        );
        self.metrics.observe_handovers("taken", taken.len());
        self.ownership.gained(&taken);
        for lease in taken {
            if let Err(e) = self.registry.adopt_partition(lease.partition).await {
                // Its sagas are found anyway when a reply or request arrives; try the rest.
                log::error!(
                    "cannot load the sagas of partition {}: {e}",
                    lease.partition
                );
            }
        }
        Ok(())
    }

    /// Stops the partitions' sagas here, then releases their leases in Postgres (which waits for
    /// any write under way on them).
    async fn release(&mut self, leases: &[Lease]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        self.drop_partitions(leases);
        let instance = self.ownership.instance().to_owned();
        let give = leases.to_vec();
        self.store
            .interact(move |db| db.release_leases(&instance, &give))
            .await?;
        log::info!(
            "handed over {} partition(s): {:?}",
            leases.len(),
            partitions(leases)
        );
        self.metrics.observe_handovers("released", leases.len());
        Ok(())
    }

    fn drop_partitions(&self, leases: &[Lease]) {
        let parts = partitions(leases);
        self.ownership.lost(&parts);
        for partition in parts {
            self.registry.drop_partition(partition);
        }
        self.metrics
            .observe_partitions_owned(self.ownership.owned_count());
    }

    /// A graceful stop: every lease is released and the heartbeat ended, so the others take over
    /// at once instead of after an expiry.
    pub async fn leave(mut self) {
        let leases = self.ownership.leases();
        if let Err(e) = self.release(&leases).await {
            log::warn!("cannot release partition leases at shutdown (they expire instead): {e}");
        }
        let instance = self.ownership.instance().to_owned();
        if let Err(e) = self.store.interact(move |db| db.leave(&instance)).await {
            log::warn!("cannot end this instance's heartbeat at shutdown: {e}");
        }
    }
}

fn partitions(leases: &[Lease]) -> Vec<u32> {
    leases.iter().map(|l| l.partition).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_instance_takes_every_partition() {
        assert_eq!(balance(0, 1, 64), Balance::Take(64));
        assert_eq!(balance(64, 1, 64), Balance::Take(0));
    }

    #[test]
    fn a_newcomer_makes_the_others_hand_over_their_surplus() {
        assert_eq!(balance(64, 2, 64), Balance::Release(32));
        assert_eq!(balance(0, 2, 64), Balance::Take(32));
        assert_eq!(balance(32, 3, 64), Balance::Release(10));
        assert_eq!(balance(0, 3, 64), Balance::Take(22));
    }

    proptest! {
        /// Whatever the live count, the shares cover every partition, and nobody is asked to hold
        /// more than one partition above an even split.
        #[test]
        fn shares_cover_every_partition(live in 1u32..50, partitions in 1u32..1025) {
            let share = match balance(0, live, partitions) {
                Balance::Take(n) => n,
                Balance::Release(_) => unreachable!("holding nothing is never a surplus"),
            };
            prop_assert!(share * live >= partitions);
            prop_assert!(share <= partitions / live + 1);
            prop_assert_eq!(balance(share + 1, live, partitions), Balance::Release(1));
        }
    }
}
