//! Which partition a saga belongs to: the unit of ownership when several coordinators share a
//! database (see `runtime/ownership.rs`).
//!
//! A saga's partition is a function of its id only, so every instance, the relay, the AMQP edge
//! (which names the partition's reply queue) and Postgres (the migration that partitioned existing
//! sagas) agree without asking anyone. It uses the last two bytes of the id, which are random in a
//! UUIDv7 (the first bytes are its timestamp).

use uuid::Uuid;

/// The partition count of a database: fixed when it was first used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u32);

/// Default number of partitions of a new database.
pub const DEFAULT_PARTITIONS: u32 = 64;
/// Most partitions a database may have (each is a lease row and a reply queue).
pub const MAX_PARTITIONS: u32 = 1024;

impl Partitions {
    /// `None` unless `1 <= count <= MAX_PARTITIONS`.
    pub fn new(count: u32) -> Option<Self> {
        (1..=MAX_PARTITIONS)
            .contains(&count)
            .then_some(Partitions(count))
    }

    pub fn count(self) -> u32 {
        self.0
    }

    /// The partition of a saga (the SQL twin is in the partitioning migration).
    pub fn of(self, saga_id: Uuid) -> u32 {
        let bytes = saga_id.as_bytes();
        (u32::from(bytes[14]) << 8 | u32::from(bytes[15])) % self.0
    }
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions(DEFAULT_PARTITIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_partition_is_read_from_the_last_two_bytes() {
        let id = Uuid::from_bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(Partitions(64).of(id), 258 % 64);
        assert_eq!(Partitions(1).of(id), 0);
    }

    #[test]
    fn counts_outside_the_allowed_range_are_refused() {
        assert!(Partitions::new(0).is_none());
        assert!(Partitions::new(MAX_PARTITIONS + 1).is_none());
        assert_eq!(Partitions::new(64), Some(Partitions::default()));
    }

    proptest! {
        #[test]
        fn every_saga_has_a_partition_within_the_count(bytes in any::<[u8; 16]>(), count in 1..=MAX_PARTITIONS) {
            let partitions = Partitions(count);
            prop_assert!(partitions.of(Uuid::from_bytes(bytes)) < count);
        }
    }
}
