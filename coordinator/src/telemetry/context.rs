//! W3C trace context for sagas, and the span ids derived from a saga's own coordinates.
//!
//! A saga's span and each of its command attempts' spans have ids computed from the saga id (and
//! the step, kind and attempt), never drawn at random: a coordinator that restarts, or another one
//! that takes the saga over, names the same spans the first one named in the commands it sent, so
//! the participants' spans still join them. The saga's trace id and its parent (the caller's span)
//! are stored with the saga as a `traceparent` (`sagas.traceparent`). A saga submitted without one
//! gets a new trace whose stored parent is the saga span itself: that marks it as the trace's root.
//!
//! Pure: no I/O, no OpenTelemetry types; the runtime and the outbox use it whether or not spans
//! are exported.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::saga::CommandKind;

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A parsed W3C `traceparent` (version 00): `00-{trace_id}-{parent_id}-{flags}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The span the carrier continues from.
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` for anything that is not a valid traceparent (an all-zero id
    /// is invalid, as the W3C spec says), so a malformed header starts a new trace.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut fields = header.trim().split('-');
        let version = fields.next()?;
        let trace = fields.next()?;
        let parent = fields.next()?;
        let flags = fields.next()?;
        // Version 00 has exactly four fields; a later version may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && fields.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let parent_id: [u8; 8] = hex_bytes(parent)?;
        let [flags]: [u8; 1] = hex_bytes(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace for a saga submitted without context: a random trace id, and the saga span
    /// itself as the stored parent, which marks the saga span as the root.
    pub fn new_root(saga_id: Uuid) -> TraceParent {
        let mut trace_id: [u8; 16] = rand::random();
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        TraceParent {
            trace_id,
            parent_id: saga_span_id(saga_id),
            flags: SAMPLED,
        }
    }

    /// The same trace, continued from span `span_id`.
    pub fn child(self, span_id: [u8; 8]) -> TraceParent {
        TraceParent {
            parent_id: span_id,
            ..self
        }
    }

    /// The same trace with the `sampled` bit as given.
    pub fn sampled(self, sampled: bool) -> TraceParent {
        TraceParent {
            flags: if sampled {
                self.flags | SAMPLED
            } else {
                self.flags & !SAMPLED
            },
            ..self
        }
    }

    pub fn is_sampled(self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Whether this, stored with saga `saga_id`, says the saga span is the trace's root.
    pub fn roots(self, saga_id: Uuid) -> bool {
        self.parent_id == saga_span_id(saga_id)
    }

    pub fn trace_id_hex(self) -> String {
        hex(&self.trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// The saga span's id.
pub fn saga_span_id(saga_id: Uuid) -> [u8; 8] {
    derived(&[saga_id.as_bytes(), b"saga"])
}

/// The span id of one attempt of a command of a saga: a step's action or compensation, or the
/// saga's check-back (`step` `None`).
pub fn attempt_span_id(
    saga_id: Uuid,
    step: Option<usize>,
    kind: CommandKind,
    attempt: u32,
) -> [u8; 8] {
    let step = step.map_or(u64::MAX, |s| s as u64).to_be_bytes();
    derived(&[
        saga_id.as_bytes(),
        b"attempt",
        &step,
        kind.as_str().as_bytes(),
        &attempt.to_be_bytes(),
    ])
}

/// The first eight bytes of a SHA-256 over the parts (never all zero, which would be invalid).
fn derived(parts: &[&[u8]]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so no two lists of parts hash the same bytes.
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Lower-case hex of exactly `N` bytes (the W3C spec allows no upper case).
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let parsed = TraceParent::parse(CALLER).expect("valid");
        assert_eq!(parsed.to_string(), CALLER);
        assert!(parsed.is_sampled());
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn malformed_or_zero_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn span_ids_are_the_same_every_time_and_differ_per_attempt() {
        let saga = Uuid::now_v7();
        let a = attempt_span_id(saga, Some(0), CommandKind::Action, 1);
        assert_eq!(a, attempt_span_id(saga, Some(0), CommandKind::Action, 1));
        assert_ne!(a, attempt_span_id(saga, Some(0), CommandKind::Action, 2));
        assert_ne!(
            a,
            attempt_span_id(saga, Some(0), CommandKind::Compensation, 1)
        );
        assert_ne!(a, attempt_span_id(saga, Some(1), CommandKind::Action, 1));
        assert_ne!(
            a,
            attempt_span_id(Uuid::now_v7(), Some(0), CommandKind::Action, 1)
        );
        assert_ne!(saga_span_id(saga), a);
    }

    #[test]
    fn a_new_root_is_rooted_at_its_saga_span_and_a_callers_context_is_not() {
        let saga = Uuid::now_v7();
        let root = TraceParent::new_root(saga);
        assert!(root.roots(saga));
        assert!(root.is_sampled());
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        let caller = TraceParent::parse(CALLER).expect("valid");
        assert!(!caller.roots(saga));
        assert!(!caller.sampled(false).is_sampled());
    }
}
