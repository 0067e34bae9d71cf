//! Alerts to `SAGA_ALERT_URL`: one signed alert per failed saga despite the receiver's errors, and
//! one stuck alert once a saga is in flight past `SAGA_STUCK_AFTER`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use e2e::defs::{saga, step_with};
use e2e::scenarios::{broken_compensation_saga, broken_compensation_shop};
use e2e::{
    eventually, AlertReceiver, Behaviour, FakeParticipant, ReceivedAlert, TestApp, SAGA_TIMEOUT,
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

const SECRET: &str = "alert-s3cret";

/// Whether the alert's `X-Saga-Signature` is the HMAC-SHA256 of its body under [`SECRET`].
fn signed(alert: &ReceivedAlert) -> bool {
    let Some(hex) = alert
        .header("x-saga-signature")
        .and_then(|s| s.strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(expected) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("a key");
    mac.update(&alert.raw);
    mac.verify_slice(&expected).is_ok()
}

/// The requests about saga `id` for `reason`, in arrival order.
fn about(alerts: &[ReceivedAlert], id: &str, reason: &str) -> Vec<ReceivedAlert> {
    alerts
        .iter()
        .filter(|a| a.body["saga"]["id"] == id && a.body["reason"] == reason)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_saga_gets_one_signed_alert_despite_the_receivers_errors() {
    // Every other request fails: each alert is refused at least once before one is taken.
    let receiver = AlertReceiver::start(|n| if n % 2 == 1 { 500 } else { 200 }).await;
    let app = TestApp::builder()
        .alerts(&receiver.url(), SECRET, Duration::from_secs(3600))
        .start()
        .await;
    let _shop = broken_compensation_shop(&app, Arc::new(AtomicBool::new(false))).await;
    let mut failed = Vec::new();
    for _ in 0..3 {
        failed.push(app.submit_id(&broken_compensation_saga()).await);
    }
    for id in &failed {
        app.wait_for_state(id, &["failed"], SAGA_TIMEOUT).await;
    }
    for id in &failed {
        eventually("the failed saga's alert taken", SAGA_TIMEOUT, async || {
            about(&receiver.received(), id, "failed")
                .iter()
                .any(|a| a.status == 200)
                .then_some(())
        })
        .await;
    }
    // Past the longest backoff a refused alert could still be waiting for.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let received = receiver.received();
    assert!(
        received.iter().any(|a| a.status == 500),
        "the receiver refused some"
    );
    for id in &failed {
        let tries = about(&received, id, "failed");
        let taken: Vec<usize> = (0..tries.len())
            .filter(|&i| tries[i].status == 200)
            .collect();
        assert_eq!(
            taken,
            [tries.len() - 1],
            "taken once, never sent again: {tries:#?}"
        );
        for alert in &tries {
            assert!(signed(alert), "signed: {alert:#?}");
            assert_eq!(
                alert.header("x-saga-alert-id"),
                Some(format!("{id}:failed").as_str())
            );
            assert_eq!(alert.body["saga"]["state"], "failed");
            assert_eq!(alert.body["saga"]["name"], "hard-to-undo");
        }
    }
    assert!(
        received.iter().all(|a| a.body["reason"] == "failed"),
        "nothing is stuck after an hour's threshold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_in_flight_past_the_threshold_gets_one_stuck_alert() {
    let receiver = AlertReceiver::start(|_| 200).await;
    let app = TestApp::builder()
        .alerts(&receiver.url(), SECRET, Duration::from_secs(2))
        .start()
        .await;
    let _silent = FakeParticipant::start(&app.ns, "silent", |_| Behaviour::NoReply).await;
    let id = app
        .submit_id(&saga(
            "slow-one",
            vec![step_with("wait", "silent", json!({"timeout_ms": 600_000}))],
        ))
        .await;
    let alert = eventually("the stuck alert", SAGA_TIMEOUT, async || {
        about(&receiver.received(), &id, "stuck").pop()
    })
    .await;
    let sent_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(alert.body["sent_at"].clone()).expect("sent_at");
    let created_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(alert.body["saga"]["created_at"].clone()).expect("created_at");
    assert!(
        sent_at - created_at >= chrono::Duration::seconds(2),
        "not before the threshold: {alert:#?}"
    );
    assert!(signed(&alert));
    assert_eq!(alert.body["saga"]["state"], "running");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        about(&receiver.received(), &id, "stuck").len(),
        1,
        "one stuck alert"
    );
}
