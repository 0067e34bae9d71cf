//! Leases against the real Postgres, each test in a database of its own.

use std::time::Duration;

use super::*;
use crate::store::test_db::Db;

const TTL: Duration = Duration::from_secs(60);

fn db() -> Db {
    Db::new(4)
}

fn partitions(leases: &[Lease]) -> Vec<u32> {
    let mut p: Vec<u32> = leases.iter().map(|l| l.partition).collect();
    p.sort_unstable();
    p
}

#[test]
fn the_partition_count_is_set_while_the_database_is_new_and_refused_after() {
    let db = db();
    let q = db.queries();
    assert_eq!(q.settle_partitions(None).expect("count").count(), 64);
    assert_eq!(q.settle_partitions(Some(16)).expect("count").count(), 16);
    assert_eq!(q.settle_partitions(None).expect("count").count(), 16);
    q.take_leases("a", &[], 1, TTL).expect("taken");
    let refusal = q
        .settle_partitions(Some(32))
        .expect_err("a used database keeps its count")
        .to_string();
    assert!(refusal.contains("SAGA_PARTITIONS=32"), "{refusal}");
    assert!(refusal.contains("16 partitions"), "{refusal}");
    assert!(q.settle_partitions(Some(0)).is_err());
}

#[test]
fn the_sql_partition_of_a_saga_is_the_rusts() {
    let db = db();
    let ids: Vec<uuid::Uuid> = (0..200).map(|_| uuid::Uuid::now_v7()).collect();
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = Integer)]
        p: i32,
    }
    let from_sql: Vec<P> = diesel::sql_query(
        "SELECT (get_byte(uuid_send(id), 14) * 256 + get_byte(uuid_send(id), 15)) % 64 AS p
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n) ORDER BY n",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
    .load(&mut db.pool.get().expect("connection"))
    .expect("partitions");
    for (id, sql) in ids.iter().zip(from_sql) {
        assert_eq!(Partitions::default().of(*id), sql.p as u32, "{id}");
    }
}

#[test]
fn leases_are_taken_renewed_handed_over_and_reclaimed_by_their_owner() {
    let db = db();
    let q = db.queries();
    assert_eq!(q.heartbeat("a", "http://a", TTL).expect("alive"), 1);
    let a = q.take_leases("a", &[], 40, TTL).expect("taken");
    assert_eq!(partitions(&a), (0..40).collect::<Vec<_>>());
    assert!(a.iter().all(|l| l.epoch == 1));
    assert_eq!(q.heartbeat("b", "http://b", TTL).expect("alive"), 2);
    let b = q.take_leases("b", &[], 64, TTL).expect("taken");
    assert_eq!(
        partitions(&b),
        (40..64).collect::<Vec<_>>(),
        "only free ones"
    );

    // An expired lease that nobody took is renewed; one another instance took is lost.
    db.run(
        "UPDATE partition_leases SET expires_at = now() - interval '1 s' WHERE partition IN (0, 1)",
    );
    let by_b = q.take_leases("b", &b, 1, TTL).expect("taken");
    assert_eq!(
        by_b,
        vec![Lease {
            partition: 0,
            epoch: 2
        }]
    );
    let renewed = q.renew_leases("a", &a, TTL).expect("renewed");
    assert_eq!(renewed.len(), 39);
    assert!(!renewed.iter().any(|l| l.partition == 0));
    assert!(renewed.iter().any(|l| l.partition == 1));

    // Handed over: free at once, with the next epoch for whoever takes it.
    q.release_leases("a", &renewed[..1]).expect("released");
    let held_by_b: Vec<Lease> = b.iter().chain(&by_b).copied().collect();
    let next = q.take_leases("b", &held_by_b, 1, TTL).expect("taken");
    assert_eq!(
        next,
        vec![Lease {
            partition: 1,
            epoch: 2
        }]
    );

    // A restarted "a" (holding nothing in memory) takes back what is still recorded as its own.
    let again = q.take_leases("a", &[], 0, TTL).expect("reclaimed");
    assert_eq!(again.len(), 38);
    assert!(again.iter().all(|l| l.epoch == 2));
    assert!(q
        .renew_leases("a", &renewed, TTL)
        .expect("renewed")
        .is_empty());

    let owners = q.partition_owners().expect("owners");
    assert_eq!(owners.len(), 64);
    assert!(owners
        .iter()
        .all(|o| o.url.as_deref() == Some(&format!("http://{}", o.owner))));
    q.leave("a").expect("left");
    assert_eq!(q.heartbeat("b", "http://b", TTL).expect("alive"), 1);
}
