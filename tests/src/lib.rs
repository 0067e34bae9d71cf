//! End-to-end test harness for the saga coordinator.
//!
//! The tests under `tests/` are black-box tests of the external contract (`docs/contract.md`):
//! they talk HTTP to a coordinator and AMQP to RabbitMQ, against a real Postgres and a real RabbitMQ.
//! Every test gets its own database ([`test_db`]: a [`TestDb`] with the coordinator's schema) and its
//! own AMQP namespace ([`TestNamespace`]), so tests run in parallel without seeing each other. These,
//! the [`TcpProxy`] and the service URLs are the workspace's `testkit` crate, re-exported here.
//!
//! - [`TestApp`]: a coordinator started in-process, with an HTTP client ([`Api`]).
//! - [`CoordinatorProcess`]: the real binary as a child process (for SIGKILL tests).
//! - [`Cluster`]: several of them on one database and namespace, as one coordinator, with a
//!   [`ClusterClient`] that retries on another instance and reads of the partition leases.
//! - [`FakeParticipant`]: a participant written directly against lapin, answering from a script.
//! - [`TcpProxy`]: a TCP proxy in front of RabbitMQ or Postgres that can sever every connection and
//!   refuse new ones (an outage, without stopping the shared server).
//! - [`FakeCoordinator`]: the coordinator's side of AMQP by hand, to test participants (the SDK).
//! - [`ShopDbs`], [`ShopProcess`]: the example shop's databases, and its services as child processes.
//! - [`AlertReceiver`]: an HTTP server receiving the coordinator's alerts, answering from a script.
//! - [`RabbitCluster`]: a three-node RabbitMQ cluster beside the shared broker
//!   (`scripts/rabbitmq-cluster.sh`), for the broker HA test.
//!
//! Where the services live can be changed with `E2E_PG_URL` (server URL without a database name) and
//! `E2E_AMQP_URL` (see `testkit`).

pub mod alert_receiver;
pub mod api;
pub mod app;
pub mod browser;
pub mod check_back;
pub mod cluster;
pub mod defs;
pub mod fake_coordinator;
pub mod otlp_receiver;
pub mod participant;
pub mod process;
pub mod rabbitmq_cluster;
pub mod scenarios;
pub mod shop;
pub mod wait;

pub use alert_receiver::{AlertReceiver, ReceivedAlert};
pub use api::Api;
pub use app::{TestApp, TestAppBuilder};
pub use browser::Browser;
pub use check_back::{CheckAnswer, CheckBackServer};
pub use cluster::{Cluster, ClusterClient, ClusterDb, ClusterSettings, Leases};
pub use fake_coordinator::{command_body, FakeCoordinator};
pub use otlp_receiver::{OtlpReceiver, ReceivedSpan};
pub use participant::{Behaviour, FakeParticipant, ReceivedCommand, Reply, SentReply};
pub use process::CoordinatorProcess;
pub use rabbitmq_cluster::RabbitCluster;
pub use shop::{order_policy, steady_faults, ShopDbs, ShopProcess};
pub use testkit::{amqp_host_port, amqp_url, pg_server_url};
pub use testkit::{db, namespace, proxy};
pub use testkit::{DeadLetter, Schema, TcpProxy, TestDb, TestNamespace};
pub use wait::{connected_through, eventually};

use std::time::Duration;

/// The coordinator's schema: what every test database starts with.
pub const SCHEMA: Schema = Schema {
    name: "saga",
    migrations: coordinator::store::MIGRATIONS,
    migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/migrations"),
};

/// A database of its own for one test, with the coordinator's schema; dropped with the value.
pub fn test_db() -> TestDb {
    TestDb::new(SCHEMA)
}

/// Long enough for a saga of a few steps on a loaded two-core machine.
pub const SAGA_TIMEOUT: Duration = Duration::from_secs(60);

/// For the tests that push dozens of sagas through a crash or a broker outage.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(240);

/// The final saga states of the contract.
pub const FINAL_STATES: &[&str] = &["committed", "compensated", "aborted"];

/// The states in which a saga stays until an operator acts (the final ones and `failed`).
pub const SETTLED_STATES: &[&str] = &["committed", "compensated", "aborted", "failed"];
