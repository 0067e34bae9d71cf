//! OpenTelemetry end to end (issue 17): one saga's spans, from the caller's through the
//! coordinator's to the SDK participants' handlers, received by a real OTLP/HTTP receiver, across
//! a SIGKILL of the coordinator in the middle.
//!
//! This process is the caller and the participants: it installs the SDK's exporter (from the
//! standard variables, pointed at the receiver) as the global tracer provider; the coordinator is
//! the real binary with the same variables.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{eventually, CoordinatorProcess, OtlpReceiver, ReceivedSpan, TestDb, TestNamespace};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{global, Context};
use participants::client::{Client, RetryPolicy, SagaRequest, StepRequest};
use participants::{BoxError, Command, Outcome, Participant, ParticipantHandle, Settings};
use tokio::sync::Notify;

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");
const WAIT: Duration = Duration::from_secs(90);

fn settings(ns: &TestNamespace) -> Settings {
    Settings::default()
        .amqp_url(e2e::amqp_url())
        .namespace(ns.name())
        .concurrency(4)
}

/// A participant whose every command answers `answer(command)`; each handler makes a span of its
/// own (the handler's own instrumentation), which must nest under the SDK's handler span.
fn participant<F, Fut>(
    ns: &TestNamespace,
    name: &str,
    commands: &[(&str, bool)],
    answer: F,
) -> ParticipantHandle
where
    F: Fn(Command) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    ns.register_participant(name);
    let mut builder = Participant::builder(name).settings(settings(ns));
    for &(command, compensation) in commands {
        let answer = answer.clone();
        let handler = move |cmd: Command| {
            let answer = answer.clone();
            async move {
                let mut own = global::tracer("shop").start(format!("business {}", cmd.name));
                let outcome = answer(cmd).await;
                own.end();
                Ok::<_, BoxError>(outcome)
            }
        };
        builder = if compensation {
            builder.compensation(command, handler)
        } else {
            builder.action(command, handler)
        };
    }
    builder.build().expect("a valid participant").spawn()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 50,
        max_backoff_ms: 200,
        multiplier: 2.0,
    }
}

/// The real coordinator with `receiver` as its OTLP endpoint and the other variables `otel`.
async fn start_coordinator(
    db: &TestDb,
    ns: &TestNamespace,
    receiver: &OtlpReceiver,
    otel: &'static [(&'static str, &'static str)],
) -> CoordinatorProcess {
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())];
    env.extend(otel.iter().map(|(k, v)| (*k, v.to_string())));
    CoordinatorProcess::start_on_with(BIN, db, ns, env).await
}

/// A vendor's entry in the caller's W3C `tracestate`.
const TRACESTATE: &str = "congo=t61rcWkgMzE";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sagas_spans_join_the_callers_trace_across_a_coordinator_crash() {
    let receiver = OtlpReceiver::start().await;
    // This process's exporter, as a participant would install it; set before any thread reads the
    // environment, and only by this test.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let provider = tokio::task::spawn_blocking(|| participants::telemetry::install("shop"))
        .await
        .expect("join")
        .expect("installing the exporter")
        .expect("the variables ask for an exporter");

    let db: TestDb = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let mut first =
        start_coordinator(&db, &ns, &receiver, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;

    // Charge: busy once, then held until the coordinator was killed and restarted; ship refuses,
    // so the saga compensates charge and reserve.
    let held = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (h, r) = (held.clone(), release.clone());
    let stock = participant(
        &ns,
        "stock",
        &[("reserve", false), ("release", true)],
        |_| async { Outcome::success() },
    );
    let payments = participant(
        &ns,
        "payments",
        &[("charge", false), ("refund", true)],
        move |cmd: Command| {
            let (h, r) = (h.clone(), r.clone());
            async move {
                match (cmd.name.as_str(), cmd.attempt) {
                    ("charge", 1) => Outcome::retry("busy"),
                    ("charge", _) => {
                        h.notify_one();
                        r.notified().await;
                        Outcome::success()
                    }
                    _ => Outcome::success(),
                }
            }
        },
    );
    let shipping = participant(&ns, "shipping", &[("ship", false)], |_| async {
        Outcome::failure("no courier")
    });

    // The caller's span: the saga is submitted inside it, through the SDK's client. Its trace came
    // from upstream with a vendor's `tracestate`, which every span of the saga must keep.
    let upstream = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("a trace id"),
        SpanId::from_hex("00f067aa0ba902b7").expect("a span id"),
        TraceFlags::SAMPLED,
        true,
        TRACESTATE.parse::<TraceState>().expect("a tracestate"),
    ));
    let caller = global::tracer("caller").start_with_context("place order", &upstream);
    let caller_context = Context::current_with_span(caller);
    let client = Client::new(&format!("http://{}", first.http_addr())).expect("client");
    let request = SagaRequest::new("traced-order")
        .key("order-1")
        .step(StepRequest::new("reserve", "stock", "reserve").compensation("release"))
        .step(
            StepRequest::new("charge", "payments", "charge")
                .compensation("refund")
                .retry(fast_retry())
                .timeout(Duration::from_secs(60)),
        )
        .step(StepRequest::new("ship", "shipping", "ship"));
    let saga = client
        .submit(&request)
        .with_context(caller_context.clone())
        .await
        .expect("submitted");
    let caller_span = caller_context.span().span_context().clone();
    caller_context.span().end();
    let trace_id = caller_span.trace_id().to_string();
    let saga_id = saga.id.to_string();

    // The second charge is out: everything before it has ended and been exported; kill.
    tokio::time::timeout(WAIT, held.notified())
        .await
        .expect("the second charge reached the participant");
    eventually("the spans before the crash", WAIT, async || {
        let spans = receiver.spans();
        let coordinator = spans
            .iter()
            .filter(|s| s.service == "saga-coordinator")
            .count();
        // reserve, charge 1
        (coordinator >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = SystemTime::now();
    first.kill();
    // The second one sends its spans only when stopped (its batches wait ten minutes): SIGTERM
    // must flush them.
    let mut second = start_coordinator(
        &db,
        &ns,
        &receiver,
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    )
    .await;
    release.notify_one();

    let done = second
        .api()
        .wait_for_state(&saga_id, &["compensated"], WAIT)
        .await;
    assert_eq!(done["state"], "compensated");
    // The saga span follows a read of the event log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| s.service == "saga-coordinator" && s.name() == "traced-order"),
        "the saga span waits in the second coordinator's batch"
    );
    let status = tokio::task::spawn_blocking(move || second.terminate(Duration::from_secs(30)))
        .await
        .expect("join")
        .expect("the second coordinator stops");
    assert!(status.success(), "{status}");
    tokio::task::spawn_blocking(move || {
        let _ = provider.force_flush();
        provider
    })
    .await
    .expect("join");

    // Every span of the trace: the caller's, the saga's, six attempts and six handlers, and each
    // handler's own.
    eventually("every span of the saga", WAIT, async || {
        let received = receiver.spans();
        let ours = received.iter().filter(|s| s.trace_id() == trace_id).count();
        (ours >= 1 + 1 + 6 + 6 + 6).then_some(())
    })
    .await;
    // Anything sent twice would arrive about as late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = receiver.spans();
    for span in &all {
        if span.attribute("saga.id").as_deref() == Some(&saga_id) {
            assert_eq!(
                span.trace_id(),
                trace_id,
                "a span of the saga outside its trace: {span:?}"
            );
        }
    }
    let spans: Vec<&ReceivedSpan> = all.iter().filter(|s| s.trace_id() == trace_id).collect();
    let ids: Vec<String> = spans.iter().map(|s| s.span_id()).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a span was exported twice: {spans:#?}"
    );
    assert_eq!(spans.len(), 20, "{spans:#?}");
    for span in &spans {
        assert_eq!(span.span.trace_state, TRACESTATE, "{span:#?}");
    }
    let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id(), *s)).collect();
    let caller_id = caller_span.span_id().to_string();
    assert!(by_id.contains_key(&caller_id), "the caller's span");

    // The saga span: a child of the caller's, compensated, an error.
    let sagas: Vec<&&ReceivedSpan> = by_id
        .values()
        .filter(|s| s.service == "saga-coordinator" && s.name() == "traced-order")
        .collect();
    assert_eq!(sagas.len(), 1, "{sagas:#?}");
    let saga_span = sagas[0];
    assert_eq!(saga_span.parent_id(), caller_id);
    assert_eq!(
        saga_span.attribute("saga.id").as_deref(),
        Some(saga_id.as_str())
    );
    assert_eq!(saga_span.attribute("saga.key").as_deref(), Some("order-1"));
    assert_eq!(
        saga_span.attribute("saga.state").as_deref(),
        Some("compensated")
    );
    assert_eq!(
        saga_span.span.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    let event_names: Vec<&str> = saga_span
        .span
        .events
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(event_names.contains(&"retry_scheduled"), "{event_names:?}");
    assert!(event_names.contains(&"compensating"), "{event_names:?}");

    // The attempts: children of the saga span, each once.
    let attempt = |name: &str, number: u32| -> &ReceivedSpan {
        let found: Vec<&&ReceivedSpan> = by_id
            .values()
            .filter(|s| {
                s.service == "saga-coordinator"
                    && s.name() == name
                    && s.attribute("saga.attempt") == Some(number.to_string())
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} attempt {number}: {found:#?}");
        assert_eq!(
            found[0].parent_id(),
            saga_span.span_id(),
            "{name} attempt {number}"
        );
        found[0]
    };
    let outcomes = [
        ("reserve action", 1, "success"),
        ("charge action", 1, "retry"),
        ("charge action", 2, "success"),
        ("ship action", 1, "failure"),
        ("charge compensation", 1, "success"),
        ("reserve compensation", 1, "success"),
    ];
    for (name, number, outcome) in outcomes {
        let span = attempt(name, number);
        assert_eq!(
            span.attribute("saga.outcome").as_deref(),
            Some(outcome),
            "{name} {number}"
        );
        // The participants' handler spans: children of the attempt's, with the handler's own under them.
        let handlers: Vec<&&ReceivedSpan> = by_id
            .values()
            .filter(|s| s.service == "shop" && s.parent_id() == span.span_id())
            .collect();
        assert_eq!(
            handlers.len(),
            1,
            "the handler of {name} {number}: {handlers:#?}"
        );
        let own: Vec<&&ReceivedSpan> = by_id
            .values()
            .filter(|s| s.parent_id() == handlers[0].span_id())
            .collect();
        assert_eq!(own.len(), 1, "the handler's own span of {name} {number}");
    }
    // The attempt out during the crash began before it and ended after it.
    let held_span = attempt("charge action", 2);
    let killed = killed_at
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    assert!(
        held_span.span.start_time_unix_nano < killed,
        "{held_span:?}"
    );
    assert!(held_span.span.end_time_unix_nano > killed, "{held_span:?}");

    stock.shutdown().await;
    payments.shutdown().await;
    shipping.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_traces_exporter_none_nothing_is_sent_even_to_a_configured_endpoint() {
    let receiver = OtlpReceiver::start().await;
    let db: TestDb = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = TestNamespace::new();
    let mut coordinator =
        start_coordinator(&db, &ns, &receiver, &[("OTEL_TRACES_EXPORTER", "none")]).await;
    let _shop = e2e::FakeParticipant::always_succeed(&ns, "shop").await;
    let id = coordinator
        .api()
        .submit_id(&e2e::defs::saga(
            "untraced",
            vec![e2e::defs::step("a", "shop")],
        ))
        .await;
    coordinator
        .api()
        .wait_for_state(&id, &["committed"], WAIT)
        .await;
    // SIGTERM: an exporter would send what it queued now.
    let status =
        tokio::task::spawn_blocking(move || coordinator.terminate(Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("the coordinator stops");
    assert!(status.success(), "{status}");
    assert_eq!(receiver.connections(), 0, "{:?}", receiver.spans());
}
