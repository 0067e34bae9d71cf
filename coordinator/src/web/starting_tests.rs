//! The web edge while the coordinator starts (no database yet): alive, not ready, and every request
//! that needs Postgres answered 503 with what start-up is doing, without touching a store.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{test, web, App};
use serde_json::{json, Value};

use super::state::AppState;
use crate::amqp::dead_letters::DeadLetterBrowser;
use crate::amqp::AmqpSettings;
use crate::metrics::Metrics;
use crate::runtime::changes::Changes;

fn starting_state() -> web::Data<AppState> {
    let state = AppState::starting(
        Changes::default(),
        Arc::new(Metrics::new()),
        None,
        1 << 20,
        DeadLetterBrowser::new(AmqpSettings {
            url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
            namespace: "starting".into(),
            queue_type: Default::default(),
            prefetch: 1,
            partitions: Default::default(),
            instance: "starting".into(),
        }),
    );
    state.set_starting("waiting for Postgres: connection refused", false);
    web::Data::new(state)
}

#[actix_web::test]
async fn while_starting_it_is_alive_not_ready_and_answers_503_with_the_reason() {
    let state = starting_state();
    let app =
        test::init_service(App::new().configure(|cfg| crate::web::configure(cfg, state.clone())))
            .await;

    let health =
        test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(health.status(), StatusCode::OK);

    let ready =
        test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = test::read_body_json(ready).await;
    assert_eq!(
        body,
        json!({"postgres": false, "rabbitmq": false,
               "reason": "waiting for Postgres: connection refused"})
    );

    let submission = json!({"name": "early", "steps": [
        {"name": "a", "participant": "shop", "action": "reserve"}]});
    let requests = [
        test::TestRequest::post()
            .uri("/api/v1/sagas")
            .set_json(&submission),
        test::TestRequest::get().uri("/api/v1/sagas"),
        test::TestRequest::get().uri("/api/v1/sagas/0190b0e0-0000-7000-8000-000000000000"),
        test::TestRequest::get().uri("/dashboard/api/overview"),
    ];
    for request in requests {
        let resp = test::call_service(&app, request.to_request()).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let problem: Value = test::read_body_json(resp).await;
        assert_eq!(
            problem["detail"],
            "the coordinator is starting: waiting for Postgres: connection refused"
        );
    }

    // Metrics answer, leaving out what Postgres holds.
    let metrics =
        test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(metrics.status(), StatusCode::OK);

    state.set_starting("resuming unfinished sagas", true);
    let ready =
        test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
    let body: Value = test::read_body_json(ready).await;
    assert_eq!(body["postgres"], true, "migrated: {body}");
    assert_eq!(body["reason"], "resuming unfinished sagas");
}
