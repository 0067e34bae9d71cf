//! AMQP message properties and headers of the contract (section 4).
//!
//! A command carries `message_id` (unique per attempt), `correlation_id` (equal to it), `reply_to`
//! (the replies queue), `type` (its [`CommandKind`](crate::CommandKind)), `content_type`,
//! `timestamp` and `delivery_mode`; a reply carries the command's `correlation_id`, `content_type`
//! and `delivery_mode`.

/// The header carrying the saga's W3C trace context, when it has one.
pub const TRACEPARENT: &str = "traceparent";

/// The header carrying the W3C `tracestate` the saga was submitted with, when it was.
pub const TRACESTATE: &str = "tracestate";

/// The `content_type` of every body.
pub const CONTENT_TYPE: &str = "application/json";

/// The `delivery_mode` of every message: persistent.
pub const PERSISTENT: u8 = 2;
