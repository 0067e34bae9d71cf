//! Checks of the kit itself, against the real Postgres and RabbitMQ: if these fail, the failures of
//! the tests that use it say nothing about the code under test.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use diesel_migrations::embed_migrations;
use lapin::options::{BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection as AmqpConnection, ConnectionProperties};
use testkit::{amqp_connect, Schema, TcpProxy, TestDb, TestNamespace};

/// A schema of one table, standing in for a crate's migrations.
const SCHEMA: Schema = Schema {
    name: "testkit",
    migrations: embed_migrations!("tests/migrations"),
    migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/migrations"),
};

#[test]
fn test_databases_come_from_the_template_and_are_dropped() {
    let db = TestDb::new(SCHEMA);
    assert!(db.exists().expect("exists"));
    let mut conn = PgConnection::establish(db.url()).expect("connecting");
    conn.batch_execute("INSERT INTO probe (id) VALUES (1)")
        .expect("the schema's table is there");
    drop(conn);
    let other = TestDb::new(SCHEMA);
    assert_ne!(db.name(), other.name());
    let name = db.name().to_string();
    drop(db);
    assert!(!testkit::db::database_exists_named(&name).expect("exists"));
    let reserved = TestDb::reserve_name();
    assert!(!reserved.exists().expect("exists"));
    assert!(other.exists().expect("exists"));
}

#[test]
fn a_schema_is_refused_when_its_directory_is_not_where_its_migrations_come_from() {
    let elsewhere = Schema {
        migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/src"),
        ..SCHEMA
    };
    let refused = TestDb::try_new(elsewhere).expect_err("no template from the wrong files");
    assert!(
        refused.to_string().contains("has no migration"),
        "{refused:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_queues_are_deleted_with_the_last_clone() {
    let ns = TestNamespace::new();
    ns.register_participant("probe");
    let conn = amqp_connect().await.expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    // A per-partition replies queue (partition 5 of the default 64), and none of the others: the
    // ones never declared must not stop the deletion.
    let declared = [
        ns.replies_queue(),
        ns.participant_queue("probe"),
        ns.partition_replies_queue(5),
    ];
    for queue in declared.clone() {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
    }
    let queues = declared;
    let clone = ns.clone();
    drop(ns);
    assert_eq!(clone.queue_len(&queues[0]).await.expect("len"), Some(0));
    drop(clone);
    let probe = TestNamespace::new();
    for queue in &queues {
        assert_eq!(probe.queue_len(queue).await.expect("len"), None, "{queue}");
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_severs_and_refuses() {
    let proxy = TcpProxy::to_rabbitmq();
    let url = proxy.amqp_url();
    let conn = AmqpConnection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect through the proxy");
    let channel = conn.create_channel().await.expect("channel");
    assert_eq!(proxy.active(), 1);

    assert_eq!(proxy.sever(), 1);
    let noticed = Instant::now() + Duration::from_secs(30);
    while conn.status().connected() {
        assert!(Instant::now() < noticed, "the connection never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .is_err(),
        "a severed connection's channel is closed"
    );

    proxy.pause();
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        AmqpConnection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("a paused proxy answers quickly");
    assert!(refused.is_err(), "a paused proxy refuses connections");

    proxy.resume();
    let again = AmqpConnection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect again after resume");
    assert!(again.create_channel().await.is_ok());
    assert_eq!(proxy.accepted(), 2);
}

#[test]
fn a_postgres_outage_cuts_connections_and_refuses_new_ones_until_resumed() {
    let db = TestDb::new(SCHEMA);
    let proxy = TcpProxy::to_postgres();
    let url = proxy.postgres_url(db.name());
    assert!(url.contains(&proxy.addr().to_string()), "{url}");
    let mut conn = PgConnection::establish(&url).expect("connect through the proxy");
    conn.batch_execute("INSERT INTO probe (id) VALUES (1)")
        .expect("the test database is behind the proxy");

    assert_eq!(proxy.outage(), 1);
    let cut = Instant::now() + Duration::from_secs(10);
    while conn.batch_execute("SELECT 1").is_ok() {
        assert!(Instant::now() < cut, "the connection was never cut");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    assert!(
        PgConnection::establish(&url).is_err(),
        "new connections are refused during the outage"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );

    proxy.resume();
    let mut again = PgConnection::establish(&url).expect("connect again after resume");
    again
        .batch_execute("INSERT INTO probe (id) VALUES (2)")
        .expect("the database is back");
}
