//! The saga coordinator: runs distributed transactions across microservices.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of this crate.

pub mod amqp;
pub mod app;
pub mod cli;
pub mod config;
mod logging;
pub mod metrics;
pub mod outbox;
pub mod partition;
pub mod runtime;
pub mod saga;
pub mod startup;
pub mod store;
pub mod submission;
pub mod telemetry;
pub mod web;
pub mod wire;
