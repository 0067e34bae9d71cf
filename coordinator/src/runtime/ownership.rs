//! Which partitions this instance owns now, with the epoch of each lease: what the runtime asks
//! before it runs, writes or publishes anything for a saga.
//!
//! Several coordinators share one database by dividing the sagas into partitions
//! ([`crate::partition`]); the lease keeper ([`super::keeper`]) takes, renews and gives up the
//! leases, and records the outcome here. Everything else only reads: the registry adopts a saga only
//! if its partition is held, a transition carries the partition's epoch to the writer, which writes
//! it only if the lease is still this instance's with that epoch (the fence), and the AMQP edge
//! consumes the reply queues of the partitions held.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::Rng;
use tokio::sync::watch;
use uuid::Uuid;

use crate::partition::Partitions;
use crate::store::leases::{Lease, PartitionOwner};

/// Shared view of this instance's leases; cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

struct Inner {
    instance: String,
    partitions: Partitions,
    /// Partition → the epoch this instance holds it with.
    held: RwLock<HashMap<u32, i64>>,
    /// The partitions held, for the AMQP edge's reply consumers.
    owned: watch::Sender<BTreeSet<u32>>,
    /// Where each partition's owner can be asked, from the keeper's last look.
    owners: RwLock<HashMap<u32, PartitionOwner>>,
}

impl Ownership {
    pub fn new(instance: impl Into<String>, partitions: Partitions) -> Self {
        Ownership {
            inner: Arc::new(Inner {
                instance: instance.into(),
                partitions,
                held: RwLock::new(HashMap::new()),
                owned: watch::channel(BTreeSet::new()).0,
                owners: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// This instance's id in the lease table.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn partitions(&self) -> Partitions {
        self.inner.partitions
    }

    pub fn partition_of(&self, saga_id: Uuid) -> u32 {
        self.inner.partitions.of(saga_id)
    }

    fn held(&self) -> RwLockReadGuard<'_, HashMap<u32, i64>> {
        // A poisoned map is still consistent: entries are inserted and removed whole.
        self.inner.held.read().unwrap_or_else(|e| e.into_inner())
    }

    fn held_mut(&self) -> RwLockWriteGuard<'_, HashMap<u32, i64>> {
        self.inner.held.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease a write of this saga must prove, if this instance holds the saga's partition.
    pub fn fence(&self, saga_id: Uuid) -> Option<Lease> {
        let partition = self.partition_of(saga_id);
        self.held()
            .get(&partition)
            .map(|&epoch| Lease { partition, epoch })
    }

    pub fn owns(&self, saga_id: Uuid) -> bool {
        self.held().contains_key(&self.partition_of(saga_id))
    }

    /// Every lease held now.
    pub fn leases(&self) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self
            .held()
            .iter()
            .map(|(&partition, &epoch)| Lease { partition, epoch })
            .collect();
        leases.sort_by_key(|l| l.partition);
        leases
    }

    /// Whether this instance reports what every instance would read alike from the database and
    /// the broker (sagas in flight per state, the outbox, dead letters): the owner of partition 0
    /// does, so a dashboard summing over instances counts them once.
    pub fn reports_shared_gauges(&self) -> bool {
        self.held().contains_key(&0)
    }

    pub fn owned_count(&self) -> usize {
        self.held().len()
    }

    /// The partitions held, as they change (the first value is the current one).
    /// The partitions held now, as the store's `partition` column holds them.
    pub fn owned_partition_columns(&self) -> Vec<i32> {
        self.inner
            .owned
            .borrow()
            .iter()
            .filter_map(|&p| i32::try_from(p).ok())
            .collect()
    }

    pub fn watch_owned(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.inner.owned.subscribe()
    }

    /// Records newly taken leases.
    pub(super) fn gained(&self, leases: &[Lease]) {
        let mut held = self.held_mut();
        for lease in leases {
            held.insert(lease.partition, lease.epoch);
        }
        self.publish_owned(&held);
    }

    /// Forgets leases lost or given up: from now on nothing of those partitions is written here.
    pub(super) fn lost(&self, partitions: &[u32]) {
        let mut held = self.held_mut();
        for partition in partitions {
            held.remove(partition);
        }
        self.publish_owned(&held);
    }

    fn publish_owned(&self, held: &HashMap<u32, i64>) {
        self.inner
            .owned
            .send_replace(held.keys().copied().collect());
    }

    /// An id for a new saga, in a partition this instance holds (chosen at random, so submissions
    /// spread over them); `None` when it holds none. The id stays a UUIDv7: only its last two
    /// random bytes are chosen.
    pub fn new_saga_id(&self) -> Option<Uuid> {
        let held: Vec<u32> = self.held().keys().copied().collect();
        let mut rng = rand::rng();
        let partition = *held.get(rng.random_range(0..held.len().max(1)))?;
        Some(in_partition(
            Uuid::now_v7(),
            partition,
            self.inner.partitions,
            &mut rng,
        ))
    }

    /// Records who owns what, from the lease table.
    pub(super) fn set_owners(&self, owners: Vec<PartitionOwner>) {
        let map = owners.into_iter().map(|o| (o.partition, o)).collect();
        *self.inner.owners.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// Where to forward a request about a saga of `partition`: its owner's URL, unless that is this
    /// instance or unknown.
    pub fn owner_url(&self, partition: u32) -> Option<String> {
        let owners = self.inner.owners.read().unwrap_or_else(|e| e.into_inner());
        owners
            .get(&partition)
            .filter(|o| o.owner != self.inner.instance)
            .and_then(|o| o.url.clone())
    }

    /// Another instance that owns partitions, for a submission this one cannot take.
    pub fn some_owner_url(&self) -> Option<String> {
        let owners = self.inner.owners.read().unwrap_or_else(|e| e.into_inner());
        let mut urls: Vec<&String> = owners
            .values()
            .filter(|o| o.owner != self.inner.instance)
            .filter_map(|o| o.url.as_ref())
            .collect();
        urls.sort();
        urls.dedup();
        let n = urls.len();
        urls.get(rand::rng().random_range(0..n.max(1)))
            .map(|u| (*u).clone())
    }
}

/// `id` with its last two bytes set so that it falls in `partition`, the rest of those bits random.
fn in_partition(id: Uuid, partition: u32, partitions: Partitions, rng: &mut impl Rng) -> Uuid {
    let count = partitions.count();
    let highest_multiple = (u32::from(u16::MAX) - partition) / count;
    let value = partition + count * rng.random_range(0..=highest_multiple);
    let mut bytes = *id.as_bytes();
    let [high, low] = u16::try_from(value).unwrap_or(0).to_be_bytes();
    bytes[14] = high;
    bytes[15] = low;
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ownership(held: &[(u32, i64)]) -> Ownership {
        let o = Ownership::new("me", Partitions::default());
        let leases: Vec<Lease> = held
            .iter()
            .map(|&(partition, epoch)| Lease { partition, epoch })
            .collect();
        o.gained(&leases);
        o
    }

    #[test]
    fn a_new_saga_lands_in_a_held_partition_and_carries_its_epoch() {
        let o = ownership(&[(3, 7), (40, 2)]);
        for _ in 0..200 {
            let id = o.new_saga_id().expect("partitions are held");
            assert_eq!(id.get_version_num(), 7);
            let fence = o.fence(id).expect("held");
            assert!(
                [(3, 7), (40, 2)].contains(&(fence.partition, fence.epoch)),
                "{fence:?}"
            );
        }
    }

    #[test]
    fn nothing_is_fenced_or_created_in_partitions_not_held() {
        let o = ownership(&[(3, 7)]);
        o.lost(&[3]);
        assert!(o.new_saga_id().is_none());
        let id = in_partition(Uuid::now_v7(), 3, Partitions::default(), &mut rand::rng());
        assert!(o.fence(id).is_none());
        assert!(!o.owns(id));
        assert!(o.watch_owned().borrow().is_empty());
    }

    #[test]
    fn requests_are_forwarded_to_other_owners_only() {
        let o = ownership(&[(1, 1)]);
        o.set_owners(vec![
            PartitionOwner {
                partition: 1,
                owner: "me".into(),
                url: Some("http://me".into()),
            },
            PartitionOwner {
                partition: 2,
                owner: "b".into(),
                url: Some("http://b".into()),
            },
        ]);
        assert_eq!(o.owner_url(1), None);
        assert_eq!(o.owner_url(2).as_deref(), Some("http://b"));
        assert_eq!(o.owner_url(3), None);
        assert_eq!(o.some_owner_url().as_deref(), Some("http://b"));
    }

    proptest! {
        #[test]
        fn an_id_placed_in_a_partition_is_in_it(bytes in any::<[u8; 16]>(), count in 1..=1024u32, seed in any::<u32>()) {
            let partitions = Partitions::new(count).expect("in range");
            let partition = seed % count;
            let id = in_partition(Uuid::from_bytes(bytes), partition, partitions, &mut rand::rng());
            prop_assert_eq!(partitions.of(id), partition);
            prop_assert_eq!(&id.as_bytes()[..14], &bytes[..14]);
        }
    }
}
