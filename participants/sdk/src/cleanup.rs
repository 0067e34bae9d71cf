//! What [`barrier::purge`](crate::barrier::purge),
//! [`outbox::purge`](crate::initiator::outbox::purge) and
//! [`half_message::purge`](crate::initiator::half_message::purge) share: the error, the floor and the
//! batch loop.

use std::time::Duration;

use diesel::prelude::*;

/// The shortest `older_than` any purge accepts: one day (`barrier` module docs, "Cleanup").
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The `older_than` we recommend: 30 days (`barrier` module docs, "Cleanup").
pub const RECOMMENDED_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Why a purge deleted nothing more.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The age asked for is below the floor that keeps the barrier correct (see
    /// [`barrier::MIN_RETENTION`](crate::barrier::MIN_RETENTION)); nothing was deleted.
    #[error(
        "refusing to purge rows younger than {floor:?} (asked for {older_than:?}): a command may \
         still arrive for them"
    )]
    TooRecent {
        older_than: Duration,
        floor: Duration,
    },
    /// A batch must delete at least one row; nothing was deleted.
    #[error("the batch size must be at least 1, not {0}")]
    Batch(i64),
    /// The database; the batches before the failing one stay deleted.
    #[error("purging: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Refuses an age below [`MIN_RETENTION`]: rows a coordinator may still ask about must stay.
pub(crate) fn check_retention(older_than: Duration) -> Result<(), PurgeError> {
    if older_than < MIN_RETENTION {
        return Err(PurgeError::TooRecent {
            older_than,
            floor: MIN_RETENTION,
        });
    }
    Ok(())
}

/// Runs `delete_batch` (one `DELETE` of at most `batch` rows) until a batch comes back short, and
/// returns how many rows went. Each batch is its own statement, so on a connection outside a
/// transaction each commits by itself: row locks are held for one batch only, and an error keeps
/// what earlier batches deleted.
pub(crate) fn in_batches(
    conn: &mut PgConnection,
    batch: i64,
    mut delete_batch: impl FnMut(&mut PgConnection) -> QueryResult<usize>,
) -> Result<u64, PurgeError> {
    if batch < 1 {
        return Err(PurgeError::Batch(batch));
    }
    let mut total = 0u64;
    loop {
        let deleted = delete_batch(conn)?;
        total += deleted as u64;
        if (deleted as u64) < batch as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_below_the_floor_is_refused() {
        let just_below = MIN_RETENTION - Duration::from_secs(1);
        assert!(matches!(
            check_retention(just_below),
            Err(PurgeError::TooRecent { older_than, floor })
                if older_than == just_below && floor == MIN_RETENTION
        ));
        assert!(check_retention(Duration::ZERO).is_err());
        assert!(check_retention(MIN_RETENTION).is_ok());
        assert!(check_retention(RECOMMENDED_RETENTION).is_ok());
    }
}
