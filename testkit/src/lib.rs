//! Test infrastructure shared by the coordinator's unit tests and the end-to-end harness (`e2e`).
//!
//! Tests run against a real Postgres and a real RabbitMQ, in parallel, so each test gets what it
//! touches to itself and gives it back at the end:
//!
//! - [`TestDb`]: a database of its own, cloned from a template migrated once with a [`Schema`] that the
//!   crate under test supplies (this crate knows no schema: the coordinator's own tests use it, so it
//!   cannot depend on the coordinator).
//! - [`TestNamespace`]: an AMQP namespace of its own, its exchanges and queues deleted at the end.
//! - [`TcpProxy`]: a TCP proxy in front of RabbitMQ or Postgres that can sever every connection and
//!   refuse new ones, standing in for a broker or database that goes away (the shared servers are
//!   never stopped: other tests run beside).
//!
//! Where the services live can be changed with `E2E_PG_URL` (server URL without a database name) and
//! `E2E_AMQP_URL`; nothing else in the workspace's tests names an address.

pub mod db;
pub mod namespace;
pub mod proxy;

pub use db::{Schema, TestDb};
pub use namespace::{amqp_connect, DeadLetter, TestNamespace};
pub use proxy::TcpProxy;

/// The Postgres server, as a URL without a database name.
pub fn pg_server_url() -> String {
    std::env::var("E2E_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// Host and port of the Postgres server in [`pg_server_url`], for the proxy.
pub fn pg_host_port() -> String {
    host_port(&pg_server_url(), 5432)
}

/// The RabbitMQ broker the participants and (unless proxied) the coordinator use.
pub fn amqp_url() -> String {
    std::env::var("E2E_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Host and port of the broker in [`amqp_url`], for the proxy.
pub fn amqp_host_port() -> String {
    host_port(&amqp_url(), 5672)
}

/// `scheme://user@host:port/...` → `host:port` (`default_port` if the URL names none).
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    }
}
