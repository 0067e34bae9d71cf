//! Alerts (issue 16): telling a person when a saga needs one, instead of waiting to be looked at.
//!
//! Each coordinator looks every [`EVERY`] at the partitions it owns for sagas that became `failed`
//! and sagas in flight longer than their stuck threshold, and POSTs one alert per saga and reason
//! to `SAGA_ALERT_URL`, signed with an HMAC of the body. A 2xx answer acknowledges it: it is never
//! sent again (recorded in `saga_alerts`). Anything else is tried again with capped exponential
//! backoff, so delivery is at least once. It runs on its own task and never touches a saga: a slow
//! or failing receiver delays alerts only. With several coordinators each alerts for its own
//! partitions; a partition changing hands while an alert is out may send it twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::oneshot;

use super::ownership::Ownership;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::saga::SagaState;
use crate::store::alerts::AlertDue;
use crate::store::{Store, StoreError};

/// How often each coordinator looks for alerts to send.
pub const EVERY: Duration = Duration::from_secs(1);
/// The signature header: `sha256=` and the hex HMAC-SHA256 of the body under the secret.
pub const SIGNATURE_HEADER: &str = "X-Saga-Signature";
/// The alert's id (`{saga_id}:{reason}`), the same on every try: a receiver can drop repeats.
pub const ID_HEADER: &str = "X-Saga-Alert-Id";
/// Longest wait between two tries of one alert.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why an alert is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The saga became `failed`: automation gave up, a person must retry or resolve it.
    Failed,
    /// The saga has been in flight longer than its threshold.
    Stuck,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Failed => "failed",
            Reason::Stuck => "stuck",
        }
    }
}

/// Where alerts go and when a saga counts as stuck.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub url: url::Url,
    pub secret: String,
    pub stuck_after: Duration,
    pub stuck_after_by_name: HashMap<String, Duration>,
}

impl AlertSettings {
    /// The alert settings of `settings`, if alerts are on; an error says what is missing.
    pub fn from_settings(settings: &Settings) -> Result<Option<AlertSettings>, String> {
        let Some(url) = settings.alert_url.clone() else {
            return Ok(None);
        };
        let secret = settings
            .alert_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("SAGA_ALERT_URL is set but SAGA_ALERT_SECRET is not: every alert is signed")?;
        Ok(Some(AlertSettings {
            url,
            secret,
            stuck_after: settings.stuck_after,
            stuck_after_by_name: settings.stuck_after_by_name.iter().cloned().collect(),
        }))
    }

    fn stuck_after(&self, name: &str) -> Duration {
        self.stuck_after_by_name
            .get(name)
            .copied()
            .unwrap_or(self.stuck_after)
    }

    /// The shortest threshold: sagas younger than that are stuck under no name's.
    fn shortest_stuck_after(&self) -> Duration {
        self.stuck_after_by_name
            .values()
            .copied()
            .chain([self.stuck_after])
            .min()
            .unwrap_or(self.stuck_after)
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The alert's body (docs/alerts.md).
pub fn body(reason: Reason, saga: &AlertDue, now: DateTime<Utc>, detail: String) -> Value {
    json!({
        "id": format!("{}:{}", saga.id, reason.as_str()),
        "reason": reason.as_str(),
        "detail": detail,
        "saga": {
            "id": saga.id,
            "name": saga.name,
            "key": saga.key,
            "state": saga.state,
            "created_at": saga.created_at,
            "updated_at": saga.updated_at,
            "path": format!("/sagas/{}", saga.id),
        },
        "attempt": saga.attempts + 1,
        "sent_at": now,
    })
}

/// The wait after `tries` failed tries: 1 s, 2 s, 4 s... up to [`MAX_BACKOFF`].
fn backoff(tries: i32) -> Duration {
    let exponent = u32::try_from(tries.clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// Sends alerts until `stop` fires.
pub async fn run(
    settings: AlertSettings,
    store: Store,
    ownership: Ownership,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            log::error!("alerts: cannot build an HTTP client ({e}); no alert will be sent");
            return;
        }
    };
    let alerter = Alerter {
        settings,
        store,
        ownership,
        metrics,
        client,
    };
    loop {
        if let Err(e) = alerter.look().await {
            log::warn!("alerts: cannot read what is due ({e}); trying again in {EVERY:?}");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

struct Alerter {
    settings: AlertSettings,
    store: Store,
    ownership: Ownership,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
}

impl Alerter {
    async fn look(&self) -> Result<(), StoreError> {
        let partitions = self.ownership.owned_partition_columns();
        if partitions.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let owned = partitions.clone();
        let failed = self
            .store
            .interact(move |db| db.alerts_due("failed", &[SagaState::Failed.as_str()], &owned, now))
            .await?;
        for saga in failed {
            let detail = "automation gave up: retry or resolve it".to_string();
            self.send(Reason::Failed, &saga, detail).await?;
        }
        let shortest = chrono::Duration::from_std(self.settings.shortest_stuck_after())
            .unwrap_or(chrono::Duration::MAX);
        let in_flight = SagaState::IN_FLIGHT.map(SagaState::as_str);
        let stuck = self
            .store
            .interact(move |db| db.alerts_due("stuck", &in_flight, &partitions, now - shortest))
            .await?;
        for saga in stuck {
            let after = self.settings.stuck_after(&saga.name);
            let age = (now - saga.created_at).to_std().unwrap_or_default();
            if age < after {
                continue;
            }
            let detail = format!(
                "{} for {}s, longer than {}s",
                saga.state,
                age.as_secs(),
                after.as_secs()
            );
            self.send(Reason::Stuck, &saga, detail).await?;
        }
        Ok(())
    }

    /// One try of one alert, and its record.
    async fn send(
        &self,
        reason: Reason,
        saga: &AlertDue,
        detail: String,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let body = body(reason, saga, now, detail).to_string();
        let answer = self
            .client
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature(&self.settings.secret, body.as_bytes()),
            )
            .header(ID_HEADER, format!("{}:{}", saga.id, reason.as_str()))
            .body(body)
            .send()
            .await;
        let outcome = match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the receiver answered {}", r.status())),
            Err(e) => Err(format!("cannot reach the receiver: {e}")),
        };
        self.metrics.observe_alert(reason.as_str(), outcome.is_ok());
        let record = match outcome {
            Ok(()) => Ok(()),
            Err(error) => {
                let wait = backoff(saga.attempts);
                log::warn!(
                    saga_id:% = saga.id,
                    saga = saga.name.as_str();
                    "saga {}: {} alert not delivered ({error}); trying again in {wait:?}",
                    saga.id,
                    reason.as_str()
                );
                let next = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                Err((error, next))
            }
        };
        let (id, reason) = (saga.id, reason.as_str());
        self.store
            .interact(move |db| db.record_alert_try(id, reason, record))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(1_000), MAX_BACKOFF);
    }

    #[test]
    fn an_alert_url_without_a_secret_is_refused() {
        let mut settings = Settings::from_env().expect("default settings");
        assert!(matches!(AlertSettings::from_settings(&settings), Ok(None)));
        settings.alert_url = Some(url::Url::parse("https://pager.example/hook").expect("a URL"));
        let refused = AlertSettings::from_settings(&settings).expect_err("no secret");
        assert!(refused.contains("SAGA_ALERT_SECRET"), "{refused}");
        settings.alert_secret = Some("s".into());
        settings.stuck_after_by_name = vec![("quick".into(), Duration::from_secs(60))];
        let on = AlertSettings::from_settings(&settings)
            .expect("valid")
            .expect("alerts on");
        assert_eq!(on.stuck_after("quick"), Duration::from_secs(60));
    }

    #[test]
    fn stuck_thresholds_by_name_parse_and_refuse_what_is_not_one() {
        use crate::config::{parse_alert_url, parse_stuck_after};
        assert_eq!(
            parse_stuck_after("place-order=10m"),
            Ok(("place-order".to_string(), Duration::from_secs(600)))
        );
        assert_eq!(
            parse_stuck_after("refund=1d").map(|(_, d)| d),
            Ok(Duration::from_secs(86_400))
        );
        assert!(parse_stuck_after("no-duration").is_err());
        assert!(parse_stuck_after("bad name=1h").is_err());
        assert!(parse_stuck_after("x=1w").is_err());
        assert!(parse_alert_url("ftp://h/").is_err());
        assert!(parse_alert_url("not a url").is_err());
    }

    #[test]
    fn a_names_threshold_wins_over_the_default() {
        let settings = AlertSettings {
            url: url::Url::parse("http://h/").expect("a URL"),
            secret: "s".into(),
            stuck_after: Duration::from_secs(3600),
            stuck_after_by_name: [("quick".to_string(), Duration::from_secs(60))].into(),
        };
        assert_eq!(settings.stuck_after("quick"), Duration::from_secs(60));
        assert_eq!(settings.stuck_after("other"), Duration::from_secs(3600));
        assert_eq!(settings.shortest_stuck_after(), Duration::from_secs(60));
    }
}
