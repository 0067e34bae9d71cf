//! End-to-end test harness for the saga coordinator.
//!
//! The tests under `tests/` are black-box tests of the external contract (`docs/contract.md`):
//! they talk HTTP to a coordinator and AMQP to RabbitMQ, against a real Postgres and a real RabbitMQ.
//! Every test gets its own database ([`TestDb`], cloned from a migrated template) and its own AMQP
//! namespace ([`TestNamespace`]), so tests run in parallel without seeing each other.
//!
//! - [`TestApp`]: a coordinator started in-process, with an HTTP client ([`Api`]).
//! - [`CoordinatorProcess`]: the real binary as a child process (for SIGKILL tests).
//! - [`FakeParticipant`]: a participant written directly against lapin, answering from a script.
//! - [`TcpProxy`]: a TCP proxy in front of RabbitMQ that can sever every connection.
//! - [`FakeCoordinator`]: the coordinator's side of AMQP by hand, to test participants (the SDK).
//! - [`ShopDbs`], [`ShopProcess`]: the example shop's databases, and its services as child processes.
//!
//! Where the services live can be changed with `E2E_PG_URL` (server URL without a database name) and
//! `E2E_AMQP_URL`.

pub mod api;
pub mod app;
pub mod browser;
pub mod check_back;
pub mod db;
pub mod defs;
pub mod fake_coordinator;
pub mod namespace;
pub mod participant;
pub mod process;
pub mod proxy;
pub mod scenarios;
pub mod shop;
pub mod wait;

pub use api::Api;
pub use app::{TestApp, TestAppBuilder};
pub use browser::Browser;
pub use check_back::{CheckAnswer, CheckBackServer};
pub use db::TestDb;
pub use fake_coordinator::{command_body, FakeCoordinator};
pub use namespace::{DeadLetter, TestNamespace};
pub use participant::{Behaviour, FakeParticipant, ReceivedCommand, Reply, SentReply};
pub use process::CoordinatorProcess;
pub use proxy::TcpProxy;
pub use shop::{ShopDbs, ShopProcess};
pub use wait::eventually;

use std::time::Duration;

/// The Postgres server, as a URL without a database name.
pub fn pg_server_url() -> String {
    std::env::var("E2E_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The RabbitMQ broker the participants and (unless proxied) the coordinator use.
pub fn amqp_url() -> String {
    std::env::var("E2E_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Host and port of the broker in [`amqp_url`], for the proxy.
pub fn amqp_host_port() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("127.0.0.1:5672");
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5672")
    }
}

/// Long enough for a saga of a few steps on a loaded two-core machine.
pub const SAGA_TIMEOUT: Duration = Duration::from_secs(60);

/// For the tests that push dozens of sagas through a crash or a broker outage.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(240);

/// The final saga states of the contract.
pub const FINAL_STATES: &[&str] = &["committed", "compensated", "aborted"];

/// The states in which a saga stays until an operator acts (the final ones and `failed`).
pub const SETTLED_STATES: &[&str] = &["committed", "compensated", "aborted", "failed"];
