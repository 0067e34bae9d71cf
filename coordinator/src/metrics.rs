//! Prometheus metrics: one registry of typed metric families per coordinator, served at `/metrics`.
//!
//! Saga and step metrics are derived in one place, [`Metrics::observe_transition`], from what the
//! runtime already has after a transition is committed: the saga before and after it and the event
//! log entries the state machine wrote. Values that are cheap to read when asked (sagas in flight per
//! state, the outbox backlog, the broker connection, dead letters) are set at scrape time from a
//! [`Snapshot`] instead of being tracked, so they are right even after a crash or a reload.
//!
//! Labels are low-cardinality on purpose: saga name, participant, command kind, outcome and state.
//! Never a saga id. Every metric is listed in `docs/metrics.md`.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::saga::event_log::{CommandAttempt, CompensationReason};
use crate::saga::{CommandKind, LogEntry, Saga, SagaState, SubmissionMode, TimerPurpose};

/// The content type of the text [`Metrics::render`] produces.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaLabels {
    saga: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    saga: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    saga: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    saga: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    saga: String,
    participant: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplyLabels {
    saga: String,
    participant: String,
    kind: String,
    outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Saga durations: 10 ms to about 3 hours.
fn saga_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.5, 14))
}

/// Step round trips and publish latencies: 1 ms to about 2 minutes.
fn step_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

/// Transitions per group commit: 1 to 256 (the writer's largest batch).
fn batch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

/// A transition's wait for its commit: 0.5 ms to about 2 s.
fn write_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 13))
}

/// Values read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Unfinished sagas per (saga name, state), from Postgres; `None` if it could not be read.
    pub in_flight: Option<Vec<(String, SagaState, i64)>>,
    /// Outbox rows not yet confirmed, and the age of the oldest, from Postgres.
    pub outbox: Option<OutboxBacklog>,
    /// Sagas with a live actor in this coordinator.
    pub actors: usize,
    pub amqp_connected: bool,
    /// Messages waiting in `{ns}.dead-letters`, if the broker told us.
    pub dead_letters: Option<u32>,
}

/// The outbox as Postgres sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxBacklog {
    pub rows: i64,
    pub oldest_age_seconds: f64,
}

/// Every metric family of one coordinator.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes: the scrape-time gauges are reset and set, then encoded.
    scrape: Mutex<()>,

    sagas_started: Family<SagaLabels, Counter>,
    sagas_finished: Family<StateLabels, Counter>,
    sagas_failed: Family<SagaLabels, Counter>,
    compensations: Family<ReasonLabels, Counter>,
    saga_duration: HistogramFamily<StateLabels>,
    step_attempts: Family<StepLabels, Counter>,
    step_replies: Family<ReplyLabels, Counter>,
    step_duration: HistogramFamily<ReplyLabels>,
    step_timeouts: Family<StepLabels, Counter>,
    step_gave_up: Family<StepLabels, Counter>,
    dead_lettered: Family<StepLabels, Counter>,
    check_backs: Family<SagaLabels, Counter>,
    check_back_answers: Family<OutcomeLabels, Counter>,
    outbox_published: Counter,
    outbox_publish_failures: Counter,
    outbox_publish_latency: Histogram,
    store_batch_size: Histogram,
    store_write_latency: Histogram,

    in_flight: Family<StateLabels, Gauge>,
    outbox_backlog: Gauge,
    outbox_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    actors: Gauge,
    amqp_connected: Gauge,
    dead_letters: Gauge,

    partitions_owned: Gauge,
    lease_renewals: Counter,
    leases_lost: Counter,
    handovers: Family<HandoverLabels, Counter>,
    fenced_writes: Counter,
    alerts: Family<AlertLabels, Counter>,
    purged: Family<FinalStateLabels, Counter>,
}

/// `state`: the final state of the sagas retention deleted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinalStateLabels {
    state: String,
}

/// `reason`: `failed` or `stuck`; `outcome`: `delivered` (2xx) or `failed` (tried again later).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    reason: String,
    outcome: String,
}

/// `direction`: whether this instance took partitions or released them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandoverLabels {
    direction: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("saga"),
            scrape: Mutex::new(()),
            sagas_started: Family::default(),
            sagas_finished: Family::default(),
            sagas_failed: Family::default(),
            compensations: Family::default(),
            saga_duration: Family::new_with_constructor(saga_buckets),
            step_attempts: Family::default(),
            step_replies: Family::default(),
            step_duration: Family::new_with_constructor(step_buckets),
            step_timeouts: Family::default(),
            step_gave_up: Family::default(),
            dead_lettered: Family::default(),
            check_backs: Family::default(),
            check_back_answers: Family::default(),
            outbox_published: Counter::default(),
            outbox_publish_failures: Counter::default(),
            outbox_publish_latency: step_buckets(),
            store_batch_size: batch_buckets(),
            store_write_latency: write_buckets(),
            in_flight: Family::default(),
            outbox_backlog: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            actors: Gauge::default(),
            amqp_connected: Gauge::default(),
            dead_letters: Gauge::default(),
            partitions_owned: Gauge::default(),
            lease_renewals: Counter::default(),
            leases_lost: Counter::default(),
            handovers: Family::default(),
            fenced_writes: Counter::default(),
            alerts: Family::default(),
            purged: Family::default(),
        };
        m.registry.register(
            "sagas_started",
            "Sagas accepted (new submissions)",
            m.sagas_started.clone(),
        );
        m.registry.register(
            "sagas_finished",
            "Sagas that reached a final state (committed, compensated, aborted)",
            m.sagas_finished.clone(),
        );
        m.registry.register(
            "sagas_failed",
            "Sagas left failed for an operator (a compensation ran out of attempts)",
            m.sagas_failed.clone(),
        );
        m.registry.register(
            "compensations",
            "Sagas that began compensating, by reason (step_failed, timed_out, aborted)",
            m.compensations.clone(),
        );
        m.registry.register(
            "duration_seconds",
            "Time from submission to the final state",
            m.saga_duration.clone(),
        );
        m.registry.register(
            "step_attempts",
            "Commands dispatched (every attempt of an action or compensation)",
            m.step_attempts.clone(),
        );
        m.registry.register(
            "step_replies",
            "Replies that changed a saga, by outcome",
            m.step_replies.clone(),
        );
        m.registry.register(
            "step_duration_seconds",
            "Time from dispatching a step's current attempt to its reply",
            m.step_duration.clone(),
        );
        m.registry.register(
            "step_timeouts",
            "Attempts that got no reply within the step's timeout",
            m.step_timeouts.clone(),
        );
        m.registry.register(
            "step_gave_up",
            "Steps whose action or compensation ran out of attempts",
            m.step_gave_up.clone(),
        );
        m.registry.register(
            "dead_lettered_commands",
            "Commands a participant rejected without requeue (counted as a failed attempt)",
            m.dead_lettered.clone(),
        );
        m.registry.register(
            "check_backs",
            "Check-backs sent to the initiators of prepared sagas",
            m.check_backs.clone(),
        );
        m.registry.register(
            "check_back_answers",
            "What check-backs got: committed, aborted, pending, retry (no usable answer), timeout",
            m.check_back_answers.clone(),
        );
        m.registry.register(
            "outbox_published",
            "Commands RabbitMQ confirmed",
            m.outbox_published.clone(),
        );
        m.registry.register(
            "outbox_publish_failures",
            "Publish attempts that failed (the row stays and is sent again)",
            m.outbox_publish_failures.clone(),
        );
        m.registry.register(
            "outbox_publish_latency_seconds",
            "Time from committing a command to RabbitMQ's confirm",
            m.outbox_publish_latency.clone(),
        );
        m.registry.register(
            "sagas_in_flight",
            "Unfinished sagas per state (read from Postgres at scrape time)",
            m.in_flight.clone(),
        );
        m.registry.register(
            "outbox_backlog",
            "Commands committed but not yet confirmed by RabbitMQ",
            m.outbox_backlog.clone(),
        );
        m.registry.register(
            "store_batch_size",
            "Transitions committed together by one write (group commit)",
            m.store_batch_size.clone(),
        );
        m.registry.register(
            "store_write_seconds",
            "Time from handing a transition to the writer until its batch was committed",
            m.store_write_latency.clone(),
        );
        m.registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unconfirmed command (0 when the outbox is empty)",
            m.outbox_oldest_age.clone(),
        );
        m.registry.register(
            "actors",
            "Sagas with a live actor in this coordinator",
            m.actors.clone(),
        );
        m.registry.register(
            "amqp_connected",
            "1 while connected to RabbitMQ with the topology declared, else 0",
            m.amqp_connected.clone(),
        );
        m.registry.register(
            "dead_letters",
            "Messages waiting in the {ns}.dead-letters queue for an operator",
            m.dead_letters.clone(),
        );
        m.registry.register(
            "partitions_owned",
            "Partitions whose lease this coordinator holds (it runs their sagas)",
            m.partitions_owned.clone(),
        );
        m.registry.register(
            "lease_renewals",
            "Partition leases renewed by this coordinator",
            m.lease_renewals.clone(),
        );
        m.registry.register(
            "leases_lost",
            "Partition leases this coordinator lost to expiry or another instance (not handed over)",
            m.leases_lost.clone(),
        );
        m.registry.register(
            "partition_handovers",
            "Partitions this coordinator took (direction=taken) or handed over (direction=released)",
            m.handovers.clone(),
        );
        m.registry.register(
            "fenced_writes",
            "Transitions refused because their partition was no longer this coordinator's",
            m.fenced_writes.clone(),
        );
        m.registry.register(
            "alerts",
            "Alert deliveries to SAGA_ALERT_URL by reason and outcome (a failed one is tried again)",
            m.alerts.clone(),
        );
        m.registry.register(
            "purged",
            "Finished sagas deleted by retention (SAGA_RETAIN_*), by final state",
            m.purged.clone(),
        );
        m
    }

    pub fn observe_purged(&self, state: &str, sagas: usize) {
        self.purged
            .get_or_create(&FinalStateLabels {
                state: state.to_owned(),
            })
            .inc_by(sagas as u64);
    }

    pub fn observe_partitions_owned(&self, owned: usize) {
        self.partitions_owned
            .set(i64::try_from(owned).unwrap_or(i64::MAX));
    }

    pub fn observe_lease_renewals(&self, renewed: usize) {
        self.lease_renewals.inc_by(renewed as u64);
    }

    pub fn observe_leases_lost(&self, lost: usize) {
        self.leases_lost.inc_by(lost as u64);
    }

    /// `direction` is `taken` or `released`.
    pub fn observe_handovers(&self, direction: &str, partitions: usize) {
        self.handovers
            .get_or_create(&HandoverLabels {
                direction: direction.to_owned(),
            })
            .inc_by(partitions as u64);
    }

    pub fn observe_alert(&self, reason: &str, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.alerts
            .get_or_create(&AlertLabels {
                reason: reason.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn observe_fenced_write(&self) {
        self.fenced_writes.inc();
    }

    /// Records what a committed transition did, from the saga before and after it and the log
    /// entries it wrote. Called once per committed transition (the submission's first one included).
    pub fn observe_transition(
        &self,
        before: &Saga,
        after: &Saga,
        log: &[LogEntry],
        now: DateTime<Utc>,
    ) {
        let saga = &after.definition.name;
        let step = |command: &CommandAttempt| {
            let i = command.step?;
            let def = after.definition.steps.get(i)?;
            Some((i, def))
        };
        for entry in log {
            if entry
                .command()
                .is_some_and(|c| c.kind == CommandKind::Check)
            {
                self.observe_check_back(saga, entry);
                continue;
            }
            match entry {
                // A two-phase saga starts when it is prepared; its later "started" is the same saga.
                LogEntry::Started if after.definition.mode == SubmissionMode::Prepare => {}
                LogEntry::Started | LogEntry::Prepared => {
                    self.sagas_started
                        .get_or_create(&SagaLabels { saga: saga.clone() })
                        .inc();
                }
                LogEntry::Dispatched { command }
                | LogEntry::TimedOut { command }
                | LogEntry::GaveUp { command, .. }
                | LogEntry::DeadLettered { command } => {
                    let Some((_, def)) = step(command) else {
                        continue;
                    };
                    let labels = StepLabels {
                        saga: saga.clone(),
                        participant: def.participant.clone(),
                        kind: command.kind.as_str().into(),
                    };
                    let family = match entry {
                        LogEntry::Dispatched { .. } => &self.step_attempts,
                        LogEntry::TimedOut { .. } => &self.step_timeouts,
                        LogEntry::GaveUp { .. } => &self.step_gave_up,
                        _ => &self.dead_lettered,
                    };
                    family.get_or_create(&labels).inc();
                }
                LogEntry::Reply {
                    command, outcome, ..
                } => {
                    let Some((i, def)) = step(command) else {
                        continue;
                    };
                    let labels = ReplyLabels {
                        saga: saga.clone(),
                        participant: def.participant.clone(),
                        kind: command.kind.as_str().into(),
                        outcome: label(outcome),
                    };
                    self.step_replies.get_or_create(&labels).inc();
                    // The attempt's reply timer was armed at dispatch for `timeout_ms`.
                    let timer = before.steps.get(i).and_then(|s| s.timer);
                    if let Some(timer) = timer.filter(|t| t.purpose == TimerPurpose::ReplyTimeout) {
                        let sent =
                            timer.due_at - chrono::Duration::milliseconds(def.timeout_ms as i64);
                        self.step_duration
                            .get_or_create(&labels)
                            .observe(seconds(now - sent));
                    }
                }
                LogEntry::Compensating { reason } => {
                    let reason = compensation_reason(reason);
                    self.compensations
                        .get_or_create(&ReasonLabels {
                            saga: saga.clone(),
                            reason: reason.into(),
                        })
                        .inc();
                }
                LogEntry::Failed { .. } => {
                    self.sagas_failed
                        .get_or_create(&SagaLabels { saga: saga.clone() })
                        .inc();
                }
                _ => {}
            }
        }
        if after.state.is_final() && !before.state.is_final() {
            let labels = StateLabels {
                saga: saga.clone(),
                state: after.state.as_str().into(),
            };
            self.sagas_finished.get_or_create(&labels).inc();
            self.saga_duration
                .get_or_create(&labels)
                .observe(seconds(now - after.created_at));
        }
    }

    /// Check-backs of two-phase sagas (contract, section 5): sent, and what came of each.
    fn observe_check_back(&self, saga: &str, entry: &LogEntry) {
        let answer = |outcome: String| OutcomeLabels {
            saga: saga.to_string(),
            outcome,
        };
        match entry {
            LogEntry::Dispatched { .. } => {
                self.check_backs
                    .get_or_create(&SagaLabels {
                        saga: saga.to_string(),
                    })
                    .inc();
            }
            LogEntry::Reply { outcome, .. } => {
                self.check_back_answers
                    .get_or_create(&answer(label(outcome)))
                    .inc();
            }
            LogEntry::TimedOut { .. } => {
                self.check_back_answers
                    .get_or_create(&answer("timeout".into()))
                    .inc();
            }
            LogEntry::DeadLettered { .. } => {
                self.check_back_answers
                    .get_or_create(&answer("dead_lettered".into()))
                    .inc();
            }
            _ => {}
        }
    }

    /// RabbitMQ confirmed a command that was committed at `created_at`.
    pub fn observe_published(&self, created_at: Option<DateTime<Utc>>) {
        self.outbox_published.inc();
        if let Some(created_at) = created_at {
            self.outbox_publish_latency
                .observe(seconds(Utc::now() - created_at));
        }
    }

    /// The writer committed (or failed) a batch of transitions that had waited `waits` since they
    /// were handed to it. Batches that only delete confirmed outbox rows are not counted.
    pub fn observe_batch(&self, waits: impl ExactSizeIterator<Item = std::time::Duration>) {
        if waits.len() == 0 {
            return;
        }
        self.store_batch_size.observe(waits.len() as f64);
        for wait in waits {
            self.store_write_latency.observe(wait.as_secs_f64());
        }
    }

    /// A publish failed; the outbox row stays and goes out again later.
    pub fn observe_publish_failure(&self) {
        self.outbox_publish_failures.inc();
    }

    /// The text exposition (OpenMetrics) with the scrape-time values of `snapshot`.
    pub fn render(&self, snapshot: Snapshot) -> Result<String, std::fmt::Error> {
        let _scraping = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.in_flight.clear();
        if let Some(in_flight) = snapshot.in_flight {
            for (saga, state, count) in in_flight {
                self.in_flight
                    .get_or_create(&StateLabels {
                        saga,
                        state: state.as_str().into(),
                    })
                    .set(count);
            }
        }
        if let Some(outbox) = snapshot.outbox {
            self.outbox_backlog.set(outbox.rows);
            self.outbox_oldest_age.set(outbox.oldest_age_seconds);
        }
        self.actors
            .set(i64::try_from(snapshot.actors).unwrap_or(i64::MAX));
        self.amqp_connected.set(i64::from(snapshot.amqp_connected));
        if let Some(dead) = snapshot.dead_letters {
            self.dead_letters.set(i64::from(dead));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The `reason` label of `saga_compensations_total`.
fn compensation_reason(reason: &CompensationReason) -> &'static str {
    match reason {
        CompensationReason::Aborted => "aborted",
        CompensationReason::TimedOut => "timed_out",
        CompensationReason::StepFailed { .. } | CompensationReason::StepGaveUp { .. } => {
            "step_failed"
        }
    }
}

/// A label value from an enum of the wire contract, spelled as it is on the wire.
fn label(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => "unknown".into(),
    }
}

fn seconds(d: chrono::Duration) -> f64 {
    d.to_std().map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::machine::{self, Context, Decision, Event};
    use crate::submission::parse_submission;
    use serde_json::{json, Value};
    use uuid::Uuid;

    fn saga(body: Value, now: DateTime<Utc>) -> Saga {
        let def = parse_submission(&body).expect("valid submission");
        Saga::new(Uuid::now_v7(), def, None, now)
    }

    fn apply(m: &Metrics, saga: &Saga, event: Event, now: DateTime<Utc>) -> Saga {
        let mut rng = rand::rng();
        let mut ctx = Context {
            now,
            rng: &mut rng,
            sending: Default::default(),
        };
        let Decision::Apply(t) = machine::handle(saga, event, &mut ctx) else {
            panic!("the event changed nothing")
        };
        m.observe_transition(saga, &t.saga, &t.log, now);
        t.saga
    }

    fn reply(saga: &Saga, step: &str, kind: &str, outcome: &str) -> Event {
        let body: contract::ReplyBody = serde_json::from_value(json!({
            "saga_id": saga.id, "step": step, "kind": kind, "attempt": 1,
            "outcome": outcome,
        }))
        .expect("a reply");
        Event::Reply(body.into())
    }

    fn body(m: &Metrics) -> String {
        m.render(Snapshot::default()).expect("encodes")
    }

    #[test]
    fn a_committed_saga_counts_start_attempt_reply_and_finish() {
        let m = Metrics::new();
        let t0 = Utc::now();
        let s = saga(
            json!({"name": "order", "steps": [
                {"name": "pay", "participant": "payments", "action": "charge", "timeout_ms": 1000}
            ]}),
            t0,
        );
        let s = apply(&m, &s, Event::Start, t0);
        let t1 = t0 + chrono::Duration::milliseconds(250);
        apply(&m, &s, reply(&s, "pay", "action", "success"), t1);
        let text = body(&m);
        for line in [
            r#"saga_sagas_started_total{saga="order"} 1"#,
            r#"saga_step_attempts_total{saga="order",participant="payments",kind="action"} 1"#,
            r#"saga_step_replies_total{saga="order",participant="payments",kind="action",outcome="success"} 1"#,
            r#"saga_step_duration_seconds_sum{saga="order",participant="payments",kind="action",outcome="success"} 0.25"#,
            r#"saga_sagas_finished_total{saga="order",state="committed"} 1"#,
            r#"saga_duration_seconds_count{saga="order",state="committed"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(&s.id.to_string()), "a saga id leaked");
    }

    #[test]
    fn compensation_reasons_follow_the_machine() {
        let m = Metrics::new();
        let t0 = Utc::now();
        let def = json!({"name": "trip", "timeout_ms": 100, "steps": [
            {"name": "hotel", "participant": "hotels", "action": "book", "compensation": "cancel"}
        ]});
        // A step refused.
        let s = apply(&m, &saga(def.clone(), t0), Event::Start, t0);
        apply(&m, &s, reply(&s, "hotel", "action", "failure"), t0);
        // The saga's own deadline passed.
        let s = apply(&m, &saga(def.clone(), t0), Event::Start, t0);
        let late = t0 + chrono::Duration::seconds(1);
        apply(&m, &s, Event::TimerFired, late);
        // An operator aborted it.
        let s = apply(&m, &saga(def, t0), Event::Start, t0);
        apply(&m, &s, Event::Abort, t0);
        let text = body(&m);
        for reason in ["step_failed", "timed_out", "aborted"] {
            let line = format!(r#"saga_compensations_total{{saga="trip",reason="{reason}"}} 1"#);
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn scrape_time_values_replace_the_previous_ones() {
        let m = Metrics::new();
        let snapshot = || Snapshot {
            in_flight: Some(vec![("order".into(), SagaState::Running, 3)]),
            outbox: Some(OutboxBacklog {
                rows: 7,
                oldest_age_seconds: 1.5,
            }),
            actors: 3,
            amqp_connected: true,
            dead_letters: Some(2),
        };
        let text = m.render(snapshot()).expect("encodes");
        for line in [
            r#"saga_sagas_in_flight{saga="order",state="running"} 3"#,
            "saga_outbox_backlog 7",
            "saga_amqp_connected 1",
            "saga_dead_letters 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let text = m
            .render(Snapshot {
                in_flight: Some(Vec::new()),
                ..Snapshot::default()
            })
            .expect("encodes");
        assert!(!text.contains(r#"state="running""#), "{text}");
        assert!(text.contains("saga_amqp_connected 0"), "{text}");
    }
}
