//! The AMQP side of the saga coordinator's external contract (`docs/contract.md`, sections 1, 3
//! and 4), written down once.
//!
//! Both ends use it: the coordinator publishes [`CommandBody`]s and parses [`ReplyBody`]s, a
//! participant (the `participants` SDK, the benchmark's, the test harness's) does the opposite. It
//! knows nothing of how messages travel (no AMQP client), nor of what the coordinator does with them:
//! its only dependencies are serde, serde_json, uuid and chrono.
//!
//! - [`command`]: the command body, coordinator to participant.
//! - [`reply`]: the reply body, participant to coordinator, and its validating parse.
//! - [`kind`]: [`CommandKind`] (`action`, `compensation`, `check`).
//! - [`outcome`]: [`Outcome`], what a reply says.
//! - [`idempotency`]: the key every attempt of one command shares.
//! - [`names`]: exchange and queue names, the queue type ([`names::QueueType`]) and the queue
//!   arguments participants must match.
//! - [`broker`]: `SAGA_AMQP_URL` as a list of cluster nodes, and its redacted form for logs.
//! - [`properties`]: message properties and headers.
//!
//! Field names, spellings and optionality here are part of the product: participants in any
//! language integrate against them. Changing one is changing the contract.

pub mod broker;
pub mod command;
pub mod idempotency;
pub mod kind;
pub mod names;
pub mod outcome;
pub mod properties;
pub mod reply;

pub use command::CommandBody;
pub use idempotency::idempotency_key;
pub use kind::CommandKind;
pub use outcome::Outcome;
pub use reply::{holds_nul, ReplyBody};

#[cfg(test)]
mod examples_tests;
